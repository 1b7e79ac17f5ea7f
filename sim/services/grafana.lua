-- Grafana (the `grafana` Service in shared), its HTTP API as the dashboards' import and
-- the datasource checks use it. Basic auth admin:<password>: sim.grafana_admin_password,
-- else the Secret shared/grafana (admin-user, admin-password), else admin:admin.
--   GET    /api/health                              no auth: {"database":"ok","version":..}
--          (the version: the grafana Deployment's image tag)
--   GET    /api/datasources                         the list
--   POST   /api/datasources                         create: 409 on a duplicate name
--   GET|PUT|DELETE /api/datasources/:id             404 {"message":"Data source not found"}
--   GET|DELETE /api/datasources/name/:name          GET|PUT|DELETE /api/datasources/uid/:uid
--   GET    /api/datasources/id/:name                {"id": n}
--   GET    /api/datasources/:id/health (and uid/:uid/health)   an InfluxDB datasource is
--          queried at its URL from the shared namespace: a wrong host name
--          (http://influxdb-influxdb:8086) fails as Grafana reports it
--   ANY    /api/datasources/proxy/:id/<path>        forwarded to the datasource URL; 502 when
--          it does not resolve or connect (the guide's "HTTP Error Bad Gateway")
--   POST   /api/dashboards/db                       {dashboard, overwrite, folderId}: 412 on
--          a name or uid clash without overwrite
--   POST   /api/dashboards/import                   {dashboard, overwrite, inputs: [{name,
--          type = "datasource", pluginId, value}]}: ${name} replaced by value
--   GET|DELETE /api/dashboards/uid/:uid             GET /api/search?query=&type=dash-db
-- Datasources live in sim.grafana_datasources (a list of Grafana datasource objects; partial
-- ones are completed), so a scenario can set a wrong URL; dashboards in sim.grafana.dashboards.
local json = require "json"
local common = require "sim.services.common"
local util = require "sim.util"

local M = {}

M.VERSION = "8.5.27"

M.DEFAULT_DATASOURCES = {
  { name = "internals", database = "_internal" },
  { name = "kubernetes", database = "kubernetes" },
  { name = "systemDB", database = "systemDB" },
  { name = "vantiqServer", database = "vantiqServer" },
}

local array = common.array

local function reply(res, status, obj) common.reply(res, status, obj) end
local function not_found(res) reply(res, 404, { message = "Data source not found" }) end

-- ---- datasources ----

local function short_uid() return (util.random_suffix(9):gsub("^%l", string.upper)) end

local function complete(ds, id)
  ds.id = ds.id or id
  ds.uid = ds.uid or short_uid()
  ds.orgId = ds.orgId or 1
  ds.type = ds.type or "influxdb"
  ds.typeName = ds.typeName or (ds.type == "influxdb" and "InfluxDB" or ds.type)
  ds.typeLogoUrl = ds.typeLogoUrl or ("public/app/plugins/datasource/%s/img/logo.svg"):format(ds.type)
  ds.access = ds.access or "proxy"
  ds.url = ds.url or ""
  ds.user = ds.user or ""
  ds.jsonData = ds.jsonData or {}
  ds.database = ds.database or ds.jsonData.dbName or ""
  ds.basicAuth = ds.basicAuth or false
  ds.isDefault = ds.isDefault or false
  ds.readOnly = ds.readOnly or false
  ds.version = ds.version or 1
  return ds
end

local function defaults()
  local out = {}
  for i, d in ipairs(M.DEFAULT_DATASOURCES) do
    out[i] = complete({ name = d.name, database = d.database, url = "http://influxdb:8086" }, i)
  end
  return out
end

-- The live list (a scenario may have replaced it), every entry complete.
local function datasources(sim)
  if type(sim.grafana_datasources) ~= "table" then sim.grafana_datasources = defaults() end
  local list, max = sim.grafana_datasources, 0
  for _, ds in ipairs(list) do max = math.max(max, tonumber(ds.id) or 0) end
  for _, ds in ipairs(list) do
    if not ds.id then max = max + 1 end
    complete(ds, max)
  end
  return list
end

local function find_ds(sim, field, value)
  for i, ds in ipairs(datasources(sim)) do
    if tostring(ds[field]) == tostring(value) then return ds, i end
  end
end

local function next_id(sim)
  local max = 0
  for _, ds in ipairs(datasources(sim)) do max = math.max(max, ds.id) end
  return max + 1
end

local function required(res, field)
  reply(res, 400, array { { fieldNames = array { field }, classification = "RequiredError", message = "Required" } })
end

local EDITABLE = { "name", "type", "access", "url", "user", "database", "basicAuth", "basicAuthUser",
                   "withCredentials", "isDefault", "jsonData", "uid" }

local function apply_fields(ds, body)
  for _, f in ipairs(EDITABLE) do
    if body[f] ~= nil and body[f] ~= json.null then ds[f] = body[f] end
  end
  if type(ds.jsonData) == "table" and ds.jsonData.dbName and (ds.database or "") == "" then ds.database = ds.jsonData.dbName end
end

local function create_ds(sim, req, res)
  local body = common.json_body(req) or {}
  if (body.name or "") == "" then return required(res, "Name") end
  if (body.type or "") == "" then return required(res, "Type") end
  if find_ds(sim, "name", body.name) then
    return reply(res, 409, { message = "data source with the same name already exists" })
  end
  local ds = {}
  apply_fields(ds, body)
  complete(ds, next_id(sim))
  table.insert(datasources(sim), ds)
  reply(res, 200, { datasource = ds, id = ds.id, message = "Datasource added", name = ds.name })
end

local function update_ds(sim, req, res, ds)
  local body = common.json_body(req) or {}
  if ds.readOnly then return reply(res, 403, { message = "Cannot update read-only data source" }) end
  if (body.name or "") == "" then return required(res, "Name") end
  local other = find_ds(sim, "name", body.name)
  if other and other ~= ds then return reply(res, 409, { message = "data source with the same name already exists" }) end
  apply_fields(ds, body)
  ds.version = ds.version + 1
  reply(res, 200, { datasource = ds, id = ds.id, message = "Datasource updated", name = ds.name })
end

local function delete_ds(sim, res, ds, i, with_id)
  if ds.readOnly then return reply(res, 403, { message = "Cannot delete read-only data source" }) end
  table.remove(datasources(sim), i)
  reply(res, 200, { id = with_id and ds.id or nil, message = "Data source deleted" })
end

-- ---- datasources, seen from the Grafana pod ----

local function ds_url(ds, path, qs)
  return (ds.url:gsub("/+$", "")) .. path .. ((qs or "") ~= "" and ("?" .. qs) or "")
end

local function escape(s)
  return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local function health(sim, res, ds)
  if ds.type ~= "influxdb" then return reply(res, 200, { status = "OK", message = "Data source is working" }) end
  local url = ds_url(ds, "/query", "q=" .. escape("SHOW MEASUREMENTS") .. "&db=" .. escape(ds.database or ""))
  local r, err = require("sim.proxy").call(sim, common.shared_ns(sim), { url = url })
  if not r then
    return reply(res, 400, { status = "ERROR", message = ('error performing influxQL query: Get "%s": %s'):format(url, err.message) })
  end
  local ok, body = pcall(json.decode, r.body)
  local first = ok and type(body) == "table" and body.results and body.results[1]
  if r.status ~= 200 or not first then
    return reply(res, 400, { status = "ERROR", message = ("InfluxDB returned error: status code %d"):format(r.status) })
  end
  if first.error then return reply(res, 400, { status = "ERROR", message = "InfluxDB returned error: " .. first.error }) end
  local n = first.series and first.series[1] and #first.series[1].values or 0
  reply(res, 200, { status = "OK", message = ("datasource is working. %d measurements found"):format(n) })
end

local function ds_proxy(sim, req, res, ds, rest)
  local r = ds.url ~= "" and require("sim.proxy").call(sim, common.shared_ns(sim), {
    method = req.method, url = ds_url(ds, rest, req.query_string), body = req.body,
    headers = { ["content-type"] = req.headers["content-type"] },
  })
  if not r then return reply(res, 502, { message = "Bad Gateway" }) end
  res:send(r.status, r.body, { ["Content-Type"] = r.headers["content-type"] or "application/json" })
end

-- ---- dashboards ----

local function slugify(title)
  return (title:lower():gsub("[^%w]+", "-"):gsub("^%-+", ""):gsub("%-+$", ""))
end

local function find_dash(state, field, value, folder)
  for i, d in ipairs(state.dashboards) do
    if d[field] == value and (folder == nil or d.folderId == folder) then return d, i end
  end
end

local function substitute(v, inputs)
  if type(v) == "string" then
    return (v:gsub("%${([%w_]+)}", function(name) return inputs[name] end))
  elseif type(v) == "table" then
    local out = {}
    for k, x in pairs(v) do out[k] = substitute(x, inputs) end
    return setmetatable(out, getmetatable(v))
  end
  return v
end

-- Save a dashboard as /api/dashboards/db does; returns the entry or nil, status, body.
local function save_dashboard(state, dash, overwrite, folder)
  if type(dash) ~= "table" or (dash.title or "") == "" then
    return nil, 400, { message = "Dashboard title cannot be empty" }
  end
  folder = tonumber(folder) or 0
  local same_uid = dash.uid and dash.uid ~= json.null and find_dash(state, "uid", dash.uid)
  local same_title = find_dash(state, "title", dash.title, folder)
  local existing = same_uid or same_title
  if existing and not overwrite then
    if same_uid then return nil, 412, { status = "version-mismatch", message = "The dashboard has been changed by someone else" } end
    return nil, 412, { status = "name-exists", message = "A dashboard with the same name in the folder already exists" }
  end
  local entry = existing or { id = state.next_dash, uid = dash.uid ~= json.null and dash.uid or short_uid(), version = 0 }
  if not existing then
    state.next_dash = state.next_dash + 1
    table.insert(state.dashboards, entry)
  end
  entry.title, entry.slug, entry.folderId = dash.title, slugify(dash.title), folder
  entry.version = entry.version + 1
  dash.id, dash.uid, dash.version = entry.id, entry.uid, entry.version
  entry.dashboard = dash
  return entry
end

local function dashboard_db(state, req, res)
  local body = common.json_body(req) or {}
  local e, code, err = save_dashboard(state, body.dashboard, body.overwrite == true, body.folderId)
  if not e then return reply(res, code, err) end
  reply(res, 200, { id = e.id, uid = e.uid, url = ("/d/%s/%s"):format(e.uid, e.slug), status = "success",
                    version = e.version, slug = e.slug })
end

local function dashboard_import(state, req, res)
  local body = common.json_body(req) or {}
  local inputs = {}
  for _, input in ipairs(body.inputs or {}) do
    if input.name then inputs[input.name] = input.value end
  end
  local e, code, err = save_dashboard(state, substitute(body.dashboard, inputs), body.overwrite == true, body.folderId)
  if not e then return reply(res, code, err) end
  reply(res, 200, { uid = e.uid, pluginId = "", title = e.title, imported = true, importedUri = "db/" .. e.slug,
    importedUrl = ("/d/%s/%s"):format(e.uid, e.slug), slug = e.slug, dashboardId = e.id, folderId = e.folderId,
    folderUid = "", importedRevision = 1, revision = 1, description = "", path = "", removed = false })
end

local function search(state, req, res)
  local q = (req.query.query or ""):lower()
  local out = array()
  if req.query.type and req.query.type ~= "dash-db" then return reply(res, 200, out) end
  for _, d in ipairs(state.dashboards) do
    if q == "" or d.title:lower():find(q, 1, true) then
      out[#out + 1] = { id = d.id, uid = d.uid, title = d.title, uri = "db/" .. d.slug, slug = d.slug,
        url = ("/d/%s/%s"):format(d.uid, d.slug), type = "dash-db", tags = array(), isStarred = false,
        folderId = d.folderId ~= 0 and d.folderId or nil }
    end
  end
  reply(res, 200, out)
end

local function dashboard_by_uid(state, req, res, uid)
  local d, i = find_dash(state, "uid", uid)
  if not d then return reply(res, 404, { message = "Dashboard not found" }) end
  if req.method == "DELETE" then
    table.remove(state.dashboards, i)
    return reply(res, 200, { title = d.title, message = ('Dashboard %s deleted'):format(d.title), id = d.id })
  end
  reply(res, 200, { dashboard = d.dashboard, meta = { type = "db", slug = d.slug, url = ("/d/%s/%s"):format(d.uid, d.slug),
    version = d.version, folderId = d.folderId, canSave = true, canEdit = true, provisioned = false } })
end

-- ---- routing ----

local function credentials(sim)
  local ns = common.shared_ns(sim)
  local user = common.secret_value(sim, ns, "grafana", "admin-user") or "admin"
  local pass = sim.grafana_admin_password or common.secret_value(sim, ns, "grafana", "admin-password") or "admin"
  return user, pass
end

local function authorized(sim, req, res)
  local user, pass = common.basic_auth(req)
  if not user then reply(res, 401, { message = "Unauthorized" }) return false end
  local want_user, want_pass = credentials(sim)
  if user ~= want_user or pass ~= want_pass then
    reply(res, 401, { message = "invalid username or password" })
    return false
  end
  return true
end

local function by_key(s)
  if s[3] == "name" or s[3] == "uid" then return s[3], s[4], s[5] end
  if tonumber(s[3]) then return "id", s[3], s[4] end
end

local function datasource_route(sim, req, res, s)
  local m = req.method
  if #s == 2 then
    if m == "GET" then return reply(res, 200, array(datasources(sim))) end
    if m == "POST" then return create_ds(sim, req, res) end
  elseif s[3] == "id" and s[4] and m == "GET" then
    local ds = find_ds(sim, "name", s[4])
    if not ds then return not_found(res) end
    return reply(res, 200, { id = ds.id })
  elseif s[3] == "proxy" and s[4] then
    local ds = find_ds(sim, "id", s[4])
    if not ds then return not_found(res) end
    local rest = "/" .. table.concat(s, "/", 5)
    return ds_proxy(sim, req, res, ds, rest)
  else
    local field, value, tail = by_key(s)
    if not field then return not_found(res) end
    local ds, i = find_ds(sim, field, value)
    if not ds then return not_found(res) end
    if tail == "health" and m == "GET" then return health(sim, res, ds) end
    if tail then return not_found(res) end
    if m == "GET" then return reply(res, 200, ds) end
    if m == "PUT" then return update_ds(sim, req, res, ds) end
    if m == "DELETE" then return delete_ds(sim, res, ds, i, field == "name") end
  end
  reply(res, 405, { message = "Method Not Allowed" })
end

local function route(sim, state, req, res, path)
  local s = common.segments(path)
  if s[1] ~= "api" then return res:send(404, "Not found", { ["Content-Type"] = "text/plain" }) end
  if s[2] == "health" then
    local version = common.workload_tag(sim, common.shared_ns(sim), "grafana") or M.VERSION
    return reply(res, 200, { commit = "vqsim", database = "ok", version = version })
  end
  if not authorized(sim, req, res) then return end
  if s[2] == "datasources" then return datasource_route(sim, req, res, s) end
  if s[2] == "dashboards" and s[3] == "db" and req.method == "POST" then return dashboard_db(state, req, res) end
  if s[2] == "dashboards" and s[3] == "import" and req.method == "POST" then return dashboard_import(state, req, res) end
  if s[2] == "dashboards" and s[3] == "uid" and s[4] then return dashboard_by_uid(state, req, res, s[4]) end
  if s[2] == "search" then return search(state, req, res) end
  reply(res, 404, { message = "Not found" })
end

function M.new(sim)
  local state = { dashboards = {}, next_dash = 1 }
  sim.grafana = state
  return function(req, res, path) return route(sim, state, req, res, path) end
end

return M
