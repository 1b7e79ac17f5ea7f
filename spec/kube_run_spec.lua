-- k:run: a pod that runs one command and is deleted (kubectl run --rm --restart=Never), on
-- a simulator whose kubelet runs a short-lived pod's command through its shell.
local kube = require "vq.kube"
local cluster = require "spec.support.cluster"

local sim, k

setup(function()
  sim = cluster.start { speed = 0.02, modules = { "sim.auth", "sim.core", "sim.controllers", "sim.logs", "sim.exec" } }
  for i = 1, 2 do
    assert(sim:create("nodes", { metadata = { name = "node-" .. i },
      status = { capacity = { cpu = "4", memory = "16Gi", pods = "110" }, allocatable = { cpu = "4", memory = "16Gi", pods = "110" } } }))
  end
  k = assert(kube.connect { kubeconfig = sim.spec_kubeconfig, namespace = "default" })
end)

teardown(function() cluster.finish(sim) end)

describe("k:run", function()
  it("gives the command's output and exit code, and leaves no pod behind", function()
    local r = assert(k:run { image = "busybox:1.36", command = { "sh", "-c", "echo hello; echo $GREETING" },
      env = { GREETING = "from the env" }, timeout = 30 })
    assert.are.equal(0, r.exit_code)
    assert.are.equal("hello\nfrom the env", r.output)
    assert.is_nil(k:get("pods", r.pod))
  end)

  it("reports a failing command's exit code", function()
    local r = assert(k:run { image = "busybox:1.36", command = { "sh", "-c", "echo no such table >&2; exit 3" }, timeout = 30 })
    assert.are.equal(3, r.exit_code)
    assert.are.equal("no such table", r.output)
  end)

  it("runs on the node it is pinned to: the nodes' clocks compared", function()
    sim.node_clock_skew["node-2"] = 90
    local seen = {}
    for _, node in ipairs { "node-1", "node-2" } do
      local r = assert(k:run { image = "busybox:1.36", command = { "date", "+%s" }, node = node, timeout = 30 })
      assert.are.equal(node, r.node)
      seen[node] = tonumber(r.output)
    end
    sim.node_clock_skew["node-2"] = nil
    local skew = seen["node-2"] - seen["node-1"]
    assert.is_true(skew >= 85 and skew <= 95, "skew " .. skew)
  end)

  it("deletes its pod when the wait runs out", function()
    local r, e = k:run { image = "busybox:1.36", command = { "sleep", "3600" }, timeout = 0.5 }
    assert.is_nil(r)
    assert.are.equal("timeout", e.code)
    cluster.eventually(function() return #assert(k:list("pods")) == 0 end, 10, "the pod deleted")
  end)
end)
