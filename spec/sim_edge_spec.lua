-- The simulator's edge: a real nginx terminating TLS for the installation's domain with the
-- shared/default-ssl-cert Secret (reloaded when it changes), and the DNS responder.
local uv = require "luv"
local vq = require "vq"
local json = require "json"
local http = require "vq.http"
local base64 = require "vq.base64"
local sim_mod = require "sim"
local edge = require "sim.edge"
local run = require "spec.support.run"
local log = require "log"

local DOMAIN = "vantiq.example.test"
local LB = "a1b2c3-123456789.ap-northeast-1.elb.amazonaws.com"
local VANTIQ_NS = "vantiq-test"

local function have(cmd) return os.execute("command -v " .. cmd .. " >/dev/null 2>&1") == true end

local sim, pki, port
local certs = {}

local function sh(cmd, timeout)
  local r = run.run { "sh", "-c", cmd, timeout = timeout or 60 }
  assert(r.status == 0, cmd .. ": " .. r.stderr)
  return r.stdout
end

-- A root, an intermediate and two leaves for DOMAIN (the old and the renewed certificate),
-- each leaf with its chain.
local function make_certs()
  pki = require("spec.support.pki").new()
  pki:ca("ca", { cn = "vqsim test root", key = "ec", days = 30 })
  pki:ca("int", { by = "ca", cn = "vqsim test intermediate", key = "ec", days = 30 })
  for n = 1, 2 do
    pki:cert("leaf" .. n, { by = "int", cn = DOMAIN, san = "DNS:" .. DOMAIN, key = "ec", days = 30 })
    pki:bundle("chain" .. n .. ".crt", "leaf" .. n .. ".crt", "int.crt")
  end
end

local function fingerprint(path)
  return sh("openssl x509 -noout -fingerprint -sha256 -in " .. path):match("=(%S+)")
end

-- The fingerprint of the certificate served for a server name.
local function served(name)
  local out = run.run { "sh", "-c", ("openssl s_client -connect 127.0.0.1:%d -servername %s </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"):format(port, name), timeout = 30 }
  return out.stdout:match("=(%S+)")
end

local function wait_for(fn, seconds)
  local deadline = vq.now() + (seconds or 15)
  repeat
    local v = fn()
    if v then return v end
    vq.sleep(0.1)
  until vq.now() > deadline
end

local function create(key, obj) return assert(sim:create(key, obj)) end

local function can_reach(p)
  local tcp, ev, ok = uv.new_tcp(), vq.event(), false
  tcp:connect("127.0.0.1", p, function(err) ok = not err ev:set() end)
  ev:wait(2)
  tcp:close()
  return ok
end

local function tls_secret(n)
  return { metadata = { name = "default-ssl-cert", namespace = "shared" }, type = "kubernetes.io/tls",
           data = { ["tls.crt"] = base64.encode(pki:read("chain" .. n .. ".crt")),
                    ["tls.key"] = base64.encode(pki:read("leaf" .. n .. ".key")) } }
end

local function ready_service(ns, name, port_number)
  create("services", { metadata = { name = name, namespace = ns },
                       spec = { selector = { app = name }, ports = { { name = "http", port = port_number } } } })
  create("pods", { metadata = { name = name .. "-0", namespace = ns, labels = { app = name } },
                   spec = { containers = { { name = name, image = "img/" .. name .. ":1.2.3" } } },
                   status = { phase = "Running", conditions = { { type = "Ready", status = "True" } } } })
end

local world = {
  install = function(s) s.world_info = { namespace = VANTIQ_NS, domain = DOMAIN, lb_hostname = LB } end,
}

setup(function()
  make_certs()
  for n = 1, 2 do certs[n] = fingerprint(pki:path("leaf" .. n .. ".crt")) end
  sim = sim_mod.start { modules = { "sim.auth", "sim.core", "sim.proxy", world, "sim.edge" } }
  create("namespaces", { metadata = { name = "shared" } })
  create("namespaces", { metadata = { name = VANTIQ_NS } })
  create("secrets", tls_secret(1))
  create("secrets", { metadata = { name = "keycloak", namespace = "shared" }, data = { password = base64.encode("kc-pass") } })
  ready_service("shared", "keycloak", 8080)
  ready_service(VANTIQ_NS, "vantiq", 8080)
  port = sim.edge.https_port
end)

