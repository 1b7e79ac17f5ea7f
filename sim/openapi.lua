-- OpenAPI v3 and v2 discovery, as much as kubectl reads: `kubectl apply` (client- and server-side)
-- asks whether the server validates fields itself (the fieldValidation parameter of each
-- type's PATCH operation, matched by x-kubernetes-group-version-kind) and, if it cannot
-- tell, refuses to go on without --validate=false.
local json = require "json"
local util = require "sim.util"
local api_mod = require "sim.api"
local protobuf = require "sim.protobuf"

local M = {}

local function array(t) return setmetatable(t or {}, json.array_mt) end

local function gv_path(t) return t.group == "" and ("api/" .. t.version) or ("apis/" .. t.group .. "/" .. t.version) end

local QUERY = { "dryRun", "fieldManager", "fieldValidation", "force", "pretty" }

-- A custom resource takes no strategic merge patch; kubectl's apply sends it a JSON merge patch.
local CUSTOM_CONSUMES = { "application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml" }

local function patch_operation(t)
  local params = array()
  for _, name in ipairs(QUERY) do
    params[#params + 1] = { name = name, ["in"] = "query", schema = { type = name == "force" and "boolean" or "string", uniqueItems = true } }
  end
  return {
    operationId = "patch" .. t.kind, tags = array { t.group == "" and "core_v1" or (t.group .. "_" .. t.version) },
    parameters = params,
    ["x-kubernetes-action"] = "patch",
    ["x-kubernetes-group-version-kind"] = { group = t.group, version = t.version, kind = t.kind },
    responses = { ["200"] = { description = "OK" } },
  }
end

-- "example.com", "v1", "Widget" -> "com.example.v1.Widget", as the apiserver names a CRD's schema
local function schema_name(t)
  local parts = {}
  for p in t.group:gmatch("[^.]+") do table.insert(parts, 1, p) end
  parts[#parts + 1] = t.version
  parts[#parts + 1] = t.kind
  return table.concat(parts, ".")
end

-- A custom resource's schema as its CRD gives it, with the fields every object has:
-- what `kubectl explain` reads.
local function custom_schema(t)
  local s = util.copy(t.schema or { type = "object" })
  s.properties = s.properties or {}
  s.properties.apiVersion = s.properties.apiVersion or { type = "string",
    description = "APIVersion defines the versioned schema of this representation of an object." }
  s.properties.kind = s.properties.kind or { type = "string",
    description = "Kind is a string value representing the REST resource this object represents." }
  s.properties.metadata = s.properties.metadata or { type = "object",
    description = "Standard object's metadata. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata" }
  s["x-kubernetes-group-version-kind"] = array { { group = t.group, version = t.version, kind = t.kind } }
  return s
end

local function gv_document(sim, gv)
  local paths, schemas = {}, {}
  for _, t in ipairs(sim.types:list()) do
    if gv_path(t) == gv and not t.shared_with_only then
      local base = "/" .. gv .. (t.namespaced and "/namespaces/{namespace}/" or "/") .. t.plural .. "/{name}"
      paths[base] = { patch = patch_operation(t) }
      if t.custom then schemas[schema_name(t)] = custom_schema(t) end
    end
  end
  return { openapi = "3.0.0", info = { title = "Kubernetes", version = "unversioned" }, paths = paths,
           components = { schemas = schemas } }
end

-- A document's hash changes with what it describes: the server version, and for a custom
-- group version the CRDs that serve it (kubectl caches each document by its URL).
local function gv_hash(sim, gv)
  local parts = { (sim.version:gsub("%W", "")) }
  for _, t in ipairs(sim.types:list()) do
    local crd = t.custom and gv_path(t) == gv and sim.store:get("customresourcedefinitions.apiextensions.k8s.io", nil, t.custom)
    if crd then parts[#parts + 1] = crd.metadata.resourceVersion end
  end
  return table.concat(parts, "-")
end

local function root(sim)
  local paths, seen = {}, {}
  for _, t in ipairs(sim.types:list()) do
    local gv = gv_path(t)
    if not seen[gv] then
      seen[gv] = true
      paths[gv] = { serverRelativeURL = "/openapi/v3/" .. gv .. "?hash=" .. gv_hash(sim, gv) }
    end
  end
  return { paths = paths }
end

-- ---- OpenAPI v2: kubectl 1.27 asks it (as protobuf) the same question ----

local CONSUMES = { "application/json-patch+json", "application/merge-patch+json",
                   "application/strategic-merge-patch+json", "application/apply-patch+yaml" }
local PRODUCES = { "application/json", "application/yaml", "application/vnd.kubernetes.protobuf" }

-- "rbac.authorization.k8s.io" -> "RbacAuthorization", "" -> "Core"
local function group_camel(group)
  if group == "" then return "Core" end
  local out = {}
  for part in group:gsub("%.k8s%.io$", ""):gmatch("[^.]+") do out[#out + 1] = part:sub(1, 1):upper() .. part:sub(2) end
  return table.concat(out)
end

--- The PATCH operations of the served types, one per path, as the v2 document lists them.
local function v2_operations(sim)
  local ops = {}
  for _, t in ipairs(sim.types:list()) do
    if not t.shared_with or t.custom then
      local camel = group_camel(t.group)
      ops[#ops + 1] = {
        path = "/" .. gv_path(t) .. (t.namespaced and "/namespaces/{namespace}/" or "/") .. t.plural .. "/{name}",
        id = "patch" .. camel .. t.version:gsub("^v", "V") .. (t.namespaced and "Namespaced" or "") .. t.kind,
        tag = camel:sub(1, 1):lower() .. camel:sub(2) .. "_" .. t.version,
        description = "partially update the specified " .. t.kind,
        gvk = ("group: %s\nkind: %s\nversion: %s\n"):format(t.group == "" and '""' or t.group, t.kind, t.version),
        consumes = t.custom and CUSTOM_CONSUMES or CONSUMES,
        t = t,
      }
    end
  end
  table.sort(ops, function(a, b) return a.path < b.path end)
  return ops
end

local function v2_json(sim)
  local paths = {}
  for _, op in ipairs(v2_operations(sim)) do
    local params = array()
    for _, name in ipairs(QUERY) do
      params[#params + 1] = { name = name, ["in"] = "query", type = name == "force" and "boolean" or "string", uniqueItems = true }
    end
    paths[op.path] = { patch = {
      description = op.description, operationId = op.id, tags = array { op.tag },
      consumes = array(op.consumes), produces = array(PRODUCES), schemes = array { "https" }, parameters = params,
      responses = { ["200"] = { description = "OK" } },
      ["x-kubernetes-action"] = "patch",
      ["x-kubernetes-group-version-kind"] = { group = op.t.group, kind = op.t.kind, version = op.t.version },
    } }
  end
  return { swagger = "2.0", info = { title = "Kubernetes", version = sim.version }, paths = paths, definitions = {} }
end

-- gnostic's openapi_v2.Document (openapiv2/OpenAPIv2.proto), with only what kubectl reads.
local function v2_protobuf(sim)
  local pb = protobuf
  local function strings(num, list)
    local out = {}
    for i, s in ipairs(list) do out[i] = pb.bytes(num, s) end
    return table.concat(out)
  end
  local function extension(name, yaml) return pb.message(13, { pb.bytes(1, name), pb.message(2, { pb.bytes(2, yaml) }) }) end
  local function query(name)
    local sub = { pb.bytes(2, "query"), pb.bytes(4, name), pb.bytes(6, name == "force" and "boolean" or "string"), pb.bool(20, true) }
    -- ParametersItem.parameter -> Parameter.non_body_parameter -> NonBodyParameter.query_parameter_sub_schema
    return pb.message(8, { pb.message(1, { pb.message(2, { pb.message(3, sub) }) }) })
  end
  local paths = {}
  for _, op in ipairs(v2_operations(sim)) do
    local parts = { pb.bytes(1, op.tag), pb.bytes(3, op.description), pb.bytes(5, op.id), strings(6, PRODUCES), strings(7, op.consumes) }
    for _, name in ipairs(QUERY) do parts[#parts + 1] = query(name) end
    parts[#parts + 1] = pb.message(9, { pb.message(1, { pb.bytes(1, "200"), pb.message(2, { pb.message(1, { pb.bytes(1, "OK") }) }) }) })
    parts[#parts + 1] = pb.bytes(10, "https")
    parts[#parts + 1] = extension("x-kubernetes-action", "patch\n")
    parts[#parts + 1] = extension("x-kubernetes-group-version-kind", op.gvk)
    -- Paths.path -> NamedPathItem{name, PathItem{patch = 8}}
    paths[#paths + 1] = pb.message(2, { pb.bytes(1, op.path), pb.message(2, { pb.message(8, parts) }) })
  end
  return table.concat {
    pb.bytes(1, "2.0"), pb.message(2, { pb.bytes(1, "Kubernetes"), pb.bytes(2, sim.version) }), pb.message(8, paths),
  }
end

local function serve_v2(sim, req, res)
  if (req.headers.accept or ""):find("protobuf", 1, true) then
    -- the real server serves the bytes as it serves a file: application/octet-stream
    return res:send(200, v2_protobuf(sim), { ["Content-Type"] = "application/octet-stream", Vary = "Accept" })
  end
  api_mod.send_json(res, 200, v2_json(sim))
end

function M.install(sim)
  sim.extra_routes.openapi = function(req, res, parts)
    if parts[2] == "v2" and #parts == 2 then return serve_v2(sim, req, res) end
    if parts[2] ~= "v3" then
      return api_mod.send_status(res, 404, "the server could not find the requested resource", "NotFound")
    end
    if #parts == 2 then return api_mod.send_json(res, 200, root(sim)) end
    local gv = table.concat(parts, "/", 3)
    local doc = gv_document(sim, gv)
    if not next(doc.paths) then
      return api_mod.send_status(res, 404, "the server could not find the requested resource", "NotFound")
    end
    api_mod.send_json(res, 200, doc, { ["Cache-Control"] = "public, immutable" })
  end
end

return M
