-- vq.tls against certificates the real openssl command makes here, and a real nginx.
local tls = require "vq.tls"
local vq = require "vq"
local uv = require "luv"
local log = require "log"
local pki_mod = require "spec.support.pki"
local nginx = require "spec.support.nginx"

local DAY = 86400
local HOST = "vantiq.example.test"
local PASSPHRASE = "correct horse battery staple"

local pki
local function path(name) return pki:path(name) end
local function read(name) return pki:read(name) end
local function write(name, text) pki:write(name, text) end

-- What `openssl x509 -noout -<field>` prints after the "=".
local function x509_field(name, ...)
  local out = pki:openssl("x509", "-in", path(name), "-noout", ...)
  return (out:match("=(.-)%s*$"))
end

local SAN = "DNS:" .. HOST .. ",DNS:*.apps.example.test,IP:127.0.0.1"

-- A leaf the intermediate signs: for HOST, an EC key, 90 days, unless o says otherwise.
local function leaf(name, o)
  o.by, o.key, o.cn, o.san = "int", o.key or "ec", o.cn or HOST, o.san or SAN
  if not o.from then o.days = 90 end
  pki:cert(name, o)
end

local function make_pki()
  pki = pki_mod.new()
  pki:ca("root", { cn = "Vantiq Test Root CA", days = 3650 })
  pki:ca("int", { by = "root", subject = "/O=Vantiq Test/CN=Vantiq Test Intermediate CA", key = "ec", days = 1825 })
  leaf("leaf", {})
  leaf("rsa", { key = "rsa" })
  leaf("ed", { key = "ed25519" })
  leaf("expired", { from = -30 * DAY, to = -3 * DAY - 3600 })
  leaf("future", { from = 2 * DAY + 3600, to = 92 * DAY })
  leaf("other", { cn = "other.example.test", san = "DNS:other.example.test" })
  leaf("partial", { cn = "vq1.example.test", san = "DNS:vq*.example.test" })
  leaf("broken", { cn = "broken.example.test", san = "DNS:broken.example.test" })
  pki:cert("self", { cn = HOST, san = "DNS:" .. HOST, key = "ec", days = 90 })
  pki:key("wrong", "ec")
  pki:openssl("pkey", "-in", path("leaf.key"), "-aes256", "-passout", "pass:" .. PASSPHRASE,
    "-out", path("leaf.enc.key"))
  pki:openssl("rsa", "-in", path("rsa.key"), "-aes256", "-traditional", "-passout", "pass:" .. PASSPHRASE,
    "-out", path("rsa.enc.key"))
  pki:bundle("chain.crt", "leaf.crt", "int.crt")
  pki:bundle("full.crt", "leaf.crt", "int.crt", "root.crt")
  pki:bundle("reversed.crt", "int.crt", "leaf.crt")
  pki:bundle("shuffled.crt", "leaf.crt", "root.crt", "int.crt")
  pki:bundle("expired-chain.crt", "expired.crt", "int.crt")
  pki:bundle("future-chain.crt", "future.crt", "int.crt")
  pki:bundle("other-chain.crt", "other.crt", "int.crt")
end

setup(make_pki)

teardown(function()
  if pki then pki:remove() end
end)

local function has(list, pattern)
  for _, s in ipairs(list) do
    if s:find(pattern) then return true end
  end
  return false, ("%q not in {%s}"):format(pattern, table.concat(list, " | "))
end

local function literal(s) return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")) end

