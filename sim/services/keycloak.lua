-- Keycloak (the `keycloak` Service in shared; reached at https://<domain>/auth/ through the
-- edge), as the install runbook creates the system admin with it. Shapes of Keycloak 15-21
-- with the legacy /auth prefix. Realms: master (the admin user: `keycloak`, or
-- sim.world_info.keycloak.admin_user; its password is sim.keycloak_admin_password, else
-- the Secret shared/keycloak key `password`, read when first needed, as Keycloak reads
-- it once at its first start) and the Vantiq realm (sim.world_info.realm or "vantiq").
-- State: sim.keycloak (realm(name), add_user(realm, rep), find_user, verify).
--   POST /auth/realms/{realm}/protocol/openid-connect/token   form: grant_type=password
--        (client_id=admin-cli, username, password) or refresh_token -> access_token (a JWT,
--        expires after sim.keycloak_token_lifespan or 60 s), refresh_token;
--        401 invalid_grant "Invalid user credentials", 401 invalid_client, 400 unsupported_grant_type
--   GET  /auth/realms/{realm}, .../.well-known/openid-configuration, .../openid-connect/userinfo
-- Admin API (Bearer token of master's admin, or of a realm user holding realm-management's
-- realm-admin or manage-users for that realm; 401 {"error":"HTTP 401 Unauthorized"} without):
--   GET  /auth/admin/realms, /auth/admin/realms/{realm}
--   GET  .../users[?username=&exact=true&email=&search=&first=&max=&briefRepresentation=]
--   POST .../users                {username, enabled, emailVerified, email, credentials:
--                                 [{type:"password", value, temporary}]} -> 201 + Location;
--                                 409 {"errorMessage":"User exists with same username"}
--   GET  .../users/count          GET|PUT|DELETE .../users/{id}
--   PUT  .../users/{id}/reset-password   {type:"password", value, temporary}
--   GET  .../users/{id}/role-mappings    {realmMappings, clientMappings}
--   GET|POST|DELETE .../users/{id}/role-mappings/realm
--   GET|POST|DELETE .../users/{id}/role-mappings/clients/{client id or clientId}
--   GET  .../users/{id}/role-mappings/clients/{client}/available|composite
--   GET  .../clients[?clientId=realm-management&search=true]   GET .../clients/{id}
--   GET  .../clients/{id}/roles[/{role}]    GET .../roles
local json = require "json"
local common = require "sim.services.common"

local M = {}

M.VERSION = "15.0.2"

local array = common.array

M.REALM_MANAGEMENT_ROLES = {
  "create-client", "impersonation", "manage-authorization", "manage-clients", "manage-events",
  "manage-identity-providers", "manage-realm", "manage-users", "query-clients", "query-groups",
  "query-realms", "query-users", "realm-admin", "view-authorization", "view-clients", "view-events",
  "view-identity-providers", "view-realm", "view-users",
}

-- ---- realms, clients, roles, users ----

local function role(name, container, client_role, composite)
  return { id = common.uuid(), name = name, description = "${role_" .. name .. "}",
           composite = composite or false, clientRole = client_role, containerId = container }
end

