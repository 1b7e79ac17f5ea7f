-- InfluxDB 1.8 (the `influxdb` Service in shared, port 8086), as telegraf fills it and
-- Grafana reads it. Endpoints:
--   GET  /ping                         204, X-Influxdb-Version (the StatefulSet's image tag)
--   GET  /health                       200 {"status":"pass", ...}
--   GET|POST /query?q=...&db=...[&epoch=s|ms|u|ns]   InfluxQL, the real JSON shape
--        {"results":[{"statement_id":0,"series":[{"name":..,"columns":[..],"values":[[..]]}]}]}
--        SHOW DATABASES | SHOW MEASUREMENTS [ON db] [LIMIT n] | SHOW FIELD KEYS [FROM m]
--        | SHOW TAG KEYS [FROM m] | SHOW RETENTION POLICIES [ON db] | CREATE DATABASE x
--        | SELECT fields FROM m [WHERE ...] [GROUP BY ...] [LIMIT n] (made-up points)
--   POST /write?db=...                 204; the line protocol's measurements are added
-- The measurements of database kubernetes are sim.influx_measurements (a list; or a table
-- {db = list} for any database), read on every query so a scenario can change them.
local common = require "sim.services.common"
local util = require "sim.util"

local M = {}

M.VERSION = "1.8.1"

M.DEFAULT_MEASUREMENTS = {
  _internal = { "cq", "database", "httpd", "queryExecutor", "runtime", "shard", "subscriber",
                "tsm1_cache", "tsm1_engine", "tsm1_filestore", "tsm1_wal", "write" },
  kubernetes = { "cpu", "disk", "diskio", "docker", "docker_container_blkio", "docker_container_cpu",
                 "docker_container_mem", "docker_container_status", "go_gc_duration_seconds",
                 "kubernetes_daemonset", "kubernetes_deployment", "kubernetes_node",
                 "kubernetes_pod_container", "kubernetes_pod_network", "kubernetes_pod_volume",
                 "kubernetes_statefulset", "kubernetes_system_container", "mem", "mongodb",
                 "net", "nginx_ingress_controller_request_duration_seconds",
                 "nginx_ingress_controller_requests", "processes", "swap", "system" },
  systemDB = { "events", "organizations", "requests", "resources" },
  vantiqServer = { "eventProcessing", "jvm", "requests", "resources", "timers" },
}

-- The version of the image the influxdb StatefulSet runs, else M.VERSION.
local function version(sim)
  return common.workload_tag(sim, common.shared_ns(sim), "influxdb") or M.VERSION
end

local function headers(sim)
  return { ["X-Influxdb-Version"] = version(sim), ["X-Influxdb-Build"] = "OSS", ["Request-Id"] = common.uuid() }
end

local function reply(sim, res, status, obj)
  common.reply(res, status, obj, headers(sim))
end

-- ---- the data ----

local function new_state()
  local dbs = {}
  for db in pairs(M.DEFAULT_MEASUREMENTS) do dbs[db] = true end
  return { dbs = dbs, written = {} }
end

local function sorted_set(set)
  local out = {}
  for k in pairs(set) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local function measurements(sim, state, db)
  local configured = sim.influx_measurements
  local list
  if type(configured) == "table" and configured[1] ~= nil then
    list = db == "kubernetes" and configured or nil
  elseif type(configured) == "table" then
    list = configured[db]
  end
  list = list or M.DEFAULT_MEASUREMENTS[db] or {}
  local set = {}
  for _, m in ipairs(list) do set[m] = true end
  for m in pairs(state.written[db] or {}) do set[m] = true end
  return sorted_set(set)
end

-- ---- InfluxQL, the few statements operators type ----

-- A case-insensitive pattern: letters outside %-escapes match either case.
local function ci(pattern)
  return (pattern:gsub("(%%?)(%a)", function(pct, c)
    if pct ~= "" then return pct .. c end
    return "[" .. c:lower() .. c:upper() .. "]"
  end))
end

local function ident(s)
  s = s:gsub("^%s+", ""):gsub("%s+$", "")
  -- "db"."rp"."m" or db..m: the measurement is the last part
  local last = s:match('"([^"]*)"%s*$') or s:match("([^%.%s]+)%s*$") or s
  return last
end

local function series(name, columns, values)
  return { name = name, columns = common.array(columns), values = common.array(values) }
end

local function result(i, list)
  if not list or #list == 0 then return { statement_id = i } end
  return { statement_id = i, series = common.array(list) }
end

local function rows(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = common.array { v } end
  return out
end

local function limit_of(stmt)
  return tonumber(stmt:match(ci("%slimit%s+(%d+)")) or "")
end

local function trim_list(list, n)
  if not n then return list end
  local out = {}
  for i = 1, math.min(n, #list) do out[i] = list[i] end
  return out
end

local function show_measurements(ctx, i, stmt)
  local db = stmt:match(ci("%son%s+\"?([%w_%-]+)\"?")) or ctx.db
  if not db or db == "" then return { statement_id = i, error = "database name required" } end
  if not ctx.state.dbs[db] then return { statement_id = i, error = "database not found: " .. db } end
  local names = trim_list(measurements(ctx.sim, ctx.state, db), limit_of(stmt))
  return result(i, { series("measurements", { "name" }, rows(names)) })
end

local function show_databases(ctx, i)
  return result(i, { series("databases", { "name" }, rows(sorted_set(ctx.state.dbs))) })
end

local function show_retention(ctx, i, stmt)
  local db = stmt:match(ci("%son%s+\"?([%w_%-]+)\"?")) or ctx.db
  if not db or db == "" then return { statement_id = i, error = "database name required" } end
  if not ctx.state.dbs[db] then return { statement_id = i, error = "database not found: " .. db } end
  return result(i, { series(nil, { "name", "duration", "shardGroupDuration", "replicaN", "default" },
    { common.array { "autogen", "0s", "168h0m0s", 1, true } }) })
end

local function show_keys(kind)
  return function(ctx, i, stmt)
    if not ctx.db or ctx.db == "" then return { statement_id = i, error = "database name required" } end
    local from = stmt:match(ci("%sfrom%s+(.+)$"))
    local names = from and { ident(from:gsub(ci("%slimit.*$"), "")) } or measurements(ctx.sim, ctx.state, ctx.db)
    local list = {}
    for _, m in ipairs(names) do
      if kind == "field" then
        list[#list + 1] = series(m, { "fieldKey", "fieldType" }, { common.array { "value", "float" } })
      else
        list[#list + 1] = series(m, { "tagKey" }, { common.array { "host" } })
      end
    end
    return result(i, list)
  end
end

local function create_database(ctx, i, stmt)
  local db = stmt:match(ci("^create%s+database%s+\"?([%w_%-]+)\"?"))
  ctx.state.dbs[db] = true
  return { statement_id = i }
end

local function column_names(fields)
  local cols = { "time" }
  for f in (fields .. ","):gmatch("([^,]+),") do
    f = f:gsub("^%s+", ""):gsub("%s+$", "")
    local alias = f:match(ci("%sas%s+\"?([%w_]+)\"?$"))
    local fn = f:match("^([%w_]+)%s*%(")
    local name = alias or fn or (f == "*" and "value") or f:gsub('"', "")
    cols[#cols + 1] = name
  end
  return cols
end

local function timestamp(t, epoch)
  local scale = ({ ns = 1e9, u = 1e6, ["µ"] = 1e6, ms = 1e3, s = 1, m = 1 / 60, h = 1 / 3600 })[epoch or ""]
  if scale then return math.floor(t * scale) end
  return util.rfc3339(t)
end

local function select(ctx, i, stmt)
  local fields, from = stmt:match(ci("^select%s+(.-)%s+from%s+(.+)$"))
  if not fields then return nil, "error parsing query: found EOF, expected FROM" end
  local m = ident((from:gsub(ci("%swhere%s.*$"), ""):gsub(ci("%sgroup%s.*$"), ""):gsub(ci("%slimit%s.*$"), "")))
  local db = from:match('^"?([%w_%-]+)"?%.') or ctx.db
  if not db or db == "" then return { statement_id = i, error = "database name required" } end
  if not ctx.state.dbs[db] then return { statement_id = i, error = "database not found: " .. db } end
  local known = false
  for _, name in ipairs(measurements(ctx.sim, ctx.state, db)) do known = known or name == m end
  if not known then return { statement_id = i } end
  local cols = column_names(fields)
  local n = limit_of(stmt) or 10
  local now = math.floor(common.now(ctx.sim) / 10) * 10
  local values = {}
  for r = 1, n do
    local row = { timestamp(now - (n - r) * 10, ctx.epoch) }
    for c = 2, #cols do row[c] = r + c / 10 end
    values[r] = common.array(row)
  end
  return result(i, { series(m, cols, values) })
end

local STATEMENTS = {
  { "^show%s+databases", show_databases },
  { "^show%s+measurements", show_measurements },
  { "^show%s+retention%s+policies", show_retention },
  { "^show%s+field%s+keys", show_keys("field") },
  { "^show%s+tag%s+keys", show_keys("tag") },
  { "^create%s+database%s+%S", create_database },
  { "^select%s", select },
}

local function statements(q)
  local out = {}
  for s in (q .. ";"):gmatch("([^;]*);") do
    s = s:gsub("^%s+", ""):gsub("%s+$", "")
    if s ~= "" then out[#out + 1] = s end
  end
  return out
end

local function run_statement(ctx, i, stmt)
  for _, entry in ipairs(STATEMENTS) do
    if stmt:match(ci(entry[1])) then return entry[2](ctx, i, stmt) end
  end
  local word = stmt:match("^(%S+)") or "EOF"
  return nil, ("error parsing query: found %s, expected SELECT, DELETE, SHOW, CREATE, DROP, EXPLAIN, GRANT, REVOKE, ALTER, SET, KILL at line 1, char 1"):format(word)
end

local function query(sim, state, req, res)
  local params = {}
  for k, v in pairs(req.query or {}) do params[k] = v end
  if req.method == "POST" and (req.headers["content-type"] or ""):find("x-www-form-urlencoded", 1, true) then
    for k, v in pairs(common.form(req)) do params[k] = v end
  end
  local q = params.q
  if not q or q == "" then return reply(sim, res, 400, { error = "missing required parameter \"q\"" }) end
  local ctx = { sim = sim, state = state, db = params.db, epoch = params.epoch }
  local results = {}
  for i, stmt in ipairs(statements(q)) do
    local r, err = run_statement(ctx, i - 1, stmt)
    if not r then return reply(sim, res, 400, { error = err }) end
    results[#results + 1] = r
  end
  reply(sim, res, 200, { results = common.array(results) })
end

local function write(sim, state, req, res)
  local db = req.query.db
  if not db or db == "" then return reply(sim, res, 400, { error = "database is required" }) end
  if not state.dbs[db] then return reply(sim, res, 404, { error = ('database not found: "%s"'):format(db) }) end
  state.written[db] = state.written[db] or {}
  for line in (req.body or ""):gmatch("[^\n]+") do
    local m = line:match("^([^,%s#][^,%s]*)")
    if m then state.written[db][m] = true end
  end
  res:send(204, "", headers(sim))
end

function M.new(sim)
  local state = new_state()
  sim.influxdb = state
  return function(req, res, path)
    if path == "/ping" then
      return res:send(204, "", headers(sim))
    elseif path == "/health" then
      return reply(sim, res, 200, { name = "influxdb", message = "ready for queries and writes", status = "pass", checks = common.array(), version = version(sim) })
    elseif path == "/query" and (req.method == "GET" or req.method == "POST") then
      return query(sim, state, req, res)
    elseif path == "/write" and req.method == "POST" then
      return write(sim, state, req, res)
    end
    res:send(404, "404 page not found\n", { ["Content-Type"] = "text/plain; charset=utf-8" })
  end
end

return M
