-- A throw-away PKI for specs, made by the real openssl command: root and intermediate CAs,
-- server or client certificates they sign (or self-signed ones), with RSA, EC or Ed25519
-- keys, valid now or over any window (an expired one, a future one).
--
--   local pki = require("spec.support.pki").new()        -- a temp folder
--   pki:ca("root")
--   pki:ca("int", { by = "root", subject = "/O=Test/CN=Test Intermediate CA", key = "ec" })
--   pki:cert("server", { by = "int", cn = "kube.test", san = "DNS:kube.test,IP:127.0.0.1" })
--   pki:cert("old", { by = "root", cn = "kube.test", from = -30 * 86400, to = -86400 })
--   pki:cert("self", { cn = "kube.test", key = "ed25519" })  -- no `by`: self-signed
--   pki:key("stray", "ec"); pki:bundle("chain.crt", "server.crt", "int.crt")
--   pki:path("server.crt"), pki:read("server.key"), pki:remove()
local run = require "spec.support.run"

local M = {}
local Pki = {}
Pki.__index = Pki

local CONFIG = [[
[ca]
default_ca = ca_default
[ca_default]
dir = DIR
database = DIR/index.txt
serial = DIR/serial
new_certs_dir = DIR
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
organizationName = optional
commonName = supplied
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_intermediate]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_server]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
]]

-- openssl genpkey's arguments for each key type.
local KEYS = {
  rsa = { "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048" },
  ec = { "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256" },
  ed25519 = { "-algorithm", "ED25519" },
}

local function append(list, more)
  for _, v in ipairs(more) do list[#list + 1] = v end
  return list
end

function Pki:path(name) return self.dir .. "/" .. name end

function Pki:openssl(...)
  local r = run.run { "openssl", ... }
  assert(r.status == 0, "openssl " .. table.concat({ ... }, " ") .. ": " .. r.stderr)
  return r.stdout
end

function Pki:write(name, text)
  local f = assert(io.open(self:path(name), "w"))
  f:write(text)
  f:close()
end

function Pki:read(name)
  local f = assert(io.open(self:path(name)))
  local s = f:read("a")
  f:close()
  return s
end

--- The files, one after the other, in `out` (a chain: leaf first, then each issuer).
function Pki:bundle(out, ...)
  local parts = {}
  for i, name in ipairs { ... } do parts[i] = self:read(name) end
  self:write(out, table.concat(parts))
end

--- A private key in name.key: "rsa" (2048 bits, the default), "ec" (P-256) or "ed25519".
function Pki:key(name, kind)
  self:openssl(table.unpack(append({ "genpkey", "-out", self:path(name .. ".key") }, KEYS[kind or "rsa"])))
end

local function stamp(offset) return os.date("!%Y%m%d%H%M%SZ", os.time() + offset) end

-- Each certificate gets its own extensions section: the usage's, plus its SANs.
local function extensions(self, name, usage, san)
  local conf = self:read("pki.cnf")
  local base = conf:match("%[v3_" .. usage .. "%]\n(.-)\n%[") or conf:match("%[v3_" .. usage .. "%]\n(.*)$")
  local section = "ext_" .. name
  self:write("pki.cnf", conf .. ("\n[%s]\n%s\n%s\n"):format(section, base, san and ("subjectAltName = " .. san) or ""))
  return section
end

--- A certificate signed by opts.by, or self-signed without it: cn (default the name) or a
--- whole subject ("/O=x/CN=y"), san ("DNS:x,IP:y"), key (a type, see Pki:key), usage
--- "server" (default), "client", "ca" or "intermediate", validity {days=} (default 2) or
--- {from=, to=} offsets in seconds from now (signed certificates only).
function Pki:cert(name, opts)
  local ext = extensions(self, name, opts.usage or "server", opts.san)
  self:key(name, opts.key)
  local subject = opts.subject or ("/CN=" .. (opts.cn or name))
  local req = { "req", "-config", self:path("pki.cnf"), "-key", self:path(name .. ".key"), "-subj", subject }
  if not opts.by then
    return self:openssl(table.unpack(append(req, { "-x509", "-extensions", ext, "-out", self:path(name .. ".crt"),
      "-days", tostring(opts.days or 2) })))
  end
  self:openssl(table.unpack(append(req, { "-new", "-out", self:path(name .. ".csr") })))
  local args = { "ca", "-batch", "-notext", "-config", self:path("pki.cnf"), "-cert", self:path(opts.by .. ".crt"),
    "-keyfile", self:path(opts.by .. ".key"), "-in", self:path(name .. ".csr"), "-out", self:path(name .. ".crt"),
    "-extensions", ext }
  if opts.from then
    append(args, { "-startdate", stamp(opts.from), "-enddate", stamp(opts.to) })
  else
    append(args, { "-days", tostring(opts.days or 2) })
  end
  self:openssl(table.unpack(args))
end

--- A CA: a self-signed root, or an intermediate (path length 0) signed by opts.by; the
--- options of Pki:cert.
function Pki:ca(name, opts)
  local o = { usage = opts and opts.by and "intermediate" or "ca" }
  for k, v in pairs(opts or {}) do o[k] = v end
  self:cert(name, o)
end

function Pki:remove() os.execute("rm -rf '" .. self.dir .. "'") end

function M.new(dir)
  dir = dir or run.tmpdir()
  os.execute("mkdir -p '" .. dir .. "'")
  local self = setmetatable({ dir = dir }, Pki)
  self:write("pki.cnf", (CONFIG:gsub("DIR", dir)))
  self:write("index.txt", "")
  self:write("serial", "1000\n")
  return self
end

return M