local function add_client(realm, client_id, o)
  local c = { id = common.uuid(), clientId = client_id, name = "${client_" .. client_id .. "}",
              bearerOnly = o.bearer or false, publicClient = o.public or false,
              directAccessGrantsEnabled = o.direct or false, roles = {} }
  for _, r in ipairs(o.roles or {}) do c.roles[#c.roles + 1] = role(r, c.id, true, r == "realm-admin") end
  realm.clients[#realm.clients + 1] = c
  return c
end

local function new_realm(name)
  local realm = { id = name, name = name, users = {}, clients = {}, created = {} }
  realm.roles = { role("default-roles-" .. name, name, false, true), role("offline_access", name, false),
                  role("uma_authorization", name, false) }
  add_client(realm, "account", {})
  add_client(realm, "account-console", { public = true })
  add_client(realm, "admin-cli", { public = true, direct = true })
  add_client(realm, "broker", {})
  add_client(realm, "security-admin-console", { public = true })
  if name == "master" then
    realm.roles[#realm.roles + 1] = role("admin", name, false, true)
    realm.roles[#realm.roles + 1] = role("create-realm", name, false)
    add_client(realm, "master-realm", { bearer = true, roles = M.REALM_MANAGEMENT_ROLES })
  else
    add_client(realm, "realm-management", { bearer = true, roles = M.REALM_MANAGEMENT_ROLES })
  end
  return realm
end

local State = {}
State.__index = State

local function vantiq_realm_name(sim) return (sim.world_info or {}).realm or "vantiq" end

--- The realm called name, created when it is master or the Vantiq realm.
function State:realm(name)
  if self.realms[name] then return self.realms[name] end
  if name ~= "master" and name ~= vantiq_realm_name(self.sim) then return nil end
  local realm = new_realm(name)
  self.realms[name] = realm
  if name == "master" then
    local user = ((self.sim.world_info or {}).keycloak or {}).admin_user or "keycloak"
    self:add_user(realm, { username = user, enabled = true, admin = true }).boot_admin = true
  else
    add_client(self:realm("master"), name .. "-realm", { bearer = true, roles = M.REALM_MANAGEMENT_ROLES })
  end
  return realm
end

function State:add_user(realm, o)
  local u = { id = common.uuid(), username = o.username:lower(), enabled = o.enabled == true,
              emailVerified = o.emailVerified == true, email = o.email, firstName = o.firstName,
              lastName = o.lastName, attributes = o.attributes, requiredActions = {},
              createdTimestamp = math.floor(common.now(self.sim) * 1000),
              realm_roles = { [realm.roles[1].id] = true }, client_roles = {} }
  if o.admin then
    for _, r in ipairs(realm.roles) do
      if r.name == "admin" then u.realm_roles[r.id] = true end
    end
  end
  realm.users[#realm.users + 1] = u
  return u
end

function State:find_user(realm, field, value)
  for i, u in ipairs(realm.users) do
    if u[field] == value then return u, i end
  end
end

local function admin_password(sim)
  if sim.keycloak_admin_password then return sim.keycloak_admin_password end
  local ns = common.shared_ns(sim)
  return common.secret_value(sim, ns, "keycloak", "password")
end

-- The password a user logs in with; master's `keycloak` takes it from the Secret on first use.
function State:password_of(u)
  if u.boot_admin and not u.password_set then
    if self.sim.keycloak_admin_password then return self.sim.keycloak_admin_password end
    u.password = u.password or admin_password(self.sim)
  end
  return u.password
end

--- user or nil, error, description: a password login as Keycloak judges it.
function State:verify(realm_name, username, password)
  local realm = self:realm(realm_name)
  local u = realm and self:find_user(realm, "username", (username or ""):lower())
  local want = u and self:password_of(u)
  if not u or not want or want ~= password then return nil, 401, "Invalid user credentials" end
  if not u.enabled then return nil, 400, "Account disabled" end
  if #u.requiredActions > 0 then return nil, 400, "Account is not fully set up" end
  return u
end

-- ---- representations ----

local function role_rep(r)
  return { id = r.id, name = r.name, description = r.description, composite = r.composite,
           clientRole = r.clientRole, containerId = r.containerId }
end

local function user_rep(u, brief)
  local rep = { id = u.id, createdTimestamp = u.createdTimestamp, username = u.username, enabled = u.enabled,
                totp = false, emailVerified = u.emailVerified, firstName = u.firstName, lastName = u.lastName,
                email = u.email }
  if brief then return rep end
  rep.attributes = u.attributes
  rep.disableableCredentialTypes = array()
  rep.requiredActions = array { table.unpack(u.requiredActions) }
  rep.notBefore = 0
  rep.access = { manageGroupMembership = true, view = true, mapRoles = true, impersonate = true, manage = true }
  return rep
end

local function client_rep(c)
  return {
    id = c.id, clientId = c.clientId, name = c.name, surrogateAuthRequired = false, enabled = true,
    alwaysDisplayInConsole = false, clientAuthenticatorType = "client-secret", redirectUris = array(),
    webOrigins = array(), notBefore = 0, bearerOnly = c.bearerOnly, consentRequired = false,
    standardFlowEnabled = not c.bearerOnly, implicitFlowEnabled = false,
    directAccessGrantsEnabled = c.directAccessGrantsEnabled, serviceAccountsEnabled = false,
    publicClient = c.publicClient, frontchannelLogout = false, protocol = "openid-connect",
    attributes = {}, authenticationFlowBindingOverrides = {}, fullScopeAllowed = not c.bearerOnly,
    nodeReRegistrationTimeout = 0, defaultClientScopes = array { "web-origins", "roles", "profile", "email" },
    optionalClientScopes = array { "address", "phone", "offline_access", "microprofile-jwt" },
    access = { view = true, configure = true, manage = true },
  }
end

local function realm_rep(realm)
  return { id = realm.id, realm = realm.name, enabled = true, sslRequired = "external",
           registrationAllowed = false, loginWithEmailAllowed = true, duplicateEmailsAllowed = false,
           accessTokenLifespan = 60, notBefore = 0 }
end

-- ---- tokens ----

local function lifespan(sim) return sim.keycloak_token_lifespan or 60 end

function State:issue(req, realm, u, client_id)
  local now = common.now(self.sim)
  local session = common.uuid()
  local access = common.jwt {
    exp = math.floor(now + lifespan(self.sim)), iat = math.floor(now), jti = common.uuid(),
    iss = common.base_url(req) .. "/auth/realms/" .. realm.name, sub = u.id, typ = "Bearer",
    azp = client_id, session_state = session, acr = "1", scope = "profile email", sid = session,
    email_verified = u.emailVerified, preferred_username = u.username,
  }
  local refresh = common.jwt { exp = math.floor(now + 1800), iat = math.floor(now), jti = common.uuid(), typ = "Refresh", sub = u.id }
  self.tokens[access] = { realm = realm.name, user = u.id, exp = now + lifespan(self.sim) }
  self.refresh[refresh] = { realm = realm.name, user = u.id, exp = now + 1800, client = client_id }
  return { access_token = access, expires_in = lifespan(self.sim), refresh_expires_in = 1800,
           refresh_token = refresh, token_type = "Bearer", ["not-before-policy"] = 0,
           session_state = session, scope = "profile email" }
end

local function token_error(res, status, err, description)
  common.reply(res, status, { error = err, error_description = description })
end

local function password_grant(st, req, res, realm, form)
  local client
  for _, c in ipairs(realm.clients) do
    if c.clientId == form.client_id then client = c end
  end
  if not client then return token_error(res, 401, "invalid_client", "Invalid client credentials") end
  if not client.directAccessGrantsEnabled then
    return token_error(res, 400, "unauthorized_client", "Client not allowed for direct access grants")
  end
  local u, code, why = st:verify(realm.name, form.username, form.password)
  if not u then return token_error(res, code, "invalid_grant", why) end
  common.reply(res, 200, st:issue(req, realm, u, client.clientId), { ["Cache-Control"] = "no-store" })
end

local function refresh_grant(st, req, res, realm, form)
  local r = st.refresh[form.refresh_token or ""]
  local u = r and r.realm == realm.name and st:find_user(realm, "id", r.user)
  if not u or r.exp < common.now(st.sim) then return token_error(res, 400, "invalid_grant", "Invalid refresh token") end
  common.reply(res, 200, st:issue(req, realm, u, r.client), { ["Cache-Control"] = "no-store" })
end

local function token_endpoint(st, req, res, realm)
  local form = common.form(req)
  if form.grant_type == "password" then return password_grant(st, req, res, realm, form) end
  if form.grant_type == "refresh_token" then return refresh_grant(st, req, res, realm, form) end
  token_error(res, 400, "unsupported_grant_type", "Unsupported grant_type")
end

--- The live token's {realm, user} for a request's bearer token, or nil.
function State:token(req)
  local t = self.tokens[common.bearer(req) or ""]
  if t and t.exp >= common.now(self.sim) then return t end
end

-- ---- realm (public) endpoints ----

local function realm_public(st, req, res, realm, s)
  local base = common.base_url(req) .. "/auth/realms/" .. realm.name
  if s[3] == "protocol" and s[5] == "token" and req.method == "POST" then return token_endpoint(st, req, res, realm) end
  if s[3] == "protocol" and s[5] == "userinfo" then
    local t = st:token(req)
    local u = t and t.realm == realm.name and st:find_user(realm, "id", t.user)
    if not u then return common.reply(res, 401, nil, { ["WWW-Authenticate"] = 'Bearer realm="' .. realm.name .. '", error="invalid_token"' }) end
    return common.reply(res, 200, { sub = u.id, email_verified = u.emailVerified, preferred_username = u.username, email = u.email })
  end
  if s[3] == ".well-known" then
    return common.reply(res, 200, { issuer = base, token_endpoint = base .. "/protocol/openid-connect/token",
      userinfo_endpoint = base .. "/protocol/openid-connect/userinfo",
      authorization_endpoint = base .. "/protocol/openid-connect/auth",
      grant_types_supported = array { "authorization_code", "implicit", "refresh_token", "password", "client_credentials" } })
  end
  if not s[3] then
    return common.reply(res, 200, { realm = realm.name, public_key = common.b64url(common.random_bytes(270)),
      ["token-service"] = base .. "/protocol/openid-connect", ["account-service"] = base .. "/account",
      ["tokens-not-before"] = 0 })
  end
  common.reply(res, 404, { error = "Unable to find matching target resource method" })
end

-- ---- admin API ----

local function has_client_role(realm, u, client_id, names)
  for _, c in ipairs(realm.clients) do
    if c.clientId == client_id then
      for _, r in ipairs(c.roles) do
        if names[r.name] and (u.client_roles[c.id] or {})[r.id] then return true end
      end
    end
  end
  return false
end

-- Whether the token may administer the realm: master's admin, or the realm's own manager.
local function may_admin(st, t, realm_name)
  local realm = st:realm(t.realm)
  local u = realm and st:find_user(realm, "id", t.user)
  if not u then return false end
  if t.realm == "master" then
    for _, r in ipairs(realm.roles) do
      if r.name == "admin" and u.realm_roles[r.id] then return true end
    end
    return false
  end
  return t.realm == realm_name and has_client_role(realm, u, "realm-management", { ["realm-admin"] = true, ["manage-users"] = true })
end

local function find_client(realm, key)
  for _, c in ipairs(realm.clients) do
    if c.id == key or c.clientId == key then return c end
  end
end

local function find_role(roles, want)
  for _, r in ipairs(roles) do
    if (want.id and r.id == want.id) or (not want.id and r.name == want.name) then return r end
  end
end

local function not_found(res, what) common.reply(res, 404, { error = what }) end

local function paginate(list, q)
  local first, max = tonumber(q.first) or 0, tonumber(q.max) or 100
  local out = array()
  for i = first + 1, math.min(#list, first + max) do out[#out + 1] = list[i] end
  return out
end

local function matches(v, want, exact)
  if not want then return true end
  if not v then return false end
  if exact then return v:lower() == want:lower() end
  return v:lower():find(want:lower(), 1, true) ~= nil
end

local function list_users(st, req, res, realm)
  local q = req.query
  local exact = q.exact == "true"
  local out = {}
  for _, u in ipairs(realm.users) do
    local hit = matches(u.username, q.username, exact) and matches(u.email, q.email, exact)
      and (not q.search or matches(u.username, q.search) or matches(u.email, q.search)
           or matches(u.firstName, q.search) or matches(u.lastName, q.search))
    if hit then out[#out + 1] = user_rep(u, q.briefRepresentation == "true") end
  end
  common.reply(res, 200, paginate(out, q))
end

local function set_credentials(u, creds)
  for _, c in ipairs(creds or {}) do
    if c.type == "password" and type(c.value) == "string" then
      u.password, u.password_set = c.value, true
      if c.temporary == true then u.requiredActions = { "UPDATE_PASSWORD" } end
    end
  end
end

local function email_taken(realm, email, except)
  if type(email) ~= "string" then return false end
  for _, u in ipairs(realm.users) do
    if u ~= except and u.email and u.email:lower() == email:lower() then return true end
  end
  return false
end

local function create_user(st, req, res, realm)
  local body = common.json_body(req)
  if not body then return common.reply(res, 400, { error = "unknown_error" }) end
  if type(body.username) ~= "string" or body.username == "" then
    return common.reply(res, 400, { errorMessage = "User name is missing" })
  end
  if st:find_user(realm, "username", body.username:lower()) then
    return common.reply(res, 409, { errorMessage = "User exists with same username" })
  end
  if email_taken(realm, body.email) then return common.reply(res, 409, { errorMessage = "User exists with same email" }) end
  local u = st:add_user(realm, body)
  if type(body.requiredActions) == "table" then u.requiredActions = { table.unpack(body.requiredActions) } end
  set_credentials(u, body.credentials)
  local location = ("%s/auth/admin/realms/%s/users/%s"):format(common.base_url(req), realm.name, u.id)
  res:send(201, "", { Location = location })
end

local UPDATABLE = { "enabled", "emailVerified", "email", "firstName", "lastName", "attributes" }

local function update_user(st, req, res, realm, u)
  local body = common.json_body(req)
  if not body then return common.reply(res, 400, { error = "unknown_error" }) end
  if email_taken(realm, body.email, u) then return common.reply(res, 409, { errorMessage = "User exists with same email" }) end
  for _, f in ipairs(UPDATABLE) do
    if body[f] ~= nil and body[f] ~= json.null then u[f] = body[f] end
  end
  if type(body.requiredActions) == "table" then u.requiredActions = { table.unpack(body.requiredActions) } end
  set_credentials(u, body.credentials)
  res:send(204, "")
end

local function reset_password(req, res, u)
  local body = common.json_body(req) or {}
  if type(body.value) ~= "string" or body.value == "" then
    return common.reply(res, 400, { errorMessage = "Empty password" })
  end
  u.password, u.password_set = body.value, true
  local actions = {}
  for _, a in ipairs(u.requiredActions) do
    if a ~= "UPDATE_PASSWORD" then actions[#actions + 1] = a end
  end
  if body.temporary == true then actions[#actions + 1] = "UPDATE_PASSWORD" end
  u.requiredActions = actions
  res:send(204, "")
end

local function mapped(roles, set, want)
  local out = array()
  for _, r in ipairs(roles) do
    if (set[r.id] or false) == want then out[#out + 1] = role_rep(r) end
  end
  return out
end

local function role_mappings(res, realm, u)
  local out = { realmMappings = mapped(realm.roles, u.realm_roles, true) }
  for _, c in ipairs(realm.clients) do
    local list = mapped(c.roles, u.client_roles[c.id] or {}, true)
    if #list > 0 then
      out.clientMappings = out.clientMappings or {}
      out.clientMappings[c.clientId] = { id = c.id, client = c.clientId, mappings = list }
    end
  end
  common.reply(res, 200, out)
end

-- GET the mapped (or available) roles; POST/DELETE a list of roles to add or remove.
local function change_mappings(req, res, roles, set, tail)
  if req.method == "GET" then return common.reply(res, 200, mapped(roles, set, tail ~= "available")) end
  local body = common.json_body(req)
  if type(body) ~= "table" then return common.reply(res, 400, { error = "unknown_error" }) end
  local found = {}
  for _, want in ipairs(body) do
    local r = type(want) == "table" and find_role(roles, want)
    if not r then return not_found(res, "Role not found") end
    found[#found + 1] = r
  end
  for _, r in ipairs(found) do set[r.id] = req.method == "POST" or nil end
  res:send(204, "")
end

local function list_clients(req, res, realm)
  local q = req.query
  local out = {}
  for _, c in ipairs(realm.clients) do
    if matches(c.clientId, q.clientId, q.search ~= "true") then out[#out + 1] = client_rep(c) end
  end
  common.reply(res, 200, paginate(out, q))
end

local function client_routes(req, res, realm, s)
  if not s[4] then
    if req.method == "GET" then return list_clients(req, res, realm) end
    return common.reply(res, 405, { error = "Method Not Allowed" })
  end
  local c = find_client(realm, s[4])
  if not c then return not_found(res, "Could not find client") end
  if not s[5] then return common.reply(res, 200, client_rep(c)) end
  if s[5] == "roles" and not s[6] then return common.reply(res, 200, mapped(c.roles, {}, false)) end
  if s[5] == "roles" then
    local r = find_role(c.roles, { name = s[6] })
    if not r then return not_found(res, "Could not find role") end
    return common.reply(res, 200, role_rep(r))
  end
  not_found(res, "Unable to find matching target resource method")
end

local function mapping_routes(req, res, realm, u, s)
  if not s[6] and req.method == "GET" then return role_mappings(res, realm, u) end
  if s[6] == "realm" then return change_mappings(req, res, realm.roles, u.realm_roles, s[7]) end
  if s[6] == "clients" and s[7] then
    local c = find_client(realm, s[7])
    if not c then return not_found(res, "Client not found") end
    u.client_roles[c.id] = u.client_roles[c.id] or {}
    return change_mappings(req, res, c.roles, u.client_roles[c.id], s[8])
  end
  not_found(res, "Unable to find matching target resource method")
end

local function user_routes(st, req, res, realm, s)
  local m = req.method
  if not s[4] then
    if m == "GET" then return list_users(st, req, res, realm) end
    if m == "POST" then return create_user(st, req, res, realm) end
  elseif s[4] == "count" and not s[5] then
    return common.reply(res, 200, #realm.users)
  else
    local u, i = st:find_user(realm, "id", s[4])
    if not u then return not_found(res, "User not found") end
    if not s[5] then
      if m == "GET" then return common.reply(res, 200, user_rep(u)) end
      if m == "PUT" then return update_user(st, req, res, realm, u) end
      if m == "DELETE" then table.remove(realm.users, i) return res:send(204, "") end
    elseif s[5] == "reset-password" and m == "PUT" then
      return reset_password(req, res, u)
    elseif s[5] == "role-mappings" then
      return mapping_routes(req, res, realm, u, s)
    end
  end
  common.reply(res, 405, { error = "Method Not Allowed" })
end

-- s: the segments after /auth/admin/realms: {realm, "users", id, ...}
local function admin(st, req, res, s)
  local t = st:token(req)
  if not t then return common.reply(res, 401, { error = "HTTP 401 Unauthorized" }) end
  if not s[1] then
    local out = array()
    for _, realm in pairs(st.realms) do
      if may_admin(st, t, realm.name) then out[#out + 1] = realm_rep(realm) end
    end
    return common.reply(res, 200, out)
  end
  local realm = st:realm(s[1])
  if not may_admin(st, t, s[1]) then return common.reply(res, 403, { error = "unknown_error" }) end
  if not realm then return not_found(res, "Realm not found.") end
  if not s[2] then return common.reply(res, 200, realm_rep(realm)) end
  if s[2] == "users" then return user_routes(st, req, res, realm, { nil, nil, nil, table.unpack(s, 3) }) end
  if s[2] == "clients" then return client_routes(req, res, realm, { nil, nil, nil, table.unpack(s, 3) }) end
  if s[2] == "roles" and req.method == "GET" then return common.reply(res, 200, mapped(realm.roles, {}, false)) end
  not_found(res, "Unable to find matching target resource method")
end

local function route(st, req, res, path)
  local s = common.segments(path)
  if s[1] ~= "auth" then
    return res:send(404, "<html><body><h1>Resource not found</h1></body></html>", { ["Content-Type"] = "text/html" })
  end
  if not s[2] then
    return res:send(200, "<html><head><title>Welcome to Keycloak</title></head><body></body></html>", { ["Content-Type"] = "text/html" })
  end
  if s[2] == "realms" and s[3] then
    local realm = st:realm(s[3])
    if not realm then return not_found(res, "Realm does not exist") end
    return realm_public(st, req, res, realm, { nil, nil, table.unpack(s, 4) })
  end
  if s[2] == "admin" and s[3] == "realms" then return admin(st, req, res, { table.unpack(s, 4) }) end
  not_found(res, "RESTEASY003210: Could not find resource for full path: " .. path)
end

function M.new(sim)
  local st = setmetatable({ sim = sim, realms = {}, tokens = {}, refresh = {} }, State)
  sim.keycloak = st
  return function(req, res, path) return route(st, req, res, path) end
end

return M
