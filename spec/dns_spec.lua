-- vq.dns against small authoritative responders of our own on loopback UDP (luv). No query
-- leaves the machine: every call names the responder's server and port.
local uv = require "luv"
local vq = require "vq"
local dns = require "vq.dns"

local LB = "a1b2c3-123456789.ap-northeast-1.elb.amazonaws.com"
local TYPE = { A = 1, CNAME = 5, AAAA = 28 }
local RCODE = { NOERROR = 0, SERVFAIL = 2, NXDOMAIN = 3, REFUSED = 5 }

-- ---- the responder ----

local function u16(s, i) return (s:byte(i) << 8) | s:byte(i + 1) end

local function parse_query(packet)
  if #packet < 12 or u16(packet, 5) < 1 then return nil end
  local labels, pos = {}, 13
  while true do
    local len = packet:byte(pos)
    if not len or len >= 64 then return nil end
    if len == 0 then break end
    labels[#labels + 1] = packet:sub(pos + 1, pos + len)
    pos = pos + len + 1
  end
  pos = pos + 1
  if pos + 3 > #packet then return nil end
  return { id = u16(packet, 1), rd = (packet:byte(3) & 1), name = table.concat(labels, "."):lower(),
           qtype = u16(packet, pos), question = packet:sub(13, pos + 3) }
end

local function encode_name(name)
  local out = {}
  for label in name:gmatch("[^.]+") do out[#out + 1] = string.char(#label) .. label end
  return table.concat(out) .. "\0"
end

local function ipv6_bytes(text)
  local head, tail = text:match("^(.-)::(.*)$")
  local function groups(s)
    local g = {}
    for h in s:gmatch("[^:]+") do g[#g + 1] = tonumber(h, 16) end
    return g
  end
  local h, t = groups(head or text), groups(tail or "")
  local all = {}
  for _, v in ipairs(h) do all[#all + 1] = v end
  for _ = 1, 8 - #h - #t do all[#all + 1] = 0 end
  for _, v in ipairs(t) do all[#all + 1] = v end
  return string.pack(">" .. ("I2"):rep(8), table.unpack(all))
end

local function rdata(rtype, data)
  if rtype == "A" then
    local a, b, c, d = data:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
    return string.char(tonumber(a), tonumber(b), tonumber(c), tonumber(d))
  elseif rtype == "AAAA" then
    return ipv6_bytes(data)
  end
  return encode_name(data)
end

local function response(q, rcode, answers)
  local flags = 0x8000 | 0x0400 | (q.rd << 8) | rcode -- QR, AA
  local parts = { string.pack(">I2I2I2I2I2I2", q.id, flags, 1, #answers, 0, 0), q.question }
  for _, rr in ipairs(answers) do
    local rd = rdata(rr.type, rr.data)
    parts[#parts + 1] = encode_name(rr.name) .. string.pack(">I2I2I4I2", TYPE[rr.type], 1, rr.ttl or 300, #rd) .. rd
  end
  return table.concat(parts)
end

-- Follows CNAMEs within the zone, as a recursive resolver would answer: a chain that ends
-- at an unknown name is NXDOMAIN with the CNAMEs in the answer.
local function resolve_in_zone(zone, q)
  local answers, current = {}, q.name
  for _ = 1, 10 do
    local rec = zone[current]
    if not rec then return RCODE.NXDOMAIN, answers end
    if not rec.cname then
      local rtype = q.qtype == TYPE.A and "A" or q.qtype == TYPE.AAAA and "AAAA"
      local list = rtype and rec[rtype:lower()] or {}
      for _, ip in ipairs(list) do answers[#answers + 1] = { name = current, type = rtype, data = ip, ttl = rec.ttl } end
      return RCODE.NOERROR, answers
    end
    answers[#answers + 1] = { name = current, type = "CNAME", data = rec.cname, ttl = rec.ttl }
    if q.qtype == TYPE.CNAME then return RCODE.NOERROR, answers end
    current = rec.cname:lower()
  end
  return RCODE.SERVFAIL, {}
end

-- zone[name] = {a = {...}, aaaa = {...}, cname =, ttl =, rcode = "REFUSED"|"SERVFAIL",
-- drop = true, delay = seconds, nxdomain_for = n (the first n queries: NXDOMAIN)}
local function answer(server, q)
  local count = (server.counts[q.name] or 0) + 1
  server.counts[q.name] = count
  local rec = server.zone[q.name] or {}
  if rec.drop then return nil end
  if rec.rcode then return response(q, RCODE[rec.rcode], {}) end
  if rec.nxdomain_for and count <= rec.nxdomain_for then return response(q, RCODE.NXDOMAIN, {}) end
  return response(q, resolve_in_zone(server.zone, q)), rec.delay
end

local function start_responder(zone)
  local udp = uv.new_udp()
  assert(udp:bind("127.0.0.1", 0))
  local server = { zone = zone, counts = {}, timers = {} }
  server.port = udp:getsockname().port
  local function send(out, addr)
    if not udp:is_closing() then udp:send(out, addr.ip, addr.port, function() end) end
  end
  udp:recv_start(function(err, data, addr)
    if err or not data or not addr then return end
    local q = parse_query(data)
    if not q then return end
    local out, delay = answer(server, q)
    if not out then return end
    if not delay then return send(out, addr) end
    local t = uv.new_timer()
    server.timers[t] = true
    t:start(math.floor(delay * 1000), 0, function()
      server.timers[t] = nil
      t:close()
      send(out, addr)
    end)
  end)
  function server.close()
    for t in pairs(server.timers) do t:close() end
    udp:recv_stop()
    udp:close()
  end
  return server
end

-- ---- the zone ----

local ZONE = {
  ["a.test"] = { a = { "10.1.2.3", "10.1.2.4" }, ttl = 120 },
  ["v6.test"] = { aaaa = { "2001:db8::1" } },
  ["dual.test"] = { a = { "10.9.9.9" }, aaaa = { "2001:db8::9" } },
  ["www.test"] = { cname = "alias.test", ttl = 300 },
  ["alias.test"] = { cname = LB, ttl = 60 },
  [LB] = { a = { "192.0.2.10", "192.0.2.11" }, ttl = 30 },
  ["azure.test"] = { a = { "20.48.1.2" } },
  ["pinned.test"] = { a = { "192.0.2.10" } },
  ["wrong.test"] = { a = { "198.51.100.7" } },
  ["other-lb.test"] = { cname = "other.elb.test" },
  ["other.elb.test"] = { a = { "198.51.100.8" } },
  ["dangling.test"] = { cname = "nowhere.test" },
  ["refused.test"] = { rcode = "REFUSED" },
  ["servfail.test"] = { rcode = "SERVFAIL" },
  ["dropped.test"] = { drop = true },
  ["slow.test"] = { a = { "10.0.0.7" }, delay = 0.3 },
  ["late.test"] = { cname = LB, nxdomain_for = 3 },
  ["later.test"] = { cname = LB, nxdomain_for = 2 },
}
for i = 1, 100 do
  ZONE[("n%d.test"):format(i)] = { a = { ("10.0.%d.%d"):format(i // 256, i % 256) }, delay = 0.1 }
end

local server

local function at(extra)
  local o = { server = "127.0.0.1", port = server.port, timeout = 1, tries = 1 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

local function elapsed(fn)
  local t0 = vq.now()
  local r = table.pack(fn())
  return vq.now() - t0, table.unpack(r, 1, r.n)
end

setup(function() server = start_responder(ZONE) end)
teardown(function() if server then server.close() end end)

describe("dns.resolve", function()
  it("reads A records with their TTL and the AA bit", function()
    local r = assert(dns.resolve("a.test", at()))
    assert.are.same({ "10.1.2.3", "10.1.2.4" }, r.addresses)
    assert.are.equal("a.test", r.name)
    assert.are.equal(120, r.ttl)
    assert.is_true(r.authoritative)
    assert.are.same({}, r.cname_chain)
    assert.are.equal(0, r.rcode)
  end)

  it("takes a name in any case, with or without the final dot", function()
    local r = assert(dns.resolve("A.Test.", at()))
    assert.are.equal("a.test", r.name)
    assert.are.same({ "10.1.2.3", "10.1.2.4" }, r.addresses)
    assert.are.same(r.addresses, assert(dns.resolve("a.test", at { search = true })).addresses)
  end)

  it("reads AAAA records", function()
    local r = assert(dns.resolve("v6.test", at { type = "AAAA" }))
    assert.are.same({ "2001:db8::1" }, r.addresses)
  end)

  it("asks for A and AAAA with type ANY", function()
    local r = assert(dns.resolve("dual.test", at { type = "ANY" }))
    assert.are.same({ "10.9.9.9", "2001:db8::9" }, r.addresses)
    assert.are.same({ "10.1.2.3", "10.1.2.4" }, assert(dns.resolve("a.test", at { type = "ANY" })).addresses)
    assert.are.same({ "2001:db8::1" }, assert(dns.resolve("v6.test", at { type = "ANY" })).addresses)
  end)

  it("follows a CNAME chain to the A records", function()
    local r = assert(dns.resolve("www.test", at()))
    assert.are.same({ { from = "www.test", to = "alias.test", ttl = 300 }, { from = "alias.test", to = LB, ttl = 60 } },
                    r.cname_chain)
    assert.are.equal(LB, r.canonical)
    assert.are.same({ "192.0.2.10", "192.0.2.11" }, r.addresses)
    assert.are.equal(30, r.ttl)
  end)

  it("asks for the CNAME itself", function()
    local r = assert(dns.resolve("www.test", at { type = "CNAME" }))
    assert.are.same({ { from = "www.test", to = "alias.test", ttl = 300 } }, r.cname_chain)
    assert.are.same({}, r.addresses)
  end)

  it("says NXDOMAIN", function()
    local r, err = dns.resolve("nope.test", at())
    assert.is_nil(r)
    assert.are.equal("nxdomain", err.code)
    assert.are.equal(3, err.rcode)
    assert.are.equal("nope.test", err.name)
    assert.matches("nope.test does not exist", err.message, 1, true)
  end)

  it("keeps the CNAMEs answered with an NXDOMAIN", function()
    local _, err = dns.resolve("dangling.test", at())
    assert.are.equal("nxdomain", err.code)
    assert.are.same({ { from = "dangling.test", to = "nowhere.test", ttl = 300 } }, err.cname_chain)
  end)

  it("says NODATA for a name without records of the type", function()
    local _, err = dns.resolve("v6.test", at())
    assert.are.equal("nodata", err.code)
    assert.are.equal(0, err.rcode)
    assert.matches("has no A record", err.message, 1, true)
  end)

  it("times out on a dropped query, after each try", function()
    local t, r, err = elapsed(function() return dns.resolve("dropped.test", at { timeout = 0.2 }) end)
    assert.is_nil(r)
    assert.are.equal("timeout", err.code)
    assert.matches("no answer for dropped.test from 127.0.0.1 port " .. server.port, err.message, 1, true)
    assert.is_true(t >= 0.19 and t < 1.5, "took " .. t)
    server.counts["dropped.test"] = 0
    _, err = dns.resolve("dropped.test", at { timeout = 0.1, tries = 3 })
    assert.are.equal("timeout", err.code)
    assert.are.equal(3, server.counts["dropped.test"])
  end)

  it("says REFUSED and SERVFAIL with their rcode", function()
    local _, err = dns.resolve("refused.test", at())
    assert.are.equal("refused", err.code)
    assert.are.equal(5, err.rcode)
    _, err = dns.resolve("servfail.test", at())
    assert.are.equal("servfail", err.code)
    assert.are.equal(2, err.rcode)
  end)

  it("fails fast when nothing listens on the port", function()
    local udp = uv.new_udp()
    assert(udp:bind("127.0.0.1", 0))
    local port = udp:getsockname().port
    udp:close()
    local t, r, err = elapsed(function() return dns.resolve("a.test", at { port = port, timeout = 2 }) end)
    assert.is_nil(r)
    assert.are.equal("resolve", err.code)
    assert.is_true(t < 1.5, "took " .. t)
  end)

  it("asks the chosen server on the chosen port", function()
    local other = start_responder { ["a.test"] = { a = { "10.200.0.1" } } }
    local before = dns.stats().channels
    local mine = assert(dns.resolve("a.test", at()))
    local theirs = assert(dns.resolve("a.test", at { port = other.port }))
    other.close()
    assert.are.same({ "10.1.2.3", "10.1.2.4" }, mine.addresses)
    assert.are.same({ "10.200.0.1" }, theirs.addresses)
    assert.are.equal(before + 1, dns.stats().channels)
    assert.are.equal(1, other.counts["a.test"])
  end)

  it("returns a name c-ares cannot even send as an error", function()
    local _, err = dns.resolve(("x"):rep(70) .. ".test", at())
    assert.are.equal("resolve", err.code)
    assert.are.equal(0, dns.stats().waiting)
  end)

  it("refuses a server that is not an IP address and an unknown type", function()
    assert.has_error(function() dns.resolve("a.test", at { server = "ns1.example" }) end)
    assert.has_error(function() dns.resolve("a.test", at { type = "MX" }) end)
  end)

  it("runs 100 queries from 100 tasks at once", function()
    local tasks, t0 = {}, vq.now()
    for i = 1, 100 do
      tasks[i] = vq.spawn(function() return dns.resolve(("n%d.test"):format(i), at()) end)
    end
    vq.sleep(0.05)
    assert.are.equal(100, dns.stats().waiting)
    for i, t in ipairs(tasks) do
      local r, err = t:wait()
      assert.is_table(r, err and err.message)
      assert.are.same({ ("10.0.%d.%d"):format(i // 256, i % 256) }, r.addresses)
    end
    assert.is_true(vq.now() - t0 < 2, "each answer takes 0.1 s: they overlapped")
    assert.are.equal(0, dns.stats().waiting)
  end)
end)

describe("cancelling a query", function()
  it("ends it when its task is cancelled", function()
    local task = vq.spawn(function() return dns.resolve("dropped.test", at { timeout = 5 }) end)
    vq.sleep(0.05)
    assert.are.equal(1, dns.stats().waiting)
    task:cancel()
    local _, err = task:wait()
    assert.are.equal("cancelled", err.code)
    assert.are.equal(0, dns.stats().waiting)
    vq.sleep(0.01)
    assert.are.equal(0, dns.stats().sockets)
  end)

  it("ends it under vq.timeout", function()
    local t, r, err = elapsed(function() return vq.timeout(0.1, dns.resolve, "dropped.test", at { timeout = 5 }) end)
    assert.is_nil(r)
    assert.are.equal("timeout", err.code)
    assert.is_true(t < 1, "took " .. t)
    vq.sleep(0.01)
    assert.are.equal(0, dns.stats().sockets)
  end)

  it("leaves the other tasks' queries on the same channel alone", function()
    local slow = vq.spawn(function() return dns.resolve("slow.test", at()) end)
    local dropped = vq.spawn(function() return dns.resolve("dropped.test", at { timeout = 1 }) end)
    vq.sleep(0.05)
    dropped:cancel()
    local r = assert(slow:wait())
    assert.are.same({ "10.0.0.7" }, r.addresses)
    vq.sleep(0.01)
    assert.are.equal(0, dns.stats().sockets) -- the abandoned query went with the last waiter
  end)

  it("survives an answer that comes after the task gave up", function()
    local r, err = vq.timeout(0.05, dns.resolve, "slow.test", at())
    assert.is_nil(r)
    assert.are.equal("timeout", err.code)
    vq.sleep(0.4)
    assert.are.same({ "10.1.2.3", "10.1.2.4" }, assert(dns.resolve("a.test", at())).addresses)
  end)
end)

describe("closing the runtime", function()
  it("ends the queries in flight and frees everything", function()
    local run = require "spec.support.run"
    local dir = assert(uv.fs_mkdtemp("/tmp/vq-dns-spec-XXXXXX"))
    local path = dir .. "/script.lua"
    local f = assert(io.open(path, "w"))
    f:write([[
      local uv, vq, dns = require "luv", require "vq", require "vq.dns"
      local silent = uv.new_udp()  -- bound, never read: queries go unanswered
      assert(silent:bind("127.0.0.1", 0))
      local o = { server = "127.0.0.1", port = silent:getsockname().port, timeout = 30 }
      for i = 1, 3 do vq.spawn(function() dns.resolve("q" .. i .. ".test", o) end) end
      vq.spawn(function() dns.resolve("q.test", { server = "127.0.0.1", port = o.port, timeout = 20 }) end)
      vq.sleep(0.1)
      silent:close()
      error("stop here")
    ]])
    f:close()
    local t, r = elapsed(function() return run.run { run.vqlua, path, timeout = 30 } end)
    os.remove(path)
    uv.fs_rmdir(dir)
    assert.are.equal(1, r.status, r.stderr)
    assert.matches("stop here", r.stderr, 1, true)
    assert.is_nil(r.stderr:find("Sanitizer", 1, true), r.stderr)
    assert.is_nil(r.stderr:find("left open", 1, true), r.stderr)
    assert.is_true(t < 4, "took " .. t)
  end)
end)

describe("dns.points_to", function()
  it("is true for a CNAME to the LoadBalancer's hostname", function()
    local ok, how = dns.points_to("www.test", LB, at())
    assert.is_true(ok)
    assert.are.equal("CNAME www.test → alias.test → " .. LB, how)
  end)

  it("is true for an A record of the LoadBalancer's IP", function()
    local ok, how = dns.points_to("azure.test", "20.48.1.2", at())
    assert.is_true(ok)
    assert.are.equal("A 20.48.1.2 matches", how)
    ok, how = dns.points_to("v6.test", "2001:db8::1", at())
    assert.is_true(ok)
    assert.are.equal("AAAA 2001:db8::1 matches", how)
  end)

  it("is false, with what it saw, otherwise", function()
    local ok, seen, r = dns.points_to("wrong.test", LB, at())
    assert.is_false(ok)
    assert.are.equal("resolves to 198.51.100.7, not the LoadBalancer " .. LB, seen)
    assert.are.same({ "198.51.100.7" }, r.addresses)
    ok, seen = dns.points_to("azure.test", "20.48.9.9", at())
    assert.is_false(ok)
    assert.are.equal("resolves to 20.48.1.2, not the LoadBalancer 20.48.9.9", seen)
    ok, seen = dns.points_to("other-lb.test", LB, at())
    assert.is_false(ok)
    assert.are.equal("CNAME other-lb.test → other.elb.test (198.51.100.8), not the LoadBalancer " .. LB, seen)
    ok, seen = dns.points_to("nope.test", LB, at())
    assert.is_false(ok)
    assert.are.equal("NXDOMAIN", seen)
    ok, seen = dns.points_to("dropped.test", LB, at { timeout = 0.1 })
    assert.is_false(ok)
    assert.are.equal("no answer (timeout)", seen)
  end)

  it("wants a CNAME for a hostname, even when the A record is the LoadBalancer's address", function()
    local ok, seen = dns.points_to("pinned.test", LB, at())
    assert.is_false(ok)
    assert.matches("resolves to 192.0.2.10, not the LoadBalancer", seen, 1, true)
    ok, seen = dns.points_to("pinned.test", { LB, "192.0.2.10" }, at())
    assert.is_true(ok)
    assert.are.equal("A 192.0.2.10 matches", seen)
  end)
end)

describe("dns.wait_for", function()
  it("polls with back-off until the domain points at the LoadBalancer", function()
    local attempts, stamps = {}, {}
    local ticks = 0
    local ticker = vq.spawn(function() while true do vq.sleep(0.01) ticks = ticks + 1 end end)
    local ok, r, how = dns.wait_for("late.test", LB, at {
      timeout = 5, interval = 0.05, max_interval = 0.2,
      on_attempt = function(n, seen) attempts[n] = seen stamps[n] = vq.now() end })
    ticker:cancel()
    assert.is_true(ok)
    assert.are.same({ "192.0.2.10", "192.0.2.11" }, r.addresses)
    assert.are.equal("CNAME late.test → " .. LB, how)
    assert.are.equal(4, #attempts)
    for n = 1, 3 do assert.are.equal("nxdomain", attempts[n].code) end
    assert.is_true(stamps[3] - stamps[2] > stamps[2] - stamps[1], "the pause grows")
    assert.is_true(ticks > 10, "the loop ran meanwhile")
  end)

  it("takes a predicate", function()
    local ok, r = dns.wait_for("later.test", function(res) return res and #res.addresses == 2, "two" end,
                               at { timeout = 5, interval = 0.02 })
    assert.is_true(ok)
    assert.are.equal(LB, r.canonical)
  end)

  it("gives up at the timeout, saying what it last saw", function()
    local t, ok, err = elapsed(function()
      return dns.wait_for("nope.test", LB, at { timeout = 0.5, interval = 0.05 })
    end)
    assert.is_nil(ok)
    assert.are.equal("timeout", err.code)
    assert.matches("^nope.test: still NXDOMAIN after 0.5s %(%d+ attempts%)$", err.message)
    assert.is_true(err.attempts >= 2)
    assert.are.equal("nxdomain", err.last.code)
    assert.is_true(t >= 0.45 and t < 1.5, "took " .. t)
    _, err = dns.wait_for("wrong.test", LB, at { timeout = 0.2, interval = 0.05 })
    assert.matches("wrong.test: still resolves to 198.51.100.7, not the LoadBalancer " .. LB .. " after 0.2s",
                   err.message, 1, true)
  end)

  it("cuts a query short at its deadline", function()
    local t, ok, err = elapsed(function()
      return dns.wait_for("dropped.test", LB, at { timeout = 0.3, query_timeout = 5 })
    end)
    assert.is_nil(ok)
    assert.matches("dropped.test: still no answer (timeout) after 0.3s (1 attempt)", err.message, 1, true)
    assert.is_true(t < 1, "took " .. t)
  end)
end)

describe("against the simulator's DNS", function()
  it("sees the domain CNAME to the LoadBalancer, after the hold is lifted", function()
    if not package.searchpath("sim.edge", package.path) then return pending("no sim/edge.lua yet") end
    local sim_mod, edge, log = require "sim", require "sim.edge", require "log"
    local domain = "vantiq.example.test"
    local world = { install = function(s) s.world_info = { namespace = "vantiq", domain = domain, lb_hostname = LB } end }
    edge.nginx_path = "/nonexistent/nginx" -- DNS only: no TLS edge needed here
    local level = log.level("error")
    local sim = sim_mod.start { modules = { "sim.auth", "sim.core", "sim.proxy", world, "sim.edge" } }
    log.level(level)
    edge.nginx_path = nil
    local o = { server = sim.dns.host, port = sim.dns.port, timeout = 1, tries = 1 }
    local ok, how = dns.points_to(domain, LB, o)
    sim.dns_hold = true
    local seen = select(2, dns.points_to(domain, LB, o))
    local waited, r = dns.wait_for(domain, LB, {
      server = o.server, port = o.port, tries = 1, query_timeout = 1, timeout = 5, interval = 0.05,
      on_attempt = function(n) if n == 2 then sim.dns_hold = nil end end })
    sim:stop()
    assert.is_true(ok, how)
    assert.are.equal("CNAME " .. domain .. " → " .. LB, how)
    assert.are.equal("NXDOMAIN", seen)
    assert.is_true(waited)
    assert.are.same({ "127.0.0.1" }, r.addresses)
  end)
end)