teardown(function()
  if sim then sim:stop() end
  if pki then pki:remove() end
end)

describe("the TLS edge", function()
  local up
  local function edge_up()
    if up == nil then up = sim.edge.wait(30) or false end
    if not up then pending("no nginx here: " .. tostring(sim.edge.error)) end
    return up
  end

  local function get(path, opts)
    opts = opts or {}
    return http.request { method = opts.method or "GET", url = "https://" .. DOMAIN .. path, ca_file = pki:path("ca.crt"),
      connect_to = ("%s:443:127.0.0.1:%d"):format(DOMAIN, port), headers = opts.headers, body = opts.body }
  end

  it("serves the Secret's chain for the domain, verified against the root", function()
    if not edge_up() then return end
    assert.are.equal(certs[1], wait_for(function() local f = served(DOMAIN) return f == certs[1] and f end))
    local r = assert(get("/healthz"))
    assert.are.equal(200, r.status)
    assert.are.equal("2", r.http_version, "HTTP/2 over TLS, as ingress-nginx speaks it")
    assert.are.equal("UP", r.json.status)
    assert.are.equal("1.2.3", r.json.version)
  end)

  it("routes /auth/ to Keycloak: a token and an admin call over https", function()
    if not edge_up() then return end
    local t = assert(get("/auth/realms/master/protocol/openid-connect/token", { method = "POST",
      headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
      body = "grant_type=password&client_id=admin-cli&username=keycloak&password=kc-pass" }))
    assert.are.equal(200, t.status)
    local claims = json.decode(base64.decode((t.json.access_token:match("^[^.]+%.([^.]+)")):gsub("-", "+"):gsub("_", "/")))
    assert.are.equal("https://" .. DOMAIN .. "/auth/realms/master", claims.iss)
    local users = assert(get("/auth/admin/realms/vantiq/users", { headers = { Authorization = "Bearer " .. t.json.access_token } }))
    assert.are.equal(200, users.status)
    assert.are.same({}, users.json)
  end)

  it("is reached by curl with --resolve", function()
    if not edge_up() then return end
    if not have("curl") then return pending("curl not installed") end
    local out = sh(("curl -sS --resolve %s:%d:127.0.0.1 --cacert %s https://%s:%d/auth/realms/vantiq"):format(DOMAIN, port, pki:path("ca.crt"), DOMAIN, port))
    assert.are.equal("vantiq", json.decode(out).realm)
  end)

  it("answers 503 as ingress-nginx does while Keycloak has no ready pod", function()
    if not edge_up() then return end
    local pod = sim:get("pods", "shared", "keycloak-0")
    local copy = json.decode(json.encode(pod))
    copy.status.conditions[1].status = "False"
    assert(sim:update_status("pods", copy))
    local r = assert(get("/auth/realms/master"))
    copy.status.conditions[1].status = "True"
    copy.metadata.resourceVersion = nil
    assert(sim:update_status("pods", copy))
    assert.are.equal(503, r.status)
    assert.matches("503 Service Temporarily Unavailable", r.body, 1, true)
  end)

  it("sends other server names to the default backend", function()
    if not edge_up() then return end
    local r = assert(http.request { url = "https://other.example.test/", insecure = true, http1 = true,
      connect_to = ("other.example.test:443:127.0.0.1:%d"):format(port) })
    assert.are.equal(404, r.status)
    assert.matches("default backend", r.body)
  end)

  it("serves the renewed certificate after the Secret is replaced", function()
    if not edge_up() then return end
    local old = sim:get("secrets", "shared", "default-ssl-cert")
    local new = tls_secret(2)
    new.metadata.resourceVersion = old.metadata.resourceVersion
    assert(sim:update("secrets", new))
    assert.are.equal(certs[2], wait_for(function() local f = served(DOMAIN) return f == certs[2] and f end))
    assert.are.equal("secret", sim.edge.serving)
    local r = assert(get("/healthz"))
    assert.are.equal(200, r.status)
  end)

  it("falls back to the fake certificate when the Secret's key does not match", function()
    if not edge_up() then return end
    local bad = tls_secret(2)
    bad.data["tls.key"] = base64.encode(pki:read("leaf1.key"))
    local level = log.level("error") -- the edge warns about the bad pair: expected here
    assert(sim:update("secrets", bad))
    assert.truthy(wait_for(function() return sim.edge.serving == "fake" end))
    log.level(level)
    local subject = wait_for(function()
      local out = run.run { "sh", "-c", ("openssl s_client -connect 127.0.0.1:%d -servername %s </dev/null 2>/dev/null | openssl x509 -noout -subject"):format(port, DOMAIN) }
      return out.stdout:find("Fake Certificate", 1, true) and out.stdout
    end)
    assert.truthy(subject)
    assert(sim:update("secrets", tls_secret(2)))
    assert.truthy(wait_for(function() return served(DOMAIN) == certs[2] end))
    assert.are.equal("secret", sim.edge.serving)
  end)
end)

