-- The client's discovery: built-in kinds need no request; a CRD's resource is found by
-- any name kubectl accepts, with one discovery round shared by concurrent callers and
-- asked again when a name is still unknown (a CRD created since).
local vq = require "vq"
local kube = require "vq.kube"
local cluster = require "spec.support.cluster"

local sim, k

local function crd(plural, kind, opts)
  opts = opts or {}
  return {
    apiVersion = "apiextensions.k8s.io/v1", kind = "CustomResourceDefinition",
    metadata = { name = plural .. ".example.com" },
    spec = {
      group = "example.com", scope = opts.scope or "Namespaced",
      names = { plural = plural, singular = kind:lower(), kind = kind, shortNames = opts.short },
      versions = { { name = "v1", served = true, storage = true,
        schema = { openAPIV3Schema = { type = "object", ["x-kubernetes-preserve-unknown-fields"] = true } },
        subresources = opts.subresources } },
    },
  }
end

local function established(name)
  return assert(k:wait_for("crd", name, function(obj)
    for _, c in ipairs(obj and obj.status and obj.status.conditions or {}) do
      if c.type == "Established" then return c.status == "True" end
    end
    return false
  end, { timeout = 10 }))
end

-- Counts the client's requests whose path starts with /apis and has no resource in it.
local function count_discovery(client)
  local n = { value = 0 }
  local request = client.request
  client.request = function(self, o)
    if o.path == "/apis" or (o.path:match("^/apis/[^/]+/[^/]+$") and not o.verb) then n.value = n.value + 1 end
    return request(self, o)
  end
  return n
end

setup(function()
  sim = cluster.start { speed = 0.02, modules = { "sim.auth", "sim.core" } }
  k = assert(kube.connect { kubeconfig = sim.spec_kubeconfig, namespace = "default" })
  assert(k:create(crd("widgets", "Widget", { short = { "wd" }, subresources = { status = {} } })))
  established("widgets.example.com")
end)

teardown(function() cluster.finish(sim) end)

describe("discovery", function()
  it("finds a CRD's resource by every name kubectl accepts, in one round", function()
    local c = assert(kube.connect { kubeconfig = sim.spec_kubeconfig, namespace = "default" })
    local asked = count_discovery(c)
    for _, name in ipairs { "widgets", "widget", "Widget", "wd", "widgets.example.com" } do
      local t = assert(c:resource(name))
      assert.are.equal("widgets.example.com", t.key)
      assert.are.equal("example.com/v1", t.api_version)
      assert.is_true(t.namespaced)
    end
    assert.is_true(asked.value >= 1)
    local after_first = asked.value
    assert(c:resource("wd"))
    assert.are.equal(after_first, asked.value)
  end)

  it("shares one round between tasks that ask at once", function()
    local c = assert(kube.connect { kubeconfig = sim.spec_kubeconfig, namespace = "default" })
    local asked = count_discovery(c)
    local results = assert(vq.all {
      function() return c:resource("widgets") end,
      function() return c:resource("wd") end,
      function() return c:resource("Widget") end,
    })
    for _, r in ipairs(results) do assert.are.equal("widgets.example.com", r[1].key) end
    local one_round = asked.value
    assert(c:resource("widgets.example.com"))
    assert.are.equal(one_round, asked.value)
  end)

  it("asks again for a name it does not know: a CRD made since", function()
    assert(k:resource("widgets"))
    assert(k:create(crd("gadgets", "Gadget", { scope = "Cluster" })))
    established("gadgets.example.com")
    local t = assert(k:resource("gadgets"))
    assert.is_false(t.namespaced)
    local missing, e = k:resource("sprockets")
    assert.is_nil(missing)
    assert.are.equal("unknown_resource", e.code)
    assert.matches('resource type "sprockets"', e.message)
  end)

  it("takes every group from one aggregated answer where the server gives it", function()
    local c = assert(kube.connect { kubeconfig = sim.spec_kubeconfig, namespace = "default" })
    local asked = count_discovery(c)
    assert(c:resource("widgets"))
    assert.are.equal(1, asked.value)
  end)
end)

describe("discovery without the aggregated endpoint", function()
  local classic, c
  setup(function()
    classic = cluster.start { speed = 0.02, modules = { "sim.auth", "sim.core" }, aggregated_discovery = false }
    c = assert(kube.connect { kubeconfig = classic.spec_kubeconfig, namespace = "default" })
    assert(c:create(crd("widgets", "Widget", { short = { "wd" } })))
  end)
  teardown(function() cluster.finish(classic) end)

  it("asks every group at once", function()
    local asked = count_discovery(c)
    assert.are.equal("widgets.example.com", assert(c:resource("wd")).key)
    assert.is_true(asked.value > 10, "asked " .. asked.value)
  end)

  it("leaves out a group that does not answer, and names it", function()
    local request = c.request
    c.request = function(self, o)
      if o.path:match("^/apis/example%.com/") then
        return nil, vq.error(503, "the server is currently unable to handle the request")
      end
      return request(self, o)
    end
    local t, e = c:resource("gizmos")
    c.request = nil
    assert.is_nil(t)
    assert.are.equal("unknown_resource", e.code)
    assert.matches("example.com/v1: the server is currently unable", e.message)
    assert.are.equal("deployments.apps", assert(c:resource("deploy")).key)
  end)
end)

