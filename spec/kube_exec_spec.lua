-- Client:exec against the simulator's pods/exec: WebSocket v5 (Kubernetes 1.30+) and v4.
local vq = require "vq"
local kube = require "vq.kube"
local cluster = require "spec.support.cluster"

local has_exec = package.searchpath("sim.exec", package.path) ~= nil
local MODULES = { "sim.auth", "sim.core", "sim.logs", "sim.exec" }
local NS = "default"

--- A pod on node-1 whose containers run (or are in the given states).
local function pod(sim, name, o)
  o = o or {}
  local containers, statuses = {}, {}
  for _, cname in ipairs(o.containers or { "app" }) do
    containers[#containers + 1] = { name = cname, image = "vantiq/vantiq-server:1.40" }
    statuses[#statuses + 1] = { name = cname, image = "vantiq/vantiq-server:1.40", restartCount = 0, ready = true,
      state = (o.states or {})[cname] or { running = { startedAt = "2024-01-01T00:00:00Z" } } }
  end
  local created = assert(sim:create("pods", { metadata = { name = name, namespace = NS },
    spec = { nodeName = "node-1", containers = containers } }))
  local copy = require("sim.util").copy(created)
  copy.status = { phase = "Running", podIP = "10.244.1.9", containerStatuses = statuses }
  return assert(sim:update_status("pods", copy))
end

local function start(version)
  local c = {}
  c.sim = cluster.start { speed = 0.02, version = version, modules = MODULES }
  c.k = assert(kube.connect { kubeconfig = c.sim.spec_kubeconfig })
  pod(c.sim, "box")
  return c
end

local function stop(c)
  if not c then return end
  cluster.finish(c.sim)
end

local describe_exec = has_exec and describe or function(name) pending(name .. " (sim/exec.lua is not there yet)") end

describe_exec("Client:exec over v5.channel.k8s.io", function()
  local c, k

  setup(function()
    c = start()
    k = c.k
    pod(c.sim, "two", { containers = { "main", "sidecar" } })
    pod(c.sim, "starting", { states = { app = { waiting = { reason = "ContainerCreating" } } } })
  end)

  teardown(function() stop(c) end)

  it("runs a command and gives its output and exit code", function()
    local r = assert(k:exec("box", { "echo", "hello", "world" }))
    assert.are.equal(0, r.code)
    assert.are.equal("hello world\n", r.stdout)
    assert.are.equal("", r.stderr)
    assert.are.equal("v5.channel.k8s.io", r.protocol)
  end)

  it("runs date", function()
    local r = assert(k:exec("box", { "date", "-u", "+%Y-%m-%dT%H:%M:%SZ" }))
    assert.are.equal(0, r.code)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ\n$", r.stdout)
  end)

  it("feeds stdin and closes it", function()
    local r = assert(k:exec("box", { "cat" }, { stdin = "line one\nline two\n" }))
    assert.are.equal(0, r.code)
    assert.are.equal("line one\nline two\n", r.stdout)
    r = assert(k:exec("box", { "cat" }, { stdin = "" }))
    assert.are.equal("", r.stdout)
  end)

  it("feeds a large stdin while reading the output", function()
    local data = ("0123456789abcdef"):rep(64 * 1024) -- 1 MiB
    local r = assert(k:exec("box", { "cat" }, { stdin = data }))
    assert.are.equal(0, r.code)
    assert.are.equal(#data, #r.stdout)
    assert.are.equal(data, r.stdout)
  end)

  it("gives a non-zero exit as a result", function()
    local r = assert(k:exec("box", { "sh", "-c", "exit 3" }))
    assert.are.equal(3, r.code)
  end)

  it("keeps stdout and stderr apart", function()
    local r = assert(k:exec("box", { "sh", "-c", "echo out; echo err >&2; exit 1" }))
    assert.are.equal(1, r.code)
    assert.are.equal("out\n", r.stdout)
    assert.are.equal("err\n", r.stderr)
  end)

  it("says when the program does not exist, as the runtime does", function()
    local r = assert(k:exec("box", { "no-such-tool", "--help" }))
    assert.are.equal(126, r.code)
    assert.matches('exec: "no-such-tool": executable file not found in $PATH', r.stderr, 1, true)
  end)

  it("streams output to callbacks", function()
    local out, errs = {}, {}
    local r = assert(k:exec("box", { "sh", "-c", "echo a; echo b >&2; echo c" },
      { on_stdout = function(s) out[#out + 1] = s end, on_stderr = function(s) errs[#errs + 1] = s end }))
    assert.are.equal(0, r.code)
    assert.are.equal("a\nc\n", table.concat(out))
    assert.are.equal("b\n", table.concat(errs))
    assert.are.equal("", r.stdout)
  end)

  it("iterates over the lines of stdout", function()
    local lines = {}
    local iter, state, ctl, closer = k:exec_lines("box", { "sh", "-c", "echo one; echo two; echo -n three" })
    for line in iter, state, ctl, closer do lines[#lines + 1] = line end
    assert.are.same({ "one", "two", "three" }, lines)
    assert.are.equal(0, state.result.code)
    assert.is_nil(state.err)
  end)

  it("ends the exec when the loop over its lines ends early", function()
    for line in k:exec_lines("box", { "sh", "-c", "echo first; sleep 30; echo never" }) do
      assert.are.equal("first", line)
      break
    end
  end)

  it("picks the container", function()
    local r = assert(k:exec("two", { "hostname" }, { container = "sidecar" }))
    assert.are.equal(0, r.code)
    assert.are.equal("two\n", r.stdout)
  end)

  it("gives the Status of a pod that does not exist", function()
    local r, e = k:exec("nope", { "date" })
    assert.is_nil(r)
    assert.are.equal(404, e.code)
    assert.are.equal("NotFound", e.reason)
    assert.matches('pods "nope" not found', e.message, 1, true)
    assert.are.equal("exec", e.verb)
    assert.are.equal("nope", e.name)
    assert.are.equal(NS, e.namespace)
  end)

  it("gives the Status of a container that does not run, or does not exist", function()
    local r, e = k:exec("starting", { "date" })
    assert.is_nil(r)
    assert.are.equal(400, e.code)
    assert.matches("container not found", e.message, 1, true)
    r, e = k:exec("two", { "date" }, { container = "nope" })
    assert.is_nil(r)
    assert.are.equal(400, e.code)
  end)

  it("never shows the token in errors", function()
    local _, e = k:exec("nope", { "date" })
    for _, v in pairs(e) do assert.not_matches(c.sim.token, tostring(v), 1, true) end
  end)

  it("ends a long command at its timeout", function()
    local started = vq.now()
    local r, e = k:exec("box", { "sleep", "30" }, { timeout = 0.2 })
    assert.is_nil(r)
    assert.are.equal("timeout", e.code)
    assert.is_true(vq.now() - started < 5)
    assert(k:exec("box", { "true" }))
  end)

  it("runs many at once", function()
    local jobs = {}
    for i = 1, 20 do
      jobs[i] = function() return assert(k:exec("box", { "echo", tostring(i) })).stdout end
    end
    local results = assert(vq.all(jobs))
    for i = 1, 20 do assert.are.equal(i .. "\n", results[i][1]) end
  end)

  it("refuses what is not an argv", function()
    assert.has_error(function() k:exec("box", "date") end)
    assert.has_error(function() k:exec("box", { "echo", 1 }) end)
  end)
end)

describe_exec("Client:exec over v4.channel.k8s.io (Kubernetes before 1.30)", function()
  local c, k

  setup(function()
    c = start("v1.27.16")
    k = c.k
  end)

  teardown(function() stop(c) end)

  it("falls back to v4", function()
    local r = assert(k:exec("box", { "echo", "v4" }))
    assert.are.equal("v4.channel.k8s.io", r.protocol)
    assert.are.equal("v4\n", r.stdout)
    assert.are.equal(0, r.code)
  end)

  it("gives exit codes", function()
    assert.are.equal(3, assert(k:exec("box", { "sh", "-c", "exit 3" })).code)
  end)

  it("says that closing stdin needs v5", function()
    local r, e = k:exec("box", { "cat" }, { stdin = "data" })
    assert.is_nil(r)
    assert.are.equal(400, e.code)
    assert.matches("v5.channel.k8s.io", e.message, 1, true)
  end)
end)
