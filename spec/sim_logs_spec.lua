-- The simulator's container logs: the store's contract, and pods/log as kubectl (1.27,
-- 1.30, 1.33) and plain HTTP clients see it.
local vq = require "vq"
local http = require "vq.http"
local util = require "sim.util"
local run = require("spec.support.run").run
local cluster = require "spec.support.cluster"

local MODULES = { "sim.auth", "sim.core", "sim.logs", "sim.exec" }
local NS = "default"

-- A simulator of that version, with a kubeconfig and a HOME for kubectl.
local function start(version) return cluster.start { speed = 0.02, version = version, modules = MODULES } end
local kubectl = cluster.run_kubectl

local function get(s, path) return assert(http.get(s.url .. path, { retries = 0 })) end

local function running_state(sim) return { running = { startedAt = util.rfc3339(sim.clock:now()) } } end

--- A pod whose containers have the given states (running by default), on node-1.
local function pod(sim, name, o)
  o = o or {}
  local containers = {}
  for _, c in ipairs(o.containers or { "app" }) do containers[#containers + 1] = { name = c, image = "vantiq/vantiq-server:1.40" } end
  local init = nil
  if o.init then init = { { name = o.init, image = "busybox:1.36" } } end
  local created = assert(sim:create("pods", { metadata = { name = name, namespace = NS },
    spec = { nodeName = o.node == nil and "node-1" or o.node or nil, containers = containers, initContainers = init } }))
  if o.no_status then return created end
  local copy = util.copy(created)
  local statuses = {}
  for _, c in ipairs(containers) do
    statuses[#statuses + 1] = { name = c.name, image = c.image, restartCount = o.restarts or 0,
      containerID = "containerd://" .. name .. "-" .. c.name, ready = true,
      state = (o.states or {})[c.name] or running_state(sim), lastState = o.last_state or {} }
  end
  copy.status = { phase = "Running", podIP = "10.244.1.7", containerStatuses = statuses }
  return assert(sim:update_status("pods", copy))
end

-- The timestamp the kubelet prints for time t.
local function stamp(t) return (require("sim.logs").stamp(t):gsub(" $", "")) end

local function write(sim, name, container, lines, time)
  for _, l in ipairs(lines) do sim.logs:write(NS, name, container, l, time) end
end

local function started(sim, name, container, lines)
  sim.logs:start(NS, name, container, 0)
  write(sim, name, container, lines or {})
end

--- kubectl logs -f in a task: its result once it ends, and an event set at its first output.
local function follow(s, args)
  local first = vq.event()
  local t = vq.spawn(function()
    local cmd = { "logs", "-f" }
    for _, a in ipairs(args) do cmd[#cmd + 1] = a end
    return kubectl(s, cmd, { on_stdout = function() first:set() end })
  end)
  return t, first
end

-- ---- the store ----

describe("sim.logs, the store", function()
  local s
  setup(function() s = start() end)
  teardown(function() cluster.finish(s) end)

  it("keeps lines with their times, and the previous instance", function()
    local logs = s.logs
    logs:start(NS, "s1", "app", 0)
    logs:write(NS, "s1", "app", "first", 1000.5)
    logs:write(NS, "s1", "app", "two\nlines")
    local lines, times = logs:lines(NS, "s1", "app")
    assert.are.same({ "first", "two", "lines" }, lines)
    assert.are.equal(1000.5, times[1])
    logs:stop(NS, "s1", "app")
    logs:start(NS, "s1", "app", 1)
    logs:write(NS, "s1", "app", "second life")
    assert.are.same({ "second life" }, (logs:lines(NS, "s1", "app")))
    assert.are.same({ "first", "two", "lines" }, (logs:lines(NS, "s1", "app", { previous = true })))
  end)

  it("forgets the previous instance of a new pod of the same name", function()
    local logs = s.logs
    logs:start(NS, "s2", "app", 0)
    logs:write(NS, "s2", "app", "old pod")
    logs:start(NS, "s2", "app", 0)
    assert.are.same({}, (logs:lines(NS, "s2", "app", { previous = true })))
  end)

  it("keeps only the last max_lines lines", function()
    local logs = s.logs
    local saved = logs.max_lines
    logs.max_lines = 10
    pod(s, "s3")
    logs:start(NS, "s3", "app", 0)
    for i = 1, 3000 do logs:write(NS, "s3", "app", "l" .. i) end
    logs.max_lines = saved
    local lines = logs:lines(NS, "s3", "app")
    assert.are.equal(10, #lines)
    assert.are.equal("l2991", lines[1])
    assert.are.equal("l3000", lines[10])
    assert.are.equal("l2996\nl2997\nl2998\nl2999\nl3000\n", get(s, "/api/v1/namespaces/default/pods/s3/log?tailLines=5").body)
  end)

  it("keeps at most max_bytes of lines", function()
    local logs = s.logs
    local saved = logs.max_bytes
    logs.max_bytes = 100
    logs:start(NS, "s6", "app", 0)
    for i = 1, 30 do logs:write(NS, "s6", "app", ("line-%03d"):format(i)) end -- 9 bytes with the newline
    logs.max_bytes = saved
    local lines = logs:lines(NS, "s6", "app")
    assert.are.equal(11, #lines)
    assert.are.equal("line-030", lines[11])
  end)

  it("serves only the file written since the last rotation", function()
    pod(s, "s4")
    local logs = s.logs
    started(s, "s4", "app", { "before" })
    logs:rotate(NS, "s4", "app")
    logs:write(NS, "s4", "app", "after")
    assert.are.same({ "after" }, (logs:lines(NS, "s4", "app")))
    assert.are.equal("after\n", get(s, "/api/v1/namespaces/default/pods/s4/log").body)
  end)

  it("drops a deleted pod's logs", function()
    local p = pod(s, "s5")
    started(s, "s5", "app", { "x" })
    s:delete("pods", p, { grace = 0 })
    assert.are.same({}, (s.logs:lines(NS, "s5", "app")))
  end)
end)

-- ---- pods/log over HTTP ----

describe("pods/log", function()
  local s
  setup(function() s = start() end)
  teardown(function() cluster.finish(s) end)

  local function log(name, query) return get(s, "/api/v1/namespaces/default/pods/" .. name .. "/log" .. (query or "")) end

  it("is 404 for a missing pod", function()
    local r = log("nope")
    assert.are.equal(404, r.status)
    assert.are.equal('pods "nope" not found', r.json.message)
  end)

  it("wants a container when the pod has several, as the apiserver says", function()
    pod(s, "multi", { containers = { "a", "b" }, init = "setup" })
    local r = log("multi")
    assert.are.equal(400, r.status)
    assert.are.equal("a container name must be specified for pod multi, choose one of: [a b] or one of the init containers: [setup]", r.json.message)
    assert.are.equal("BadRequest", r.json.reason)
    r = log("multi", "?container=zz")
    assert.are.equal(400, r.status)
    assert.are.equal("container zz is not valid for pod multi", r.json.message)
  end)

  it("says why a container that has not started has no logs", function()
    pod(s, "creating", { states = { app = { waiting = { reason = "ContainerCreating" } } } })
    local r = log("creating")
    assert.are.equal(400, r.status)
    assert.are.equal('container "app" in pod "creating" is waiting to start: ContainerCreating', r.json.message)
    pod(s, "initing", { init = "setup", no_status = true })
    assert.are.equal('container "app" in pod "initing" is waiting to start: PodInitializing', log("initing").json.message)
    pod(s, "pulling", { states = { app = { waiting = { reason = "ImagePullBackOff" } } } })
    assert.are.equal('container "app" in pod "pulling" is waiting to start: trying and failing to pull image', log("pulling").json.message)
  end)

  it("serves the last run of a container in CrashLoopBackOff, as the kubelet does", function()
    pod(s, "crashing", { restarts = 3, states = { app = { waiting = { reason = "CrashLoopBackOff" } } },
      last_state = { terminated = { exitCode = 1, reason = "Error", containerID = "containerd://x" } } })
    started(s, "crashing", "app", { "panic: no mongo" })
    s.logs:stop(NS, "crashing", "app")
    assert.are.equal("panic: no mongo\n", log("crashing").body)
  end)

  it("answers an unscheduled pod with nothing", function()
    pod(s, "unscheduled", { node = false, no_status = true })
    local r = log("unscheduled")
    assert.are.equal(200, r.status)
    assert.are.equal("", r.body)
  end)

  it("takes tailLines, limitBytes, sinceTime and timestamps", function()
    pod(s, "params")
    local now = s.clock:now()
    s.logs:start(NS, "params", "app", 0)
    write(s, "params", "app", { "old-1", "old-2" }, now - 7200)
    write(s, "params", "app", { "new-1", "new-2", "new-3" }, now - 10)
    assert.are.equal("new-2\nnew-3\n", log("params", "?tailLines=2").body)
    assert.are.equal("", log("params", "?tailLines=0").body)
    assert.are.equal("old-1\nol", log("params", "?limitBytes=8").body)
    local since = util.rfc3339(now - 3600)
    assert.are.equal("new-1\nnew-2\nnew-3\n", log("params", "?sinceTime=" .. since).body)
    assert.are.equal("new-3\n", log("params", "?sinceSeconds=60&tailLines=1").body)
    local body = log("params", "?timestamps=true&tailLines=1").body
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%d%d%d%d%d%dZ new%-3\n$", body)
    assert.are.equal(stamp(now - 10), body:match("^(%S+)"))
  end)

  it("refuses invalid options as the apiserver does", function()
    pod(s, "invalid")
    local r = log("invalid", "?tailLines=-1")
    assert.are.equal(422, r.status)
    assert.matches("tailLines: Invalid value: %-1", r.json.message)
    r = log("invalid", "?sinceSeconds=10&sinceTime=2024-01-01T00:00:00Z")
    assert.are.equal(422, r.status)
    assert.are.equal(400, log("invalid", "?tailLines=many").status)
  end)

  it("says when there is no previous container", function()
    pod(s, "fresh")
    local r = log("fresh", "?previous=true")
    assert.are.equal(400, r.status)
    assert.are.equal('previous terminated container "app" in pod "fresh" not found', r.json.message)
  end)

  it("ends a follow when the client goes", function()
    pod(s, "leaving")
    started(s, "leaving", "app", { "one" })
    local function open_conns()
      local n = 0
      for _ in pairs(s.server.conns) do n = n + 1 end
      return n
    end
    local before = open_conns()
    local r = run { "curl", "-s", "-N", "--max-time", "0.5", s.url .. "/api/v1/namespaces/default/pods/leaving/log?follow=true" }
    assert.are.equal("one\n", r.stdout)
    for _ = 1, 30 do
      if open_conns() == before then break end
      vq.sleep(0.1)
    end
    assert.are.equal(before, open_conns())
  end)
end)

-- ---- kubectl logs ----

local function kubectl_logs_suite(version, label)
  describe("kubectl logs against " .. label, function()
    local s
    setup(function() s = start(version) end)
    teardown(function() cluster.finish(s) end)

    it("prints a container's lines, the last few, and with timestamps", function()
      pod(s, "web", { containers = { "app", "sidecar" } })
      started(s, "web", "app", { "starting", "listening on 8080", "ready" })
      local r = kubectl(s, { "logs", "web", "-c", "app" })
      assert.are.equal(0, r.status, r.stderr)
      assert.are.equal("starting\nlistening on 8080\nready\n", r.stdout)
      r = kubectl(s, { "logs", "web", "-c", "app", "--tail=2" })
      assert.are.equal("listening on 8080\nready\n", r.stdout)
      r = kubectl(s, { "logs", "web", "-c", "app", "--tail=1", "--timestamps" })
      assert.matches("^%d+%-%d+%-%d+T%d+:%d+:%d+%.%d+Z ready\n$", r.stdout)
    end)

    it("keeps to --since", function()
      pod(s, "since")
      s.logs:start(NS, "since", "app", 0)
      write(s, "since", "app", { "yesterday" }, s.clock:now() - 86400)
      write(s, "since", "app", { "just now" })
      local r = kubectl(s, { "logs", "since", "--since=1h" })
      assert.are.equal(0, r.status, r.stderr)
      assert.are.equal("just now\n", r.stdout)
    end)

    it("shows the previous container with --previous, and says when there is none", function()
      pod(s, "restarted", { restarts = 1,
        last_state = { terminated = { exitCode = 137, reason = "OOMKilled", containerID = "containerd://old" } } })
      started(s, "restarted", "app", { "before the crash" })
      s.logs:stop(NS, "restarted", "app")
      s.logs:start(NS, "restarted", "app", 1)
      write(s, "restarted", "app", { "after the restart" })
      local r = kubectl(s, { "logs", "restarted", "--previous" })
      assert.are.equal(0, r.status, r.stderr)
      assert.are.equal("before the crash\n", r.stdout)
      assert.are.equal("after the restart\n", kubectl(s, { "logs", "restarted" }).stdout)
      pod(s, "first-life")
      r = kubectl(s, { "logs", "first-life", "--previous" })
      assert.are.equal(1, r.status)
      assert.matches('previous terminated container "app" in pod "first%-life" not found', r.stderr)
    end)

    it("says a waiting container is waiting", function()
      pod(s, "waiting", { states = { app = { waiting = { reason = "ContainerCreating" } } } })
      local r = kubectl(s, { "logs", "waiting" })
      assert.are.equal(1, r.status)
      assert.matches('container "app" in pod "waiting" is waiting to start: ContainerCreating', r.stderr, 1, true)
    end)

    it("follows until the container stops", function()
      pod(s, "follow")
      started(s, "follow", "app", { "one" })
      local t, first = follow(s, { "follow" })
      assert(first:wait(20), "kubectl printed nothing")
      write(s, "follow", "app", { "two", "three" })
      vq.sleep(0.1)
      s.logs:stop(NS, "follow", "app")
      local r = assert(t:wait())
      assert.are.equal(0, r.status, r.stderr)
      assert.are.equal("one\ntwo\nthree\n", r.stdout)
    end)

    it("has its follow cut by a log rotation, and then shows only the new file", function()
      pod(s, "rotating")
      started(s, "rotating", "app", { "a1", "a2" })
      local t, first = follow(s, { "rotating" })
      assert(first:wait(20), "kubectl printed nothing")
      write(s, "rotating", "app", { "a3" })
      s.logs:rotate(NS, "rotating", "app")
      write(s, "rotating", "app", { "b1" })
      local r = assert(t:wait())
      assert.are.equal(0, r.status, r.stderr)
      assert.are.equal("a1\na2\na3\n", r.stdout)
      assert.are.equal("b1\n", kubectl(s, { "logs", "rotating" }).stdout)
    end)

    it("rotates every n lines when a scenario says so", function()
      pod(s, "chatty")
      started(s, "chatty", "app", { "c1" })
      s.logs.rotate_every = 3
      local t, first = follow(s, { "chatty" })
      assert(first:wait(20), "kubectl printed nothing")
      write(s, "chatty", "app", { "c2", "c3", "c4" })
      local r = assert(t:wait())
      s.logs.rotate_every = nil
      assert.are.equal("c1\nc2\nc3\n", r.stdout)
      assert.are.equal("c4\n", kubectl(s, { "logs", "chatty" }).stdout)
    end)
  end)
end

kubectl_logs_suite(nil, "the default version (kubectl 1.30)")

describe("kubectl logs of other versions", function()
  for _, version in ipairs { "v1.27.16", "v1.33.1" } do
    it("works with kubectl " .. version, function()
      local s = start(version)
      local ok, err = pcall(function()
        pod(s, "app-0")
        started(s, "app-0", "app", { "one", "two" })
        local r = kubectl(s, { "logs", "app-0", "--tail=1" })
        assert.are.equal(0, r.status, r.stderr)
        assert.are.equal("two\n", r.stdout)
        local t, first = follow(s, { "app-0" })
        assert(first:wait(20), "kubectl printed nothing")
        write(s, "app-0", "app", { "three" })
        s.logs:rotate(NS, "app-0", "app")
        r = assert(t:wait())
        assert.are.equal("one\ntwo\nthree\n", r.stdout)
        -- the dispatcher ran the kubectl of the server's minor version
        local v = require("json").decode(kubectl(s, { "version", "-o", "json" }).stdout)
        assert.are.equal(version:match("^v1%.(%d+)"), v.clientVersion.minor)
      end)
      cluster.finish(s)
      assert(ok, err)
    end)
  end
end)