describe("custom resources", function()
  it("go where their apiVersion says, even with a built-in kind's name", function()
    local leases = crd("leases", "Lease")
    leases.metadata.name = "leases.example.com"
    assert(k:create(leases))
    established("leases.example.com")
    local obj = assert(k:create { apiVersion = "example.com/v1", kind = "Lease", metadata = { name = "mine" }, spec = { owner = "me" } })
    assert.are.equal("example.com/v1", obj.apiVersion)
    assert.is_nil(k:get("leases", "mine")) -- kubectl's "leases" stays the built-in one
    assert.are.equal("me", assert(k:get("leases.example.com", "mine")).spec.owner)
  end)

  it("are sent to the version their object names", function()
    local two = crd("dials", "Dial")
    two.spec.versions = {
      { name = "v1beta1", served = true, storage = false, schema = two.spec.versions[1].schema },
      { name = "v1", served = true, storage = true, schema = two.spec.versions[1].schema },
    }
    assert(k:create(two))
    established("dials.example.com")
    local old = assert(k:apply { apiVersion = "example.com/v1beta1", kind = "Dial", metadata = { name = "d1" }, spec = { turn = 1 } })
    assert.are.equal("example.com/v1beta1", old.apiVersion)
    assert.are.equal("example.com/v1", assert(k:get("dials", "d1")).apiVersion) -- the preferred version
    local none, e = k:create { apiVersion = "example.com/v9", kind = "Nope", metadata = { name = "x" } }
    assert.is_nil(none)
    assert.are.equal("unknown_resource", e.code)
    assert.matches('no matches for kind "Nope"', e.message)
  end)


  it("are created, read, listed, patched, applied, watched and deleted", function()
    local obj = assert(k:create { apiVersion = "example.com/v1", kind = "Widget",
      metadata = { name = "w1", labels = { tier = "gold" } }, spec = { size = 3 } })
    assert.are.equal("w1", obj.metadata.name)
    assert.are.equal(3, assert(k:get("widgets", "w1")).spec.size)
    assert.are.equal(1, #assert(k:list("wd", { labels = "tier=gold" })))
    assert(k:patch("widget/w1", { spec = { size = 4 } }, { type = "merge" }))
    assert.are.equal(4, assert(k:get("Widget", "w1")).spec.size)
    local applied = assert(k:apply { apiVersion = "example.com/v1", kind = "Widget",
      metadata = { name = "w2" }, spec = { size = 1 } })
    assert.are.equal("w2", applied.metadata.name)
    local seen = {}
    local watcher = vq.spawn(function()
      for ev in k:watch("widgets", { timeout = 5 }) do
        seen[#seen + 1] = ev.type .. " " .. ev.object.metadata.name
        if ev.type == "DELETED" then return end
      end
    end)
    vq.sleep(0.1)
    assert(k:delete("widgets", "w1", { wait = true, timeout = 10 }))
    watcher:wait(5)
    assert.are.same("DELETED w1", seen[#seen])
    assert.is_nil(k:get("widgets", "w1"))
  end)
end)

describe("a CRD established but not yet in discovery", function()
  local lagging, c
  setup(function()
    lagging = cluster.start { speed = 0.02, modules = { "sim.auth", "sim.core" }, crd_publish_delay = 30 }
    c = assert(kube.connect { kubeconfig = lagging.spec_kubeconfig, namespace = "default" })
  end)
  teardown(function() cluster.finish(lagging) end)

  it("is used at once, read from the CRD itself", function()
    local two = crd("dials", "Dial", { short = { "dl" } })
    two.spec.versions = {
      { name = "v1beta1", served = true, storage = false, schema = two.spec.versions[1].schema },
      { name = "v1", served = true, storage = true, schema = two.spec.versions[1].schema },
      { name = "v2alpha1", served = true, storage = false, schema = two.spec.versions[1].schema },
    }
    assert(c:create(two))
    local apis = assert(c:request { path = "/apis" })
    for _, g in ipairs(apis.groups or apis.items or {}) do assert.are_not.equal("example.com", g.name or g.metadata.name) end
    local t = assert(c:resource("dl"))
    assert.are.equal("dials.example.com", t.key)
    assert.are.equal("v1", t.version) -- GA before beta before alpha, as discovery would prefer
    assert(c:create { apiVersion = "example.com/v1beta1", kind = "Dial", metadata = { name = "d1" }, spec = { turn = 1 } })
    assert.are.equal(1, #assert(c:list("dials")))
  end)

  it("is not used while it is not established", function()
    -- a short name another CRD of the group holds: NamesAccepted False, never Established
    assert(c:create(crd("gears", "Gear", { short = { "dl" } })))
    local gears = assert(c:get("crd", "gears.example.com"))
    for _, cond in ipairs(gears.status.conditions) do
      if cond.type == "Established" then assert.are.equal("False", cond.status) end
    end
    local missing, e = c:resource("gears")
    assert.is_nil(missing)
    assert.are.equal("unknown_resource", e.code)
  end)
end)