describe("stopping the simulator", function()
  it("stops nginx, reaps it and removes its files", function()
    local other = sim_mod.start { modules = { "sim.auth", "sim.core", "sim.proxy", world, "sim.edge" } }
    if not other.edge.wait(30) then
      other:stop()
      return pending("no nginx here")
    end
    local pid, edge_dir = other.edge.pid, other.edge.dir
    assert.is_nil(select(3, uv.kill(pid, 0)), "nginx runs")
    other:stop()
    assert.are.equal("ESRCH", select(3, uv.kill(pid, 0)))
    assert.is_nil(uv.fs_stat(edge_dir))
    assert.is_false(can_reach(other.edge.https_port))
  end)
end)

describe("a simulator without nginx", function()
  it("says so and serves the rest, DNS included", function()
    edge.nginx_path = "/nonexistent/nginx"
    local level = log.level("error")
    local other = sim_mod.start { modules = { "sim.auth", "sim.core", "sim.proxy", world, "sim.edge" } }
    log.level(level)
    edge.nginx_path = nil
    local ok, err = other.edge.wait(5)
    assert.is_nil(ok)
    assert.are.equal("nginx not installed", err)
    assert.is_nil(other.edge.https_port)
    assert.is_number(other.dns.port)
    assert.are.equal(200, assert(http.get(other.url .. "/version")).status)
    other:stop()
  end)
end)

-- ---- DNS, with a query built here and parsed here ----

