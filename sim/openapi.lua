-- OpenAPI v3 discovery, as much as kubectl reads: `kubectl apply` (client- and server-side)
-- asks whether the server validates fields itself (the fieldValidation parameter of each
-- type's PATCH operation, matched by x-kubernetes-group-version-kind) and, if it cannot
-- tell, refuses to go on without --validate=false.
local json = require "json"
local resources = require "sim.resources"
local api_mod = require "sim.api"

local M = {}

local function array(t) return setmetatable(t or {}, json.array_mt) end

local function gv_path(t) return t.group == "" and ("api/" .. t.version) or ("apis/" .. t.group .. "/" .. t.version) end

local QUERY = { "dryRun", "fieldManager", "fieldValidation", "force", "pretty" }

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

local function gv_document(gv)
  local paths = {}
  for _, t in ipairs(resources.list) do
    if gv_path(t) == gv and not t.shared_with_only then
      local base = "/" .. gv .. (t.namespaced and "/namespaces/{namespace}/" or "/") .. t.plural .. "/{name}"
      paths[base] = { patch = patch_operation(t) }
    end
  end
  return { openapi = "3.0.0", info = { title = "Kubernetes", version = "unversioned" }, paths = paths,
           components = { schemas = {} } }
end

local function root(sim)
  local paths, seen = {}, {}
  for _, t in ipairs(resources.list) do
    local gv = gv_path(t)
    if not seen[gv] then
      seen[gv] = true
      paths[gv] = { serverRelativeURL = "/openapi/v3/" .. gv .. "?hash=" .. sim.version:gsub("%W", "") }
    end
  end
  return { paths = paths }
end

function M.install(sim)
  sim.extra_routes.openapi = function(req, res, parts)
    if parts[2] ~= "v3" then
      return api_mod.send_status(res, 404, "the server could not find the requested resource", "NotFound")
    end
    if #parts == 2 then return api_mod.send_json(res, 200, root(sim)) end
    local gv = table.concat(parts, "/", 3)
    local doc = gv_document(gv)
    if not next(doc.paths) then
      return api_mod.send_status(res, 404, "the server could not find the requested resource", "NotFound")
    end
    api_mod.send_json(res, 200, doc, { ["Cache-Control"] = "public, immutable" })
  end
end

return M
