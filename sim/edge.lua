-- What the runbooks reach outside the API server: the LoadBalancer's TLS ingress and DNS.
--
-- sim.edge = {host = "127.0.0.1", https_port =, reload = fn(), wait = fn(timeout) -> true
--             or nil, err, serving = "secret"|"fake"|nil, generation =, error =,
--             pid =, dir = (nginx's files and logs: error.log, access.log)}
--   A real nginx (Debian's nginx-light) on https_port. SNI server_name = the installation's
--   domain (sim.world_info.domain): /auth/ goes to Keycloak (shared/keycloak), / to Vantiq
--   (<vantiq ns>/vantiq), 503 as ingress-nginx says it while the Service has no ready
--   endpoint. Other names reach the default server ("default backend - 404"). Both serve
--   the Secret shared/default-ssl-cert (tls.crt, the whole chain, and tls.key), as the
--   controller's --default-ssl-certificate does; while that Secret is missing or nginx
--   rejects it, the controller's self-signed "Kubernetes Ingress Controller Fake
--   Certificate". A change of the Secret rewrites the files and reloads nginx (SIGHUP,
--   as `nginx -s reload` sends); the new certificate is served a moment later; reload()
--   does the same after a change nginx cannot see (sim.world_info.domain). HTTP/2 when
--   this nginx has it. nginx proxies to a loopback server of ours that calls the
--   handlers of sim.services (sim/proxy.lua) directly. Clients
--   pin the domain to 127.0.0.1: curl --resolve <domain>:<port>:127.0.0.1, or vq.http's
--   connect_to = "<domain>:443:127.0.0.1:<port>". Without nginx, one warning, and the
--   rest of the simulator works (wait() returns nil, "nginx not installed").
--
-- sim.dns = {host = "127.0.0.1", port =}
--   A DNS responder over UDP: the LoadBalancer's hostname (its Service's status, else
--   sim.world_info.lb_hostname) is A 127.0.0.1; the domain is a CNAME to it (an AWS CLB),
--   or an A record of the LoadBalancer's IP (status, else world_info.lb_ip) when it has no
--   hostname (Azure). Overrides, by lower-case name without the final dot:
--   sim.dns_records[name] = {cname = "x"} | {a = {"1.2.3.4"}} | false (NXDOMAIN). While
--   sim.dns_hold is true (or a set of names) the domain is NXDOMAIN ("DNS not propagated").
--   AAAA and other types of a known name: no data. Unknown names: NXDOMAIN; classes other
--   than IN: REFUSED; malformed queries: FORMERR or dropped.
local uv = require "uv"
local vq = require "vq"
local log = require "log"
local http = require "sim.http"
local dns = require "sim.dns"
local proxy = require "sim.proxy"
local common = require "sim.services.common"
local base64 = require "vq.base64"

local M = {}

M.SECRET = "default-ssl-cert"
local TTL = 60
local warned = false

-- ---- small process and file helpers ----

local function exists(path) return uv.fs_stat(path) ~= nil end

--- Where nginx is; set M.nginx_path to use another (or to pretend it is missing).
M.nginx_path = nil

local function find_nginx()
  if M.nginx_path then return exists(M.nginx_path) and M.nginx_path or nil end
  if exists("/usr/sbin/nginx") then return "/usr/sbin/nginx" end
  for dir in (os.getenv("PATH") or ""):gmatch("[^:]+") do
    if exists(dir .. "/nginx") then return dir .. "/nginx" end
  end
end

--- Run a command to its end: exit code, its output (stdout and stderr).
local function run(cmd, args)
  local out, err_pipe = uv.new_pipe(false), uv.new_pipe(false)
  local done, chunks, code, open = vq.event(), {}, nil, 3
  local function close_one()
    open = open - 1
    if open == 0 then done:set() end
  end
  local handle, err
  handle, err = uv.spawn(cmd, { args = args, stdio = { nil, out, err_pipe } }, function(c)
    code = c
    handle:close()
    close_one()
  end)
  if not handle then
    out:close()
    err_pipe:close()
    return nil, tostring(err)
  end
  for _, pipe in ipairs { out, err_pipe } do
    pipe:read_start(function(_, chunk)
      if chunk then chunks[#chunks + 1] = chunk return end
      pipe:close()
      close_one()
    end)
  end
  done:wait()
  return code, table.concat(chunks)
end

local function write_file(path, data)
  local fd = assert(uv.fs_open(path, "w", tonumber("600", 8)))
  uv.fs_fchmod(fd, tonumber("600", 8))
  uv.fs_write(fd, data, 0)
  uv.fs_ftruncate(fd, #data)
  uv.fs_close(fd)
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

local rm_rf = require("sim.util").remove_tree

-- Remove the directories of edges whose simulator died without stopping (killed by a
-- signal): the owner's pid is gone, or it never wrote one and is old.
local function sweep(tmp)
  local req = uv.fs_scandir(tmp)
  while req do
    local name = uv.fs_scandir_next(req)
    if not name then break end
    local path = tmp .. "/" .. name
    if name:match("^vqsim%-edge%-%w+$") then
      local owner = tonumber(read_file(path .. "/owner"))
      local st = uv.fs_stat(path)
      local gone = owner and select(3, uv.kill(owner, 0)) == "ESRCH"
      local stale = not owner and st and os.time() - st.mtime.sec > 120
      if gone or stale then rm_rf(path) end
    end
  end
end

local free_port = require("sim.util").free_port

local function can_connect(port)
  local tcp, ev, ok = uv.new_tcp(), vq.event(), false
  tcp:connect("127.0.0.1", port, function(err)
    ok = not err
    ev:set()
  end)
  ev:wait(1)
  if not tcp:is_closing() then tcp:close() end
  return ok
end

-- ---- what nginx serves ----

local function domain_of(sim)
  local d = (sim.world_info or {}).domain
  -- only a host name goes into the configuration
  if type(d) == "string" and d:match("^[%w][%w%.%-]*$") then return d:lower() end
end

local function secret_pair(sim)
  local s = sim:get("secrets", common.shared_ns(sim), M.SECRET)
  local data = s and s.data or {}
  local crt = type(data["tls.crt"]) == "string" and base64.decode(data["tls.crt"]) or ""
  local key = type(data["tls.key"]) == "string" and base64.decode(data["tls.key"]) or ""
  if crt ~= "" and key ~= "" then return crt, key end
end

local function location(prefix, route, backend)
  return ([[
    location %s {
      proxy_pass http://127.0.0.1:%d;
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Proto https;
      proxy_set_header X-Sim-Route %s;
    }
]]):format(prefix, backend, route)
end

-- Whether this nginx speaks HTTP/2 (ingress-nginx does, and so does our client over TLS).
local h2 = {}

local function has_http2(nginx)
  if h2[nginx] == nil then
    local _, out = run(nginx, { "-V" })
    h2[nginx] = (out or ""):find("http_v2_module", 1, true) ~= nil
  end
  return h2[nginx]
end

local function server_block(st, name, cert, routes)
  local body = routes and (location("/auth/", "keycloak", st.backend.port) .. location("/", "vantiq", st.backend.port))
    or '    location / { default_type text/plain; return 404 "default backend - 404\\n"; }\n'
  return ([[
  server {
    listen 127.0.0.1:%d ssl%s%s;
    server_name %s;
    ssl_certificate %s/%s.crt;
    ssl_certificate_key %s/%s.key;
%s  }
]]):format(st.port, st.http2 and " http2" or "", name == "_" and " default_server" or "", name,
           st.dir, cert, st.dir, cert, body)
end

local function config(st, domain, cert)
  local d = st.dir
  local servers = server_block(st, "_", cert, domain == nil)
  if domain then servers = servers .. server_block(st, domain, cert, true) end
  return ([[
worker_processes 1;
%serror_log %s/error.log warn;
events { worker_connections 256; }
http {
  access_log %s/access.log;
  client_body_temp_path %s/body;
  proxy_temp_path %s/proxy;
  fastcgi_temp_path %s/fastcgi;
  uwsgi_temp_path %s/uwsgi;
  scgi_temp_path %s/scgi;
  ssl_protocols TLSv1.2 TLSv1.3;
  client_max_body_size 64m;
  proxy_buffering off;
  proxy_read_timeout 300s;
%s}
]]):format(uv.getuid and uv.getuid() == 0 and "user root;\n" or "", d, d, d, d, d, d, d, servers)
end

local function nginx_args(st, extra)
  local args = { "-p", st.dir, "-c", st.dir .. "/nginx.conf", "-e", st.dir .. "/error.log",
                 "-g", "daemon off; pid " .. st.dir .. "/nginx.pid;" }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  return args
end

local function test_config(st)
  local code, out = run(st.nginx, nginx_args(st, { "-t", "-q" }))
  return code == 0, out
end

-- Write the certificate files and the configuration; fall back to the fake certificate
-- when nginx rejects the Secret's pair. Returns what the domain is served with.
local function write_config(sim, st)
  local domain = domain_of(sim)
  local crt, key = secret_pair(sim)
  if crt then
    write_file(st.dir .. "/secret.crt", crt)
    write_file(st.dir .. "/secret.key", key)
    write_file(st.dir .. "/nginx.conf", config(st, domain, "secret"))
    local ok, out = test_config(st)
    if ok then return "secret" end
    log.warn("sim.edge: nginx rejects %s/%s, serving the fake certificate: %s", common.shared_ns(sim), M.SECRET, out)
  end
  write_file(st.dir .. "/nginx.conf", config(st, domain, "fake"))
  local ok, out = test_config(st)
  if not ok then return nil, out end
  return "fake"
end

-- ---- nginx's life ----

-- The controller's self-signed certificate, made once per process.
local fake = nil

local function fake_certificate(st)
  if not fake then
    local code, out = run("openssl", { "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
      "-nodes", "-days", "365", "-subj", "/O=Acme Co/CN=Kubernetes Ingress Controller Fake Certificate",
      "-keyout", st.dir .. "/fake.key", "-out", st.dir .. "/fake.crt" })
    if code ~= 0 then return nil, "openssl: " .. tostring(out) end
    fake = { crt = read_file(st.dir .. "/fake.crt"), key = read_file(st.dir .. "/fake.key") }
  end
  write_file(st.dir .. "/fake.crt", fake.crt)
  write_file(st.dir .. "/fake.key", fake.key)
  return true
end

local function tail(path)
  local s = read_file(path)
  return s:sub(-600)
end

local function spawn_nginx(st)
  local cmd, args = st.nginx, nginx_args(st)
  if exists("/usr/bin/setpriv") then
    -- nginx goes with us even if we die without stopping it
    cmd, args = "/usr/bin/setpriv", { "--pdeathsig", "TERM", "--", st.nginx, table.unpack(args) }
  end
  local handle, pid
  handle, pid = uv.spawn(cmd, { args = args, stdio = { nil, nil, nil } }, function(code, signal)
    st.exit_code, st.exit_signal = code, signal
    handle:close()
    st.exited:set()
    if st.stopping then rm_rf(st.dir) end
    if not st.stopping then
      st.edge.error = ("nginx exited (%s): %s"):format(code, tail(st.dir .. "/error.log"))
      log.warn("sim.edge: %s", st.edge.error)
    end
  end)
  if not handle then return nil, tostring(pid) end
  st.handle, st.pid, st.edge.pid = handle, pid, pid
  return true
end

local function wait_listening(st)
  for _ = 1, 200 do
    if st.exited:is_set() then return nil, st.edge.error or "nginx exited" end
    if can_connect(st.port) then return true end
    vq.sleep(0.05)
  end
  return nil, "nginx did not listen on port " .. st.port
end

local function fail(st, err)
  st.edge.error = err
  log.warn("sim.edge: %s", err)
  st.ready:set()
end

-- Bring nginx up, or bring it to the current Secret and domain.
local function apply(sim, st)
  local serving, err = write_config(sim, st)
  if not serving then return fail(st, "nginx configuration: " .. tostring(err)) end
  if not st.handle then
    local ok, e = spawn_nginx(st)
    if ok then ok, e = wait_listening(st) end
    if not ok then return fail(st, e) end
  elseif not st.exited:is_set() then
    uv.process_kill(st.handle, "sighup")
  end
  st.edge.serving, st.edge.error = serving, nil
  st.edge.generation = st.edge.generation + 1
  st.ready:set()
end

-- Errors end up in sim.edge.error (never a failed task); a cancellation goes on up.
local function guarded(st, fn, ...)
  local ok, err = pcall(fn, ...)
  if ok then return end
  if type(err) == "table" and err.code == "cancelled" then error(err, 0) end
  fail(st, tostring(err))
end

-- Apply changes one after another: a change during an apply is applied after it.
local function apply_pending(sim, st)
  while st.dirty and not st.stopping do
    st.dirty = false
    guarded(st, apply, sim, st)
  end
  st.applying = false
end

local function start_nginx(sim, st)
  local tmp = uv.os_tmpdir() or "/tmp"
  sweep(tmp)
  local dir, err = uv.fs_mkdtemp(tmp .. "/vqsim-edge-XXXXXX")
  if not dir then return fail(st, "no TLS edge: " .. tostring(err)) end
  st.dir, st.edge.dir = dir, dir
  write_file(dir .. "/owner", tostring(uv.os_getpid()))
  st.http2 = has_http2(st.nginx)
  local ok, e = fake_certificate(st)
  if not ok then return fail(st, "no TLS edge: " .. e) end
  st.dirty = true
  apply_pending(sim, st)
end

local function schedule(sim, st)
  st.dirty = true
  if st.applying or st.stopping or not st.dir then return end
  st.applying = true
  sim:spawn(apply_pending, sim, st)
end

-- ---- the ingress's backend: routes to the simulated services ----

local UNAVAILABLE = [[<html>
<head><title>503 Service Temporarily Unavailable</title></head>
<body>
<center><h1>503 Service Temporarily Unavailable</h1></center>
<hr><center>nginx</center>
</body>
</html>
]]

local BAD_GATEWAY = UNAVAILABLE:gsub("503 Service Temporarily Unavailable", "502 Bad Gateway")

local function vantiq_target(sim)
  local ns = (sim.world_info or {}).namespace
  if ns then return ns end
  for _, svc in ipairs(sim:list("services")) do
    if svc.metadata.name == "vantiq" then return svc.metadata.namespace end
  end
end

local function backend_handler(sim)
  return function(req, res)
    local route = req.headers["x-sim-route"]
    local ns = route == "keycloak" and common.shared_ns(sim) or vantiq_target(sim)
    local name = route == "keycloak" and "keycloak" or "vantiq"
    local svc = ns and sim:get("services", ns, name)
    if not svc or not proxy.ready(sim, svc) then
      return res:send(503, UNAVAILABLE, { ["Content-Type"] = "text/html" })
    end
    local handler = proxy.handler(sim, ns, name)
    if not handler then return res:send(502, BAD_GATEWAY, { ["Content-Type"] = "text/html" }) end
    local path = http.unescape(req.path:gsub("%+", "%%2B"))
    local inner = proxy.inner_request(sim, req, path, ns)
    inner.headers["x-sim-route"] = nil
    return handler(inner, res, path)
  end
end

-- ---- DNS ----

local function lb_address(sim)
  for _, svc in ipairs(sim:list("services")) do
    if svc.spec and svc.spec.type == "LoadBalancer" then
      local lb = svc.status and svc.status.loadBalancer or {}
      for _, ing in ipairs(lb.ingress or {}) do
        if ing.hostname or ing.ip then return ing.hostname, ing.ip end
      end
    end
  end
  local info = sim.world_info or {}
  return info.lb_hostname, info.lb_ip
end

local function held(sim, name)
  local hold = sim.dns_hold
  if type(hold) == "table" then return hold[name] == true end
  return hold == true and name == domain_of(sim)
end

-- The records of a name: {cname = target} | {a = {ip...}} | nil (no such name).
local function records_for(sim, name)
  if held(sim, name) then return nil end
  local custom = (sim.dns_records or {})[name]
  if custom ~= nil then return custom or nil end
  local host, ip = lb_address(sim)
  if host and name == host:lower() then return { a = { "127.0.0.1" } } end
  if name == domain_of(sim) then
    if host then return { cname = host } end
    if ip then return { a = { ip } } end
  end
end

local function add_addresses(reply, name, rec)
  local list = type(rec.a) == "table" and rec.a or { rec.a }
  for _, ip in ipairs(list) do
    reply.answers[#reply.answers + 1] = { name = name, type = dns.TYPE.A, ttl = TTL, data = ip }
  end
end

-- Follow CNAMEs within what we know, at most a few steps.
local function resolve(sim, q, reply)
  local name, seen = q.name, {}
  for _ = 1, 8 do
    local key = name:lower():gsub("%.$", "")
    if seen[key] then return end
    seen[key] = true
    local rec = records_for(sim, key)
    if not rec then
      if #reply.answers == 0 then reply.rcode = dns.RCODE.NXDOMAIN end
      return
    end
    reply.aa = 1
    if not rec.cname then
      if q.type == dns.TYPE.A or q.type == dns.TYPE.ANY then add_addresses(reply, name, rec) end
      return
    end
    reply.answers[#reply.answers + 1] = { name = name, type = dns.TYPE.CNAME, ttl = TTL, data = rec.cname }
    if q.type == dns.TYPE.CNAME then return end
    name = rec.cname
  end
end

local function answer(sim, packet)
  local msg, _, header = dns.parse(packet)
  if not msg then
    if header and header.qr == 0 then
      return dns.build { id = header.id, opcode = header.opcode, rd = header.rd, ra = 1, rcode = dns.RCODE.FORMERR }
    end
    return nil
  end
  if msg.qr == 1 then return nil end
  local reply = { id = msg.id, opcode = msg.opcode, rd = msg.rd, ra = 1, questions = msg.questions, answers = {} }
  if msg.opcode ~= 0 then
    reply.rcode = dns.RCODE.NOTIMP
  elseif #msg.questions ~= 1 then
    reply.rcode = dns.RCODE.FORMERR
  elseif msg.questions[1].class ~= dns.CLASS.IN then
    reply.rcode = dns.RCODE.REFUSED
  else
    resolve(sim, msg.questions[1], reply)
  end
  return dns.build(reply)
end

--- The reply to a DNS packet, or nil to drop it (exposed for specs).
M.answer = answer

local function servfail(packet)
  local ok, msg = pcall(dns.parse, packet)
  if ok and msg and msg.qr == 0 then
    return dns.build { id = msg.id, rd = msg.rd, ra = 1, rcode = dns.RCODE.SERVFAIL, questions = msg.questions }
  end
end

local function start_dns(sim)
  local udp = uv.new_udp()
  assert(udp:bind("127.0.0.1", 0))
  udp:recv_start(function(err, data, addr)
    if err or not data or not addr then return end
    local ok, out = pcall(answer, sim, data)
    if not ok then
      log.warn("sim.dns: %s", tostring(out))
      out = servfail(data)
    end
    if out then udp:send(out, addr.ip, addr.port, function() end) end
  end)
  sim.dns = { host = "127.0.0.1", port = udp:getsockname().port }
  return udp
end

-- ---- the module ----

function M.install(sim)
  sim.dns_records = sim.dns_records or {}
  sim.edge = { host = "127.0.0.1", generation = 0 }
  sim.dns = { host = "127.0.0.1" }
end

local function stop(st, udp)
  st.stopping = true
  if not udp:is_closing() then udp:recv_stop() udp:close() end
  st.backend.close()
  if st.handle and not st.exited:is_set() then
    uv.process_kill(st.handle, "sigterm")
    -- reap it before the files go, when we may wait
    if vq.current() then st.exited:wait(5) end
  end
  if st.dir and (not st.handle or st.exited:is_set()) then rm_rf(st.dir) end
end

function M.started(sim)
  local udp = start_dns(sim)
  local st = { edge = sim.edge, ready = vq.event(), exited = vq.event(), applying = true,
               backend = http.serve { host = "127.0.0.1", port = 0, handler = backend_handler(sim) } }
  sim:on_stop(function() stop(st, udp) end)
  st.nginx = find_nginx()
  sim.edge.wait = function(timeout)
    if not st.ready:wait(timeout or 30) then return nil, "the edge is not up yet" end
    if st.edge.error and not st.handle then return nil, st.edge.error end
    return true
  end
  sim.edge.reload = function() schedule(sim, st) end
  if not st.nginx then
    st.edge.error = "nginx not installed"
    if not warned then log.warn("sim.edge: nginx not installed (apt-get install nginx-light): no TLS edge") end
    warned = true
    st.applying = false
    st.ready:set()
    return
  end
  st.port = free_port()
  sim.edge.https_port = st.port
  -- a simulator dropped without stop() still takes nginx and its files along
  sim.edge.guard = setmetatable({}, { __gc = function()
    if st.pid and not st.exited:is_set() then uv.kill(st.pid, "sigterm") end
    if st.dir then rm_rf(st.dir) end
  end })
  sim.store:on_change(function(ev)
    local meta = ev.object and ev.object.metadata or {}
    if ev.key == "secrets" and meta.name == M.SECRET and meta.namespace == common.shared_ns(sim) then
      schedule(sim, st)
    end
  end)
  sim:spawn(guarded, st, start_nginx, sim, st)
end

return M
