-- snapshot: copy the shape of a real Vantiq installation into a world file the simulator
-- loads (vqlua sim/serve.lua --world world.json, or vqlua --rehearse --world world.json),
-- so that a procedure is rehearsed against the cluster it will run on: its namespace
-- names, replica counts, which optional StatefulSets exist, node labels and taints.
-- Secret values are never copied: each is replaced by a generated stand-in of the same
-- kind (a PEM certificate stays a certificate, a password a random password).
--
--   vqlua scripts/snapshot.lua [--context C] [--namespace vantiq] [-o world.json]
local kube = require "vq.kube"
local json = require "json"
local log = require "log"
local base64 = require "vq.base64"

local function option(name, default)
  for i = 1, #arg do
    if arg[i] == name then return arg[i + 1] end
  end
  return default
end

local out_path = option("-o", "world.json")
local k = assert(kube.connect { context = option("--context") })

local function find_vantiq_namespace()
  local given = option("--namespace")
  if given then return given end
  for sts in k:each("statefulsets", { all_namespaces = true }) do
    if sts.metadata.name == "vantiq" then return sts.metadata.namespace end
  end
  error("no StatefulSet named vantiq in any namespace: pass --namespace")
end

-- What the simulator recreates itself (uids, versions, managed fields, status of pods).
local function clean(obj)
  local m = obj.metadata
  obj.metadata = {
    name = m.name, namespace = m.namespace, labels = m.labels, annotations = m.annotations,
    ownerReferences = nil, finalizers = nil,
  }
  if obj.metadata.annotations then
    obj.metadata.annotations["kubectl.kubernetes.io/last-applied-configuration"] = nil
  end
  return obj
end

