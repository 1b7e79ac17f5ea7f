local vq = require "vq"
local kube = require "vq.kube"
local json = require "json"
local cluster = require "spec.support.cluster"

local sim, k, kc

setup(function()
  sim = cluster.start { speed = 0.02, modules = { "sim.auth", "sim.core" } }
  kc = sim.spec_kubeconfig
  k = assert(kube.connect { kubeconfig = kc })
  assert(k:create { apiVersion = "v1", kind = "Namespace", metadata = { name = "vantiq" } })
end)

teardown(function() cluster.finish(sim) end)

local function configmap(name, data, labels)
  return { apiVersion = "v1", kind = "ConfigMap", metadata = { name = name, namespace = "vantiq", labels = labels }, data = data or { k = "v" } }
end

describe("kube client", function()
  it("never shows its credentials", function()
    local text = tostring(k)
    assert.matches("context vqsim", text)
    assert.not_matches(sim.token, text, 1, true)
    assert.are.equal("***", require("log").redact(sim.token))
  end)

  it("resolves names as kubectl does, without asking the server", function()
    for _, name in ipairs { "sts", "statefulset", "statefulsets", "StatefulSet", "statefulsets.apps" } do
      assert.are.equal("statefulsets.apps", assert(k:resource(name)).key)
    end
    assert.are.equal("pods", k:resource("po").key)
    assert.are.equal("cronjobs.batch", k:resource("cj").key)
    assert.are.equal("events", k:resource("ev").key)
    assert.are.equal("events.events.k8s.io", k:resource("events.events.k8s.io").key)
    assert.is_nil(k.discovery_done)
  end)

  it("says clearly when a type does not exist", function()
    local t, e = k:resource("frobnicators")
    assert.is_nil(t)
    assert.are.equal("unknown_resource", e.code)
    assert.matches('doesn\'t have a resource type "frobnicators"', e.message)
  end)

  it("gets, and gives the Status of a failure", function()
    local ns = assert(k:get("ns", "vantiq"))
    assert.are.equal("Active", ns.status.phase)
    local obj, e = k:get("cm", "missing", { namespace = "vantiq" })
    assert.is_nil(obj)
    assert.are.equal(404, e.code)
    assert.are.equal("NotFound", e.reason)
    assert.are.equal("get", e.verb)
    assert.are.equal("configmaps", e.resource)
    assert.are.equal("missing", e.name)
  end)

  it("lists across pages and iterates page by page", function()
    for i = 1, 12 do assert(k:create(configmap("page" .. i, nil, { page = "yes", odd = tostring(i % 2) }))) end
    local all = assert(k:list("cm", { namespace = "vantiq", labels = "page=yes", page_size = 5 }))
    assert.are.equal(12, #all)
    assert.are.equal(6, #assert(k:list("cm", { namespace = "vantiq", labels = "page=yes,odd=1" })))
    local n = 0
    for obj in k:each("configmaps", { namespace = "vantiq", labels = "page=yes", page_size = 4 }) do
      n = n + 1
      assert.are.equal("ConfigMap", obj.kind)
    end
    assert.are.equal(12, n)
  end)

  it("patches with each patch type", function()
    assert(k:create(configmap("patched", { a = "1", b = "2" })))
    assert.are.equal("9", k:patch("cm/patched", { data = { a = "9" } }, { namespace = "vantiq" }).data.a)
    local p = k:patch("cm", "patched", { { op = "remove", path = "/data/b" } }, { namespace = "vantiq", type = "json" })
    assert.is_nil(p.data.b)
    local d = assert(k:create { apiVersion = "apps/v1", kind = "Deployment", metadata = { name = "smp", namespace = "vantiq" },
      spec = { selector = { matchLabels = { app = "smp" } }, template = { metadata = { labels = { app = "smp" } },
        spec = { containers = { { name = "a", image = "a:1" }, { name = "b", image = "b:1" } } } } } })
    local patched = assert(k:patch("deploy/smp", { spec = { template = { spec = { containers = { { name = "b", image = "b:2" } } } } } },
      { namespace = "vantiq", type = "strategic" }))
    local images = {}
    for _, c in ipairs(patched.spec.template.spec.containers) do images[c.name] = c.image end
    assert.are.same({ a = "a:1", b = "b:2" }, images)
    assert.are.equal(2, patched.metadata.generation)
    assert.are.equal(1, d.metadata.generation)
  end)

  it("applies server-side, reports conflicts by manager and field, forces only when asked", function()
    assert(k:create(configmap("owned", { x = "1" })))
    assert(k:patch("cm/owned", { data = { x = "2" } }, { namespace = "vantiq", field_manager = "other-tool" }))
    local obj, e = k:apply(configmap("owned", { x = "3" }))
    assert.is_nil(obj)
    assert.are.equal(409, e.code)
    assert.matches('conflict with "other%-tool"', e.message)
    assert.are.equal(".data.x", e.conflicts[1].field)
    assert.are.equal("other-tool", e.conflicts[1].manager)
    obj = assert(k:apply(configmap("owned", { x = "3" }), { force = true }))
    assert.are.equal("3", obj.data.x)
    local managers = {}
    for _, m in ipairs(obj.metadata.managedFields) do managers[m.manager] = m.operation end
    assert.are.equal("Apply", managers.vqlua)
  end)

  it("deletes and waits for the object to be gone", function()
    assert(k:create(configmap("doomed")))
    assert(k:delete("cm", "doomed", { namespace = "vantiq", wait = true, timeout = 5 }))
    local _, e = k:get("cm", "doomed", { namespace = "vantiq" })
    assert.are.equal(404, e.code)
  end)

  it("scales through the scale subresource", function()
    assert(k:create { apiVersion = "apps/v1", kind = "Deployment", metadata = { name = "scaled", namespace = "vantiq" },
      spec = { replicas = 1, selector = { matchLabels = { app = "s" } }, template = { metadata = { labels = { app = "s" } },
        spec = { containers = { { name = "a", image = "a:1" } } } } } })
    local scale = assert(k:scale("deploy/scaled", 4, { namespace = "vantiq" }))
    assert.are.equal("Scale", scale.kind)
    assert.are.equal(4, k:get("deploy/scaled", { namespace = "vantiq" }).spec.replicas)
  end)

  it("restarts a rollout as kubectl does", function()
    local d = assert(k:rollout_restart("deploy/scaled", { namespace = "vantiq" }))
    assert.matches("^%d+%-%d+%-%d+T", d.spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"])
  end)

  it("creates a Job from a CronJob with kubectl's annotation and owner", function()
    local cj = assert(k:create { apiVersion = "batch/v1", kind = "CronJob", metadata = { name = "mongobackup", namespace = "vantiq" },
      spec = { schedule = "0 3 * * *", jobTemplate = { metadata = { labels = { app = "backup" } }, spec = { template = { spec = {
        restartPolicy = "Never", containers = { { name = "backup", image = "mongo:4" } } } } } } } })
    local job = assert(k:create_job_from_cronjob("mongobackup", { namespace = "vantiq" }))
    assert.matches("^mongobackup%-manual%-", job.metadata.name)
    assert.are.equal("manual", job.metadata.annotations["cronjob.kubernetes.io/instantiate"])
    assert.are.equal(cj.metadata.uid, job.metadata.ownerReferences[1].uid)
    assert.is_true(job.metadata.ownerReferences[1].controller)
    assert.are.equal("backup", job.metadata.labels.app)
    local other = assert(k:create_job_from_cronjob("mongobackup", { namespace = "vantiq" }))
    assert.are_not.equal(job.metadata.name, other.metadata.name)
  end)

  it("taints and untaints a node, keeping other taints", function()
    assert(k:create { apiVersion = "v1", kind = "Node", metadata = { name = "n1" },
      spec = { taints = { { key = "keep", value = "me", effect = "NoSchedule" } } } })
    assert(k:taint("n1", "vqlua.io/move", "x", "NoSchedule"))
    local _, e = k:taint("n1", "vqlua.io/move", "x", "NoSchedule")
    assert.are.equal("exists", e.code)
    local n = assert(k:untaint("n1", "vqlua.io/move", "NoSchedule"))
    assert.are.equal(1, #n.spec.taints)
    assert.are.equal("keep", n.spec.taints[1].key)
    assert(k:untaint("n1", "vqlua.io/move", "NoSchedule", { missing_ok = true }))
  end)

  it("watches: events as they happen, and resumes from a re-list after a 410", function()
    local events, state = k:watch("configmaps", { namespace = "vantiq", labels = "w=1" })
    vq.spawn(function()
      vq.sleep(0.02)
      k:create(configmap("w1", nil, { w = "1" }))
      k:patch("cm/w1", { data = { k = "changed" } }, { namespace = "vantiq" })
      k:delete("cm", "w1", { namespace = "vantiq" })
    end)
    local seen = {}
    for ev in events do
      seen[#seen + 1] = ev.type
      if ev.type == "DELETED" then break end
    end
    state.close()
    assert.are.same({ "ADDED", "MODIFIED", "DELETED" }, seen)
  end)

  it("re-lists when its resourceVersion has expired", function()
    local old_rv = sim.store.rv
    assert(k:create(configmap("before-expiry", nil, { x = "exp" })))
    -- push the change out of the server's window
    sim.store.window = 5
    for i = 1, 10 do k:create(configmap("filler" .. i)) end
    local events, state = k:watch("configmaps", { namespace = "vantiq", labels = "x=exp", resource_version = tostring(old_rv) })
    local ev = events()
    state.close()
    assert.are.equal("ADDED", ev.type)
    assert.are.equal("before-expiry", ev.object.metadata.name)
    sim.store.window = 10000
  end)

  it("waits for a condition with a watch, with a timeout", function()
    assert(k:create(configmap("waited", { ready = "no" })))
    vq.spawn(function() vq.sleep(0.05) k:patch("cm/waited", { data = { ready = "yes" } }, { namespace = "vantiq" }) end)
    local obj = assert(k:wait_for("cm", "waited", function(o) return o and o.data.ready == "yes" end, { namespace = "vantiq", timeout = 5 }))
    assert.are.equal("yes", obj.data.ready)
    local none, e = k:wait_for("cm", "waited", function(o) return o.data.ready == "never" end, { namespace = "vantiq", timeout = 0.1 })
    assert.is_nil(none)
    assert.are.equal("timeout", e.code)
  end)

  it("makes every change a server-side dry run when asked, and audits it", function()
    local dry = assert(kube.connect { kubeconfig = kc, dry_run = true })
    local obj = assert(dry:create(configmap("dry")))
    assert.are.equal("dry", obj.metadata.name)
    local _, e = k:get("cm", "dry", { namespace = "vantiq" })
    assert.are.equal(404, e.code)
  end)

  it("refuses a wrong token with 401", function()
    local f = assert(io.open(kc))
    local text = f:read("a")
    f:close()
    local at = text:find(sim.token, 1, true)
    local bad = cluster.file(sim, "bad-kubeconfig", text:sub(1, at - 1) .. "not-the-token" .. text:sub(at + #sim.token))
    local c = assert(kube.connect { kubeconfig = bad })
    local _, e = c:get("ns", "vantiq")
    assert.are.equal(401, e.code)
  end)

  it("reads the server version and judges the skew as kubectl documents it", function()
    assert.are.equal(sim.version, k:version().gitVersion)
    assert.is_true(kube.skew("v1.29.3", "v1.30.6"))
    assert.is_false(kube.skew("v1.28.0", "v1.30.6"))
  end)
end)
