-- The Kubernetes API as the simulator serves it: discovery, the REST verbs with their
-- semantics (resourceVersion conflicts, dryRun, selectors, pagination, watch), Status
-- errors, Table output for kubectl, and a hook per subresource for the other modules.
local json = require "json"
local vq = require "vq"
local util = require "sim.util"
local resources = require "sim.resources"
local printers = require "sim.printers"
local patch = require "sim.patch"
local protobuf = require "sim.protobuf"

local M = {}
local Api = {}
Api.__index = Api

local function array(t) return setmetatable(t or {}, json.array_mt) end
M.array = array

-- ---- responses ----

local function send_json(res, status, obj, extra)
  local headers = { ["Content-Type"] = "application/json", ["Cache-Control"] = "no-cache, private" }
  for k, v in pairs(extra or {}) do headers[k] = v end
  res:send(status, json.encode(obj), headers)
end
M.send_json = send_json

local REASON_OF = {
  [400] = "BadRequest", [401] = "Unauthorized", [403] = "Forbidden", [404] = "NotFound",
  [405] = "MethodNotAllowed", [406] = "NotAcceptable", [409] = "Conflict", [410] = "Expired",
  [415] = "UnsupportedMediaType", [422] = "Invalid", [429] = "TooManyRequests",
  [500] = "InternalError", [503] = "ServiceUnavailable", [504] = "Timeout",
}

function M.status(code, message, reason, details)
  return {
    kind = "Status", apiVersion = "v1", metadata = {}, status = "Failure",
    message = message, reason = reason or REASON_OF[code], details = details, code = code,
  }
end

local function send_status(res, code, message, reason, details, headers)
  send_json(res, code, M.status(code, message, reason, details), headers)
end
M.send_status = send_status

local function not_found(res, t, name)
  send_status(res, 404, ('%s "%s" not found'):format(t.key, name), "NotFound",
    { name = name, group = t.group ~= "" and t.group or nil, kind = t.plural })
end

-- ---- discovery ----

-- The Go each minor release line is built with.
local GO_VERSIONS = { [27] = "go1.22.5", [28] = "go1.22.5", [29] = "go1.22.5", [30] = "go1.22.8", [31] = "go1.22.8",
                      [32] = "go1.23.6", [33] = "go1.24.2" }

function Api:version_info()
  local v = self.sim.version
  local major, minor = v:match("^v(%d+)%.(%d+)")
  local info = {
    major = major, minor = minor, gitVersion = v, gitCommit = "vqlua-sim",
    gitTreeState = "clean", buildDate = "2026-01-01T00:00:00Z",
    goVersion = GO_VERSIONS[tonumber(minor)] or "go1.24.2", compiler = "gc", platform = "linux/amd64",
  }
  -- 1.33 reports its compatibility versions (KEP-4330): it emulates itself, reads 1.32's data
  if tonumber(minor) >= 33 then
    info.emulationMajor, info.emulationMinor = major, minor
    info.minCompatibilityMajor, info.minCompatibilityMinor = major, tostring(tonumber(minor) - 1)
  end
  return info
end

