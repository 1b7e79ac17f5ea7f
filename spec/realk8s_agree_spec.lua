-- The simulator agrees with a real kube-apiserver: the same operations through the same
-- client against both (../shared/realk8s, v1.26, and a simulator reporting v1.26), with the
-- answers' shapes compared. Skipped, saying why, when no real apiserver runs (as in CI).
local vq = require "vq"
local kube = require "vq.kube"
local json = require "json"
local cluster = require "spec.support.cluster"

local STATE = os.getenv("REALK8S_STATE") or "/tmp/realk8s"
local real, simk, sim, skip_reason
local NS = "vqlua-agree-" .. ("%x"):format(math.random(0, 0xffffff))

setup(function()
  local f = io.open(STATE .. "/kubeconfig")
  if not f then skip_reason = "realk8s is not running (no " .. STATE .. "/kubeconfig)" return end
  f:close()
  real = kube.connect { kubeconfig = STATE .. "/kubeconfig", timeout = 5 }
  if not (real and real:version()) then skip_reason = "realk8s is not reachable" return end
  sim = cluster.start { version = "v1.26.0", speed = 0.02, modules = { "sim.auth", "sim.core", "sim.openapi", "sim.controllers" } }
  simk = assert(kube.connect { kubeconfig = sim.spec_kubeconfig })
  for _, k in ipairs { real, simk } do
    assert(k:create { apiVersion = "v1", kind = "Namespace", metadata = { name = NS } })
    if k == simk then
      assert(k:create { apiVersion = "v1", kind = "Node", metadata = { name = "node-1", labels = { ["kubernetes.io/hostname"] = "node-1" } } })
    end
  end
end)

local GROUP = NS .. ".example.com"

teardown(function()
  if real then
    real:delete("ns", NS)
    for _, plural in ipairs { "widgets", "leases" } do real:delete("crd", plural .. "." .. GROUP) end
  end
  if sim then cluster.finish(sim) end
end)

-- Run fn against both and hand the two results to check.
local function both(name, fn, check)
  it(name, function()
    if skip_reason then pending(skip_reason) return end
    local a = table.pack(fn(real))
    local b = table.pack(fn(simk))
    check(a, b)
  end)
end

local function keys(t)
  local out = {}
  for k in pairs(t or {}) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local function cm(name, data)
  return { apiVersion = "v1", kind = "ConfigMap", metadata = { name = name, namespace = NS }, data = data or { a = "1" } }
end

