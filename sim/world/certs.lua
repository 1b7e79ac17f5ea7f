-- The installation's certificates, made with the openssl command as a customer's vendor
-- issues them: a root CA, an intermediate and a leaf for the domain, served as the full
-- chain. Generated once per process and domain (key generation is the slow part); the
-- scenarios' variants (self-signed, expiring, without the intermediate) reuse the keys.
-- Private keys stay in memory; only the root's public certificate stays on disk (ca_file).
local fs = require "sim.gradlew.files"

local M = {}

local cache = {}

local function quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local write = fs.write
local function read(path) return assert(fs.read(path)) end

-- Runs once at start, before the server listens: blocking the loop briefly is fine.
local function openssl(dir, args)
  local cmd = ("cd %s && openssl %s > openssl.out 2>&1"):format(quote(dir), args)
  local ok = os.execute(cmd)
  if not ok then error("openssl " .. args .. ":\n" .. read(dir .. "/openssl.out"), 0) end
end

local function config(domain)
  return table.concat({
    "[req]", "distinguished_name = dn", "prompt = no", "[dn]", "CN = " .. domain,
    "[ca]", "basicConstraints = critical,CA:TRUE", "keyUsage = critical,keyCertSign,cRLSign",
    "subjectKeyIdentifier = hash",
    "[intermediate]", "basicConstraints = critical,CA:TRUE,pathlen:0", "keyUsage = critical,keyCertSign,cRLSign",
    "subjectKeyIdentifier = hash", "authorityKeyIdentifier = keyid:always",
    "[leaf]", "basicConstraints = critical,CA:FALSE", "keyUsage = critical,digitalSignature,keyEncipherment",
    "extendedKeyUsage = serverAuth", "subjectAltName = DNS:" .. domain, "subjectKeyIdentifier = hash",
    "authorityKeyIdentifier = keyid",
    "[self]", "basicConstraints = critical,CA:FALSE", "keyUsage = critical,digitalSignature,keyEncipherment",
    "extendedKeyUsage = serverAuth", "subjectAltName = DNS:" .. domain, "subjectKeyIdentifier = hash",
    "",
  }, "\n")
end

local function serial() return ("0x%08x%08x"):format(math.random(0, 0x7fffffff), math.random(0, 0x7fffffff)) end

local function subj(s) return quote(s) end

local function make_dir()
  local path = os.tmpname()
  os.remove(path)
  assert(os.execute("mkdir -m 700 " .. quote(path)))
  return path
end

-- A certificate signed by the issuer (ca or int), with the given section's extensions.
local function sign(dir, name, subject, issuer, section, days)
  openssl(dir, ("req -new -newkey rsa:2048 -nodes -keyout %s.key -out %s.csr -subj %s -config cfg")
    :format(name, name, subj(subject)))
  openssl(dir, ("x509 -req -in %s.csr -CA %s.crt -CAkey %s.key -set_serial %s -days %d -extfile cfg -extensions %s -out %s.crt")
    :format(name, issuer, issuer, serial(), days, section, name))
end

local function remove_dir(dir) os.execute("rm -rf " .. quote(dir)) end

-- Keys live in memory only: each openssl run gets a scratch directory, removed after.
local function with_dir(files, fn)
  local dir = make_dir()
  for name, text in pairs(files) do write(dir .. "/" .. name, text) end
  local ok, err = pcall(fn, dir)
  local out = {}
  if ok then
    for _, name in ipairs(err or {}) do out[name] = read(dir .. "/" .. name) end
  end
  remove_dir(dir)
  if not ok then error(err, 0) end
  return out
end

--- The set for a domain: {domain, ca_pem, ca_file (the root alone, public), intermediate_pem,
--- leaf_pem, key_pem, fullchain, public_pem} (public_pem: the license's public key).
function M.generate(domain)
  if cache[domain] then return cache[domain] end
  local cfg = config(domain)
  local out = with_dir({ cfg = cfg }, function(dir)
    openssl(dir, ("req -x509 -new -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -set_serial %s -subj %s -config cfg -extensions ca")
      :format(serial(), subj("/C=US/O=VQSim Trust Services/CN=VQSim Root CA R1")))
    sign(dir, "int", "/C=US/O=VQSim Trust Services/CN=VQSim TLS Issuing CA 1", "ca", "intermediate", 1825)
    sign(dir, "leaf", "/CN=" .. domain, "int", "leaf", 365)
    openssl(dir, "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out license.key")
    openssl(dir, "pkey -in license.key -pubout -out public.pem")
    return { "ca.crt", "int.crt", "int.key", "leaf.crt", "leaf.key", "leaf.csr", "public.pem" }
  end)
  local ca_file = os.tmpname()
  write(ca_file, out["ca.crt"])
  -- the file goes when the process ends (finalizers run as the Lua state closes)
  cache[ca_file] = setmetatable({}, { __gc = function() os.remove(ca_file) end })
  local set = {
    domain = domain, cfg = cfg, ca_file = ca_file, ca_pem = out["ca.crt"], intermediate_pem = out["int.crt"],
    intermediate_key = out["int.key"], leaf_pem = out["leaf.crt"], key_pem = out["leaf.key"], csr = out["leaf.csr"],
    public_pem = out["public.pem"],
  }
  set.fullchain = set.leaf_pem .. set.intermediate_pem
  cache[domain] = set
  return set
end

--- Another leaf for the set's domain with the same key: opts.days (validity from now),
--- opts.self_signed. Returns the certificate's PEM.
function M.leaf(set, opts)
  opts = opts or {}
  local days = math.max(1, opts.days or 365)
  local files = { cfg = set.cfg, ["leaf.key"] = set.key_pem, ["leaf.csr"] = set.csr,
                  ["int.crt"] = set.intermediate_pem, ["int.key"] = set.intermediate_key }
  return with_dir(files, function(dir)
    if opts.self_signed then
      openssl(dir, ("req -x509 -new -key leaf.key -out new.crt -days %d -set_serial %s -subj %s -config cfg -extensions self")
        :format(days, serial(), subj("/CN=" .. set.domain)))
    else
      openssl(dir, ("x509 -req -in leaf.csr -CA int.crt -CAkey int.key -set_serial %s -days %d -extfile cfg -extensions leaf -out new.crt")
        :format(serial(), days))
    end
    return { "new.crt" }
  end)["new.crt"]
end

return M