local function types_at(registry, gv, minor)
  local types = {}
  for _, t in ipairs(registry:list()) do
    if t.api_version == gv and resources.served(t, minor) and not t.unpublished then types[#types + 1] = t end
  end
  return types
end

-- A subresource's kind and verbs as discovery lists them; group and version when they are
-- not its parent's (kubectl drain evicts only when pods/eviction names policy/v1).
local function subresource_info(t, sub)
  local kind, verbs = t.kind, { "get", "patch", "update" }
  if sub == "scale" then kind = "Scale"
  elseif sub == "log" then kind, verbs = "Pod", { "get" }
  elseif sub == "exec" or sub == "attach" or sub == "portforward" then kind, verbs = "PodExecOptions", { "create", "get" }
  elseif sub == "proxy" then kind, verbs = t.kind .. "ProxyOptions", { "create", "delete", "get", "patch", "update" }
  elseif sub == "eviction" then kind, verbs = "Eviction", { "create" }
  elseif sub == "binding" then kind, verbs = "Binding", { "create" } end
  local group = sub == "scale" and "autoscaling" or sub == "eviction" and "policy" or nil
  return kind, array(verbs), group, group and "v1" or nil
end

local function copied_list(list) return list and #list > 0 and array(util.copy(list)) or nil end

local function resource_list(registry, gv, minor)
  local out = array()
  for _, t in ipairs(types_at(registry, gv, minor)) do
    out[#out + 1] = {
      name = t.plural, singularName = t.singular, namespaced = t.namespaced, kind = t.kind,
      verbs = array(util.copy(t.verbs)), shortNames = copied_list(t.short), categories = copied_list(t.categories),
      storageVersionHash = t.key:sub(1, 12),
    }
    for _, sub in ipairs(t.subresources or {}) do
      local kind, verbs, group, version = subresource_info(t, sub)
      out[#out + 1] = { name = t.plural .. "/" .. sub, singularName = "", namespaced = t.namespaced,
                        kind = kind, verbs = verbs, group = group, version = version }
    end
  end
  return { kind = "APIResourceList", apiVersion = "v1", groupVersion = gv, resources = out }
end

-- ---- aggregated discovery (KEP-3352) ----
-- Every group's resources in one answer to GET /api or /apis with an Accept that asks for
-- an APIGroupDiscoveryList: apidiscovery.k8s.io/v2beta1 from 1.27 (beta, on by default),
-- v2 from 1.30 (GA; v2beta1 is gone in 1.33). kubectl asks for it first, then falls back.

local AGGREGATED_SERVED = { v2 = { min = 30 }, v2beta1 = { min = 27, max = 32 } }

-- The discovery version the Accept header's first acceptable media range asks for, or nil.
local function aggregated_version(accept, minor)
  for range in (accept or ""):gmatch("[^,]+") do
    local r = range:gsub("%s", "")
    if r:find("^application/json;") and r:find(";g=apidiscovery.k8s.io", 1, true)
       and r:find(";as=APIGroupDiscoveryList", 1, true) then
      local v = r:match(";v=([%w]+)")
      local served = AGGREGATED_SERVED[v]
      if served and minor >= served.min and minor <= (served.max or math.huge) then return v end
    elseif r:find("^application/json") or r:find("^%*/%*") then
      return nil -- the classic answer comes first in the client's order
    end
  end
end

local function discovery_resource(t)
  local subs = array()
  for _, sub in ipairs(t.subresources or {}) do
    local kind, verbs, group, version = subresource_info(t, sub)
    subs[#subs + 1] = { subresource = sub, responseKind = { group = group or "", version = version or "", kind = kind }, verbs = verbs }
  end
  return {
    resource = t.plural, responseKind = { group = "", version = "", kind = t.kind },
    scope = t.namespaced and "Namespaced" or "Cluster", singularResource = t.singular,
    verbs = array(util.copy(t.verbs)), shortNames = copied_list(t.short), categories = copied_list(t.categories),
    subresources = #subs > 0 and subs or nil,
  }
end

local function discovery_group(registry, minor, name, versions)
  local out = array()
  for _, v in ipairs(versions) do
    local list = array()
    for _, t in ipairs(types_at(registry, name == "" and v or (name .. "/" .. v), minor)) do
      list[#list + 1] = discovery_resource(t)
    end
    out[#out + 1] = { version = v, resources = list, freshness = "Current" }
  end
  return { metadata = { name = name ~= "" and name or nil, creationTimestamp = json.null }, versions = out }
end

local function send_aggregated(res, registry, minor, version, core)
  local items = array()
  if core then
    items[1] = discovery_group(registry, minor, "", { "v1" })
  else
    for _, g in ipairs(registry:groups(minor)) do items[#items + 1] = discovery_group(registry, minor, g.name, g.versions) end
  end
  send_json(res, 200, { kind = "APIGroupDiscoveryList", apiVersion = "apidiscovery.k8s.io/" .. version,
    metadata = {}, items = items },
    { ["Content-Type"] = "application/json;g=apidiscovery.k8s.io;v=" .. version .. ";as=APIGroupDiscoveryList",
      Vary = "Accept" })
end

local function api_group(g)
  local versions = array()
  for i, v in ipairs(g.versions) do versions[i] = { groupVersion = g.name .. "/" .. v, version = v } end
  return { name = g.name, versions = versions, preferredVersion = versions[1] }
end

local function group_list(registry, minor)
  local groups = array()
  for _, g in ipairs(registry:groups(minor)) do groups[#groups + 1] = api_group(g) end
  return { kind = "APIGroupList", apiVersion = "v1", groups = groups }
end

-- GET /apis/<group>: the APIGroup alone, or nil.
local function group_of(registry, minor, name)
  for _, g in ipairs(registry:groups(minor)) do
    if g.name == name then
      local out = api_group(g)
      out.kind, out.apiVersion = "APIGroup", "v1"
      return out
    end
  end
end

-- ---- routing ----

local function split_path(path)
  local parts = {}
  for p in path:gmatch("[^/]+") do
    parts[#parts + 1] = p:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  end
  return parts
end

--- {t, ns, name, sub, rest} from a resource path, or nil.
local function parse_resource_path(registry, parts)
  local group, version, i
  if parts[1] == "api" then
    group, version, i = "", parts[2], 3
  elseif parts[1] == "apis" then
    group, version, i = parts[2], parts[3], 4
  else
    return nil
  end
  if not version then return nil end
  local r = { group = group, version = version }
  if parts[i] == "namespaces" and parts[i + 2] and parts[i + 2] ~= "" then
    r.ns = parts[i + 1]
    i = i + 2
  end
  r.plural = parts[i]
  r.name = parts[i + 1]
  r.sub = parts[i + 2]
  r.rest = {}
  for j = i + 3, #parts do r.rest[#r.rest + 1] = parts[j] end
  if not r.plural then return r end
  r.t = registry:lookup(group, version, r.plural)
  -- GET /api/v1/namespaces/x is the namespace itself, not a namespaced collection
  if not r.t and r.ns == nil and parts[i] == "namespaces" then r.t = resources.lookup("", "v1", "namespaces") end
  return r
end

-- Whether a type serves that subresource (a custom resource only those its CRD declares).
local function declares(t, sub)
  for _, s in ipairs(t.subresources or {}) do
    if s == sub then return true end
  end
  return false
end

-- kubectl 1.32+ typed clients write protobuf; every handler reads the JSON of it.
local function protobuf_to_json(req, res)
  local ct = (req.headers["content-type"] or ""):lower()
  if not ct:find(protobuf.CONTENT_TYPE, 1, true) then return true end
  local obj, err = protobuf.decode(req.body or "")
  if not obj then
    send_status(res, 400, "the body of the request was in an unknown format: " .. tostring(err), "BadRequest")
    return false
  end
  req.body = json.encode(obj)
  req.headers["content-type"] = "application/json"
  return true
end

function Api:handle(req, res)
  local sim = self.sim
  if sim.faults and sim.faults:before(req, res) then return end
  local path = req.path
  if path == "/version" or path == "/version/" then return send_json(res, 200, self:version_info()) end
  if path == "/healthz" or path == "/readyz" or path == "/livez" then return res:send(200, "ok", { ["Content-Type"] = "text/plain" }) end
  local aggregated = sim.aggregated_discovery and (path == "/api" or path == "/api/" or path == "/apis" or path == "/apis/")
    and aggregated_version(req.headers.accept, sim:minor())
  if aggregated then return send_aggregated(res, sim.types, sim:minor(), aggregated, path:sub(1, 5) ~= "/apis") end
  if path == "/api" or path == "/api/" then
    return send_json(res, 200, { kind = "APIVersions", versions = array { "v1" },
      serverAddressByClientCIDRs = array { { clientCIDR = "0.0.0.0/0", serverAddress = "127.0.0.1:" .. (sim.port or 0) } } })
  end
  if path == "/apis" or path == "/apis/" then return send_json(res, 200, group_list(sim.types, sim:minor())) end
  if sim.auth and not sim.auth(req, res) then return end
  if not protobuf_to_json(req, res) then return end
  local parts = split_path(path)
  local r = parse_resource_path(sim.types, parts)
  if not r then return self:handle_other(req, res, parts) end
  if not r.plural then
    local gv = r.group == "" and r.version or (r.group .. "/" .. r.version)
    local list = resource_list(sim.types, gv, sim:minor())
    if #list.resources > 0 then return send_json(res, 200, list) end
    return send_status(res, 404, "the server could not find the requested resource", "NotFound")
  end
  if not r.t or not resources.served(r.t, sim:minor()) or (r.t.namespaced == false and r.ns)
     or (r.sub and r.t.custom and not declares(r.t, r.sub)) then
    return send_status(res, 404, "the server could not find the requested resource", "NotFound")
  end
  if sim.authorize and not sim.authorize(req, res, r) then return end
  if r.sub then return self:subresource(req, res, r) end
  return self:verb(req, res, r)
end

function Api:handle_other(req, res, parts)
  local h = self.sim.extra_routes and self.sim.extra_routes[parts[1] or ""]
  if h then return h(req, res, parts) end
  local group = parts[1] == "apis" and #parts == 2 and group_of(self.sim.types, self.sim:minor(), parts[2])
  if group then return send_json(res, 200, group) end
  send_status(res, 404, "the server could not find the requested resource", "NotFound")
end

local function wants_table(req)
  return (req.headers.accept or ""):find("as=Table", 1, true) ~= nil
end

function Api:verb(req, res, r)
  local m = req.method
  if m == "GET" or m == "HEAD" then
    if r.name then return self:get(req, res, r) end
    if req.query.watch == "1" or req.query.watch == "true" then return self:watch(req, res, r) end
    return self:list(req, res, r)
  elseif m == "POST" then
    if r.name then return send_status(res, 405, "method not allowed", "MethodNotAllowed") end
    return self:create(req, res, r)
  elseif m == "PUT" then
    return self:update(req, res, r)
  elseif m == "PATCH" then
    return self:patch(req, res, r)
  elseif m == "DELETE" then
    if r.name then return self:delete(req, res, r) end
    return self:delete_collection(req, res, r)
  end
  send_status(res, 405, "method not allowed", "MethodNotAllowed")
end

-- ---- reading ----

function Api:render(obj, t)
  local conv = self.sim.convert and self.sim.convert[t.key]
  if conv then return conv(obj) end
  -- a custom resource read at another of its versions: conversion strategy None changes
  -- only the apiVersion
  if t.custom and obj.apiVersion ~= t.api_version then
    local copy = {}
    for k, v in pairs(obj) do copy[k] = v end
    copy.apiVersion = t.api_version
    return copy
  end
  return obj
end

function Api:get(req, res, r)
  local obj = self.sim.store:get(resources.store_key(r.t), r.ns, r.name)
  if not obj then return not_found(res, r.t, r.name) end
  obj = self:render(obj, r.t)
  if wants_table(req) then return send_json(res, 200, printers.table(self.sim, r.t, { obj }, req.query, self.sim.store.rv)) end
  send_json(res, 200, obj)
end

-- The field labels a type's field selectors take beyond metadata.name and metadata.namespace
-- (each registry's GetAttrs).
local FIELD_LABELS = {
  pods = { "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "spec.hostNetwork",
           "status.phase", "status.podIP", "status.nominatedNodeName" },
  events = { "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
             "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
             "reportingComponent", "source", "type" },
  secrets = { "type" }, nodes = { "spec.unschedulable" }, namespaces = { "status.phase" },
  replicationcontrollers = { "status.replicas" }, ["replicasets.apps"] = { "status.replicas" },
  ["jobs.batch"] = { "status.successful" },
}

local function field_label_supported(t, key)
  if key == "metadata.name" or key == "metadata.namespace" then return true end
  for _, k in ipairs(FIELD_LABELS[resources.store_key(t)] or {}) do
    if k == key then return true end
  end
  return false
end

local function selectors(req, t)
  local labels, lerr = util.parse_labels(req.query.labelSelector)
  if not labels then return nil, lerr end
  local fields, ferr = util.parse_fields(req.query.fieldSelector)
  if not fields then return nil, ferr end
  for _, f in ipairs(fields) do
    if not field_label_supported(t, f.key) then return nil, "field label not supported: " .. f.key end
  end
  return function(obj) return util.match_labels(labels, obj.metadata.labels) and util.match_fields(fields, obj) end
end

local function encode_continue(rv, start)
  return (json.encode { rv = rv, start = start }:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function decode_continue(token)
  local raw = token:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)
  local ok, v = pcall(json.decode, raw)
  if ok and type(v) == "table" and v.rv and v.start then return v end
end

function Api:list(req, res, r)
  local store = self.sim.store
  local filter, ferr = selectors(req, r.t)
  if not filter then return send_status(res, 400, ferr, "BadRequest") end
  local items = store:list(resources.store_key(r.t), r.ns, filter)
  local list_rv = store.rv
  local start = 1
  if req.query.continue and req.query.continue ~= "" then
    local c = decode_continue(req.query.continue)
    if not c then return send_status(res, 400, "invalid continue token", "BadRequest") end
    if c.rv < store:oldest_rv() then
      return send_status(res, 410, "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.", "Expired")
    end
    list_rv = c.rv
    for i, obj in ipairs(items) do
      if (obj.metadata.namespace or "") .. "/" .. obj.metadata.name >= c.start then start = i break end
      start = i + 1
    end
  end
  local limit = tonumber(req.query.limit or "0") or 0
  local stop = #items
  local cont
  if limit > 0 and start + limit - 1 < #items then
    stop = start + limit - 1
    local nxt = items[stop + 1].metadata
    cont = encode_continue(list_rv, (nxt.namespace or "") .. "/" .. nxt.name)
  end
  local page = array()
  for i = start, stop do page[#page + 1] = self:render(items[i], r.t) end
  local remaining = cont and (#items - stop) or nil
  if wants_table(req) then
    local tbl = printers.table(self.sim, r.t, page, req.query, list_rv)
    tbl.metadata.continue = cont
    tbl.metadata.remainingItemCount = remaining
    return send_json(res, 200, tbl)
  end
  send_json(res, 200, {
    kind = r.t.list_kind or (r.t.kind .. "List"), apiVersion = r.t.api_version,
    metadata = { resourceVersion = tostring(list_rv), continue = cont, remainingItemCount = remaining },
    items = page,
  })
end

-- A watch answers 200 and streams JSON lines; an expired resourceVersion is an ERROR event
-- with a 410 Status, as the real apiserver sends it.
function Api:watch(req, res, r)
  local store = self.sim.store
  local filter, ferr = selectors(req, r.t)
  if not filter then return send_status(res, 400, ferr, "BadRequest") end
  local rv = req.query.resourceVersion
  local from = tonumber(rv)
  if rv == "0" or rv == nil or rv == "" then from = nil end
  local key = resources.store_key(r.t)
  local w, err = store:watch(key, r.ns, from, filter)
  local table_mode = wants_table(req)
  res:start(200, { ["Content-Type"] = "application/json" })
  local function emit(ev_type, obj)
    if table_mode and ev_type ~= "ERROR" and ev_type ~= "BOOKMARK" then
      obj = printers.table(self.sim, r.t, { obj }, req.query, tonumber(obj.metadata.resourceVersion))
    end
    return res:write(json.encode { type = ev_type, object = obj } .. "\n")
  end
  if not w then
    emit("ERROR", M.status(410, ("too old resource version: %s (%d)"):format(rv, store:oldest_rv()), "Expired"))
    return res:finish()
  end
  if not from then
    for _, obj in ipairs(store:list(key, r.ns, filter)) do emit("ADDED", self:render(obj, r.t)) end
  end
  local bookmarks = req.query.allowWatchBookmarks == "true"
  local deadline = tonumber(req.query.timeoutSeconds or "")
  local started = vq.now()
  local interval = self.sim.bookmark_interval or 1
  local last_rv = store.rv
  while res:connected() do
    local wait = interval
    if deadline then wait = math.min(wait, deadline - (vq.now() - started)) end
    if wait <= 0 then break end
    local ev, e = vq.timeout(wait, w.queue.get, w.queue)
    if ev then
      last_rv = ev.rv
      if not emit(ev.type, self:render(ev.object, r.t)) then break end
    elseif e and e.code == "closed" then
      break
    elseif bookmarks then
      emit("BOOKMARK", { kind = r.t.kind, apiVersion = r.t.api_version,
        metadata = { resourceVersion = tostring(math.max(last_rv, store.rv)) } })
    end
  end
  w:close()
  res:finish()
end

-- ---- writing ----

local function decode_body(req, res, t)
  local ct = (req.headers["content-type"] or "application/json"):lower()
  local body = req.body or ""
  local obj, err
  if ct:find("yaml", 1, true) then
    obj, err = require("yaml").decode(body)
  else
    obj, err = json.decode(body)
  end
  if type(obj) ~= "table" then
    send_status(res, 400, "the body of the request was in an unknown format: " .. tostring(err and err.message or err), "BadRequest")
    return nil
  end
  -- another version of the type's group converts; another group is not this type
  local group = type(obj.apiVersion) == "string" and obj.apiVersion ~= "" and (obj.apiVersion:match("^(.*)/") or "")
  if t and group and group ~= t.group then
    send_status(res, 400, ("the API version in the data (%s) does not match the expected API version (%s)"):format(obj.apiVersion, t.api_version), "BadRequest")
    return nil
  end
  return obj
end

-- RFC 1123 subdomain: lower-case alphanumerics, '-' and '.', alphanumeric at both ends.
local function dns1123(name)
  return #name <= 253 and name:match("^[a-z0-9][-a-z0-9.]*$") ~= nil and name:match("[a-z0-9]$") ~= nil
end

-- RBAC objects are named by path segment rules only (system:aggregate-to-view, influx:telegraf).
local function valid_name(t, name)
  if t.group == "rbac.authorization.k8s.io" then
    return name ~= "." and name ~= ".." and not name:find("[/%%]")
  end
  return dns1123(name)
end

local function invalid(res, t, name, causes, message)
  send_status(res, 422, message or ('%s "%s" is invalid'):format(t.kind, name or ""), "Invalid",
    { name = name, group = t.group ~= "" and t.group or nil, kind = t.kind, causes = array(causes) })
end

local function is_dry_run(req) return req.query.dryRun == "All" end

-- What a change of bumps metadata.generation: all but metadata and status; for a custom
-- resource without the status subresource, status too.
local function spec_of(t, obj)
  local keep_status = t.custom and not declares(t, "status")
  local copy = {}
  for k, v in pairs(obj) do
    if k ~= "metadata" and (k ~= "status" or keep_status) and k ~= "kind" and k ~= "apiVersion" then copy[k] = v end
  end
  return json.encode(copy, { sort_keys = true })
end

-- The types whose registry keeps metadata.generation (pods from 1.33 on: KEP-5067).
local GENERATION = {
  ["deployments.apps"] = true, ["replicasets.apps"] = true, ["statefulsets.apps"] = true, ["daemonsets.apps"] = true,
  ["jobs.batch"] = true, ["cronjobs.batch"] = true, replicationcontrollers = true,
  ["ingresses.networking.k8s.io"] = true, ["ingressclasses.networking.k8s.io"] = true,
  ["networkpolicies.networking.k8s.io"] = true, ["poddisruptionbudgets.policy"] = true,
  ["horizontalpodautoscalers.autoscaling"] = true, ["priorityclasses.scheduling.k8s.io"] = true,
  ["customresourcedefinitions.apiextensions.k8s.io"] = true,
  ["flowschemas.flowcontrol.apiserver.k8s.io"] = true, ["prioritylevelconfigurations.flowcontrol.apiserver.k8s.io"] = true,
  ["mutatingwebhookconfigurations.admissionregistration.k8s.io"] = true,
  ["validatingwebhookconfigurations.admissionregistration.k8s.io"] = true,
  ["validatingadmissionpolicies.admissionregistration.k8s.io"] = true,
  ["validatingadmissionpolicybindings.admissionregistration.k8s.io"] = true,
}

local function has_generation(sim, t)
  if t.key == "pods" then return sim:minor() >= 33 end
  return t.custom ~= nil or GENERATION[t.key] == true
end

--- Fill what the apiserver fills on create; returns the object or nil, status.
function Api:admit_create(t, ns, obj)
  obj.apiVersion, obj.kind = t.api_version, t.kind
  local meta = obj.metadata
  if type(meta) ~= "table" then obj.metadata = {} meta = obj.metadata end
  if not meta.name or meta.name == "" then
    if meta.generateName and meta.generateName ~= "" then
      meta.name = meta.generateName .. util.random_suffix(5)
    else
      return nil, M.status(422, t.kind .. ' "" is invalid: metadata.name: Required value: name or generateName is required', "Invalid",
        { kind = t.kind, causes = array { { reason = "FieldValueRequired", message = "Required value: name or generateName is required", field = "metadata.name" } } })
    end
  end
  if not valid_name(t, meta.name) then
    return nil, M.status(422, ('%s "%s" is invalid: metadata.name: Invalid value: "%s": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \'-\' or \'.\', and must start and end with an alphanumeric character'):format(t.kind, meta.name, meta.name), "Invalid",
      { name = meta.name, kind = t.kind })
  end
  if t.namespaced then
    if meta.namespace and ns and meta.namespace ~= ns then
      return nil, M.status(400, "the namespace of the provided object does not match the namespace sent on the request", "BadRequest")
    end
    meta.namespace = ns or meta.namespace or "default"
    if not self.sim.store:get("namespaces", nil, meta.namespace) then
      return nil, M.status(404, ('namespaces "%s" not found'):format(meta.namespace), "NotFound", { name = meta.namespace, kind = "namespaces" })
    end
  else
    meta.namespace = nil
  end
  meta.uid = util.uuid()
  meta.creationTimestamp = util.rfc3339(self.sim.clock:now())
  meta.resourceVersion = nil
  meta.generation = has_generation(self.sim, t) and 1 or nil
  local hook = self.sim.admission and self.sim.admission[t.key]
  if hook then
    local ok, status = hook(self.sim, "create", obj, nil)
    if ok == false then return nil, status end
  end
  return obj
end

function Api:store_create(t, obj, dry_run)
  if dry_run then
    obj.metadata.resourceVersion = nil
    return obj
  end
  return self.sim.store:put(resources.store_key(t), obj, "ADDED")
end

function Api:create(req, res, r)
  local obj = decode_body(req, res, r.t)
  if not obj then return end
  local t = r.t
  local hook = self.sim.create_handlers and self.sim.create_handlers[t.key]
  if hook then return hook(self.sim, req, res, r, obj) end
  local admitted, status = self:admit_create(t, r.ns, obj)
  if not admitted then return send_json(res, status.code, status) end
  if self.sim.store:get(resources.store_key(t), admitted.metadata.namespace, admitted.metadata.name) then
    return send_status(res, 409, ('%s "%s" already exists'):format(t.key, admitted.metadata.name), "AlreadyExists",
      { name = admitted.metadata.name, group = t.group ~= "" and t.group or nil, kind = t.plural })
  end
  if req.query.fieldManager or req.headers["user-agent"] then
    patch.record_manager(admitted, req.query.fieldManager or patch.manager_from_agent(req.headers["user-agent"]), "Update", self.sim.clock:now())
  end
  local stored = self:store_create(t, admitted, is_dry_run(req))
  send_json(res, 201, self:render(stored, t))
end

--- Replace an object (update or the result of a patch). part: nil for the main resource,
--- "status" for the status subresource. Returns the stored object or nil, status.
function Api:replace(t, ns, name, new, opts)
  opts = opts or {}
  local key = resources.store_key(t)
  local old = self.sim.store:get(key, ns, name)
  if not old then
    return nil, M.status(404, ('%s "%s" not found'):format(t.key, name), "NotFound", { name = name, kind = t.plural })
  end
  local meta = new.metadata or {}
  new.metadata = meta
  if meta.name and meta.name ~= name then
    return nil, M.status(400, ('the name of the object (%s) does not match the name on the URL (%s)'):format(meta.name, name), "BadRequest")
  end
  if meta.resourceVersion and meta.resourceVersion ~= "" and meta.resourceVersion ~= old.metadata.resourceVersion then
    return nil, M.status(409, ('Operation cannot be fulfilled on %s "%s": the object has been modified; please apply your changes to the latest version and try again'):format(t.key, name), "Conflict",
      { name = name, group = t.group ~= "" and t.group or nil, kind = t.plural })
  end
  new.apiVersion, new.kind = t.api_version, t.kind
  meta.name, meta.namespace = name, old.metadata.namespace
  meta.uid, meta.creationTimestamp = old.metadata.uid, old.metadata.creationTimestamp
  meta.deletionTimestamp = old.metadata.deletionTimestamp
  meta.deletionGracePeriodSeconds = old.metadata.deletionGracePeriodSeconds
  local has_status = declares(t, "status")
  if opts.part == "status" then
    -- only status changes through the status subresource
    local status = new.status
    new = util.copy(old)
    new.status = status
    new.metadata.resourceVersion = nil
    meta = new.metadata
  elseif has_status then
    new.status = old.status
  end
  if opts.part ~= "status" then
    meta.generation = nil
    if has_generation(self.sim, t) then
      meta.generation = old.metadata.generation
      if spec_of(t, new) ~= spec_of(t, old) then meta.generation = (old.metadata.generation or 0) + 1 end
    end
  end
  meta.managedFields = meta.managedFields or old.metadata.managedFields
  local hook = self.sim.admission and self.sim.admission[t.key]
  if hook then
    local ok, status = hook(self.sim, "update", new, old)
    if ok == false then return nil, status end
  end
  if opts.manager then patch.record_manager(new, opts.manager, opts.operation or "Update", self.sim.clock:now(), opts.part, old) end
  if opts.dry_run then
    new.metadata.resourceVersion = old.metadata.resourceVersion
    return new
  end
  -- A finalizer removed from an object being deleted may let it go now.
  local stored = self.sim.store:put(key, new, "MODIFIED")
  if stored.metadata.deletionTimestamp and (not stored.metadata.finalizers or #stored.metadata.finalizers == 0) then
    return self.sim.store:remove(key, stored) or stored
  end
  return stored
end

function Api:update(req, res, r)
  local obj = decode_body(req, res, r.t)
  if not obj then return end
  local stored, status = self:replace(r.t, r.ns, r.name, obj, {
    dry_run = is_dry_run(req),
    manager = req.query.fieldManager or patch.manager_from_agent(req.headers["user-agent"]),
  })
  if not stored then return send_json(res, status.code, status) end
  send_json(res, 200, self:render(stored, r.t))
end

function Api:patch(req, res, r, part)
  local ct = (req.headers["content-type"] or ""):lower():match("^[^;]+") or ""
  local key = resources.store_key(r.t)
  local old = self.sim.store:get(key, r.ns, r.name)
  if ct == "application/apply-patch+yaml" then
    return patch.apply(self, req, res, r, old, part)
  end
  if not old then return not_found(res, r.t, r.name) end
  local new, err = patch.patch(ct, old, req.body or "", r.t)
  if not new then
    if err.code then return send_json(res, err.code, err) end
    return send_status(res, 415, err, "UnsupportedMediaType")
  end
  new.metadata = new.metadata or {}
  if new.metadata.resourceVersion ~= old.metadata.resourceVersion then
    -- a patch may carry a precondition; absent, it applies to the latest version
    if not (req.body or ""):find('"resourceVersion"', 1, true) then new.metadata.resourceVersion = nil end
  else
    new.metadata.resourceVersion = nil
  end
  local stored, status = self:replace(r.t, r.ns, r.name, new, {
    part = part, dry_run = is_dry_run(req),
    manager = req.query.fieldManager or patch.manager_from_agent(req.headers["user-agent"]),
  })
  if not stored then return send_json(res, status.code, status) end
  send_json(res, 200, self:render(stored, r.t))
end

-- ---- deleting ----

--- Delete an object with the apiserver's rules: finalizers hold it (deletionTimestamp
--- set), pods terminate gracefully, dependents go by propagationPolicy.
function Api:remove(t, obj, opts)
  opts = opts or {}
  local store = self.sim.store
  local key = resources.store_key(t)
  local policy = opts.propagation or (t.key == "jobs.batch" and "Orphan") or "Background"
  if opts.dry_run then return obj end
  local copy = util.copy(obj)
  local meta = copy.metadata
  meta.resourceVersion = nil
  if policy == "Foreground" then
    meta.finalizers = meta.finalizers or array()
    local has = false
    for _, f in ipairs(meta.finalizers) do if f == "foregroundDeletion" then has = true end end
    if not has then table.insert(meta.finalizers, "foregroundDeletion") end
  end
  local grace = opts.grace
  if t.key == "pods" and grace == nil then
    grace = (copy.spec and copy.spec.terminationGracePeriodSeconds) or 30
  end
  local hold = (meta.finalizers and #meta.finalizers > 0) or (t.key == "pods" and grace and grace > 0 and copy.spec and copy.spec.nodeName)
  if hold then
    if not meta.deletionTimestamp then
      meta.deletionTimestamp = util.rfc3339(self.sim.clock:now() + (t.key == "pods" and grace or 0))
      meta.deletionGracePeriodSeconds = t.key == "pods" and grace or 0
      if t.key ~= "pods" then meta.deletionGracePeriodSeconds = 0 end
      copy = store:put(key, copy, "MODIFIED")
    end
    if self.sim.on_delete then self.sim.on_delete(t, copy, policy) end
    return copy
  end
  local gone = store:remove(key, copy)
  if self.sim.on_delete then self.sim.on_delete(t, gone, policy) end
  return gone
end

local function delete_options(req)
  local o = {}
  if req.body and #req.body > 0 then
    local ok, body = pcall(json.decode, req.body)
    if ok and type(body) == "table" then o = body end
  end
  return {
    propagation = req.query.propagationPolicy or o.propagationPolicy,
    grace = tonumber(req.query.gracePeriodSeconds or o.gracePeriodSeconds or ""),
    dry_run = req.query.dryRun == "All" or (type(o.dryRun) == "table" and o.dryRun[1] == "All"),
    preconditions = o.preconditions,
  }
end

function Api:delete(req, res, r)
  local obj = self.sim.store:get(resources.store_key(r.t), r.ns, r.name)
  if not obj then return not_found(res, r.t, r.name) end
  local o = delete_options(req)
  if o.preconditions and o.preconditions.uid and o.preconditions.uid ~= obj.metadata.uid then
    return send_status(res, 409, ("Precondition failed: UID in precondition: %s, UID in object meta: %s"):format(o.preconditions.uid, obj.metadata.uid), "Conflict")
  end
  local after = self:remove(r.t, obj, o)
  if after.metadata.deletionTimestamp and self.sim.store:get(resources.store_key(r.t), r.ns, r.name) then
    return send_json(res, 200, self:render(after, r.t))
  end
  if r.t.key == "pods" or r.t.key == "namespaces" then return send_json(res, 200, self:render(after, r.t)) end
  send_json(res, 200, { kind = "Status", apiVersion = "v1", metadata = {}, status = "Success",
    details = { name = r.name, group = r.t.group ~= "" and r.t.group or nil, kind = r.t.plural, uid = obj.metadata.uid } })
end

function Api:delete_collection(req, res, r)
  local filter, ferr = selectors(req, r.t)
  if not filter then return send_status(res, 400, ferr, "BadRequest") end
  local o = delete_options(req)
  local items = self.sim.store:list(resources.store_key(r.t), r.ns, filter)
  local out = array()
  for _, obj in ipairs(items) do out[#out + 1] = self:render(self:remove(r.t, obj, o), r.t) end
  send_json(res, 200, { kind = r.t.list_kind or (r.t.kind .. "List"), apiVersion = r.t.api_version,
    metadata = { resourceVersion = tostring(self.sim.store.rv) }, items = out })
end

-- ---- subresources ----

function Api:subresource(req, res, r)
  local handler = self.sim.subresources and self.sim.subresources[r.t.key .. "/" .. r.sub]
  if handler then return handler(self.sim, req, res, r) end
  if r.sub == "status" then
    if req.method == "GET" then return self:get(req, res, r) end
    if req.method == "PATCH" then return self:patch(req, res, r, "status") end
    if req.method == "PUT" then
      local obj = decode_body(req, res)
      if not obj then return end
      local stored, status = self:replace(r.t, r.ns, r.name, obj, { part = "status", dry_run = is_dry_run(req),
        manager = req.query.fieldManager or patch.manager_from_agent(req.headers["user-agent"]) })
      if not stored then return send_json(res, status.code, status) end
      return send_json(res, 200, self:render(stored, r.t))
    end
  end
  send_status(res, 404, "the server could not find the requested resource", "NotFound")
end

function M.new(sim)
  return setmetatable({ sim = sim }, Api)
end

return M