describe("the simulator against a real kube-apiserver 1.26", function()
  both("a missing object is the same 404 Status", function(k)
    return k:get("pods", "missing", { namespace = NS })
  end, function(a, b)
    assert.are.equal(a[2].code, b[2].code)
    assert.are.equal(a[2].reason, b[2].reason)
    assert.are.equal(a[2].message, b[2].message)
    assert.are.same(a[2].details, b[2].details)
  end)

  both("creating twice is the same 409 AlreadyExists", function(k)
    assert(k:create(cm("twice")))
    return k:create(cm("twice"))
  end, function(a, b)
    assert.are.equal(a[2].code, b[2].code)
    assert.are.equal(a[2].reason, b[2].reason)
    assert.are.equal(a[2].message, b[2].message)
  end)

  both("a list page carries the same metadata", function(k)
    -- the root CA publisher adds kube-root-ca.crt shortly after a namespace appears, on
    -- both: wait for it so that the pages count the same objects
    assert(k:wait_for("configmaps", "kube-root-ca.crt", function(o) return o ~= nil end,
      { namespace = NS, timeout = 30, allow_missing = true }))
    for i = 1, 3 do assert(k:create(cm("page-" .. i))) end
    return k:request { path = ("/api/v1/namespaces/%s/configmaps"):format(NS), query = { limit = 2 } }
  end, function(a, b)
    assert.are.same(keys(a[1].metadata), keys(b[1].metadata))
    assert.are.equal(a[1].metadata.remainingItemCount, b[1].metadata.remainingItemCount)
    assert.are.equal(#a[1].items, #b[1].items)
    assert.are.equal(a[1].kind, b[1].kind)
  end)

  both("a server-side apply conflict names the same manager and field", function(k)
    assert(k:apply(cm("ssa", { x = "1" }), { field_manager = "other" }))
    return k:apply(cm("ssa", { x = "2" }))
  end, function(a, b)
    assert.are.equal(a[2].code, b[2].code)
    assert.are.equal(a[2].message, b[2].message)
  end)

  both("a watch sees the same events for create, patch, delete", function(k)
    local events, state = k:watch("configmaps", { namespace = NS, labels = "w=1" })
    vq.spawn(function()
      vq.sleep(0.1)
      local o = cm("watched")
      o.metadata.labels = { w = "1" }
      k:create(o)
      k:patch("configmaps", "watched", { data = { a = "2" } }, { namespace = NS })
      k:delete("configmaps", "watched", { namespace = NS })
    end)
    local seen = {}
    vq.timeout(10, function()
      for ev in events do
        seen[#seen + 1] = ev.type
        if ev.type == "DELETED" then break end
      end
    end)
    state.close()
    return seen
  end, function(a, b)
    assert.are.same(a[1], b[1])
  end)

  both("the scale subresource has the same shape", function(k)
    assert(k:create { apiVersion = "apps/v1", kind = "Deployment", metadata = { name = "web", namespace = NS },
      spec = { replicas = 1, selector = { matchLabels = { app = "web" } },
        template = { metadata = { labels = { app = "web" } }, spec = { containers = { { name = "web", image = "nginx" } } } } } })
    return k:get("deploy", "web", { namespace = NS, subresource = "scale" })
  end, function(a, b)
    assert.are.equal(a[1].kind, b[1].kind)
    assert.are.equal(a[1].apiVersion, b[1].apiVersion)
    assert.are.same(keys(a[1].spec), keys(b[1].spec))
    assert.are.same(keys(a[1].status), keys(b[1].status))
  end)

  both("a rollout ends with the same verdict", function(k)
    return k:rollout_status("deploy/web", { namespace = NS, timeout = 60, on_progress = function() end })
  end, function(a, b)
    assert.are.equal(a[1], b[1])
  end)

  both("kubectl's Table for pods has the same columns", function(k)
    return k:request { path = ("/api/v1/namespaces/%s/pods"):format(NS),
      accept = "application/json;as=Table;v=v1;g=meta.k8s.io" }
  end, function(a, b)
    local function names(t)
      local out = {}
      for i, c in ipairs(t.columnDefinitions) do out[i] = c.name .. "/" .. c.priority end
      return out
    end
    assert.are.same(names(a[1]), names(b[1]))
  end)

  -- ---- custom resources ----

  local function crd(plural, kind, name)
    return { apiVersion = "apiextensions.k8s.io/v1", kind = "CustomResourceDefinition",
      metadata = { name = name or (plural .. "." .. GROUP) },
      spec = { group = GROUP, scope = "Namespaced",
        names = { plural = plural, singular = kind:lower(), kind = kind, shortNames = { plural:sub(1, 3) .. "x" } },
        versions = { { name = "v1", served = true, storage = true,
          schema = { openAPIV3Schema = { type = "object", properties = {
            spec = { type = "object", properties = { size = { type = "integer", default = 1 } } } } } },
          subresources = { status = setmetatable({}, json.object_mt) } } } } }
  end

  local function established(k, name)
    return k:wait_for("crd", name, function(obj)
      local conds = obj and obj.status and obj.status.conditions -- null until the controller writes it
      for _, c in ipairs(type(conds) == "table" and conds or {}) do
        if c.type == "Established" and c.status == "True" then return true end
      end
    end, { timeout = 30 })
  end

  both("a CRD with the wrong name is the same 422", function(k)
    return k:create(crd("widgets", "Widget", "wrong.example.com"))
  end, function(a, b)
    assert.are.equal(422, a[2].code)
    assert.are.equal(a[2].code, b[2].code)
    assert.are.equal(a[2].message, b[2].message)
  end)

  both("a CRD's resource is discovered with the same names", function(k)
    assert(k:create(crd("widgets", "Widget")))
    assert(established(k, "widgets." .. GROUP))
    local t = assert(k:resource("widx"))
    local list = assert(k:request { path = "/apis/" .. GROUP .. "/v1" })
    return t, list
  end, function(a, b)
    assert.are.same({ a[1].key, a[1].kind, a[1].singular, a[1].namespaced }, { b[1].key, b[1].kind, b[1].singular, b[1].namespaced })
    local function entries(list)
      local out = {}
      for _, r in ipairs(list.resources) do
        out[#out + 1] = r.name .. " " .. r.kind .. " " .. table.concat(r.verbs, ",") .. " " .. table.concat(r.shortNames or {}, ",")
      end
      table.sort(out)
      return out
    end
    assert.are.same(entries(a[2]), entries(b[2]))
  end)

  both("a custom resource is pruned, defaulted and patched alike", function(k)
    local made = assert(k:create { apiVersion = GROUP .. "/v1", kind = "Widget",
      metadata = { name = "w1", namespace = NS }, spec = { colour = "red" }, status = { ok = true } })
    local merged = assert(k:patch("widgets/w1", { spec = { size = 3 } }, { namespace = NS, type = "merge" }))
    local _, smp = k:patch("widgets/w1", { spec = { size = 4 } }, { namespace = NS, type = "strategic" })
    return made, merged, smp
  end, function(a, b)
    assert.are.same(a[1].spec, b[1].spec) -- colour pruned, size defaulted
    assert.are.equal(a[1].status == nil, b[1].status == nil)
    assert.are.equal(a[1].metadata.generation, b[1].metadata.generation)
    assert.are.same(a[2].spec, b[2].spec)
    assert.are.equal(a[2].metadata.generation, b[2].metadata.generation)
    assert.are.equal(415, a[3].code)
    assert.are.equal(a[3].code, b[3].code)
    assert.are.equal(a[3].message, b[3].message)
  end)

  both("an object of a CRD whose kind is also built in goes to its own group", function(k)
    assert(k:create(crd("leases", "Lease")))
    assert(established(k, "leases." .. GROUP))
    local mine = assert(k:create { apiVersion = GROUP .. "/v1", kind = "Lease", metadata = { name = "l1", namespace = NS } })
    local builtin = k:get("leases", "l1", { namespace = NS })
    return mine.apiVersion, builtin
  end, function(a, b)
    assert.are.equal(a[1], b[1])
    assert.is_nil(a[2])
    assert.is_nil(b[2])
  end)
end)
