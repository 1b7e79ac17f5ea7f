-- A throw-away PKI for specs, made by the real openssl command: CAs, and server or client
-- certificates they sign, valid now or over any window (an expired one, a future one).
--
--   local pki = require("spec.support.pki").new()        -- a temp folder
--   pki:ca("root")
--   pki:cert("server", { by = "root", cn = "kube.test", san = "DNS:kube.test,IP:127.0.0.1" })
--   pki:cert("old", { by = "root", cn = "kube.test", from = -30 * 86400, to = -86400 })
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
commonName = supplied
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
[v3_client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
]]

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

local function stamp(offset) return os.date("!%Y%m%d%H%M%SZ", os.time() + offset) end

--- A self-signed CA valid for `days` (default 2).
function Pki:ca(name, opts)
  opts = opts or {}
  self:openssl("req", "-x509", "-config", self:path("pki.cnf"), "-extensions", "v3_ca", "-newkey", "rsa:2048", "-nodes",
    "-keyout", self:path(name .. ".key"), "-out", self:path(name .. ".crt"), "-subj", "/CN=" .. (opts.cn or name),
    "-days", tostring(opts.days or 2))
end

--- A certificate signed by opts.by: cn, san ("DNS:x,IP:y"), usage "server" (default) or
--- "client", validity {days=} or {from=, to=} offsets in seconds from now.
function Pki:cert(name, opts)
  local usage = opts.usage or "server"
  -- each certificate gets its own extensions section: the usage's, plus its SANs
  local ext = "v3_" .. name
  local base = self:read("pki.cnf"):match("%[v3_" .. usage .. "%]\n(.-)\n%[") or
    self:read("pki.cnf"):match("%[v3_" .. usage .. "%]\n(.*)$")
  self:write("pki.cnf", self:read("pki.cnf") .. ("\n[%s]\n%s\n%s\n"):format(ext, base,
    opts.san and ("subjectAltName = " .. opts.san) or ""))
  self:openssl("req", "-new", "-config", self:path("pki.cnf"), "-newkey", "rsa:2048", "-nodes",
    "-keyout", self:path(name .. ".key"), "-out", self:path(name .. ".csr"), "-subj", "/CN=" .. (opts.cn or name))
  local args = { "ca", "-batch", "-notext", "-config", self:path("pki.cnf"), "-cert", self:path(opts.by .. ".crt"),
    "-keyfile", self:path(opts.by .. ".key"), "-in", self:path(name .. ".csr"), "-out", self:path(name .. ".crt"),
    "-extensions", ext }
  if opts.from then
    for _, a in ipairs { "-startdate", stamp(opts.from), "-enddate", stamp(opts.to) } do args[#args + 1] = a end
  else
    args[#args + 1], args[#args + 2] = "-days", tostring(opts.days or 2)
  end
  self:openssl(table.unpack(args))
end

function Pki:remove() os.execute("rm -rf '" .. self.dir .. "'") end

function M.new(dir)
  if not dir then
    dir = os.tmpname()
    os.remove(dir)
  end
  os.execute("mkdir -p '" .. dir .. "'")
  local self = setmetatable({ dir = dir }, Pki)
  self:write("pki.cnf", (CONFIG:gsub("DIR", dir)))
  self:write("index.txt", "")
  self:write("serial", "1000\n")
  return self
end

return M
