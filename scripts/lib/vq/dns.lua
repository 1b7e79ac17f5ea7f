-- vq.dns: does the planned domain point at the cluster's LoadBalancer? Queries go out on
-- the host's loop (bindings/dns.c, c-ares), to the system's resolvers or a chosen server,
-- so the CNAME chain is visible and a task never blocks the others.
--
--   dns.resolve(name, {type=, server=, port=, timeout=, tries=}) -> result | nil, err
--   dns.points_to(name, target, opts) -> true, how | false, what it saw
--   dns.wait_for(name, target_or_predicate, {timeout=, interval=, ...}) -> true, result | nil, err
local core = require "vq.core.dns"
local vq = require "vq"

local dns = {}

dns.MAX_CHAIN = 16
dns.INTERVAL = 2          -- wait_for's first pause, seconds
dns.MAX_INTERVAL = 30     -- and its longest
dns.WAIT_TIMEOUT = 600    -- how long wait_for waits by default

local TYPES = { A = true, AAAA = true, CNAME = true, ANY = true }

local function normalize(name) return (name:lower():gsub("%.$", "")) end

local function is_ip(s)
  return s:match("^%d+%.%d+%.%d+%.%d+$") ~= nil or (s:find(":", 1, true) ~= nil and s:match("^[%x:.]+$") ~= nil)
end

local function query(name, qtype, opts)
  return core.query { name = name, type = qtype, server = opts.server, port = opts.port,
                      timeout = opts.timeout, tries = opts.tries, search = opts.search }
end

