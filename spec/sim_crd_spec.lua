-- Custom resources: a CustomResourceDefinition makes its simulator (and no other) serve a
-- new type as the real apiserver does: established status, discovery, the REST verbs with
-- selectors, watch, patch types (no strategic merge), server-side apply, dryRun, the status
-- and scale subresources, tables with the CRD's printer columns, pruning, and deletion with
-- the CRD. Real kubectl 1.30 (and 1.27, 1.33 when installed) gets, applies and deletes them.
local vq = require "vq"
local json = require "json"
local http = require "vq.http"
local kube = require "vq.kube"
local cluster = require "spec.support.cluster"

local CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
local TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"

local function preserve() return { type = "object", ["x-kubernetes-preserve-unknown-fields"] = true } end

-- Namespaced, with status and scale subresources and printer columns.
local function widgets_crd()
  return {
    apiVersion = "apiextensions.k8s.io/v1", kind = "CustomResourceDefinition",
    metadata = { name = "widgets.example.com" },
    spec = {
      group = "example.com", scope = "Namespaced",
      names = { plural = "widgets", kind = "Widget", shortNames = { "wd" }, categories = { "all" } },
      versions = { {
        name = "v1", served = true, storage = true,
        schema = { openAPIV3Schema = { type = "object", properties = { spec = preserve(), status = preserve() } } },
        subresources = { status = json.decode("{}"), scale = { specReplicasPath = ".spec.replicas",
          statusReplicasPath = ".status.replicas", labelSelectorPath = ".status.selector" } },
        additionalPrinterColumns = {
          { name = "Replicas", type = "integer", jsonPath = ".spec.replicas" },
          { name = "Color", type = "string", jsonPath = ".spec.color" },
          { name = "Ready", type = "string", jsonPath = '.status.conditions[?(@.type=="Ready")].status' },
          { name = "Age", type = "date", jsonPath = ".metadata.creationTimestamp" },
        },
      } },
    },
  }
end

-- Cluster-scoped, three served versions (storage v1beta1), a schema without
-- x-kubernetes-preserve-unknown-fields (pruned, defaulted), no subresources or columns.
local function gadgets_crd()
  local function version(name, storage)
    return { name = name, served = true, storage = storage, schema = { openAPIV3Schema = { type = "object", properties = {
      spec = { type = "object", properties = { size = { type = "integer", default = 3 }, label = { type = "string" },
        extra = { type = "object", additionalProperties = { type = "string" } } } } } } } }
  end
  return {
    apiVersion = "apiextensions.k8s.io/v1", kind = "CustomResourceDefinition",
    metadata = { name = "gadgets.example.org" },
    spec = { group = "example.org", scope = "Cluster", names = { plural = "gadgets", kind = "Gadget" },
             versions = { version("v1alpha1", false), version("v1beta1", true), version("v1", false) } },
  }
end

-- ---- HTTP against a simulator ----

local function client(sim)
  local c = {}
  function c.req(method, path, body, headers)
    local h = { Authorization = "Bearer " .. sim.token }
    for k, v in pairs(headers or {}) do h[k] = v end
    if body and not h["Content-Type"] then h["Content-Type"] = "application/json" end
    if type(body) == "table" then body = json.encode(body) end
    return assert(http.request { method = method, url = sim.url .. path, headers = h, body = body, retries = 0 })
  end
  function c.ok(method, path, body, headers, want)
    local r = c.req(method, path, body, headers)
    assert(r.status == (want or 200), ("%s %s: %d %s"):format(method, path, r.status, r.body))
    return r.json
  end
  return c
end

local function condition(obj, typ)
  for _, c in ipairs(obj.status and obj.status.conditions or {}) do
    if c.type == typ then return c end
  end
end

local function start(opts)
  opts = opts or {}
  opts.speed = opts.speed or 0.02
  opts.modules = opts.modules or { "sim.auth", "sim.core", "sim.openapi" }
  local s = cluster.start(opts)
  return s, client(s)
end

local function resource_named(list, name)
  for _, r in ipairs(list.resources) do
    if r.name == name then return r end
  end
end

local WIDGETS = "/apis/example.com/v1/namespaces/default/widgets"

