-- vq.tls: certificates, keys and chains for runbooks (renewing the certificate an ingress
-- serves, checking a Secret before applying it). OpenSSL does the reading and the
-- verifying (bindings/tls.c); this layer decides what counts as a problem and says so in
-- words an operator can act on.
--
-- A certificate is a plain table: subject, issuer, cn, sans = {dns, ip}, serial,
-- not_before/not_after (epoch seconds) and not_before_iso/not_after_iso, days_left,
-- fingerprint (SHA-256, colon hex), key_type/key_bits/key_curve, signature_algorithm,
-- self_signed, is_ca, pem; loaded ones also carry index (position in the file) and source.
-- A private key is an object that never shows its material: key.type/bits/curve/encrypted/
-- file, key:matches(cert), key:close().
--
-- Host names are matched as browsers match them today: against the DNS names of the
-- subjectAltName only (the CN is never consulted, even without SANs), a wildcard only as
-- the whole left-most label; an IP address only against IP SANs.
local core = require "vq.core.tls"
local vq = require "vq"
local base64 = require "vq.base64"

local tls = {}

--- Days a leaf may have left before check reports note it (not a problem yet).
tls.WARN_DAYS = 30

local DAY = 86400

local function add(list, item) list[#list + 1] = item end

local function tls_error(file, reason, message)
  return vq.error("tls", message, { file = file, reason = reason })
end

-- Local files are small and on local disks: read synchronously.
local function read_file(path)
  local f, why = io.open(path, "rb")
  if not f then return nil, tls_error(path, "unreadable", ("cannot read %s"):format(why)) end
  local text = f:read("a")
  f:close()
  if not text then return nil, tls_error(path, "unreadable", ("cannot read %s"):format(path)) end
  return text
end

local function annotate(certs, source)
  for i, c in ipairs(certs) do
    c.index, c.source = i, source
  end
  return certs
end

--- Certificates from PEM text (a Secret's decoded tls.crt): every block a certificate and
--- nothing else, or nil, err {code = "tls", file = name, reason =, message =}.
function tls.parse_chain(pem, name)
  name = name or "input"
  local certs, err = core.load_certs(pem, name)
  if not certs then return nil, err end
  return annotate(certs, name)
end

--- Certificates from a PEM file, leaf first as the file has them: list | nil, err.
function tls.load_chain(path)
  local text, err = read_file(path)
  if not text then return nil, err end
  return tls.parse_chain(text, path)
end

--- A private key from PEM text: key | nil, err. opts.passphrase decrypts an encrypted key
--- (it is registered as a secret first); without it an encrypted key is
--- nil, {reason = "encrypted"}, never a prompt.
function tls.parse_key(pem, opts)
  opts = opts or {}
  if opts.passphrase then require("log").secret(opts.passphrase) end
  return core.load_key(pem, opts.name or "input", opts.passphrase)
end

--- A private key from a PEM file: key | nil, err (see parse_key).
function tls.load_key(path, opts)
  local text, err = read_file(path)
  if not text then return nil, err end
  local o = { name = path }
  for k, v in pairs(opts or {}) do o[k] = v end
  return tls.parse_key(text, o)
end

--- Does the key belong to the certificate (the same public key)?
function tls.key_matches(key, cert) return core.key_matches(key, cert) end

--- Does the certificate cover host? true, the name that matched | false, why.
function tls.covers(cert, host)
  local name = tostring(host):gsub("%.$", "")
  local matched, err = core.check_host(cert, name)
  if matched == nil then return false, err.message end
  if matched then return true, matched end
  local names = {}
  for _, d in ipairs(cert.sans.dns) do names[#names + 1] = "DNS:" .. d end
  for _, ip in ipairs(cert.sans.ip) do names[#names + 1] = "IP:" .. ip end
  if #names == 0 then
    return false, ("it has no subjectAltName (browsers ignore its CN%s)"):format(
      cert.cn and (" " .. cert.cn) or "")
  end
  return false, "its names are " .. table.concat(names, ", ")
end

-- ---- wording ----

local function days(n)
  if n < 1 then return "less than a day" end
  return n == 1 and "1 day" or ("%d days"):format(n)
end

local function whole_days(seconds) return math.floor(seconds / DAY) end

-- "leaf", "certificate 2 (CN = ...)", or a certificate from the trust store.
local function label(cert, from_file, leaf)
  local name = cert.cn and ("CN = " .. cert.cn) or cert.subject
  if leaf and cert.fingerprint == leaf.fingerprint then return "leaf" end
  if not from_file then
    return (cert.self_signed and "the root CA " or "the CA ") .. name .. " (trust store)"
  end
  return ("certificate %d (%s)"):format(from_file, name)
end

local function time_problem(what, cert, at, name)
  if name == "expired" then
    return ("%s expired %s ago (%s)"):format(what, days(whole_days(at - cert.not_after)),
      cert.not_after_iso)
  end
  return ("%s is not valid until %s (in %s)"):format(what, cert.not_before_iso,
    days(whole_days(cert.not_before - at)))
end

-- ---- the checks ----

local function by_fingerprint(certs)
  local index = {}
  for i, c in ipairs(certs) do index[c.fingerprint] = index[c.fingerprint] or i end
  return index
end

local ORDER = "(leaf first, then each issuer)"

-- Leaf first, then each certificate's issuer: say where the file departs from that.
local function check_order(certs, problems)
  for i = 1, #certs - 1 do
    if not core.issued_by(certs[i + 1], certs[i]) then
      local other
      for j = 1, #certs do
        if j ~= i and j ~= i + 1 and core.issued_by(certs[j], certs[i]) then other = j break end
      end
      local msg = ("certificate %d is not the issuer of certificate %d"):format(i + 1, i)
      if core.issued_by(certs[i], certs[i + 1]) then
        msg = msg .. ": it is the other way round, so the order is wrong " .. ORDER
      elseif other then
        msg = msg .. (" (certificate %d is): the order is wrong "):format(other) .. ORDER
      end
      add(problems, msg)
    end
  end
end

-- The certificate no other one in the file was issued by: the leaf, wherever it sits.
local function find_leaf(certs)
  for i, c in ipairs(certs) do
    local issues_another = false
    for j, other in ipairs(certs) do
      if i ~= j and core.issued_by(c, other) then issues_another = true break end
    end
    if not issues_another and not c.is_ca then return c end
  end
  return certs[1]
end

local function with_leaf_first(certs, leaf)
  local list = { leaf }
  for _, c in ipairs(certs) do
    if c ~= leaf then list[#list + 1] = c end
  end
  return list
end

local function verify_problem(e, cert, what, store, at)
  local n = e.name
  if n == "issuer_missing" then
    return ("the chain stops at %s: intermediate missing (or a root CA that is not in %s)"):format(
      cert.issuer, store)
  elseif n == "self_signed" then
    return "the leaf is self-signed: no CA vouches for it, so clients will not trust it"
  elseif n == "untrusted_root" then
    return ("%s is a root CA that is not in %s"):format(what, store)
  elseif n == "expired" or n == "not_yet_valid" then
    return time_problem(what, cert, at, n)
  elseif n == "wrong_purpose" and e.depth == 0 then
    return "the leaf is not for TLS servers (its extendedKeyUsage lacks serverAuth)"
  end
  return ("%s: %s"):format(what, e.reason)
end

local function check_trust(certs, opts, report, leaf)
  local at = opts.at or os.time()
  local r, err = core.verify(certs, { ca_file = opts.ca_file, ca_dir = opts.ca_dir, at = at })
  if not r then
    add(report.problems, err.message)
    return
  end
  report.verified_chain = r.chain
  local store = opts.ca_file or opts.ca_dir or "the system trust store"
  local in_file, seen = by_fingerprint(certs), {}
  for _, e in ipairs(r.errors) do
    local key = e.depth .. e.name
    local cert = r.chain[e.depth + 1]
    if cert and not seen[key] then
      seen[key] = true
      local what = label(cert, in_file[cert.fingerprint], leaf)
      add(report.problems, verify_problem(e, cert, what, store, at))
    end
  end
  local top = r.chain[#r.chain]
  if #certs > 1 and top and top.self_signed and in_file[top.fingerprint] then
    add(report.notes, ("the file includes the root CA (%s): clients have "
      .. "their own copy, so it need not be sent"):format(top.subject))
  end
end

local function note_expiry(certs, leaf, at, report)
  for i, c in ipairs(certs) do
    if not c.not_after or not c.not_before then
      -- a certificate OpenSSL parsed but whose dates it could not read: say so, judge nothing
      add(report.problems, ("%s has validity dates that cannot be read"):format(label(c, i)))
      return
    end
  end
  report.days_left = whole_days(leaf.not_after - at)
  local warn = report.warn_days or tls.WARN_DAYS
  if report.days_left >= 0 and report.days_left < warn and leaf.not_before <= at then
    add(report.notes, ("the leaf expires in %s (%s)"):format(
      days(report.days_left), leaf.not_after_iso))
  end
  for i, c in ipairs(certs) do
    if c ~= leaf and c.not_after < leaf.not_after and c.not_after > at then
      add(report.notes, ("%s expires on %s, before the leaf"):format(
        label(c, i), c.not_after_iso))
    end
  end
end

--- Check a chain (as loaded, or a fetch result): order, completeness up to a trusted root, validity
--- now or at opts.at, and that it covers opts.host. opts: ca_file, ca_dir, at, host,
--- warn_days. Returns a report {ok, problems = {...}, notes = {...}, leaf, days_left,
--- matched, chain, verified_chain}.
function tls.check_chain(certs, opts)
  certs, opts = certs.certs or certs, opts or {}
  local at = opts.at or os.time()
  local report = { problems = {}, notes = {}, chain = certs, warn_days = opts.warn_days }
  check_order(certs, report.problems)
  local leaf = find_leaf(certs)
  report.leaf = leaf
  check_trust(with_leaf_first(certs, leaf), opts, report, leaf)
  note_expiry(certs, leaf, at, report)
  if opts.host then
    local ok, what = tls.covers(leaf, opts.host)
    if ok then
      report.matched = what
    else
      add(report.problems, ("the leaf does not cover %s: %s"):format(opts.host, what))
    end
  end
  report.ok = #report.problems == 0
  return report
end

--- Check the files an ingress would serve: check_files{cert=, key=, host=, ca_file=, at=,
--- passphrase=} -> the check_chain report, plus the key: it must load and match the leaf.
--- A file that does not load is a problem in the report too.
function tls.check_files(opts)
  local certs, err = tls.load_chain(opts.cert)
  local report
  if certs then
    report = tls.check_chain(certs, opts)
  else
    report = { problems = { err.message }, notes = {}, errors = { err } }
  end
  if opts.key then
    local key, kerr = tls.load_key(opts.key, { passphrase = opts.passphrase })
    if not key then
      add(report.problems, kerr.message)
    else
      report.key = key:info()
      if report.leaf and not key:matches(report.leaf) then
        add(report.problems, ("the private key %s does not match the leaf "
          .. "certificate (%s)"):format(opts.key, report.leaf.subject))
      end
      key:close()
    end
  end
  report.ok = #report.problems == 0
  return report
end

-- ---- what a server presents ----

--- The chain a server presents, fetched without trusting it (the task waits, the loop
--- runs): fetch_chain{host=, port = 443, sni = host (none for an IP address; false: none),
--- timeout = 10} ->
--- {certs, protocol, cipher, address, host, port, sni} | nil, err (connect, resolve,
--- timeout, tls, connection).
function tls.fetch_chain(opts)
  local r, err = core.fetch_chain(opts)
  if not r then return nil, err end
  annotate(r.certs, ("%s:%d"):format(r.host, r.port))
  return r
end

--- served(host [, port [, sni]]): the same, positionally.
function tls.served(host, port, sni)
  return tls.fetch_chain { host = host, port = port, sni = sni }
end

--- Fetch and check in one go: check_served{host=, port=, sni=, ca_file=, at=, timeout=}
--- -> the check_chain report (for the name asked for: sni, else host) with protocol and
--- cipher | nil, err when no handshake happened.
function tls.check_served(opts)
  local r, err = tls.fetch_chain(opts)
  if not r then return nil, err end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.host = opts.sni or opts.host
  local report = tls.check_chain(r.certs, o)
  report.protocol, report.cipher, report.address = r.protocol, r.cipher, r.address
  return report
end

-- ---- comparing chains ----

local function decode_secret_value(value, name)
  if value:find("-----BEGIN", 1, true) then return value end
  local pem = base64.decode(value)
  if not pem then return nil, tls_error(name, "not_pem", name .. " is neither PEM nor base64") end
  return pem
end

-- A chain from what a runbook has at hand: a list of certs, a fetch result, a Secret
-- (data base64 as the API returns it) or its data, PEM text, or a file path.
local function as_chain(x, name)
  if type(x) == "table" then
    if x.certs then return x.certs end
    if x[1] and x[1].fingerprint then return x end
    local data = x.data or x
    if type(data["tls.crt"]) == "string" then
      local pem, err = decode_secret_value(data["tls.crt"], name .. " tls.crt")
      if not pem then return nil, err end
      return tls.parse_chain(pem, name .. " tls.crt")
    end
  elseif type(x) == "string" then
    if x:find("-----BEGIN", 1, true) then return tls.parse_chain(x, name) end
    return tls.load_chain(x)
  end
  error(("tls.compare: %s is not a chain, a fetch result, a Secret, PEM text or a path"):format(
    name), 3)
end

--- Are the two chains the same certificates in the same order (by SHA-256 fingerprint)?
--- true | false, the first position where they differ.
function tls.same_chain(a, b)
  a, b = a.certs or a, b.certs or b
  for i = 1, math.max(#a, #b) do
    if not a[i] or not b[i] or a[i].fingerprint ~= b[i].fingerprint then return false, i end
  end
  return true
end

local function short(cert)
  if not cert then return "none" end
  local name = cert.cn and ("CN = " .. cert.cn) or cert.subject
  return ("%s (%s…)"):format(name, cert.fingerprint:sub(1, 11))
end

--- compare(a, b): each a chain, a fetch result, a Secret or its data, PEM text or a path.
--- Returns true, "same" | false, "certificate 2 differs: <a's> vs <b's>" | nil, err.
function tls.compare(a, b)
  local ca, err = as_chain(a, "first")
  if not ca then return nil, err end
  local cb, err2 = as_chain(b, "second")
  if not cb then return nil, err2 end
  local same, i = tls.same_chain(ca, cb)
  if same then return true, "same" end
  return false, ("certificate %d differs: %s vs %s"):format(i, short(ca[i]), short(cb[i]))
end

--- Decode a Secret's base64 value (Kubernetes Secret data): bytes | nil, err.
tls.base64_decode = base64.decode

return tls
