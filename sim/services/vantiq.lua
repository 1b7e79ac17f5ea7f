-- The Vantiq server (the `vantiq` Service, port 8080, in the Vantiq namespace; reached at
-- https://<domain>/ through the edge). Users are those of the Vantiq realm in Keycloak
-- (sim.keycloak), as the real server delegates its logins there.
--   GET  /                         the IDE's page (text/html)
--   GET  /healthz, GET /api/v1/system/health   no auth: 200 {"status":"UP","version":..}
--   GET|POST /authenticate         Basic user:password -> {"accessToken", "idToken",
--                                  "username", "expiresIn"}; 401 on bad credentials
--   GET  /api/v1/system/version    Bearer token (or the system admin key) ->
--                                  {"version":"1.37.4","build":..,"buildTimestamp":..},
--                                  what the IDE's About box shows: the image tag of the
--                                  running vantiq pod (lowest ready ordinal), else of the
--                                  StatefulSet's template, so an upgrade changes it
--   anything else under /api/v1    401 without a token, else 404
-- Errors are Vantiq's list shape: [{"code":"io.vantiq...","message":..,"params":[]}].
-- sim.vantiq_auth_error (a string), when set, makes /authenticate fail with it (a scenario's
-- "SSLHandshakeException" between vantiq and keycloak).
local common = require "sim.services.common"
local proxy = require "sim.proxy"

local M = {}

local array = common.array

local function vantiq_error(res, status, code, message)
  common.reply(res, status, array { { code = code, message = message, params = array() } })
end

-- ---- the version the server reports ----

local function running_pod_tag(sim, ns)
  local best, best_ord
  for _, pod in ipairs(sim:list("pods", ns)) do
    local ord = tonumber(pod.metadata.name:match("^vantiq%-(%d+)$"))
    local phase = pod.status and pod.status.phase
    if ord and phase == "Running" and (not best_ord or ord < best_ord) then best, best_ord = pod, ord end
  end
  local c = best and common.container(best.spec, "vantiq")
  return c and common.image_tag(c.image)
end

--- The version string (the image tag), or "unknown".
function M.version(sim, ns)
  return running_pod_tag(sim, ns) or common.workload_tag(sim, ns, "vantiq") or "unknown"
end

-- ---- logins ----

local function keycloak_ready(sim)
  local svc = sim:get("services", common.shared_ns(sim), "keycloak")
  return svc == nil or proxy.ready(sim, svc)
end

local function authenticate(sim, state, req, res)
  if sim.vantiq_auth_error then
    return vantiq_error(res, 401, "io.vantiq.authentication.failed", sim.vantiq_auth_error)
  end
  local user, pass = common.basic_auth(req)
  if not user then return vantiq_error(res, 401, "io.vantiq.authentication.failed", "Authentication required") end
  if not sim.keycloak or not keycloak_ready(sim) then
    return vantiq_error(res, 500, "io.vantiq.authentication.failed", "Unable to contact the identity provider")
  end
  local u = sim.keycloak:verify((sim.world_info or {}).realm or "vantiq", user, pass)
  if not u then return vantiq_error(res, 401, "io.vantiq.authentication.failed", "Invalid username or password") end
  local token = common.b64url(common.random_bytes(32))
  state.tokens[token] = { username = u.username }
  common.reply(res, 200, { accessToken = token, idToken = common.jwt { sub = u.id, preferred_username = u.username },
                           username = u.username, expiresIn = 86400 })
end

local function authorized(sim, state, req)
  local t = common.bearer(req)
  if not t then return false end
  local key = (sim.world_info or {}).admin_key
  return state.tokens[t] ~= nil or (key ~= nil and t == key)
end

local function version(sim, res, ns)
  local v = M.version(sim, ns)
  common.reply(res, 200, { version = v, build = v .. "-vqsim", buildTimestamp = "2026-01-01T00:00:00Z" })
end

local IDE = [[<!DOCTYPE html>
<html><head><title>Vantiq</title></head><body><div id="vantiq-ide">Vantiq</div></body></html>
]]

local function route(sim, state, ns, req, res, path)
  if path == "/" and req.method == "GET" then return res:send(200, IDE, { ["Content-Type"] = "text/html" }) end
  if path == "/healthz" or path == "/api/v1/system/health" then
    return common.reply(res, 200, { status = "UP", version = M.version(sim, ns) })
  end
  if path == "/authenticate" and (req.method == "GET" or req.method == "POST") then
    return authenticate(sim, state, req, res)
  end
  if path:match("^/api/") then
    if not authorized(sim, state, req) then
      return vantiq_error(res, 401, "io.vantiq.authentication.failed", "Access token is missing or invalid")
    end
    if path == "/api/v1/system/version" then return version(sim, res, ns) end
    return vantiq_error(res, 404, "io.vantiq.resource.not.found", "The requested resource was not found: " .. path)
  end
  res:send(404, "Not Found", { ["Content-Type"] = "text/plain" })
end

function M.new(sim)
  local state = { tokens = {} }
  return function(req, res, path)
    -- the namespace of the Service the request came through, else the world's
    local ns = req.service_ns or (sim.world_info or {}).namespace or "vantiq"
    return route(sim, state, ns, req, res, path)
  end
end

return M