local function random_text(n)
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
  local out = {}
  for i = 1, n do
    local c = math.random(#chars)
    out[i] = chars:sub(c, c)
  end
  return table.concat(out)
end

local proc = require "vq.proc"
local tls = require "vq.tls"

local function generated_pem(args)
  local dir = assert(require("uv").fs_mkdtemp((os.getenv("TMPDIR") or "/tmp") .. "/vqlua-snapshot-XXXXXX"))
  local argv = { "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
                 "-keyout", dir .. "/key.pem", "-out", dir .. "/cert.pem" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local r = assert(proc.run { argv = argv })
  assert(r.code == 0, "openssl: " .. (r.stderr or ""))
  local function slurp(name)
    local f = assert(io.open(dir .. "/" .. name))
    local text = f:read("a")
    f:close()
    os.remove(dir .. "/" .. name)
    return text
  end
  local cert, key = slurp("cert.pem"), slurp("key.pem")
  os.remove(dir)
  return cert, key
end

-- A certificate stand-in keeps what a runbook checks (common name, DNS and IP names, CA
-- or not) on a fresh key; the real certificate is never copied.
local function stand_in_certificates(value)
  local chain = tls.parse_chain(value, "snapshot")
  if not chain then return nil end
  local out, leaf_key = {}, nil
  for i, cert in ipairs(chain) do
    local args = { "-subj", "/CN=" .. (cert.cn or "stand-in") }
    local sans = {}
    for _, d in ipairs(cert.sans and cert.sans.dns or {}) do sans[#sans + 1] = "DNS:" .. d end
    for _, ip in ipairs(cert.sans and cert.sans.ip or {}) do sans[#sans + 1] = "IP:" .. ip end
    if #sans > 0 then args[#args + 1], args[#args + 2] = "-addext", "subjectAltName=" .. table.concat(sans, ",") end
    if cert.is_ca then args[#args + 1], args[#args + 2] = "-addext", "basicConstraints=critical,CA:TRUE" end
    local pem, key = generated_pem(args)
    out[#out + 1] = pem
    if i == 1 then leaf_key = key end
  end
  return table.concat(out), leaf_key
end

-- A stand-in of the same kind as the real value, never derived from it. pair carries the
-- key of a certificate stand-in, so that a Secret's tls.crt and tls.key still match.
local function stand_in(value, pair)
  if value:find("-----BEGIN CERTIFICATE-----", 1, true) then
    local certs, key = stand_in_certificates(value)
    if certs then
      pair.key = pair.key or key
      return certs
    end
  end
  if value:find("-----BEGIN [%u ]*PRIVATE KEY-----") then
    if pair.key then return pair.key end
    local _, key = generated_pem { "-subj", "/CN=stand-in" }
    return key
  end
  if value:find("-----BEGIN", 1, true) then
    return value:gsub("(-----BEGIN [%u ]+-----).-(-----END [%u ]+-----)", function(b, e)
      return b .. "\n" .. base64.encode(random_text(48)) .. "\n" .. e
    end)
  end
  return random_text(math.max(8, math.min(#value, 32)))
end

local function scrub_secret(s)
  local replaced, pair = 0, {}
  -- certificates first, so that a private key can take its certificate's stand-in key
  local keys = {}
  for key in pairs(s.data or {}) do keys[#keys + 1] = key end
  table.sort(keys, function(a, b)
    local ca = base64.decode(s.data[a]):find("BEGIN CERTIFICATE", 1, true) ~= nil
    local cb = base64.decode(s.data[b]):find("BEGIN CERTIFICATE", 1, true) ~= nil
    if ca ~= cb then return ca end
    return a < b
  end)
  for _, key in ipairs(keys) do
    local plain = base64.decode(s.data[key])
    log.secret(plain)
    s.data[key] = base64.encode((stand_in(plain, pair)))
    replaced = replaced + 1
  end
  s.stringData = nil
  s.metadata.annotations = s.metadata.annotations or {}
  s.metadata.annotations["vqlua.io/stand-in"] = "values generated by scripts/snapshot.lua; not the cluster's"
  return replaced
end

local vantiq_ns = find_vantiq_namespace()
local namespaces = { vantiq_ns, "shared" }
local objects = setmetatable({}, json.array_mt)
local function add(obj) objects[#objects + 1] = clean(obj) end

log.step("Read the installation's shape", 1, 3)
for _, ns in ipairs(namespaces) do
  local nsobj = k:get("namespaces", ns)
  if nsobj then add(nsobj) end
  for _, kind in ipairs { "statefulsets", "deployments", "daemonsets", "cronjobs", "services", "configmaps",
                          "serviceaccounts", "persistentvolumeclaims", "roles", "rolebindings" } do
    for obj in k:each(kind, { namespace = ns }) do
      obj.status = kind == "services" and obj.status or nil
      if kind == "persistentvolumeclaims" and obj.metadata.annotations then
        obj.metadata.annotations["pv.kubernetes.io/bind-completed"] = nil
        obj.metadata.annotations["pv.kubernetes.io/bound-by-controller"] = nil
      end
      add(obj)
    end
  end
end
-- The claims' volumes and classes, so that the simulator binds the claims as they are.
local ours = {}
for _, ns in ipairs(namespaces) do ours[ns] = true end
for obj in k:each("persistentvolumes") do
  local ref = obj.spec and obj.spec.claimRef
  if ref and ours[ref.namespace] then
    obj.status = nil
    obj.spec.claimRef = { namespace = ref.namespace, name = ref.name, kind = "PersistentVolumeClaim", apiVersion = "v1" }
    add(obj)
  end
end
for obj in k:each("storageclasses") do add(obj) end
for obj in k:each("nodes") do
  obj.status = { capacity = obj.status.capacity, allocatable = obj.status.allocatable, nodeInfo = obj.status.nodeInfo,
                 addresses = obj.status.addresses }
  add(obj)
end
for obj in k:each("clusterroles") do
  if (obj.metadata.name or ""):find("^influx") then add(obj) end
end
for obj in k:each("clusterrolebindings") do
  if (obj.metadata.name or ""):find("^influx") then add(obj) end
end
log.step_done("Read the installation's shape", "ok")

log.step("Replace Secret values with stand-ins", 2, 3)
local secrets, values = 0, 0
for _, ns in ipairs(namespaces) do
  for s in k:each("secrets", { namespace = ns }) do
    if s.type ~= "kubernetes.io/service-account-token" then
      values = values + scrub_secret(s)
      secrets = secrets + 1
      add(s)
    end
  end
end
log.info("%d secrets, %d values replaced; none copied", secrets, values)
log.step_done("Replace Secret values with stand-ins", "ok")

log.step("Write " .. out_path, 3, 3)
local world = { apiVersion = "v1", kind = "List", metadata = { annotations = {
  ["vqlua.io/source-context"] = k.context, ["vqlua.io/vantiq-namespace"] = vantiq_ns,
  ["vqlua.io/server-version"] = (k:version() or {}).gitVersion } }, items = objects }
local f = assert(io.open(out_path, "w"))
f:write(json.encode(world, { indent = 2, sort_keys = true }), "\n")
f:close()
log.info("%d objects from context %s; rehearse with: vqlua --rehearse --world %s scripts/<runbook>.lua",
  #objects, k.context, out_path)
log.step_done("Write " .. out_path, "ok")
