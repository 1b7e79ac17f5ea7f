-- The apiserver's proxy subresources, routed to simulated in-cluster HTTP services.
--
--   GET|POST|PUT|PATCH|DELETE /api/v1/namespaces/{ns}/services/[{scheme}:]{name}[:{port}]/proxy/<path>
--   ... /api/v1/namespaces/{ns}/pods/{name}[:{port}]/proxy/<path>
--
-- A service is a Lua handler: sim.services["ns/name"] = function(req, res, path), with req
-- {method, path, query, query_string, headers, body} as the pod would see it (the
-- apiserver's own bearer token removed, as a real apiserver drops the credential it
-- authenticated) and res the caller's response (send, or start/write/finish).
--
-- Errors, as a real apiserver words them:
--   404 services "x" not found          the Service does not exist
--   503 no service port 9999 found ...  a numeric port the Service does not declare
--   503 no endpoints available for service "x"   no ready endpoint: the Endpoints object
--       has no address, or (without one) no Running+Ready pod matches the selector
--   503 error trying to reach service: dial tcp ...: connection refused   nothing
--       listens: no handler is registered for the Service
-- A Service without a selector and without an Endpoints object counts as ready.
--
-- Built-in services (sim/services/*.lua; their endpoints are listed in each file):
--   shared/influxdb   InfluxDB 1.8 (port 8086)
--   shared/grafana    Grafana (port 80 or 3000)
--   shared/keycloak   Keycloak admin REST and token endpoints under /auth/
--   <vantiq ns>/vantiq   Vantiq REST (port 8080); ns = sim.world_info.namespace, or any
--                      namespace's Service "vantiq" while the world names none
-- "shared" is sim.world_info.shared_namespace when the world says so.
--
-- From Lua, M.call(sim, from_ns, {method=, url="http://influxdb:8086/ping", headers=, body=})
-- makes a request as a pod in from_ns would (cluster DNS names resolve to Services):
-- returns {status, headers, body} or nil, {code = "dns"|"refused", message = ...}.
local api = require "sim.api"
local util = require "sim.util"
local common = require "sim.services.common"

local M = {}

local BUILTIN = { "influxdb", "grafana", "keycloak", "vantiq" }
local SHARED = { influxdb = true, grafana = true, keycloak = true }

-- ---- finding a service's handler ----

local function vantiq_ns(sim) return (sim.world_info or {}).namespace end

local function builtin_for(sim, ns, name)
  local inst = sim.builtin_services
  if not inst or not inst[name] then return nil end
  if SHARED[name] then return ns == common.shared_ns(sim) and inst[name] or nil end
  local vns = vantiq_ns(sim)
  if vns == nil or vns == ns then return inst[name] end
end

--- The handler serving Service ns/name, or nil.
function M.handler(sim, ns, name)
  return (sim.services or {})[ns .. "/" .. name] or builtin_for(sim, ns, name)
end

-- ---- readiness ----

local function pod_ready(pod)
  if pod.metadata.deletionTimestamp then return false end
  local st = pod.status or {}
  if st.phase ~= "Running" then return false end
  for _, c in ipairs(st.conditions or {}) do
    if c.type == "Ready" then return c.status == "True" end
  end
  return false
end

local function selector_reqs(selector)
  local reqs = {}
  for k, v in pairs(selector) do reqs[#reqs + 1] = { key = k, op = "=", value = v } end
  return reqs
end

local function endpoints_ready(ep)
  for _, ss in ipairs(ep.subsets or {}) do
    if #(ss.addresses or {}) > 0 then return true end
  end
  return false
end

--- Whether the Service has a ready endpoint (see the header for the rule).
function M.ready(sim, svc)
  local ns, name = svc.metadata.namespace, svc.metadata.name
  local ep = sim:get("endpoints", ns, name)
  if ep then return endpoints_ready(ep) end
  local selector = svc.spec and svc.spec.selector
  if type(selector) ~= "table" or next(selector) == nil then return true end
  local reqs = selector_reqs(selector)
  for _, pod in ipairs(sim:list("pods", ns)) do
    if util.match_labels(reqs, pod.metadata.labels) and pod_ready(pod) then return true end
  end
  return false
end

-- ---- the request the service sees ----

local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- The path after ".../proxy", undecoded segments kept apart from the apiserver's.
local function proxied_path(req)
  local rest = req.path:match("^/api/v1/namespaces/[^/]+/[^/]+/[^/]+/proxy(.*)$") or ""
  if rest == "" then return "/" end
  return percent_decode(rest)
end

local function inner_request(sim, req, path, ns)
  local headers = {}
  for k, v in pairs(req.headers) do headers[k] = v end
  local token = common.bearer(req)
  if token and (token == sim.token or (sim.extra_tokens and sim.extra_tokens[token])) then
    headers.authorization = nil
  end
  return {
    method = req.method, path = path, query = req.query, query_all = req.query_all,
    query_string = req.query_string, headers = headers, body = req.body, conn_id = req.conn_id,
    service_ns = ns,
    target = path .. ((req.query_string or "") ~= "" and ("?" .. req.query_string) or ""),
  }
end
M.inner_request = inner_request

-- ---- services/proxy ----

--- "[scheme:]name[:port]" -> scheme, name, port (as net.SplitSchemeNamePort reads it).
function M.split_target(s)
  local parts = {}
  for p in (s .. ":"):gmatch("([^:]*):") do parts[#parts + 1] = p end
  if #parts == 1 then return "", parts[1], "" end
  if #parts == 2 then return "", parts[1], parts[2] end
  if #parts == 3 and (parts[1] == "" or parts[1] == "http" or parts[1] == "https") then
    return parts[1], parts[2], parts[3]
  end
end

-- The Service's port for the URL's port (a number or a port name), or nil, message.
local function service_port(svc, port, target)
  local ports = svc.spec and svc.spec.ports or {}
  local num = tonumber(port)
  for _, p in ipairs(ports) do
    if (num and p.port == num) or (not num and (p.name or "") == port) then return p end
  end
  if num then
    return nil, ('no service port %d found for service "%s"'):format(num, svc.metadata.name)
  end
  return nil, ('no endpoints available for service "%s"'):format(target)
end

local function unavailable(res, message)
  api.send_status(res, 503, message, "ServiceUnavailable")
end

local function refused(svc, port)
  local ip = svc.spec and svc.spec.clusterIP or "10.96.0.1"
  return ("error trying to reach service: dial tcp %s:%s: connect: connection refused"):format(ip, port and port.port or 80)
end

local function service_proxy(sim, req, res, r)
  local _, name, port = M.split_target(r.name or "")
  if not name or name == "" then
    return api.send_status(res, 400, "invalid service request " .. tostring(r.name), "BadRequest")
  end
  local svc = sim:get("services", r.ns, name)
  if not svc then
    return api.send_status(res, 404, ('services "%s" not found'):format(name), "NotFound", { name = name, kind = "services" })
  end
  local p, message = service_port(svc, port, r.name)
  if not p then return unavailable(res, message) end
  if not M.ready(sim, svc) then
    return unavailable(res, ('no endpoints available for service "%s"'):format(name))
  end
  local handler = M.handler(sim, r.ns, name)
  if not handler then return api.send_status(res, 503, refused(svc, p), "ServiceUnavailable") end
  local path = proxied_path(req)
  return handler(inner_request(sim, req, path, r.ns), res, path)
end

-- ---- pods/proxy: the pod answers as the Service that selects it ----

local function service_of_pod(sim, pod)
  for _, svc in ipairs(sim:list("services", pod.metadata.namespace)) do
    local sel = svc.spec and svc.spec.selector
    if type(sel) == "table" and next(sel) and util.match_labels(selector_reqs(sel), pod.metadata.labels) then
      local h = M.handler(sim, svc.metadata.namespace, svc.metadata.name)
      if h then return h end
    end
  end
end

local function pod_proxy(sim, req, res, r)
  local name = (r.name or ""):match("^[^:]*")
  local pod = sim:get("pods", r.ns, name)
  if not pod then
    return api.send_status(res, 404, ('pods "%s" not found'):format(name), "NotFound", { name = name, kind = "pods" })
  end
  local handler = pod_ready(pod) and service_of_pod(sim, pod)
  if not handler then
    local ip = pod.status and pod.status.podIP
    return api.send_status(res, 503, ("error trying to reach service: dial tcp %s: connect: connection refused"):format(ip or "<no pod IP>"), "ServiceUnavailable")
  end
  local path = proxied_path(req)
  return handler(inner_request(sim, req, path, r.ns), res, path)
end

-- ---- calls between simulated pods ----

local Capture = {}
Capture.__index = Capture

function Capture:send(status, body, headers)
  self.status, self.body, self.headers = status, body or "", headers or {}
  self.started, self.finished = true, true
  return true
end
function Capture:start(status, headers)
  self.status, self.headers, self.parts, self.started = status, headers or {}, {}, true
  return true
end
function Capture:write(data) self.parts[#self.parts + 1] = data return true end
function Capture:finish()
  if self.parts then self.body = table.concat(self.parts) end
  self.finished = true
end
function Capture:connected() return true end

local function lower_keys(t)
  local out = {}
  for k, v in pairs(t or {}) do out[k:lower()] = v end
  return out
end

local function parse_url(url)
  local scheme, host, port, path = url:match("^(https?)://([^/:?]+):?(%d*)([^#]*)")
  if not scheme then return nil end
  local p, qs = path:match("^([^?]*)%??(.*)$")
  return scheme, host, tonumber(port) or (scheme == "https" and 443 or 80), p ~= "" and p or "/", qs
end

--- A request from a pod in from_ns to an in-cluster URL (see the header).
function M.call(sim, from_ns, opts)
  local scheme, host, port, path, qs = parse_url(opts.url or "")
  if not scheme then return nil, { code = "url", message = "invalid URL " .. tostring(opts.url) } end
  local name, rest = host:match("^([^.]+)%.?(.*)$")
  local ns = rest:match("^([^.]+)") or from_ns
  local svc = sim:get("services", ns, name)
  if not svc then
    return nil, { code = "dns", message = ("dial tcp: lookup %s on 10.96.0.10:53: no such host"):format(host) }
  end
  local p = service_port(svc, tostring(port), name)
  local handler = M.handler(sim, ns, name)
  if not p or not handler or not M.ready(sim, svc) then
    return nil, { code = "refused", message = ("dial tcp %s:%d: connect: connection refused"):format(svc.spec.clusterIP or "10.96.0.1", port) }
  end
  local http = require "sim.http"
  local q, all = http.parse_query(qs)
  local req = { method = opts.method or "GET", path = path, query = q, query_all = all, query_string = qs,
                headers = lower_keys(opts.headers), body = opts.body or "", service_ns = ns }
  req.headers.host = req.headers.host or host
  local res = setmetatable({ req = req }, Capture)
  handler(req, res, path)
  return { status = res.status or 204, headers = lower_keys(res.headers), body = res.body or "" }
end

-- ---- the module ----

function M.install(sim)
  sim.services = sim.services or {}
  sim.builtin_services = {}
  for _, name in ipairs(BUILTIN) do
    sim.builtin_services[name] = require("sim.services." .. name).new(sim)
  end
  local shared = common.shared_ns(sim)
  for name in pairs(SHARED) do
    sim.services[shared .. "/" .. name] = sim.services[shared .. "/" .. name] or sim.builtin_services[name]
  end
  sim.subresources["services/proxy"] = service_proxy
  sim.subresources["pods/proxy"] = pod_proxy
end

function M.started(sim)
  local ns = vantiq_ns(sim)
  if ns then sim.services[ns .. "/vantiq"] = sim.services[ns .. "/vantiq"] or sim.builtin_services.vantiq end
end

return M