local function query(name, qtype, qclass, id)
  local parts = { string.pack(">I2I2I2I2I2I2", id or 0x1234, 0x0100, 1, 0, 0, 0) }
  for label in name:gmatch("[^.]+") do parts[#parts + 1] = string.char(#label) .. label end
  parts[#parts + 1] = "\0" .. string.pack(">I2I2", qtype, qclass or 1)
  return table.concat(parts)
end

local function read_name(s, pos)
  local labels, after = {}, nil
  while true do
    local len = s:byte(pos)
    if len >= 0xC0 then
      after = after or pos + 2
      pos = (((len & 0x3F) << 8) | s:byte(pos + 1)) + 1
    elseif len == 0 then
      return table.concat(labels, "."), after or pos + 1
    else
      labels[#labels + 1] = s:sub(pos + 1, pos + len)
      pos = pos + len + 1
    end
  end
end

local function parse(s)
  local id, flags, qd, an = string.unpack(">I2I2I2I2", s)
  local pos = 13
  for _ = 1, qd do
    local _, p = read_name(s, pos)
    pos = p + 4
  end
  local answers = {}
  for _ = 1, an do
    local name, p = read_name(s, pos)
    local rtype, _, ttl, len = string.unpack(">I2I2I4I2", s, p)
    local at = p + 10
    local data = rtype == 1 and table.concat({ s:byte(at, at + 3) }, ".") or rtype == 5 and (read_name(s, at)) or s:sub(at, at + len - 1)
    answers[#answers + 1] = { name = name, type = rtype, ttl = ttl, data = data }
    pos = at + len
  end
  return { id = id, rcode = flags & 0xF, qr = flags >> 15, answers = answers }
end

-- One query, retried as a resolver does (UDP may drop it on a loaded machine).
local function exchange(packet)
  local udp = uv.new_udp()
  assert(udp:bind("127.0.0.1", 0))
  local ev, reply = vq.event(), nil
  udp:recv_start(function(_, data)
    if data then reply = data ev:set() end
  end)
  for _ = 1, 3 do
    udp:send(packet, "127.0.0.1", sim.dns.port, function() end)
    if ev:wait(2) then break end
  end
  udp:recv_stop()
  udp:close()
  return reply
end

local function ask(name, qtype, qclass)
  local raw = exchange(query(name, qtype, qclass))
  assert.truthy(raw, "no DNS reply")
  return parse(raw)
end

describe("the DNS responder", function()
  after_each(function()
    sim.dns_hold = nil
    sim.dns_records = {}
  end)

  it("answers the domain with a CNAME to the LoadBalancer and its A record", function()
    local r = ask(DOMAIN, 1)
    assert.are.equal(0, r.rcode)
    assert.are.equal(1, r.qr)
    assert.are.equal(0x1234, r.id)
    assert.are.equal(2, #r.answers)
    assert.are.same({ name = DOMAIN, type = 5, ttl = 60, data = LB }, r.answers[1])
    assert.are.same({ name = LB, type = 1, ttl = 60, data = "127.0.0.1" }, r.answers[2])
  end)

  it("answers CNAME, AAAA (no data) and the LoadBalancer's own name", function()
    local c = ask(DOMAIN, 5)
    assert.are.equal(1, #c.answers)
    assert.are.equal(LB, c.answers[1].data)
    local aaaa = ask(LB, 28)
    assert.are.equal(0, aaaa.rcode)
    assert.are.equal(0, #aaaa.answers)
    local a = ask(LB:upper(), 1)
    assert.are.equal("127.0.0.1", a.answers[1].data)
  end)

  it("says NXDOMAIN for unknown names and for the domain while DNS is held", function()
    assert.are.equal(3, ask("nosuch.example.test", 1).rcode)
    sim.dns_hold = true
    assert.are.equal(3, ask(DOMAIN, 1).rcode)
    assert.are.equal(0, ask(LB, 1).rcode)
  end)

  it("takes records from sim.dns_records (an Azure-style A record)", function()
    sim.dns_records[DOMAIN] = { a = { "20.48.1.2" } }
    local r = ask(DOMAIN, 1)
    assert.are.same({ name = DOMAIN, type = 1, ttl = 60, data = "20.48.1.2" }, r.answers[1])
  end)

  it("refuses other classes and survives malformed packets", function()
    assert.are.equal(5, ask(DOMAIN, 1, 3).rcode)
    local garbage = {
      "", "\1", string.rep("\255", 11),
      string.pack(">I2I2I2I2I2I2", 7, 0x0100, 1, 0, 0, 0) .. "\192\12",    -- a pointer to itself
      string.pack(">I2I2I2I2I2I2", 8, 0x0100, 1, 0, 0, 0) .. "\63abc",      -- a label past the end
      string.pack(">I2I2I2I2I2I2", 9, 0x0100, 9, 0, 0, 0) .. "\0\0\1\0\1", -- more questions than sent
      string.pack(">I2I2I2I2I2I2", 10, 0x0100, 1, 0, 0, 0) .. "\1a\0\0",    -- a truncated question
    }
    for i, g in ipairs(garbage) do
      local reply = edge.answer(sim, g)
      if reply then assert.are.equal(1, parse(reply).rcode, "packet " .. i) end
    end
    local udp = uv.new_udp()
    for i = 1, 300 do
      if i % 25 == 0 then vq.sleep(0.01) end
      local t = {}
      for j = 1, math.random(1, 80) do t[j] = string.char(math.random(0, 255)) end
      local packet = table.concat(t)
      if math.random() < 0.5 then packet = query(DOMAIN, 1):sub(1, 12) .. packet end
      edge.answer(sim, packet)
      udp:send(packet, "127.0.0.1", sim.dns.port, function() end)
    end
    vq.sleep(0.1)
    udp:close()
    assert.are.equal(0, ask(DOMAIN, 1).rcode, "still answering")
  end)

  it("is what dig sees, when dig is installed", function()
    if not have("dig") then return pending("dig not installed (dnsutils)") end
    local out = sh(("dig @127.0.0.1 -p %d +short %s A"):format(sim.dns.port, DOMAIN), 30)
    assert.are.equal(LB .. ".\n127.0.0.1\n", out)
    sim.dns_hold = true
    out = sh(("dig @127.0.0.1 -p %d %s A"):format(sim.dns.port, DOMAIN), 30)
    assert.matches("status: NXDOMAIN", out, 1, true)
  end)
end)
