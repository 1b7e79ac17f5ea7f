-- What the simulated in-cluster services share: JSON replies, credentials from
-- headers, Secrets, forms, ids and JWT-looking tokens.
local json = require "json"
local http = require "sim.http"
local util = require "sim.util"
local base64 = require "vq.base64"

local M = {}

M.array = function(t) return setmetatable(t or {}, json.array_mt) end

function M.reply(res, status, obj, headers)
  local h = { ["Content-Type"] = "application/json" }
  for k, v in pairs(headers or {}) do h[k] = v end
  res:send(status, obj == nil and "" or json.encode(obj), h)
end

--- user, password from an Authorization: Basic header, or nil.
function M.basic_auth(req)
  local b64 = (req.headers.authorization or ""):match("^[Bb]asic%s+(%S+)")
  if not b64 then return nil end
  local user, pass = base64.decode(b64):match("^([^:]*):(.*)$")
  return user, pass
end

function M.bearer(req)
  return (req.headers.authorization or ""):match("^[Bb]earer%s+(%S+)")
end

--- A decoded JSON body that must be an object or array, or nil.
function M.json_body(req)
  local ok, v = pcall(json.decode, req.body or "")
  if ok and type(v) == "table" then return v end
end

--- An application/x-www-form-urlencoded body as a table.
function M.form(req)
  return (http.parse_query(req.body or ""))
end

--- The decoded value of a Secret's key, or nil.
function M.secret_value(sim, ns, name, key)
  local s = sim:get("secrets", ns, name)
  local v = s and s.data and s.data[key]
  if type(v) == "string" then return base64.decode(v) end
end

--- The namespace of the shared services (influxdb, grafana, keycloak).
function M.shared_ns(sim)
  return (sim.world_info or {}).shared_namespace or "shared"
end

M.uuid = util.uuid

function M.b64url(s)
  return (base64.encode(s):gsub("%+", "-"):gsub("/", "_"):gsub("=+$", ""))
end

function M.random_bytes(n)
  local t = {}
  for i = 1, n do t[i] = string.char(math.random(0, 255)) end
  return table.concat(t)
end

--- header.payload.signature, base64url, as an RS256 token looks (the signature is noise).
function M.jwt(claims)
  local header = { alg = "RS256", typ = "JWT", kid = "vqsim-key" }
  return M.b64url(json.encode(header)) .. "." .. M.b64url(json.encode(claims)) .. "." .. M.b64url(M.random_bytes(64))
end

--- The path's segments (already decoded), "/a/b/" -> {"a", "b"}.
function M.segments(path)
  local out = {}
  for p in path:gmatch("[^/]+") do out[#out + 1] = p end
  return out
end

--- The externally visible base URL of a request (ingress sets X-Forwarded-Proto).
function M.base_url(req)
  local proto = req.headers["x-forwarded-proto"] or "http"
  return proto .. "://" .. (req.headers["x-forwarded-host"] or req.headers.host or "localhost")
end

function M.now(sim) return sim.clock:now() end

--- The container called name in a pod spec, else its first.
function M.container(spec, name)
  local containers = spec and spec.containers or {}
  for _, c in ipairs(containers) do
    if c.name == name then return c end
  end
  return containers[1]
end

--- "repo/image:1.2.3" -> "1.2.3"; nil without a tag.
function M.image_tag(image)
  return type(image) == "string" and image:match(":([^:/@]+)$") or nil
end

--- The image tag of workload ns/name's container called name (or its first), or nil:
--- a service reports the version it runs.
function M.workload_tag(sim, ns, name)
  for _, key in ipairs { "statefulsets.apps", "deployments.apps" } do
    local w = sim:get(key, ns, name)
    local c = w and w.spec and w.spec.template and M.container(w.spec.template.spec, name)
    local tag = c and M.image_tag(c.image)
    if tag then return tag end
  end
end

return M
