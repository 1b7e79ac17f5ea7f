-- The client's logs: tail/since/previous, a follow that survives log rotation without
-- losing or repeating a line, and many pods followed at once with late pods picked up.
local vq = require "vq"
local kube = require "vq.kube"
local util = require "sim.util"
local cluster = require "spec.support.cluster"

local NS = "default"
local sim, k

local function pod(name, labels, containers)
  containers = containers or { "app" }
  local specs, statuses = {}, {}
  for i, c in ipairs(containers) do
    specs[i] = { name = c, image = "vantiq/vantiq-server:1.40" }
    statuses[i] = { name = c, image = specs[i].image, ready = true, restartCount = 0,
      state = { running = { startedAt = util.rfc3339(sim.clock:now()) } } }
  end
  local created = assert(sim:create("pods", { metadata = { name = name, namespace = NS, labels = labels },
    spec = { nodeName = "node-1", containers = specs } }))
  local copy = util.copy(created)
  copy.status = { phase = "Running", containerStatuses = statuses,
    conditions = { { type = "Ready", status = "True" } } }
  assert(sim:update_status("pods", copy))
  for _, c in ipairs(containers) do sim.logs:start(NS, name, c, 0) end
end

local function writer(name, container, from, to, pause)
  return vq.spawn(function()
    for i = from, to do
      sim.logs:write(NS, name, container, ("line %d"):format(i))
      if pause and i % pause == 0 then vq.sleep(0.001) end
    end
  end)
end

setup(function()
  sim = cluster.start { speed = 0.02, modules = { "sim.auth", "sim.core", "sim.logs", "sim.faults" } }
  k = assert(kube.connect { kubeconfig = sim.spec_kubeconfig })
end)

teardown(function() cluster.finish(sim) end)

describe("k:logs", function()
  it("reads the tail and the whole log", function()
    pod("tail-pod")
    writer("tail-pod", "app", 1, 10):wait()
    local lines = {}
    for line in k:logs("tail-pod", { tail = 3 }) do lines[#lines + 1] = line end
    assert.are.same({ "line 8", "line 9", "line 10" }, lines)
    local n = 0
    for _ in k:logs("tail-pod") do n = n + 1 end
    assert.are.equal(10, n)
  end)

  it("gives timestamps when asked", function()
    local line, ts = k:logs("tail-pod", { tail = 1, timestamps = true })()
    assert.matches("^%d+%-%d+%-%d+T[%d:.]+Z line 10$", line)
    assert.matches("^%d+%-%d+%-%d+T", ts)
  end)

  it("reports a missing pod as the error that ended the lines", function()
    local iter, state = k:logs("no-such-pod")
    assert.is_nil(iter())
    assert.are.equal(404, state.err.code)
  end)

  it("follows across log rotations: nothing lost, nothing repeated", function()
    pod("rotating")
    sim.logs.rotate_every = 250
    local total = 3000
    local w = writer("rotating", "app", 1, total, 10)
    local expect, got = 1, 0
    local iter, state = k:logs("rotating", { follow = true })
    local _, err = vq.timeout(20, function()
      for line in iter do
        local n = tonumber(line:match("^line (%d+)$"))
        assert.are.equal(expect, n)
        expect = expect + 1
        got = got + 1
        if got == total then state.close() break end
      end
    end)
    sim.logs.rotate_every = nil
    w:wait()
    assert.is_nil(err)
    assert.are.equal(total, got)
    assert.is_true(state.reconnects >= 5, "the stream was never cut: " .. state.reconnects)
  end)

  it("keeps a relative since in place when a stream is cut before its first line", function()
    pod("quiet")
    local iter, state = k:logs("quiet", { follow = true, since = 1 })
    local got
    vq.spawn(function()
      vq.sleep(0.2)
      -- the stream is cut, and coming back takes the server 1.5 s: the line written
      -- meanwhile is older than "the last second" by then, but not older than the first open
      sim.faults:add { kind = "slow", delay = 1.5, count = 1, path = "/pods/quiet/log$" }
      sim.logs:rotate(NS, "quiet", "app")
      vq.sleep(0.1)
      sim.logs:write(NS, "quiet", "app", "written while away")
    end)
    vq.timeout(10, function() got = iter() end)
    state.close()
    assert.are.equal("written while away", got)
    assert.are.equal(1, state.reconnects)
    assert.is_nil(state.gap)
  end)
end)

describe("k:follow", function()
  it("says where lines may be missing: a stream back with nothing to resume from", function()
    pod("undated", { gap = "yes" })
    local c = assert(kube.connect { kubeconfig = sim.spec_kubeconfig })
    local request = c.request
    c.request = function(self, o) -- a server that gives no Date
      local r, e = request(self, o)
      if r and o.resource == "pods/log" and r.headers then r.headers.date = nil end
      return r, e
    end
    local f = c:follow { namespace = NS, selector = "gap=yes", since = 5 }
    vq.spawn(function()
      vq.sleep(0.3)
      sim.logs:rotate(NS, "undated", "app") -- cut before any line
      vq.sleep(0.3)
      sim.logs:write(NS, "undated", "app", "after the cut")
    end)
    local items = {}
    vq.timeout(10, function()
      for item in f:lines() do
        items[#items + 1] = item
        if item.text == "after the cut" then break end
      end
    end)
    f:stop()
    assert.are.equal(2, #items)
    assert.is_true(items[1].gap)
    assert.matches("lines may be missing", f.format(items[1], false))
    assert.is_nil(items[2].gap)
  end)

  it("follows more pods than any per-host connection cap would allow", function()
    local n = 40
    for i = 1, n do
      pod(("many-%02d"):format(i), { app = "many" })
      writer(("many-%02d"):format(i), "app", 1, 5)
    end
    local f = k:follow { selector = "app=many" }
    local got = 0
    local _, err = vq.timeout(10, function()
      for _ in f:lines() do
        got = got + 1
        if got == n * 5 then break end
      end
    end)
    f:stop()
    assert.is_nil(err)
    assert.are.equal(n * 5, got)
  end)

  it("follows every matching pod, picks up a late one, and prefixes lines", function()
    for i = 1, 3 do pod("web-" .. i, { app = "web" }) end
    pod("other", { app = "other" })
    local f = k:follow { selector = "app=web", grep = "^line" }
    local seen, count = {}, 0
    local done = vq.event()
    vq.spawn(function()
      for item in f:lines() do
        seen[item.pod] = (seen[item.pod] or 0) + 1
        count = count + 1
        if count == 4 * 20 then done:set() end
      end
    end)
    vq.sleep(0.1)
    for i = 1, 3 do writer("web-" .. i, "app", 1, 20) end
    writer("other", "app", 1, 20)
    vq.sleep(0.1)
    pod("web-4", { app = "web" })
    vq.sleep(0.3)
    writer("web-4", "app", 1, 20)
    assert.is_true(done:wait(5), "saw " .. count .. " lines")
    f:stop()
    assert.are.same({ ["web-1"] = 20, ["web-2"] = 20, ["web-3"] = 20, ["web-4"] = 20 }, seen)
    local text = f.format({ pod = "web-1", container = "app", text = "line 1", colour = "" }, false)
    assert.are.equal("[web-1/app] line 1", text)
  end)
end)