-- The CNAME links from name through the answer section, in order, and the name they end at.
local function follow(answers, name)
  local by_owner = {}
  for _, rr in ipairs(answers) do
    if rr.type == "CNAME" then by_owner[normalize(rr.name)] = rr end
  end
  local chain, current, seen = {}, normalize(name), {}
  while by_owner[current] and not seen[current] and #chain < dns.MAX_CHAIN do
    seen[current] = true
    local rr = by_owner[current]
    chain[#chain + 1] = { from = current, to = normalize(rr.data), ttl = rr.ttl }
    current = chain[#chain].to
  end
  return chain, current
end

local function min_ttl(a, b) if not a then return b end if not b then return a end return math.min(a, b) end

-- What an answer says about name: the chain, and the addresses of the name it ends at.
local function collect(reply, name, qtype)
  local answers = reply.answers or {}
  local chain, canonical = follow(answers, name)
  local result = { name = normalize(name), type = qtype, canonical = canonical, addresses = {},
                   cname_chain = chain, authoritative = reply.aa == true, rcode = reply.rcode }
  for _, link in ipairs(chain) do result.ttl = min_ttl(result.ttl, link.ttl) end
  for _, rr in ipairs(answers) do
    if rr.type == qtype and rr.type ~= "CNAME" and normalize(rr.name) == canonical then
      result.addresses[#result.addresses + 1] = rr.data
      result.ttl = min_ttl(result.ttl, rr.ttl)
    end
  end
  return result
end

local function where(opts)
  if not opts.server then return "the system's resolvers" end
  return ("%s port %d"):format(opts.server, opts.port or 53)
end

local MESSAGES = {
  nxdomain = function(n) return ("%s does not exist (NXDOMAIN)"):format(n) end,
  nodata = function(n, t) return ("%s has no %s record"):format(n, t) end,
  timeout = function(n, _, o) return ("no answer for %s from %s"):format(n, where(o)) end,
  refused = function(n, _, o) return ("%s refused the query for %s (REFUSED)"):format(where(o), n) end,
  servfail = function(n, _, o) return ("%s failed to resolve %s (SERVFAIL)"):format(where(o), n) end,
}

-- The error of a failed query, told with the name; keeps what the server did answer.
local function failure(e, name, qtype, opts)
  local describe = MESSAGES[e.code]
  local err = vq.error(e.code, describe and describe(name, qtype, opts) or ("%s: %s"):format(name, e.message),
                       { name = normalize(name), type = qtype, rcode = e.rcode, ares_status = e.ares_status,
                         server = opts.server, port = opts.server and (opts.port or 53) or nil })
  if e.answers then
    local seen = collect(e, name, qtype)
    err.cname_chain, err.canonical, err.authoritative = seen.cname_chain, seen.canonical, seen.authoritative
  end
  return err
end

local function nodata(result, opts)
  local err = failure({ code = "nodata", rcode = 0 }, result.name, result.type, opts)
  err.cname_chain, err.canonical, err.authoritative = result.cname_chain, result.canonical, result.authoritative
  if #result.cname_chain > 0 then
    err.message = ("%s is a CNAME to %s, which has no %s record"):format(result.name, result.canonical, result.type)
  end
  return err
end

local function resolve_one(name, qtype, opts)
  local reply, e = query(name, qtype, opts)
  if not reply then return nil, failure(e, name, qtype, opts) end
  local result = collect(reply, name, qtype)
  if qtype ~= "CNAME" and #result.addresses == 0 then return nil, nodata(result, opts) end
  return result
end

-- A and AAAA one after the other: a name that failed for A (NXDOMAIN, no answer) is not
-- asked again for AAAA.
local function resolve_both(name, opts)
  local a, aerr = resolve_one(name, "A", opts)
  if not a and aerr.code ~= "nodata" then return nil, aerr end
  local aaaa, aaaaerr = resolve_one(name, "AAAA", opts)
  if not a and not aaaa then
    if aaaaerr.code ~= "nodata" then return nil, aaaaerr end
    aerr.type, aerr.message = "ANY", ("%s has no A or AAAA record"):format(aerr.name)
    return nil, aerr
  end
  local result = a or aaaa
  result.type = "ANY"
  if a and aaaa then
    for _, ip in ipairs(aaaa.addresses) do a.addresses[#a.addresses + 1] = ip end
    a.ttl = min_ttl(a.ttl, aaaa.ttl)
    a.authoritative = a.authoritative and aaaa.authoritative
  end
  return result
end

--- resolve(name, {type = "A"|"AAAA"|"CNAME"|"ANY" (A and AAAA), server = IP (else the
--- system's resolvers), port = 53, timeout = 5 (seconds per try; c-ares doubles it on each
--- round), tries = 2, search = false (use resolv.conf's search list)})
--- → {name, type, addresses = {...}, cname_chain = {{from, to, ttl}...}, canonical, ttl,
---    authoritative, rcode} | nil, err (code nxdomain|nodata|timeout|refused|servfail|resolve,
---    rcode; nodata and nxdomain keep the cname_chain that was answered).
function dns.resolve(name, opts)
  opts = opts or {}
  if type(name) ~= "string" or name == "" then error("dns.resolve needs a name", 2) end
  local qtype = (opts.type or "A"):upper()
  if not TYPES[qtype] then error("dns.resolve: type must be A, AAAA, CNAME or ANY, not " .. tostring(opts.type), 2) end
  if qtype == "ANY" then return resolve_both(name, opts) end
  return resolve_one(name, qtype, opts)
end

-- ---- does it point at the LoadBalancer? ----

local function targets_of(target)
  local list = type(target) == "table" and target or { target }
  local hosts, ips = {}, {}
  for _, t in ipairs(list) do
    if type(t) ~= "string" or t == "" then error("dns: a target is a hostname or an IP address", 3) end
    if is_ip(t) then ips[#ips + 1] = t else hosts[#hosts + 1] = normalize(t) end
  end
  return hosts, ips, table.concat(list, ", ")
end

local SEEN_ERRORS = { nxdomain = "NXDOMAIN", refused = "REFUSED", servfail = "SERVFAIL" }

local function chain_text(chain)
  local parts = {}
  for i, link in ipairs(chain) do parts[#parts + 1] = i == 1 and (link.from .. " → " .. link.to) or link.to end
  return table.concat(parts, " → ")
end

-- How the resolution reaches a target, or nil. A CNAME to the LoadBalancer's hostname
-- counts even while that hostname does not resolve (err then carries the chain).
local function matched(result, err, hosts, ips)
  local r = result or err or {}
  local chain = r.cname_chain or {}
  for _, host in ipairs(hosts) do
    if result and result.name == host then return ("%s is the LoadBalancer's name"):format(host) end
    for _, link in ipairs(chain) do
      if link.to == host then
        local note = err and (" (%s)"):format(SEEN_ERRORS[err.code] or err.code) or ""
        return "CNAME " .. chain_text(chain) .. note
      end
    end
  end
  if not result then return nil end
  for _, ip in ipairs(ips) do
    for _, addr in ipairs(result.addresses) do
      if addr == ip then return ("%s %s matches"):format(ip:find(":", 1, true) and "AAAA" or "A", ip) end
    end
  end
end

-- What was seen instead of the target, in a few words.
local function seen_text(result, err, what)
  local r = result or err
  local chain = r.cname_chain or {}
  if #chain > 0 then
    local tail = result and #result.addresses > 0 and (" (" .. table.concat(result.addresses, ", ") .. ")") or ""
    if err then tail = (" (%s)"):format(SEEN_ERRORS[err.code] or err.code) end
    return ("CNAME %s%s, not the LoadBalancer %s"):format(chain_text(chain), tail, what)
  end
  if result then
    return ("resolves to %s, not the LoadBalancer %s"):format(table.concat(result.addresses, ", "), what)
  end
  if SEEN_ERRORS[err.code] then return SEEN_ERRORS[err.code] end
  if err.code == "nodata" then return ("no %s record"):format(err.type or "A") end
  if err.code == "timeout" then return "no answer (timeout)" end
  return err.message
end

--- The verdict on one resolution (dns.resolve's result or err): true, how | false, what.
function dns.matches(result, err, target)
  local hosts, ips, what = targets_of(target)
  local how = matched(result, err, hosts, ips)
  if how then return true, how end
  return false, seen_text(result, err, what)
end

local function query_type(target, opts)
  if opts.type then return opts.type end
  local _, ips = targets_of(target)
  local v4, v6 = false, false
  for _, ip in ipairs(ips) do
    if ip:find(":", 1, true) then v6 = true else v4 = true end
  end
  if v6 and v4 then return "ANY" end
  return v6 and "AAAA" or "A"
end

local function with_type(opts, qtype)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.type = qtype
  return o
end

--- points_to(name, target, opts): target is the LoadBalancer's hostname (the domain must be
--- a CNAME to it, anywhere in the chain) or IP (an A/AAAA record of the domain), or a list
--- of them. → true, "CNAME a → b" | "A 1.2.3.4 matches"; or false, what it saw
--- ("NXDOMAIN", "resolves to 5.6.7.8, not the LoadBalancer ..."); the resolution third.
function dns.points_to(name, target, opts)
  opts = opts or {}
  local result, err = dns.resolve(name, with_type(opts, query_type(target, opts)))
  local ok, text = dns.matches(result, err, target)
  return ok, text, result or err
end

-- ---- waiting for propagation ----

local function duration(seconds)
  if seconds >= 60 then
    local m, s = seconds // 60, math.floor(seconds % 60)
    return s == 0 and ("%d min"):format(m) or ("%d min %d s"):format(m, s)
  end
  return ("%gs"):format(seconds)
end

-- An attempt cut short by the deadline ends a hair before it: no second, empty attempt.
local SLACK = 0.01

-- One query, cut short when the overall deadline comes first.
local function attempt(name, opts, remaining)
  local result, err = vq.timeout(math.max(remaining, 0.001), dns.resolve, name, opts)
  if result == nil and err and err.code == "timeout" and not err.name then
    err = vq.error("timeout", ("no answer for %s before the deadline"):format(name), { name = normalize(name) })
  end
  return result, err
end

--- wait_for(name, target or predicate(result, err) -> ok, text, {timeout = 600 (overall),
--- interval = 2 (first pause, doubled up to max_interval = 30), server=, port=, type=,
--- query_timeout = 5, tries = 2, on_attempt = function(n, result_or_err, ok, text)})
--- Polls (DNS has no watch) until the name points at the target. → true, result, how |
--- nil, err (code "timeout": "<name>: still NXDOMAIN after 10 min (25 attempts)"; err.last
--- is the last resolution, err.seen what it showed, err.attempts the count).
function dns.wait_for(name, want, opts)
  opts = opts or {}
  local check = want
  if type(want) ~= "function" then
    targets_of(want) -- a bad target is an error now, not after ten minutes
    check = function(r, e) return dns.matches(r, e, want) end
  end
  local qopts = { server = opts.server, port = opts.port, tries = opts.tries, search = opts.search,
                  timeout = opts.query_timeout, type = opts.type }
  if type(want) ~= "function" then qopts.type = query_type(want, opts) end
  local timeout = opts.timeout or dns.WAIT_TIMEOUT
  local interval, max_interval = opts.interval or dns.INTERVAL, opts.max_interval or dns.MAX_INTERVAL
  local deadline = vq.now() + timeout
  local n, seen, last = 0, nil, nil
  repeat
    n = n + 1
    local result, err = attempt(name, qopts, deadline - vq.now())
    local ok, text = check(result, err)
    if opts.on_attempt then opts.on_attempt(n, result or err, ok, text) end
    if ok then return true, result, text end
    seen, last = text, result or err
    local remaining = deadline - vq.now()
    if remaining > SLACK then vq.sleep(math.min(interval, remaining)) end
    interval = math.min(interval * 2, max_interval)
  until deadline - vq.now() <= SLACK
  return nil, vq.error("timeout", ("%s: still %s after %s (%d attempt%s)"):format(
    normalize(name), seen or "not pointing at the target", duration(timeout), n, n == 1 and "" or "s"),
    { name = normalize(name), attempts = n, seen = seen, last = last })
end

dns.version = core.version
dns.stats = core.stats

return dns
