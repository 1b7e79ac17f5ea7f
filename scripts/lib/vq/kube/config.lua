-- kubeconfig exactly as kubectl reads it: $KUBECONFIG (several files merged by clientcmd's
-- rules: the first file to define a name or current-context wins), ~/.kube/config, or an
-- explicit file; the context's cluster, user and namespace; relative paths against the
-- file's folder; exec credential plugins; the in-cluster service account.
local yaml = require "yaml"
local log = require "log"

local M = {}

local function err(code, message, details)
  return require("vq").error(code, message, details)
end

local function read_file(path)
  local f, e = io.open(path, "rb")
  if not f then return nil, e end
  local data = f:read("a")
  f:close()
  return data
end

local function dir_of(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function resolve(base, p)
  if not p or p == "" or p:sub(1, 1) == "/" then return p end
  if p:sub(1, 2) == "~/" then return (os.getenv("HOME") or "") .. p:sub(2) end
  return base .. "/" .. p
end

-- A kubeconfig field as a string, or nil when it is absent or of another type (null,
-- a number, a map): bad input is an error message, never a crash.
local function str(v)
  if type(v) == "string" and v ~= "" then return v end
end

local function list_of(v)
  return type(v) == "table" and v or {}
end

local function unbase64(s)
  local ok, v = pcall(function() return require("vq.base64").decode(s) end)
  if ok then return v end
end

-- ---- loading and merging ----

local function named_map(list, field, file)
  local out = {}
  if type(list) ~= "table" then return out end
  for _, entry in ipairs(list) do
    if type(entry) == "table" and type(entry.name) == "string" then
      local v = type(entry[field]) == "table" and entry[field] or {}
      v.__file = file
      out[entry.name] = v
    end
  end
  return out
end

--- Parse one kubeconfig's text (path names it in errors and resolves relative paths).
function M.parse(text, path)
  if text:match("^%s*$") then return { clusters = {}, users = {}, contexts = {}, file = path } end
  local doc, derr = yaml.decode(text, { file = path })
  if doc == nil then
    return nil, err("kubeconfig", derr and derr.message or ("cannot parse " .. path), { file = path, line = derr and derr.line, column = derr and derr.column })
  end
  if type(doc) ~= "table" then return nil, err("kubeconfig", path .. ": not a kubeconfig (expected a mapping)", { file = path }) end
  return {
    clusters = named_map(doc.clusters, "cluster", path),
    users = named_map(doc.users, "user", path),
    contexts = named_map(doc.contexts, "context", path),
    current = type(doc["current-context"]) == "string" and doc["current-context"] ~= "" and doc["current-context"] or nil,
    file = path,
  }
end

local function load_one(path)
  local text, e = read_file(path)
  if not text then return nil, err("kubeconfig", ("cannot read %s: %s"):format(path, e), { file = path }) end
  return M.parse(text, path)
end

local function file_exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
end

--- The files kubectl would read, in precedence order.
function M.files(explicit)
  if explicit then return { explicit }, true end
  local env = os.getenv("KUBECONFIG")
  if env and env ~= "" then
    local out, seen = {}, {}
    for p in env:gmatch("[^:]+") do
      if not seen[p] then seen[p] = true out[#out + 1] = p end
    end
    return out, false
  end
  return { (os.getenv("HOME") or "") .. "/.kube/config" }, false
end

--- Load and merge: {clusters, users, contexts, current, files}.
function M.load(explicit)
  local files, must_exist = M.files(explicit)
  local merged = { clusters = {}, users = {}, contexts = {}, files = {} }
  for _, path in ipairs(files) do
    if must_exist or file_exists(path) then
      local one, e = load_one(path)
      if not one then return nil, e end
      merged.files[#merged.files + 1] = path
      for _, kind in ipairs { "clusters", "users", "contexts" } do
        for name, v in pairs(one[kind]) do
          if merged[kind][name] == nil then merged[kind][name] = v end
        end
      end
      merged.current = merged.current or one.current
    end
  end
  return merged
end

-- ---- in-cluster ----

local SA = "/var/run/secrets/kubernetes.io/serviceaccount"

function M.in_cluster()
  local host, port = os.getenv("KUBERNETES_SERVICE_HOST"), os.getenv("KUBERNETES_SERVICE_PORT")
  if not host or not port then return nil end
  local token = read_file(SA .. "/token")
  if not token then return nil end
  if host:find(":", 1, true) then host = "[" .. host .. "]" end
  local ns = read_file(SA .. "/namespace")
  return {
    server = "https://" .. host .. ":" .. port, ca_file = SA .. "/ca.crt",
    token_file = SA .. "/token", namespace = ns and ns:gsub("%s+$", "") or "default",
    context = "in-cluster", cluster_name = "in-cluster", user_name = "in-cluster",
  }
end

-- ---- a context resolved into what the transport needs ----

local function cluster_settings(c, base, out)
  out.server = c.server
  if type(out.server) ~= "string" or out.server == "" then return nil, "has no server" end
  out.server = out.server:gsub("/+$", "")
  out.ca_file = resolve(base, str(c["certificate-authority"]))
  if str(c["certificate-authority-data"]) then
    out.ca_data = unbase64(c["certificate-authority-data"])
    if not out.ca_data then return nil, "certificate-authority-data is not valid base64" end
  end
  out.insecure = c["insecure-skip-tls-verify"] == true
  out.tls_server_name = str(c["tls-server-name"])
  out.proxy = str(c["proxy-url"])
  return true
end

local function user_settings(u, base, out, name)
  if u.username or u.password then
    return nil, ("user %q uses basic authentication (username/password), which Kubernetes removed in 1.19: use a token, a client certificate or an exec plugin"):format(name)
  end
  if u["auth-provider"] then
    local provider = type(u["auth-provider"]) == "table" and str(u["auth-provider"].name) or "?"
    return nil, ("user %q uses the %q auth-provider, which kubectl no longer supports: use its exec plugin (e.g. gke-gcloud-auth-plugin, kubelogin)"):format(name, provider)
  end
  out.token = str(u.token)
  out.token_file = resolve(base, str(u.tokenFile))
  out.cert_file = resolve(base, str(u["client-certificate"]))
  out.key_file = resolve(base, str(u["client-key"]))
  if str(u["client-certificate-data"]) then out.cert_data = unbase64(u["client-certificate-data"]) end
  if str(u["client-key-data"]) then out.key_data = unbase64(u["client-key-data"]) end
  if type(u.exec) == "table" then
    local e = u.exec
    local cmd = str(e.command)
    if not cmd then return nil, ("user %q: exec needs a command"):format(name) end
    if cmd:find("/", 1, true) and cmd:sub(1, 1) ~= "/" then cmd = resolve(base, cmd) end
    local args, env = {}, {}
    for _, a in ipairs(list_of(e.args)) do args[#args + 1] = tostring(a) end
    for _, kv in ipairs(list_of(e.env)) do
      if type(kv) == "table" and str(kv.name) then env[#env + 1] = { name = kv.name, value = tostring(kv.value or "") } end
    end
    out.exec = { command = cmd, args = args, env = env, api_version = str(e.apiVersion),
                 interactive_mode = str(e.interactiveMode) or "IfAvailable", provide_cluster_info = e.provideClusterInfo == true,
                 install_hint = str(e.installHint) }
  end
  if out.token then log.secret(out.token) end
  if out.key_data then log.secret(out.key_data) end
  return true
end

--- Resolve a context ({kubeconfig=, context=, namespace=}) into connection settings,
--- or nil, err naming the file.
function M.resolve(opts)
  opts = opts or {}
  local cfg, e = M.load(opts.kubeconfig)
  if not cfg then return nil, e end
  return M.from_config(cfg, opts)
end

--- The connection settings of a loaded (merged) kubeconfig's context.
function M.from_config(cfg, opts)
  cfg.files = cfg.files or { cfg.file }
  local ctx_name = opts.context or cfg.current
  if not ctx_name then
    if #cfg.files == 0 then
      local ic = M.in_cluster()
      if ic then
        ic.namespace = opts.namespace or ic.namespace
        return ic
      end
      return nil, err("kubeconfig", "no kubeconfig found (KUBECONFIG, ~/.kube/config) and not running in a pod")
    end
    return nil, err("kubeconfig", "no current context set in " .. table.concat(cfg.files, ", ") .. ": pass a context", { files = cfg.files })
  end
  local ctx = cfg.contexts[ctx_name]
  if ctx then ctx.cluster, ctx.user, ctx.namespace = str(ctx.cluster), str(ctx.user), str(ctx.namespace) end
  if not ctx then
    return nil, err("kubeconfig", ("context %q not found in %s"):format(ctx_name, table.concat(cfg.files, ", ")), { files = cfg.files })
  end
  local out = { context = ctx_name, cluster_name = ctx.cluster, user_name = ctx.user }
  local cluster = cfg.clusters[ctx.cluster or ""]
  if not cluster then
    return nil, err("kubeconfig", ("context %q names cluster %q, which %s does not define"):format(ctx_name, tostring(ctx.cluster), table.concat(cfg.files, ", ")), { file = ctx.__file })
  end
  local ok, why = cluster_settings(cluster, dir_of(cluster.__file), out)
  if not ok then return nil, err("kubeconfig", ("cluster %q in %s %s"):format(ctx.cluster, cluster.__file, why), { file = cluster.__file }) end
  if ctx.user then
    local user = cfg.users[ctx.user]
    if not user then
      return nil, err("kubeconfig", ("context %q names user %q, which %s does not define"):format(ctx_name, ctx.user, table.concat(cfg.files, ", ")), { file = ctx.__file })
    end
    ok, why = user_settings(user, dir_of(user.__file), out, ctx.user)
    if not ok then return nil, err("kubeconfig", why .. " (" .. user.__file .. ")", { file = user.__file }) end
  end
  out.namespace = opts.namespace or ctx.namespace or "default"
  out.files = cfg.files
  return out
end

-- ---- exec credential plugins ----

--- Run the exec plugin; returns {token=} or {cert_data=, key_data=} with expires (epoch), or nil, err.
function M.run_exec(settings)
  local e = settings.exec
  if e.interactive_mode == "Always" then
    return nil, err("exec_plugin", ("%s needs an interactive terminal (interactiveMode: Always), and vqlua runs it unattended"):format(e.command))
  end
  local json = require "json"
  local api_version = e.api_version or "client.authentication.k8s.io/v1"
  local info = { kind = "ExecCredential", apiVersion = api_version, spec = { interactive = false } }
  if e.provide_cluster_info then
    info.spec.cluster = { server = settings.server, ["tls-server-name"] = settings.tls_server_name,
      ["insecure-skip-tls-verify"] = settings.insecure or nil,
      ["certificate-authority-data"] = settings.ca_data and require("vq.base64").encode(settings.ca_data) or nil }
  end
  local env = {}
  for _, kv in ipairs(e.env) do env[kv.name] = kv.value end
  env.KUBERNETES_EXEC_INFO = json.encode(info)
  local argv = { e.command }
  for _, a in ipairs(e.args) do argv[#argv + 1] = a end
  local proc = require "vq.proc"
  local r, perr = proc.run { argv = argv, env = env, timeout = 60 }
  if not r then
    local hint = e.install_hint and ("\n" .. e.install_hint) or ""
    return nil, err("exec_plugin", ("cannot run %s: %s%s"):format(e.command, perr and perr.message or "?", hint))
  end
  if r.code ~= 0 then
    return nil, err("exec_plugin", ("%s exited with %d: %s"):format(e.command, r.code, (r.stderr or ""):sub(1, 500)))
  end
  local cred, derr = json.decode(r.stdout)
  if type(cred) ~= "table" or type(cred.status) ~= "table" then
    return nil, err("exec_plugin", ("%s did not print an ExecCredential: %s"):format(e.command, derr and derr.message or "no status"))
  end
  local st = cred.status
  local out = { token = st.token, cert_data = st.clientCertificateData, key_data = st.clientKeyData }
  if not out.token and not (out.cert_data and out.key_data) then
    return nil, err("exec_plugin", e.command .. " returned neither a token nor a client certificate and key")
  end
  if out.token then log.secret(out.token) end
  if out.key_data then log.secret(out.key_data) end
  if st.expirationTimestamp then out.expires = require("vq.time").parse(st.expirationTimestamp) end
  return out
end

return M