local function widget(name, extra)
  local w = { apiVersion = "example.com/v1", kind = "Widget", metadata = { name = name }, spec = { replicas = 2, color = "blue" } }
  for k, v in pairs(extra or {}) do w[k] = v end
  return w
end

describe("a CustomResourceDefinition", function()
  local sim, c

  setup(function()
    sim, c = start()
    c.ok("POST", CRD_PATH, widgets_crd(), nil, 201)
    c.ok("POST", CRD_PATH, gadgets_crd(), nil, 201)
  end)
  teardown(function() cluster.finish(sim) end)

  it("is established with its names accepted, as the apiextensions controllers set them", function()
    local crd = c.ok("GET", CRD_PATH .. "/widgets.example.com")
    assert.are.same({ plural = "widgets", singular = "widget", kind = "Widget", listKind = "WidgetList",
      shortNames = { "wd" }, categories = { "all" } }, crd.status.acceptedNames)
    assert.are.same({ "True", "NoConflicts" }, { condition(crd, "NamesAccepted").status, condition(crd, "NamesAccepted").reason })
    assert.are.same({ "True", "InitialNamesAccepted" }, { condition(crd, "Established").status, condition(crd, "Established").reason })
    assert.are.same({ "v1" }, crd.status.storedVersions)
    assert.are.same({ "widget", "WidgetList", "None" }, { crd.spec.names.singular, crd.spec.names.listKind, crd.spec.conversion.strategy })
    assert.are.same({ "v1beta1" }, c.ok("GET", CRD_PATH .. "/gadgets.example.org").status.storedVersions)
  end)

  it("must be named <plural>.<group> (422)", function()
    local bad = widgets_crd()
    bad.metadata.name = "widget.example.com"
    local r = c.req("POST", CRD_PATH, bad)
    assert.are.equal(422, r.status)
    assert.are.equal('CustomResourceDefinition.apiextensions.k8s.io "widget.example.com" is invalid: metadata.name: ' ..
      'Invalid value: "widget.example.com": must be spec.names.plural+"."+spec.group', r.json.message)
    assert.are.same({ "Invalid", "metadata.name" }, { r.json.reason, r.json.details.causes[1].field })
    local two = gadgets_crd()
    two.metadata.name = "two.example.org"
    two.spec.versions[1].storage = true
    r = c.req("POST", CRD_PATH, two)
    assert.are.equal(422, r.status)
    assert.matches("must have exactly one version marked as storage version", r.json.message, 1, true)
    assert.are.equal(2, #r.json.details.causes)
  end)

  it("shows in discovery: the group, its preferred version, the resource and its subresources", function()
    local groups = c.ok("GET", "/apis").groups
    local found = {}
    for _, g in ipairs(groups) do found[g.name] = g end
    assert.are.equal("example.com/v1", found["example.com"].preferredVersion.groupVersion)
    -- kube-aware version order: v1 before v1beta1 (the storage version) before v1alpha1
    assert.are.same({ "v1", "v1beta1", "v1alpha1" }, { found["example.org"].versions[1].version,
      found["example.org"].versions[2].version, found["example.org"].versions[3].version })
    assert.are.equal("example.org/v1", found["example.org"].preferredVersion.groupVersion)
    assert.are.equal("example.org", groups[#groups].name)
    local g = c.ok("GET", "/apis/example.com")
    assert.are.same({ "APIGroup", "example.com/v1" }, { g.kind, g.preferredVersion.groupVersion })
    local list = c.ok("GET", "/apis/example.com/v1")
    local w = resource_named(list, "widgets")
    assert.are.same({ kind = "Widget", singularName = "widget", namespaced = true, shortNames = { "wd" }, categories = { "all" },
      verbs = { "delete", "deletecollection", "get", "list", "patch", "create", "update", "watch" } },
      { kind = w.kind, singularName = w.singularName, namespaced = w.namespaced, shortNames = w.shortNames,
        categories = w.categories, verbs = w.verbs })
    assert.are.same({ "Widget", "get,patch,update" }, { resource_named(list, "widgets/status").kind,
      table.concat(resource_named(list, "widgets/status").verbs, ",") })
    local scale = resource_named(list, "widgets/scale")
    assert.are.same({ "Scale", "autoscaling", "v1" }, { scale.kind, scale.group, scale.version })
    local gadgets = resource_named(c.ok("GET", "/apis/example.org/v1alpha1"), "gadgets")
    assert.are.same({ false, "gadget" }, { gadgets.namespaced, gadgets.singularName })
    assert.is_nil(resource_named(c.ok("GET", "/apis/example.org/v1"), "gadgets/status"))
  end)

  it("belongs to its simulator only", function()
    local other, oc = start()
    finally(function() cluster.finish(other) end)
    assert.are.equal(404, oc.req("GET", "/apis/example.com/v1").status)
    assert.are.equal(404, oc.req("GET", WIDGETS).status)
    assert.is_nil(other:type("widgets.example.com"))
    assert.are.equal("Widget", sim:type("widgets.example.com").kind)
  end)

  it("serves creating, reading, listing with selectors, replacing and deleting a namespaced resource", function()
    local w = c.ok("POST", WIDGETS, widget("crud-a", { metadata = { name = "crud-a", labels = { tier = "a" } } }), nil, 201)
    assert.are.same({ "default", 1, "example.com/v1" }, { w.metadata.namespace, w.metadata.generation, w.apiVersion })
    c.ok("POST", WIDGETS, widget("crud-b", { metadata = { name = "crud-b", labels = { tier = "b" } } }), nil, 201)
    assert.are.equal(409, c.req("POST", WIDGETS, widget("crud-a")).status)
    local r = c.req("POST", WIDGETS, widget("crud-c", { apiVersion = "other.example.com/v1" }))
    assert.are.same({ 400, "the API version in the data (other.example.com/v1) does not match the expected API version (example.com/v1)" },
      { r.status, r.json.message })
    local list = c.ok("GET", WIDGETS .. "?labelSelector=tier%3Db")
    assert.are.same({ "WidgetList", 1, "crud-b" }, { list.kind, #list.items, list.items[1].metadata.name })
    list = c.ok("GET", "/apis/example.com/v1/widgets?fieldSelector=metadata.name%3Dcrud-a")
    assert.are.same({ 1, "crud-a" }, { #list.items, list.items[1].metadata.name })
    list = c.ok("GET", "/apis/example.com/v1/widgets?fieldSelector=metadata.namespace%3Dother")
    assert.are.equal(0, #list.items)
    assert.are.equal(400, c.req("GET", WIDGETS .. "?fieldSelector=spec.color%3Dblue").status)
    local got = c.ok("GET", WIDGETS .. "/crud-a")
    got.spec.color = "red"
    local put = c.ok("PUT", WIDGETS .. "/crud-a", got)
    assert.are.same({ "red", 2 }, { put.spec.color, put.metadata.generation })
    assert.are.equal(409, c.req("PUT", WIDGETS .. "/crud-a", got).status) -- stale resourceVersion
    local dry = c.ok("POST", WIDGETS .. "?dryRun=All", widget("crud-dry"), nil, 201)
    assert.are.equal("crud-dry", dry.metadata.name)
    assert.are.equal(404, c.req("GET", WIDGETS .. "/crud-dry").status)
    local del = c.ok("DELETE", WIDGETS .. "/crud-a")
    assert.are.same({ "Success", "widgets", "example.com" }, { del.status, del.details.kind, del.details.group })
    r = c.req("GET", WIDGETS .. "/crud-a")
    assert.are.same({ 404, 'widgets.example.com "crud-a" not found' }, { r.status, r.json.message })
    c.ok("DELETE", WIDGETS .. "/crud-b")
  end)

  it("streams watch events", function()
    local head = assert(http.stream { url = sim.url .. WIDGETS .. "?watch=true&timeoutSeconds=5",
      headers = { Authorization = "Bearer " .. sim.token } })
    local lines = http.lines(head.stream)
    c.ok("POST", WIDGETS, widget("watched"), nil, 201)
    c.ok("PATCH", WIDGETS .. "/watched", { spec = { color = "green" } }, { ["Content-Type"] = "application/merge-patch+json" })
    c.ok("DELETE", WIDGETS .. "/watched")
    local seen = {}
    for line in lines do
      local ev = json.decode(line)
      seen[#seen + 1] = ev.type .. ":" .. ev.object.metadata.name .. ":" .. tostring(ev.object.spec.color)
      if ev.type == "DELETED" then break end
    end
    head.stream:close()
    assert.are.same({ "ADDED:watched:blue", "MODIFIED:watched:green", "DELETED:watched:green" }, seen)
  end)

  it("serves a cluster-scoped resource at each served version, pruned and defaulted by its schema", function()
    local path = "/apis/example.org/v1beta1/gadgets"
    local head = assert(http.stream { url = sim.url .. "/apis/example.org/v1alpha1/gadgets?watch=true&timeoutSeconds=5",
      headers = { Authorization = "Bearer " .. sim.token } })
    local g = c.ok("POST", path, { apiVersion = "example.org/v1beta1", kind = "Gadget", metadata = { name = "g1" },
      spec = { label = "x", junk = true, extra = { a = "b" } }, top = 1 }, nil, 201)
    assert.is_nil(g.metadata.namespace)
    assert.are.same({ label = "x", size = 3, extra = { a = "b" } }, g.spec)
    assert.is_nil(g.top)
    local ev = json.decode(http.lines(head.stream)())
    head.stream:close()
    assert.are.same({ "ADDED", "g1", "example.org/v1alpha1" }, { ev.type, ev.object.metadata.name, ev.object.apiVersion })
    assert.are.equal(404, c.req("GET", "/apis/example.org/v1beta1/namespaces/default/gadgets/g1").status)
    local alpha = c.ok("GET", "/apis/example.org/v1alpha1/gadgets/g1")
    assert.are.same({ "example.org/v1alpha1", "g1" }, { alpha.apiVersion, alpha.metadata.name })
    local list = c.ok("GET", "/apis/example.org/v1/gadgets")
    assert.are.same({ "GadgetList", "example.org/v1", "example.org/v1" }, { list.kind, list.apiVersion, list.items[1].apiVersion })
    c.ok("DELETE", "/apis/example.org/v1/gadgets/g1")
    assert.are.equal(0, #c.ok("GET", path).items)
  end)

  it("keeps status to its subresource and bumps generation on spec changes only", function()
    local w = c.ok("POST", WIDGETS, widget("st", { status = { replicas = 9 } }), nil, 201)
    assert.is_nil(w.status)
    local merge = { ["Content-Type"] = "application/merge-patch+json" }
    w = c.ok("PATCH", WIDGETS .. "/st", { status = { replicas = 1 } }, merge)
    assert.are.same({ 1 }, { w.metadata.generation, w.status })
    w = c.ok("PATCH", WIDGETS .. "/st/status", { spec = { color = "pink" }, status = { replicas = 1, selector = "app=st" } }, merge)
    assert.are.same({ "blue", 1, 1 }, { w.spec.color, w.status.replicas, w.metadata.generation })
    w.status.conditions = { { type = "Ready", status = "True" } }
    w = c.ok("PUT", WIDGETS .. "/st/status", w)
    assert.are.equal("True", w.status.conditions[1].status)
    w = c.ok("PATCH", WIDGETS .. "/st", { spec = { color = "pink" } }, merge)
    assert.are.same({ "pink", 2, "True" }, { w.spec.color, w.metadata.generation, w.status.conditions[1].status })
    -- gadgets have no status subresource: no /status, and every change but metadata bumps generation
    c.ok("POST", "/apis/example.org/v1/gadgets", { apiVersion = "example.org/v1", kind = "Gadget", metadata = { name = "gst" } }, nil, 201)
    assert.are.equal(404, c.req("GET", "/apis/example.org/v1/gadgets/gst/status").status)
    assert.are.equal(404, c.req("GET", "/apis/example.org/v1/gadgets/gst/scale").status)
    local g = c.ok("PATCH", "/apis/example.org/v1/gadgets/gst", { metadata = { labels = { a = "b" } } }, merge)
    assert.are.equal(1, g.metadata.generation)
    g = c.ok("PATCH", "/apis/example.org/v1/gadgets/gst", { spec = { size = 5 } }, merge)
    assert.are.equal(2, g.metadata.generation)
  end)

  it("serves autoscaling/v1 Scale from the CRD's replica paths", function()
    c.ok("POST", WIDGETS, widget("sc", { spec = { replicas = 3 } }), nil, 201)
    c.ok("PATCH", WIDGETS .. "/sc/status", { status = { replicas = 2, selector = "app=sc" } }, { ["Content-Type"] = "application/merge-patch+json" })
    local s = c.ok("GET", WIDGETS .. "/sc/scale")
    assert.are.same({ "Scale", "autoscaling/v1", 3, 2, "app=sc" }, { s.kind, s.apiVersion, s.spec.replicas, s.status.replicas, s.status.selector })
    s = c.ok("PATCH", WIDGETS .. "/sc/scale", { spec = { replicas = 5 } }, { ["Content-Type"] = "application/merge-patch+json" })
    assert.are.equal(5, s.spec.replicas)
    s.spec.replicas = 6
    c.ok("PUT", WIDGETS .. "/sc/scale", s)
    local w = c.ok("GET", WIDGETS .. "/sc")
    assert.are.same({ 6, 3 }, { w.spec.replicas, w.metadata.generation })
    assert.are.equal(422, c.req("PATCH", WIDGETS .. "/sc/scale", { spec = { replicas = -1 } }, { ["Content-Type"] = "application/merge-patch+json" }).status)
  end)

  it("takes merge and JSON patches and server-side apply, and refuses strategic merge (415)", function()
    c.ok("POST", WIDGETS, widget("p"), nil, 201)
    local w = c.ok("PATCH", WIDGETS .. "/p", '[{"op":"replace","path":"/spec/color","value":"teal"}]',
      { ["Content-Type"] = "application/json-patch+json" })
    assert.are.equal("teal", w.spec.color)
    local r = c.req("PATCH", WIDGETS .. "/p", { spec = { color = "x" } }, { ["Content-Type"] = "application/strategic-merge-patch+json" })
    assert.are.same({ 415, "UnsupportedMediaType" }, { r.status, r.json.reason })
    assert.are.equal("the body of the request was in an unknown format - accepted media types include: " ..
      "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml", r.json.message)
    local apply = { ["Content-Type"] = "application/apply-patch+yaml" }
    local body = json.encode(widget("applied", { spec = { replicas = 1, color = "gold" } }))
    w = c.ok("PATCH", WIDGETS .. "/applied?fieldManager=spec", body, apply, 201)
    assert.are.same({ "gold", "spec", "Apply" }, { w.spec.color, w.metadata.managedFields[1].manager, w.metadata.managedFields[1].operation })
    body = json.encode(widget("applied", { spec = { replicas = 1, color = "silver" } }))
    w = c.ok("PATCH", WIDGETS .. "/applied?fieldManager=spec", body, apply)
    assert.are.same({ "silver", 2 }, { w.spec.color, w.metadata.generation })
    r = c.req("PATCH", WIDGETS .. "/applied?fieldManager=other", json.encode(widget("applied", { spec = { color = "lead" } })), apply)
    assert.are.equal(409, r.status)
    w = c.ok("PATCH", WIDGETS .. "/applied?fieldManager=spec&dryRun=All",
      json.encode(widget("applied", { spec = { replicas = 1, color = "dry" } })), apply)
    assert.are.equal("dry", w.spec.color)
    assert.are.equal("silver", c.ok("GET", WIDGETS .. "/applied").spec.color)
  end)

  it("prints tables with the CRD's columns, or the age alone", function()
    c.ok("POST", WIDGETS, widget("tbl", { spec = { replicas = 4, color = "plum" } }), nil, 201)
    c.ok("PATCH", WIDGETS .. "/tbl/status", { status = { conditions = { { type = "Other", status = "False" }, { type = "Ready", status = "True" } } } },
      { ["Content-Type"] = "application/merge-patch+json" })
    local t = c.ok("GET", WIDGETS .. "?fieldSelector=metadata.name%3Dtbl", nil, { Accept = TABLE })
    local names = {}
    for i, col in ipairs(t.columnDefinitions) do names[i] = col.name .. ":" .. col.type end
    assert.are.same({ "Name:string", "Replicas:integer", "Color:string", "Ready:string", "Age:date" }, names)
    local cells = t.rows[1].cells
    assert.are.same({ "tbl", 4, "plum", "True" }, { cells[1], cells[2], cells[3], cells[4] })
    assert.matches("^%d+s$", cells[5])
    assert.are.equal("PartialObjectMetadata", t.rows[1].object.kind)
    c.ok("POST", "/apis/example.org/v1/gadgets", { apiVersion = "example.org/v1", kind = "Gadget", metadata = { name = "gt" } }, nil, 201)
    t = c.ok("GET", "/apis/example.org/v1/gadgets/gt", nil, { Accept = TABLE })
    assert.are.same({ "Name", "Age" }, { t.columnDefinitions[1].name, t.columnDefinitions[2].name })
    assert.are.equal("gt", t.rows[1].cells[1])
  end)

  it("lists its resources' PATCH operations and schemas in the OpenAPI documents", function()
    local root = c.ok("GET", "/openapi/v3")
    local url = assert(root.paths["apis/example.com/v1"]).serverRelativeURL
    local doc = c.ok("GET", url)
    local op = doc.paths["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"].patch
    assert.are.same({ group = "example.com", version = "v1", kind = "Widget" }, op["x-kubernetes-group-version-kind"])
    assert.is_table(doc.components.schemas["com.example.v1.Widget"])
    local v2 = c.ok("GET", "/openapi/v2")
    local p2 = v2.paths["/apis/example.org/v1beta1/gadgets/{name}"].patch
    assert.are.same({ "application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml" }, p2.consumes)
  end)

  it("is served through the kube client", function()
    local k = assert(kube.connect { kubeconfig = sim.spec_kubeconfig, namespace = "default" })
    assert(k:create(widget("kc")))
    assert.are.equal("blue", assert(k:get("wd", "kc")).spec.color)
    assert(k:patch("widgets", "kc", { spec = { color = "mint" } }))
    local names = {}
    for _, w in ipairs(assert(k:list("widget"))) do names[w.metadata.name] = w.spec.color end
    assert.are.equal("mint", names.kc)
    assert(k:apply(widget("kc", { spec = { replicas = 2, color = "sand" } }), { force = true }))
    assert.are.equal("sand", assert(k:get("widgets.example.com", "kc")).spec.color)
    assert(k:delete("wd", "kc"))
    local _, e = k:get("wd", "kc")
    assert.are.equal(404, e.code)
  end)
end)

describe("names a CRD cannot have", function()
  it("are not accepted while another type of the group holds them, and the type is not served", function()
    local sim, c = start()
    finally(function() cluster.finish(sim) end)
    c.ok("POST", CRD_PATH, widgets_crd(), nil, 201)
    local things = widgets_crd()
    things.metadata.name = "things.example.com"
    things.spec.names = { plural = "things", kind = "Thing", shortNames = { "wd" } }
    local crd = c.ok("POST", CRD_PATH, things, nil, 201)
    local accepted = condition(crd, "NamesAccepted")
    assert.are.same({ "False", "ShortNamesConflict", '"wd" is already in use' }, { accepted.status, accepted.reason, accepted.message })
    assert.are.same({ "False", "NotAccepted" }, { condition(crd, "Established").status, condition(crd, "Established").reason })
    assert.is_nil(resource_named(c.ok("GET", "/apis/example.com/v1"), "things"))
    assert.are.equal(404, c.req("GET", "/apis/example.com/v1/namespaces/default/things").status)
    -- the names are free once the widgets' CRD is gone
    c.ok("DELETE", CRD_PATH .. "/widgets.example.com")
    cluster.eventually(function() return condition(c.ok("GET", CRD_PATH .. "/things.example.com"), "Established").status == "True" end, 10,
      "things to be established")
    assert.are.equal("wd", resource_named(c.ok("GET", "/apis/example.com/v1"), "things").shortNames[1])
  end)

  it("include a built-in type's in its group", function()
    local sim, c = start()
    finally(function() cluster.finish(sim) end)
    local crd = widgets_crd()
    crd.metadata.name = "storageclasses.storage.k8s.io"
    crd.spec.group, crd.spec.names = "storage.k8s.io", { plural = "storageclasses", kind = "StorageClass2" }
    -- a group of the Kubernetes project's needs its API approved
    local r = c.req("POST", CRD_PATH, crd)
    assert.are.same({ 422, "metadata.annotations[api-approved.kubernetes.io]" }, { r.status, r.json.details.causes[1].field })
    crd.metadata.annotations = { ["api-approved.kubernetes.io"] = "unapproved, testing only" }
    crd = c.ok("POST", CRD_PATH, crd, nil, 201)
    assert.are.same({ "False", "PluralConflict" }, { condition(crd, "NamesAccepted").status, condition(crd, "NamesAccepted").reason })
    assert.are.equal("StorageClass", resource_named(c.ok("GET", "/apis/storage.k8s.io/v1"), "storageclasses").kind)
  end)
end)

describe("deleting a CRD", function()
  it("deletes its resources, ends their watches and takes the type out of discovery", function()
    local sim, c = start()
    finally(function() cluster.finish(sim) end)
    c.ok("POST", CRD_PATH, widgets_crd(), nil, 201)
    c.ok("POST", WIDGETS, widget("doomed"), nil, 201)
    c.ok("POST", "/api/v1/namespaces", { metadata = { name = "other" } }, nil, 201)
    c.ok("POST", "/apis/example.com/v1/namespaces/other/widgets", widget("doomed-too"), nil, 201)
    local head = assert(http.stream { url = sim.url .. WIDGETS .. "?watch=true&resourceVersion=" .. sim.store.rv,
      headers = { Authorization = "Bearer " .. sim.token } })
    c.ok("DELETE", CRD_PATH .. "/widgets.example.com")
    local seen = {}
    for line in http.lines(head.stream) do
      local ev = json.decode(line)
      seen[#seen + 1] = ev.type .. ":" .. ev.object.metadata.name
    end
    assert.are.same({ "DELETED:doomed" }, seen)
    assert.are.equal(0, sim.store:count("widgets.example.com"))
    assert.are.equal(404, c.req("GET", WIDGETS .. "/doomed").status)
    assert.are.equal(404, c.req("GET", "/apis/example.com/v1").status)
    assert.are.equal(404, c.req("GET", "/apis/example.com").status)
    for _, g in ipairs(c.ok("GET", "/apis").groups) do assert.are_not.equal("example.com", g.name) end
    -- created again, it starts empty
    c.ok("POST", CRD_PATH, widgets_crd(), nil, 201)
    assert.are.equal(0, #c.ok("GET", "/apis/example.com/v1/widgets").items)
  end)

  it("and deleting a namespace deletes the namespace's custom resources", function()
    local sim, c = start()
    finally(function() cluster.finish(sim) end)
    c.ok("POST", CRD_PATH, widgets_crd(), nil, 201)
    c.ok("POST", "/api/v1/namespaces", { metadata = { name = "gone" } }, nil, 201)
    c.ok("POST", "/apis/example.com/v1/namespaces/gone/widgets", widget("w"), nil, 201)
    c.ok("POST", WIDGETS, widget("kept"), nil, 201)
    c.ok("DELETE", "/api/v1/namespaces/gone")
    cluster.eventually(function() return sim.store:count("widgets.example.com") == 1 end, 10, "the namespace's widgets to go")
    assert.are.equal(200, c.req("GET", WIDGETS .. "/kept").status)
  end)
end)

-- ---- real kubectl ----

local BIN = "/usr/lib/google-cloud-sdk/bin/kubectl."

local CRD_YAML = [[
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    shortNames: [wd]
    categories: [all]
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-preserve-unknown-fields: true
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
    additionalPrinterColumns:
    - name: Replicas
      type: integer
      jsonPath: .spec.replicas
    - name: Color
      type: string
      jsonPath: .spec.color
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
]]

local function widget_yaml(color)
  return ([[
apiVersion: example.com/v1
kind: Widget
metadata:
  name: w1
  namespace: default
spec:
  replicas: 2
  color: %s
]]):format(color)
end

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() end
  return f ~= nil
end

local function kubectl_suite(minor, server_version)
  local bin = BIN .. minor
  if minor ~= "1.30" and not exists(bin) then return end
  describe("kubectl " .. minor, function()
    local sim

    local function kubectl(args) return cluster.run_kubectl(sim, args, { bin = bin, request_timeout = "20s" }) end
    local function ok(args) return (cluster.kubectl(sim, args, { bin = bin })) end

    setup(function() sim = start { version = server_version } end)
    teardown(function() cluster.finish(sim) end)

    it("applies a CRD and gets, applies, scales and deletes its resources", function()
      local crd_file = cluster.file(sim, "crd.yaml", CRD_YAML)
      assert.are.equal("customresourcedefinition.apiextensions.k8s.io/widgets.example.com created\n", ok { "apply", "-f", crd_file })
      assert.are.equal("customresourcedefinition.apiextensions.k8s.io/widgets.example.com condition met\n",
        ok { "wait", "--for", "condition=established", "crd/widgets.example.com", "--timeout=10s" })
      local r = kubectl { "get", "widgets", "-n", "default" }
      assert.are.same({ 0, "No resources found in default namespace.\n" }, { r.status, r.stderr })
      local file = cluster.file(sim, "w.yaml", widget_yaml("blue"))
      assert.are.equal("widget.example.com/w1 created\n", ok { "apply", "-f", file })
      local out = ok { "get", "widgets", "-n", "default" }
      assert.matches("^NAME%s+REPLICAS%s+COLOR%s+AGE\nw1%s+2%s+blue%s+%d+s\n$", out)
      cluster.file(sim, "w.yaml", widget_yaml("red"))
      assert.are.equal("widget.example.com/w1 configured\n", ok { "apply", "-f", file })
      assert.are.equal("widget.example.com/w1 unchanged\n", ok { "apply", "-f", file })
      out = ok { "get", "wd", "w1", "-n", "default", "-o", "jsonpath={.spec.color} {.metadata.generation}" }
      assert.are.equal("red 2", out)
      assert.are.equal("widget.example.com/w1 scaled\n", ok { "scale", "widget/w1", "-n", "default", "--replicas=3" })
      assert.matches("^NAME%s+REPLICAS%s+COLOR%s+AGE\nw1%s+3%s+red%s", ok { "get", "wd", "-n", "default" })
      assert.matches("widget.example.com/w1%s+3%s+red", ok { "get", "all", "-n", "default" })
      r = kubectl { "patch", "wd", "w1", "-n", "default", "-p", '{"spec":{"color":"x"}}' }
      assert.are.equal(1, r.status)
      assert.matches("application/strategic-merge-patch+json is not supported", r.stderr, 1, true)
      assert.are.equal("widget.example.com/w1 patched\n",
        ok { "patch", "wd", "w1", "-n", "default", "--type=merge", "-p", '{"spec":{"color":"green"}}' })
      local lines = {}
      for l in ok { "api-resources", "--api-group=example.com" }:gmatch("[^\n]+") do lines[#lines + 1] = l:gsub("%s+", " ") end
      assert.are.same({ "NAME SHORTNAMES APIVERSION NAMESPACED KIND", "widgets wd example.com/v1 true Widget" }, lines)
      assert.matches('^widget%.example%.com "w1" deleted', ok { "delete", "wd", "w1", "-n", "default" })
      assert.is_nil(sim:get("widgets.example.com", "default", "w1"))
      assert.matches('^customresourcedefinition%.apiextensions%.k8s%.io "widgets%.example%.com" deleted',
        ok { "delete", "-f", crd_file })
      r = kubectl { "get", "widgets", "-n", "default" }
      assert.are.equal(1, r.status)
      assert.are.equal("", (ok { "api-resources", "--api-group=example.com", "--no-headers" }))
    end)

    it("applies a CRD and its resource server-side, and explains it", function()
      local crd_file = cluster.file(sim, "crd2.yaml", CRD_YAML)
      assert.are.equal("customresourcedefinition.apiextensions.k8s.io/widgets.example.com serverside-applied\n",
        ok { "apply", "--server-side", "-f", crd_file })
      local file = cluster.file(sim, "w2.yaml", widget_yaml("amber"))
      assert.are.equal("widget.example.com/w1 serverside-applied\n", ok { "apply", "--server-side", "-f", file })
      assert.are.equal("amber", sim:get("widgets.example.com", "default", "w1").spec.color)
      assert.matches("KIND:%s+Widget", ok { "explain", "widgets" })
      ok { "delete", "crd", "widgets.example.com" }
      assert.are.equal(0, sim.store:count("widgets.example.com"))
    end)
  end)
end

kubectl_suite("1.30", nil)
kubectl_suite("1.27", "v1.27.16")
kubectl_suite("1.33", "v1.33.1")