describe("tls.load_chain", function()
  it("describes each certificate as openssl does", function()
    local certs = assert(tls.load_chain(path("chain.crt")))
    assert.are.equal(2, #certs)
    local leaf, int = certs[1], certs[2]
    assert.are.equal(x509_field("leaf.crt", "-subject"), leaf.subject)
    assert.are.equal(x509_field("leaf.crt", "-issuer"), leaf.issuer)
    assert.are.equal("O = Vantiq Test, CN = Vantiq Test Intermediate CA", leaf.issuer)
    assert.are.equal(x509_field("leaf.crt", "-serial"), leaf.serial)
    assert.are.equal(x509_field("leaf.crt", "-fingerprint", "-sha256"), leaf.fingerprint)
    assert.are.equal(x509_field("leaf.crt", "-enddate", "-dateopt", "iso_8601"):gsub(" ", "T"), leaf.not_after_iso)
    assert.are.equal(x509_field("leaf.crt", "-startdate", "-dateopt", "iso_8601"):gsub(" ", "T"), leaf.not_before_iso)
    assert.are.equal(90 * DAY, leaf.not_after - leaf.not_before)
    assert.is_true(leaf.days_left == 89 or leaf.days_left == 90) -- 90 within its first second
    assert.are.same({ dns = { HOST, "*.apps.example.test" }, ip = { "127.0.0.1" } }, leaf.sans)
    assert.are.equal(HOST, leaf.cn)
    assert.are.same({ "EC", 256, "P-256" }, { leaf.key_type, leaf.key_bits, leaf.key_curve })
    assert.are.equal("ecdsa-with-SHA256", leaf.signature_algorithm)
    assert.is_false(leaf.is_ca)
    assert.is_false(leaf.self_signed)
    assert.is_true(int.is_ca)
    assert.are.equal("sha256WithRSAEncryption", int.signature_algorithm)
    assert.are.same({ 1, path("chain.crt") }, { leaf.index, leaf.source })
    assert.are.equal(read("leaf.crt"), leaf.pem)
  end)

  it("tells RSA, EC and Ed25519 keys and self-signed roots", function()
    local rsa = assert(tls.load_chain(path("rsa.crt")))[1]
    assert.are.same({ "RSA", 2048 }, { rsa.key_type, rsa.key_bits })
    assert.is_nil(rsa.key_curve)
    local ed = assert(tls.load_chain(path("ed.crt")))[1]
    assert.are.equal("Ed25519", ed.key_type)
    local root = assert(tls.load_chain(path("root.crt")))[1]
    assert.is_true(root.self_signed)
    assert.is_true(root.is_ca)
    assert.are.equal(root.subject, root.issuer)
  end)

  it("reads a string, such as a Secret's decoded tls.crt", function()
    local certs = assert(tls.parse_chain(read("chain.crt"), "tls.crt"))
    assert.are.equal(x509_field("int.crt", "-fingerprint", "-sha256"), certs[2].fingerprint)
    assert.are.equal("tls.crt", certs[1].source)
  end)

  local bad_inputs = {
    { "an empty file", function() return "" end, "bad.crt is empty", "empty" },
    { "text that is not PEM", function() return "hello\n" end, "is not PEM", "not_pem" },
    { "DER", function() return "\48\130\1\10garbage" end, "looks like DER", "not_pem" },
    { "a key where a certificate is expected", function() return read("leaf.key") end,
      "block 1 %(line 1%) is a private key, not a certificate", "wrong_type" },
    { "a key after the certificates", function() return read("chain.crt") .. read("leaf.key") end,
      "block 3 .* is a private key", "wrong_type" },
    { "garbage between blocks", function() return read("leaf.crt") .. "oops\n" .. read("int.crt") end,
      "line %d+: text outside a PEM block", "stray_text" },
    { "a truncated file", function() local s = read("chain.crt") return s:sub(1, #s - 200) end,
      "malformed or truncated", "malformed" },
    { "a corrupted body", function() return (read("leaf.crt"):gsub("\n(%w)%w%w", "\n%1!!", 1)) end,
      "malformed", "malformed" },
    { "a request", function() return read("leaf.csr") end, "is a CERTIFICATE REQUEST", "wrong_type" },
  }
  for _, case in ipairs(bad_inputs) do
    local what, text, message, reason = case[1], case[2], case[3], case[4]
    it("refuses " .. what .. " with nil, err naming the file", function()
      write("bad.crt", text())
      local certs, err = tls.load_chain(path("bad.crt"))
      assert.is_nil(certs)
      assert.are.equal("tls", err.code)
      assert.are.equal(path("bad.crt"), err.file)
      assert.are.equal(reason, err.reason)
      assert.matches(message, err.message)
      assert.matches(literal(path("bad.crt")), err.message)
    end)
  end

  it("says when a file cannot be read", function()
    local certs, err = tls.load_chain(path("missing.crt"))
    assert.is_nil(certs)
    assert.are.same({ "tls", path("missing.crt"), "unreadable" }, { err.code, err.file, err.reason })
    assert.matches("No such file", err.message)
  end)
end)

describe("tls.load_key", function()
  it("loads RSA, EC and Ed25519 keys and matches them to their certificates", function()
    local leaf = assert(tls.load_chain(path("leaf.crt")))[1]
    local rsa_leaf = assert(tls.load_chain(path("rsa.crt")))[1]
    local cases = { { "leaf", "EC", 256, "P-256" }, { "rsa", "RSA", 2048 }, { "ed", "Ed25519", 256 } }
    for _, c in ipairs(cases) do
      local key = assert(tls.load_key(path(c[1] .. ".key")))
      assert.are.same({ c[2], c[3], c[4], false }, { key.type, key.bits, key.curve, key.encrypted })
      local own = assert(tls.load_chain(path(c[1] .. ".crt")))[1]
      assert.is_true(key:matches(own))
      assert.is_true(tls.key_matches(key, own))
      assert.is_false(key:matches(c[1] == "rsa" and leaf or rsa_leaf))
      key:close()
    end
    local wrong = assert(tls.load_key(path("wrong.key")))
    assert.is_false(wrong:matches(leaf))
  end)

  it("never shows key material", function()
    local key = assert(tls.load_key(path("leaf.key")))
    assert.are.equal(("private key (%s, EC P-256)"):format(path("leaf.key")), tostring(key))
    local info = key:info()
    for _, v in pairs(info) do
      assert.is_falsy(tostring(v):find("BEGIN", 1, true))
    end
    key:close()
    assert.matches("closed", tostring(key))
    assert.has_error(function() return key.type end)
  end)

  it("fails on an encrypted key without a passphrase, without prompting", function()
    for _, name in ipairs { "leaf.enc.key", "rsa.enc.key" } do
      local key, err = tls.load_key(path(name))
      assert.is_nil(key)
      assert.are.same({ "tls", "encrypted", path(name) }, { err.code, err.reason, err.file })
      assert.are.equal(path(name) .. " is encrypted: a passphrase is needed", err.message)
    end
  end)

  it("decrypts with the passphrase, which becomes a secret", function()
    for _, name in ipairs { "leaf.enc.key", "rsa.enc.key" } do
      local key = assert(tls.load_key(path(name), { passphrase = PASSPHRASE }))
      assert.is_true(key.encrypted)
    end
    assert.are.equal("p=***", log.redact("p=" .. PASSPHRASE))
    local key, err = tls.load_key(path("leaf.enc.key"), { passphrase = "not it" })
    assert.is_nil(key)
    assert.are.equal("bad_passphrase", err.reason)
  end)

  it("refuses a certificate where a key is expected", function()
    local key, err = tls.load_key(path("leaf.crt"))
    assert.is_nil(key)
    assert.are.equal("wrong_type", err.reason)
    assert.matches("is a CERTIFICATE, not a private key", err.message)
  end)
end)

describe("tls.covers", function()
  local leaf
  setup(function() leaf = assert(tls.load_chain(path("leaf.crt")))[1] end)

  it("matches names, one-label wildcards and IP addresses by SAN", function()
    assert.are.same({ true, HOST }, { tls.covers(leaf, HOST) })
    assert.are.same({ true, HOST }, { tls.covers(leaf, "Vantiq.Example.Test.") })
    assert.are.same({ true, "*.apps.example.test" }, { tls.covers(leaf, "api.apps.example.test") })
    assert.is_false(tls.covers(leaf, "a.b.apps.example.test"))
    assert.is_false(tls.covers(leaf, "apps.example.test"))
    assert.are.same({ true, "127.0.0.1" }, { tls.covers(leaf, "127.0.0.1") })
    assert.is_false(tls.covers(leaf, "127.0.0.2"))
    local ok, why = tls.covers(leaf, "example.test")
    assert.is_false(ok)
    assert.are.equal("its names are DNS:vantiq.example.test, DNS:*.apps.example.test, IP:127.0.0.1", why)
  end)

  it("refuses partial wildcards", function()
    local partial = assert(tls.load_chain(path("partial.crt")))[1]
    assert.are.same({ "vq*.example.test" }, partial.sans.dns)
    assert.is_false(tls.covers(partial, "vq1.example.test"))
  end)

  it("ignores the CN", function()
    local root = assert(tls.load_chain(path("root.crt")))[1]
    local ok, why = tls.covers(root, "Vantiq Test Root CA")
    assert.is_false(ok)
    assert.matches("no subjectAltName", why)
  end)
end)

describe("tls.check_files", function()
  local function check(cert, extra)
    local opts = { cert = path(cert), key = path("leaf.key"), host = HOST, ca_file = path("root.crt") }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return tls.check_files(opts)
  end

  it("passes a full chain with its key", function()
    local r = check("chain.crt")
    assert.are.same({}, r.problems)
    assert.is_true(r.ok)
    assert.is_true(r.days_left == 89 or r.days_left == 90)
    assert.are.equal(HOST, r.matched)
    assert.are.equal(HOST, r.leaf.cn)
    assert.are.equal(3, #r.verified_chain)
    assert.are.equal("EC", r.key.type)
    assert.are.same({}, r.notes)
  end)

  it("notes a root the file includes", function()
    local r = check("full.crt")
    assert.is_true(r.ok)
    assert.is_true(has(r.notes, "includes the root CA %(CN = Vantiq Test Root CA%)"))
  end)

  it("names a missing intermediate", function()
    local r = check("leaf.crt")
    assert.is_false(r.ok)
    assert.is_true(has(r.problems,
      "^the chain stops at O = Vantiq Test, CN = Vantiq Test Intermediate CA: intermediate missing"))
  end)

  it("names certificates in the wrong order", function()
    local r = check("reversed.crt")
    assert.is_false(r.ok)
    assert.are.same({ "certificate 2 is not the issuer of certificate 1: it is the other way round, "
      .. "so the order is wrong (leaf first, then each issuer)" }, r.problems)
    assert.are.equal(HOST, r.leaf.cn)
    r = check("shuffled.crt")
    assert.is_true(has(r.problems, "^certificate 2 is not the issuer of certificate 1 %(certificate 3 is%)"))
  end)

  it("says how long ago the leaf expired", function()
    local r = check("expired-chain.crt")
    assert.is_false(r.ok)
    assert.is_true(has(r.problems, "^leaf expired 3 days ago %(%d+%-%d+%-%d+T"))
    assert.are.equal(-4, r.days_left)
  end)

  it("says when a leaf becomes valid", function()
    local r = check("future-chain.crt")
    assert.is_false(r.ok)
    assert.is_true(has(r.problems, "^leaf is not valid until .* %(in 2 days%)"))
  end)

  it("checks validity at a given time", function()
    local leaf = assert(tls.load_chain(path("leaf.crt")))[1]
    local r = check("chain.crt", { at = leaf.not_after + 10 * DAY + 3600 })
    assert.is_true(has(r.problems, "^leaf expired 10 days ago"))
    r = check("chain.crt", { at = leaf.not_after - 10 * DAY - 60 })
    assert.is_true(r.ok)
    assert.are.equal(10, r.days_left)
    assert.is_true(has(r.notes, "^the leaf expires in 10 days"))
  end)

  it("finds a key that does not match", function()
    local r = check("chain.crt", { key = path("wrong.key") })
    assert.is_false(r.ok)
    assert.are.same({ ("the private key %s does not match the leaf certificate (CN = %s)"):format(path("wrong.key"), HOST) },
      r.problems)
  end)

  it("finds a self-signed leaf", function()
    local r = check("self.crt", { key = path("self.key") })
    assert.are.same({ "the leaf is self-signed: no CA vouches for it, so clients will not trust it" }, r.problems)
  end)

  it("finds a leaf for another name", function()
    local r = check("other-chain.crt", { key = path("other.key") })
    assert.are.same({ "the leaf does not cover vantiq.example.test: its names are DNS:other.example.test" }, r.problems)
  end)

  it("uses the system trust store by default", function()
    local r = check("chain.crt", { ca_file = false })
    assert.is_true(has(r.problems, "^the chain stops at CN = Vantiq Test Root CA: intermediate missing %(or a root CA that is not in the system trust store%)"))
    r = check("full.crt", { ca_file = false })
    assert.is_true(has(r.problems, "^certificate 3 %(CN = Vantiq Test Root CA%) is a root CA that is not in the system trust store"))
  end)

  it("reports keys and files that do not load", function()
    local r = check("chain.crt", { key = path("leaf.enc.key") })
    assert.are.same({ path("leaf.enc.key") .. " is encrypted: a passphrase is needed" }, r.problems)
    r = check("chain.crt", { key = path("leaf.enc.key"), passphrase = PASSPHRASE })
    assert.is_true(r.ok)
    write("bad.crt", read("leaf.crt") .. "trailing garbage\n")
    r = check("bad.crt")
    assert.is_false(r.ok)
    assert.is_true(has(r.problems, literal(path("bad.crt")) .. ": line %d+: text outside a PEM block"))
    r = check("chain.crt", { ca_file = path("missing-ca.crt") })
    assert.is_true(has(r.problems, "cannot load the CA bundle .*No such file"))
  end)
end)

-- A TCP server that accepts and never answers; it notes when a client goes away.
local function silent_server()
  local server = uv.new_tcp()
  assert(server:bind("127.0.0.1", 0))
  local s = { port = server:getsockname().port, gone = vq.event(), clients = {} }
  assert(server:listen(16, function()
    local client = uv.new_tcp()
    server:accept(client)
    s.clients[#s.clients + 1] = client
    client:read_start(function(err, chunk)
      if s.reply and chunk then client:write(s.reply) end
      if err or not chunk then
        client:close()
        s.gone:set()
      end
    end)
  end))
  function s.close()
    for _, c in ipairs(s.clients) do
      if not c:is_closing() then c:close() end
    end
    server:close()
  end
  return s
end

local function unused_port()
  local tcp = uv.new_tcp()
  tcp:bind("127.0.0.1", 0)
  local port = tcp:getsockname().port
  tcp:close()
  return port
end

describe("tls.fetch_chain", function()
  local server

  setup(function()
    server = nginx.start { servers = {
      { server_name = HOST, cert = path("chain.crt"), key = path("leaf.key") },
      { server_name = "broken.example.test", cert = path("broken.crt"), key = path("broken.key") },
    } }
  end)

  teardown(function()
    if server then server:stop() end
  end)

  it("fetches the chain the server presents for the SNI name", function()
    local r = assert(tls.fetch_chain { host = "127.0.0.1", port = server.port, sni = HOST })
    assert.are.equal(2, #r.certs)
    assert.are.equal(x509_field("leaf.crt", "-fingerprint", "-sha256"), r.certs[1].fingerprint)
    assert.are.equal(x509_field("int.crt", "-fingerprint", "-sha256"), r.certs[2].fingerprint)
    assert.are.equal("TLSv1.3", r.protocol)
    assert.is_truthy(r.cipher:find("^TLS_"))
    assert.are.equal("127.0.0.1", r.address)
    assert.are.equal(("127.0.0.1:%d"):format(server.port), r.certs[1].source)
    assert.are.same({ true, "same" }, { tls.compare(r, path("chain.crt")) })
    local report = tls.check_chain(r.certs, { host = HOST, ca_file = path("root.crt") })
    assert.are.same({}, report.problems)
  end)

  it("fetches a chain that misses its intermediate", function()
    local r = assert(tls.served("127.0.0.1", server.port, "broken.example.test"))
    assert.are.equal(1, #r.certs)
    assert.are.equal("broken.example.test", r.certs[1].cn)
    local report = assert(tls.check_served { host = "127.0.0.1", port = server.port,
                                             sni = "broken.example.test", ca_file = path("root.crt") })
    assert.is_false(report.ok)
    assert.is_true(has(report.problems, "^the chain stops at O = Vantiq Test, CN = Vantiq Test Intermediate CA: intermediate missing"))
    assert.are.equal("TLSv1.3", report.protocol)
    local same, diff = tls.compare(r, path("chain.crt"))
    assert.is_false(same)
    assert.matches("^certificate 1 differs: CN = broken.example.test %(", diff)
  end)

  it("sends no SNI when asked, and gets the default server", function()
    local r = assert(tls.fetch_chain { host = "127.0.0.1", port = server.port, sni = false })
    assert.are.equal(HOST, r.certs[1].cn)
    assert.is_nil(r.sni)
  end)

  it("resolves host names", function()
    local r = assert(tls.fetch_chain { host = "localhost", port = server.port, sni = HOST })
    assert.are.equal(2, #r.certs)
  end)

  it("compares with a file, PEM text and a Secret", function()
    local served = assert(tls.served("127.0.0.1", server.port, HOST))
    local b64 = pki:openssl("base64", "-A", "-in", path("chain.crt"))
    assert.are.same({ true, "same" }, { tls.compare(served, { data = { ["tls.crt"] = b64 } }) })
    assert.are.same({ true, "same" }, { tls.compare({ ["tls.crt"] = read("chain.crt") }, served) })
    assert.are.same({ true, "same" }, { tls.compare(read("chain.crt"), served.certs) })
    local same, diff = tls.compare(served, path("full.crt"))
    assert.is_false(same)
    assert.matches("^certificate 3 differs: none vs CN = Vantiq Test Root CA", diff)
    assert.are.same({ false, 3 }, { tls.same_chain(served, assert(tls.load_chain(path("full.crt")))) })
    local ok, err = tls.compare(served, { data = { ["tls.crt"] = "***not base64***" } })
    assert.is_nil(ok)
    assert.are.equal("tls", err.code)
  end)

  it("says connect when nobody listens", function()
    local r, err = tls.fetch_chain { host = "127.0.0.1", port = unused_port() }
    assert.is_nil(r)
    assert.are.equal("connect", err.code)
    assert.matches("connection refused", err.message)
  end)

  it("says resolve for an unknown host", function()
    local r, err = tls.fetch_chain { host = "no-such-host.invalid", port = 443, timeout = 5 }
    assert.is_nil(r)
    assert.are.equal("resolve", err.code)
  end)

  it("times out on a silent server and closes the connection", function()
    local s = silent_server()
    local t0 = vq.now()
    local r, err = tls.fetch_chain { host = "127.0.0.1", port = s.port, timeout = 0.2 }
    assert.is_nil(r)
    assert.are.equal("timeout", err.code)
    assert.is_true(vq.now() - t0 < 2)
    assert.is_true(s.gone:wait(2))
    s.close()
  end)

  it("closes the connection when vq.timeout or a cancel ends the wait", function()
    local s = silent_server()
    local r, err = vq.timeout(0.1, tls.fetch_chain, { host = "127.0.0.1", port = s.port })
    assert.is_nil(r)
    assert.are.equal("timeout", err.code)
    assert.is_true(s.gone:wait(2))
    s.gone:clear()
    local t = vq.spawn(tls.fetch_chain, { host = "127.0.0.1", port = s.port })
    vq.sleep(0.1)
    t:cancel()
    local _, cerr = t:wait()
    assert.are.equal("cancelled", cerr.code)
    assert.is_true(s.gone:wait(2))
    s.close()
  end)

  it("fails on a server that does not speak TLS", function()
    local s = silent_server()
    s.reply = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"
    local r, err = tls.fetch_chain { host = "127.0.0.1", port = s.port, timeout = 2 }
    assert.is_nil(r)
    assert.are.equal("tls", err.code)
    assert.matches("TLS handshake with 127.0.0.1:%d+ failed", err.message)
    s.close()
  end)

  it("runs many fetches at once on the loop", function()
    local tasks = {}
    for i = 1, 20 do
      tasks[i] = vq.spawn(tls.served, "127.0.0.1", server.port, i % 2 == 0 and HOST or "broken.example.test")
    end
    for i = 1, 20 do
      local r = assert(tasks[i]:wait())
      assert.are.equal(i % 2 == 0 and 2 or 1, #r.certs)
    end
  end)
end)

describe("a certificate whose dates cannot be read (a fuzzer finding)", function()
  it("is a problem in the report, not an error", function()
    local tls = require "vq.tls"
    local chain = tls.load_chain("spec/fixtures/tls/bad-dates.pem")
    if not chain then pending("OpenSSL refuses the file outright here") return end
    local report = tls.check_chain(chain, { at = os.time() })
    assert.is_false(report.ok)
    assert.matches("validity dates that cannot be read", table.concat(report.problems, "\n"))
  end)
end)
