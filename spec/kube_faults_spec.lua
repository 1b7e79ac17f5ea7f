-- The kube client against a flaky apiserver (the simulator's transport faults): bursts of
-- 429/503, watches cut mid-stream or answered 410, a slow server, an expired token that
-- an exec credential plugin renews.
local vq = require "vq"
local kube = require "vq.kube"
local cluster = require "spec.support.cluster"

local sim, kc, k

local function configmap(name, labels)
  return { apiVersion = "v1", kind = "ConfigMap", metadata = { name = name, namespace = "default", labels = labels }, data = { a = "b" } }
end

setup(function()
  sim = cluster.start { modules = { "sim.auth", "sim.core", "sim.faults" } }
  kc = sim.spec_kubeconfig
  k = assert(kube.connect { kubeconfig = kc })
end)

teardown(function() cluster.finish(sim) end)

after_each(function() sim.faults:clear() end)

describe("a flaky apiserver", function()
  it("retries a burst of 429 with Retry-After, as client-go does", function()
    local f = sim.faults:add { kind = "status", code = 429, count = 3, retry_after = 0 }
    local ns = assert(k:get("ns", "default"))
    assert.are.equal("default", ns.metadata.name)
    assert.are.equal(3, f.hits)
  end)

  it("retries a burst of 503 for writes too (the body is re-sent)", function()
    local f = sim.faults:add { kind = "status", code = 503, count = 2, retry_after = 0, method = "POST" }
    assert(k:create(configmap("after-503")))
    assert.are.equal(2, f.hits)
    assert(k:get("cm", "after-503"))
  end)

  it("gives up after client-go's ten retries and returns the Status", function()
    sim.faults:add { kind = "status", code = 503, retry_after = 0 }
    local obj, e = k:get("ns", "default")
    assert.is_nil(obj)
    assert.are.equal(503, e.code)
  end)

  it("resumes a watch cut mid-stream without losing or repeating an event", function()
    sim.faults:add { kind = "drop", after = 3, count = 2, streams = true }
    local events, state = k:watch("configmaps", { namespace = "default", labels = "cut=yes" })
    vq.spawn(function()
      for i = 1, 10 do
        k:create(configmap("cut-" .. i, { cut = "yes" }))
        vq.sleep(0.01)
      end
    end)
    local seen = {}
    vq.timeout(10, function()
      for ev in events do
        seen[#seen + 1] = ev.object.metadata.name
        if #seen == 10 then break end
      end
    end)
    state.close()
    local expect = {}
    for i = 1, 10 do expect[i] = "cut-" .. i end
    assert.are.same(expect, seen)
  end)

  it("re-lists when the server answers a watch with a 410 ERROR event", function()
    assert(k:create(configmap("before-410", { w = "410" })))
    local list, meta = k:list("cm", { namespace = "default", labels = "w=410" })
    assert.are.equal(1, #list)
    sim.faults:add { kind = "watch-410", count = 1 }
    local events, state = k:watch("configmaps", { namespace = "default", labels = "w=410", resource_version = meta.resourceVersion })
    local names, relisted = {}, {}
    vq.timeout(10, function()
      for ev in events do
        names[ev.object.metadata.name] = ev.type
        relisted[ev.object.metadata.name] = ev.relisted or false
        -- the re-list brought the old one: a new one now comes through the new stream
        if ev.object.metadata.name == "before-410" then vq.spawn(function() k:create(configmap("after-410", { w = "410" })) end) end
        if names["after-410"] then break end
      end
    end)
    state.close()
    assert.are.equal("ADDED", names["after-410"])
    assert.is_true(relisted["before-410"]) -- from the re-list after the expiry
    assert.is_false(relisted["after-410"]) -- from the stream
  end)

  it("bounds a slow server with the request timeout", function()
    sim.faults:add { kind = "slow", delay = 3, count = 1 }
    local slow = assert(kube.connect { kubeconfig = kc, timeout = 0.3 })
    local obj, e = slow:get("ns", "default")
    assert.is_nil(obj)
    assert.are.equal("timeout", e.code)
  end)
end)

describe("an expired token", function()
  local has_proc = pcall(require, "vq.proc")

  it("runs the exec credential plugin again on 401, once", function()
    if not has_proc then pending("vq.proc not built") return end
    local dir = require("spec.support.run").tmpdir()
    -- the plugin hands out the simulator's token and counts its runs
    local plugin = dir .. "/plugin.sh"
    local f = assert(io.open(plugin, "w"))
    f:write("#!/bin/sh\necho run >> " .. dir .. "/runs\n",
      "printf '{\"kind\":\"ExecCredential\",\"apiVersion\":\"client.authentication.k8s.io/v1\",\"status\":{\"token\":\"%s\"}}' \"$TOKEN\"\n")
    f:close()
    os.execute("chmod +x " .. plugin)
    local conf = dir .. "/kubeconfig"
    f = assert(io.open(conf, "w"))
    f:write(([[
apiVersion: v1
kind: Config
clusters: [{name: s, cluster: {server: "%s"}}]
contexts: [{name: s, context: {cluster: s, user: u}}]
current-context: s
users:
- name: u
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: ./plugin.sh
      env: [{name: TOKEN, value: "%s"}]
      interactiveMode: Never
]]):format(sim.url, sim.token))
    f:close()
    local c = assert(kube.connect { kubeconfig = conf })
    assert(c:get("ns", "default"))
    local expired = true
    sim.token_expired = function() local e = expired expired = false return e end
    assert(c:get("ns", "default"))
    sim.token_expired = nil
    local runs = 0
    for _ in io.lines(dir .. "/runs") do runs = runs + 1 end
    os.execute("rm -rf " .. dir)
    assert.are.equal(2, runs)
  end)
end)
