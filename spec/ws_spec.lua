local vq = require "vq"
local uv = require "luv"
local ws = require "vq.core.ws"
local wsproto = require "sim.websocket"
local run = require "spec.support.run"

-- ---- a small WebSocket server on luv TCP ----
--
-- /echo       echoes messages; a text message "cmd:..." asks for something else (below).
--             ?server=a,b  the subprotocols it accepts, in its order of preference.
-- /headers    sends the request's X-Test and Authorization headers, then echoes.
-- /hello      sends "hello", then echoes.
-- /verify     sends the X-Client-Verify header (nginx's verdict on a client certificate).
-- /notfound   answers 404 with a Kubernetes Status, without upgrading.
-- /silent     never answers.

local OP = wsproto.OP
local server = { closes = {}, conns = 0, open = {} }

local function parse_request(head)
  local method, target = head:match("^(%u+) (%S+) HTTP/1%.1\r\n")
  local headers = {}
  for name, value in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do headers[name:lower()] = value end
  local path, query = target:match("^([^?]*)%??(.*)$")
  local q = {}
  for k, v in query:gmatch("([^&=]+)=([^&]*)") do q[k] = v end
  return { method = method, path = path, query = q, headers = headers }
end

local function split(s)
  local out = {}
  for v in (s or ""):gmatch("[^,%s]+") do out[#out + 1] = v end
  return out
end

local function pick_protocol(req)
  local offered = split(req.headers["sec-websocket-protocol"])
  local accepted = req.query.server and split(req.query.server) or { "v5.channel.k8s.io", "v4.channel.k8s.io" }
  for _, a in ipairs(accepted) do
    for _, o in ipairs(offered) do if a == o then return a end end
  end
end

-- One frame from the front of buf: frame, rest; or nil when incomplete.
local function parse_frame(buf)
  if #buf < 2 then return nil end
  local b1, b2 = buf:byte(1, 2)
  local len, at = b2 & 0x7f, 3
  if len == 126 then
    if #buf < 4 then return nil end
    len, at = string.unpack(">I2", buf, 3), 5
  elseif len == 127 then
    if #buf < 10 then return nil end
    len, at = string.unpack(">I8", buf, 3), 11
  end
  local mask
  if b2 & 0x80 ~= 0 then
    if #buf < at + 3 then return nil end
    mask, at = buf:sub(at, at + 3), at + 4
  end
  if #buf < at + len - 1 then return nil end
  local payload = buf:sub(at, at + len - 1)
  if mask then payload = wsproto.unmask(payload, mask) end
  return { fin = b1 & 0x80 ~= 0, op = b1 & 0x0f, payload = payload, masked = mask ~= nil }, buf:sub(at + len)
end

local function send(sock, op, payload, fin)
  if not sock:is_closing() then sock:write(wsproto.frame(op, payload, fin)) end
end

local function close_sock(sock)
  if not sock:is_closing() then sock:close() end
end

local commands = {}

function commands.frag(sock, n)
  local parts = {}
  for i = 1, tonumber(n) do parts[i] = ("part%d;"):format(i) end
  for i, p in ipairs(parts) do
    send(sock, i == 1 and OP.TEXT or OP.CONTINUATION, p, i == #parts)
    if i == 1 then send(sock, OP.PING, "mid") end -- a control frame between fragments
  end
end

function commands.big(sock, n)
  local block = ("0123456789abcdef"):rep(4096)
  local s = block:rep(math.ceil(tonumber(n) / #block)):sub(1, tonumber(n))
  send(sock, OP.BINARY, s)
end

function commands.ping(sock, payload, st) st.ping = payload; send(sock, OP.PING, payload) end
function commands.close(sock, code, reason) send(sock, OP.CLOSE, string.pack(">I2", tonumber(code)) .. (reason or "")) end
function commands.drop(sock) close_sock(sock) end
function commands.empty(sock) send(sock, OP.TEXT, "") end

function commands.flood(sock, count, size, st)
  local block = ("f"):rep(tonumber(size))
  for i = 1, tonumber(count) do send(sock, OP.BINARY, string.pack(">I4", i) .. block:sub(5)) end
  st.flooded = sock
end

local function on_message(sock, st, op, payload)
  local cmd, args = payload:match("^cmd:(%a+):?(.*)$")
  if op == OP.TEXT and cmd and commands[cmd] then
    local a = {}
    for v in (args .. ":"):gmatch("([^:]*):") do a[#a + 1] = v end
    a[#a + 1] = st
    for i = #a, 1, -1 do if a[i] == "" then table.remove(a, i) end end
    commands[cmd](sock, table.unpack(a))
  else
    send(sock, op, payload)
  end
end

local function on_frame(sock, st, f)
  if not f.masked then return close_sock(sock) end -- RFC 6455: a client masks every frame
  if f.op == OP.CLOSE then
    server.closes[#server.closes + 1] = #f.payload >= 2 and string.unpack(">I2", f.payload) or 1005
    send(sock, OP.CLOSE, f.payload:sub(1, 2))
    return close_sock(sock)
  elseif f.op == OP.PING then return send(sock, OP.PONG, f.payload)
  elseif f.op == OP.PONG then
    if f.payload ~= "mid" then send(sock, OP.TEXT, "pong:" .. f.payload) end
    return
  end
  if f.op ~= OP.CONTINUATION then st.op, st.parts = f.op, {} end
  st.parts[#st.parts + 1] = f.payload
  if f.fin then on_message(sock, st, st.op, table.concat(st.parts)) end
end

local function answer(sock, req, st)
  if req.path == "/silent" then return false end
  if req.path == "/notfound" then
    local body = '{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods \\"nope\\" not found","reason":"NotFound","code":404}'
    sock:write(("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"):format(#body, body))
    return false
  end
  local headers = assert(wsproto.handshake_headers(req, pick_protocol(req)))
  local lines = { "HTTP/1.1 101 Switching Protocols" }
  for k, v in pairs(headers) do lines[#lines + 1] = k .. ": " .. v end
  sock:write(table.concat(lines, "\r\n") .. "\r\n\r\n")
  if req.path == "/headers" then
    send(sock, OP.TEXT, ("x-test=%s authorization=%s"):format(req.headers["x-test"], req.headers.authorization))
  elseif req.path == "/hello" then
    send(sock, OP.TEXT, "hello")
  elseif req.path == "/verify" then
    send(sock, OP.TEXT, req.headers["x-client-verify"] or "none")
  end
  st.parts = {}
  return true
end

local function serve(sock)
  local buf, upgraded, st = "", false, {}
  server.conns = server.conns + 1
  server.open[sock] = true
  sock:read_start(function(err, data)
    if err or not data then server.open[sock] = nil; return close_sock(sock) end
    buf = buf .. data
    if not upgraded then
      local head_end = buf:find("\r\n\r\n", 1, true)
      if not head_end then return end
      local req = parse_request(buf:sub(1, head_end + 1))
      buf = buf:sub(head_end + 4)
      upgraded = answer(sock, req, st)
      if not upgraded then return end
    end
    while true do
      local f, rest = parse_frame(buf)
      if not f then break end
      buf = rest
      on_frame(sock, st, f)
    end
  end)
end

local listener, base

setup(function()
  listener = uv.new_tcp()
  assert(listener:bind("127.0.0.1", 0))
  assert(listener:listen(256, function()
    local sock = uv.new_tcp()
    listener:accept(sock)
    serve(sock)
  end))
  base = "ws://127.0.0.1:" .. listener:getsockname().port
end)

teardown(function()
  for sock in pairs(server.open) do close_sock(sock) end
  listener:close()
end)

local function connect(path, opts)
  opts = opts or {}
  opts.url = base .. path
  return ws.connect(opts)
end

local function closed_port()
  local t = uv.new_tcp()
  t:bind("127.0.0.1", 0)
  local port = t:getsockname().port
  t:close()
  return port
end

describe("ws.connect", function()
  it("upgrades, negotiates the first subprotocol the server accepts, and echoes", function()
    local c = assert(connect("/echo", { protocols = { "v5.channel.k8s.io", "v4.channel.k8s.io" } }))
    assert.are.equal("v5.channel.k8s.io", c.protocol)
    assert.are.equal("open", c.state)
    assert(c:send("hi there"))
    local msg, kind = c:receive()
    assert.are.equal("hi there", msg)
    assert.are.equal("text", kind)
    assert(c:close())
    assert.are.equal("closed", c.state)
  end)

  it("falls back to v4 when the server does not speak v5", function()
    local c = assert(connect("/echo?server=v4.channel.k8s.io", { protocols = { "v5.channel.k8s.io", "v4.channel.k8s.io" } }))
    assert.are.equal("v4.channel.k8s.io", c.protocol)
    c:close()
  end)

  it("connects without subprotocols", function()
    local c = assert(connect("/echo"))
    assert.is_nil(c.protocol)
    c:close()
  end)

  it("sends the request headers", function()
    local c = assert(connect("/headers", { headers = { ["X-Test"] = "v1", Authorization = "Bearer s3cret" } }))
    assert.are.equal("x-test=v1 authorization=Bearer s3cret", c:receive())
    c:close()
  end)

  it("refuses headers that would split the request", function()
    local c, e = connect("/echo", { headers = { ["X-Bad"] = "a\r\nX-Injected: 1" } })
    assert.is_nil(c)
    assert.are.equal("invalid", e.code)
  end)

  it("gives the status and body of an answer that is not 101", function()
    local c, e = connect("/notfound", { protocols = { "v5.channel.k8s.io" } })
    assert.is_nil(c)
    assert.are.equal("handshake", e.code)
    assert.are.equal(404, e.status)
    assert.matches('"reason":"NotFound"', e.body, 1, true)
    assert.matches("404", e.message)
  end)

  it("says when nothing listens", function()
    local c, e = ws.connect { url = "ws://127.0.0.1:" .. closed_port() .. "/" }
    assert.is_nil(c)
    assert.are.equal("connect", e.code)
  end)

  it("says when the name does not resolve", function()
    local c, e = ws.connect { url = "ws://no-such-host.invalid/" }
    assert.is_nil(c)
    assert.are.equal("resolve", e.code)
  end)

  it("times out a server that never answers", function()
    local started = vq.now()
    local c, e = connect("/silent", { timeout = 0.2 })
    assert.is_nil(c)
    assert.are.equal("timeout", e.code)
    assert.is_true(vq.now() - started < 2)
  end)

  it("rejects what is not a WebSocket URL", function()
    local c, e = ws.connect { url = "ftp://example.com/" }
    assert.is_nil(c)
    assert.are.equal("invalid", e.code)
  end)

  it("ends under vq.timeout while it waits for the server", function()
    local c, e = vq.timeout(0.2, ws.connect, { url = base .. "/silent" })
    assert.is_nil(c)
    assert.are.equal("timeout", e.code)
  end)
end)

describe("a connection", function()
  it("keeps text and binary apart", function()
    local c = assert(connect("/echo"))
    local bytes = "\0\1\2\255binary"
    assert(c:send(bytes, true))
    local msg, kind = c:receive()
    assert.are.equal(bytes, msg)
    assert.are.equal("binary", kind)
    c:close()
  end)

  it("joins fragmented messages, answering a ping between the fragments", function()
    local c = assert(connect("/echo"))
    assert(c:send("cmd:frag:5"))
    assert.are.equal("part1;part2;part3;part4;part5;", c:receive())
    c:close()
  end)

  it("answers pings with pongs", function()
    local c = assert(connect("/echo"))
    assert(c:send("cmd:ping:abc"))
    assert.are.equal("pong:abc", c:receive())
    c:close()
  end)

  it("receives empty messages", function()
    local c = assert(connect("/echo"))
    assert(c:send("cmd:empty"))
    local msg, kind = c:receive()
    assert.are.equal("", msg)
    assert.are.equal("text", kind)
    c:close()
  end)

  it("sends and receives large messages", function()
    local c = assert(connect("/echo"))
    local big = ("x"):rep(3 * 1024 * 1024 + 7)
    assert(c:send(big, true))
    local back = c:receive()
    assert.are.equal(#big, #back)
    assert.are.equal(big, back)
    assert(c:send("cmd:big:5000000"))
    local msg = c:receive()
    assert.are.equal(5000000, #msg)
    assert.are.equal("0123456789abcdef", msg:sub(1, 16))
    c:close()
  end)

  it("refuses a message larger than max_message", function()
    local c = assert(connect("/echo", { max_message = 1000 }))
    assert(c:send("cmd:big:5000"))
    local msg, e = c:receive()
    assert.is_nil(msg)
    assert.are.equal("message_too_large", e.code)
  end)

  it("stops reading while its queue is full, and catches up", function()
    local c = assert(connect("/echo", { buffer = 64 * 1024 }))
    assert(c:send("cmd:flood:256:65536"))
    vq.sleep(0.3)
    assert.is_true(c.buffered <= 2 * 64 * 1024 + 65536, "buffered " .. c.buffered)
    local pending = 0
    for sock in pairs(server.open) do pending = math.max(pending, sock:get_write_queue_size()) end
    assert.is_true(pending > 0, "the server should be held back")
    for i = 1, 256 do
      local msg = assert(c:receive())
      assert.are.equal(65536, #msg)
      assert.are.equal(i, string.unpack(">I4", msg))
    end
    c:close()
  end)

  it("returns nil after the server closes, with its code and reason", function()
    local c = assert(connect("/echo"))
    assert(c:send("cmd:close:4001:bye"))
    local msg, e = c:receive()
    assert.is_nil(msg)
    assert.is_nil(e)
    assert.are.equal(4001, c.close_code)
    assert.are.equal("bye", c.close_reason)
    local ok, se = c:send("late")
    assert.is_nil(ok)
    assert.are.equal("closed", se.code)
  end)

  it("delivers what came before the close", function()
    local c = assert(connect("/echo"))
    assert(c:send("one"))
    assert(c:send("cmd:close:1000:done"))
    assert.are.equal("one", c:receive())
    assert.is_nil(c:receive())
  end)

  it("says when the connection breaks without a close frame", function()
    local c = assert(connect("/echo"))
    assert(c:send("cmd:drop"))
    local msg, e = c:receive()
    assert.is_nil(msg)
    assert.are.equal("connection", e.code)
    assert.are.equal(1006, c.close_code)
  end)

  it("sends a close frame with its code when closed", function()
    local before = #server.closes
    local c = assert(connect("/echo"))
    assert(c:close(4002))
    assert.are.equal(before + 1, #server.closes)
    assert.are.equal(4002, server.closes[#server.closes])
    assert.is_nil(c:receive())
  end)

  it("closes itself at the end of a <close> scope", function()
    local before = #server.closes
    do
      local c <close> = assert(connect("/echo"))
      assert(c:send("x"))
      assert.are.equal("x", c:receive())
    end
    for _ = 1, 50 do
      if #server.closes > before then break end
      vq.sleep(0.01)
    end
    assert.are.equal(1000, server.closes[before + 1])
  end)

  it("stops a waiting receive when its task is cancelled, and stays usable", function()
    local c = assert(connect("/echo"))
    local t = vq.spawn(function() return c:receive() end)
    vq.sleep(0.05)
    t:cancel()
    local ok, e = t:wait()
    assert.is_nil(ok)
    assert.are.equal("cancelled", e.code)
    assert(c:send("after"))
    assert.are.equal("after", c:receive())
    c:close()
  end)

  it("ends a receive waiting in another task when the connection is closed", function()
    local c = assert(connect("/echo"))
    local t = vq.spawn(function() return c:receive() end)
    vq.sleep(0.05)
    assert(c:close())
    local r = table.pack(t:wait())
    assert.is_nil(r[1])
    assert.is_nil(r[2])
    assert.are.equal("closed", c.state)
  end)

  it("times out a waiting receive under vq.timeout, and stays usable", function()
    local c = assert(connect("/echo"))
    local started = vq.now()
    local msg, e = vq.timeout(0.1, c.receive, c)
    assert.is_nil(msg)
    assert.are.equal("timeout", e.code)
    assert.is_true(vq.now() - started < 1)
    assert(c:send("again"))
    assert.are.equal("again", c:receive())
    c:close()
  end)

  it("serves many connections at once", function()
    local jobs = {}
    for i = 1, 60 do
      jobs[i] = function()
        local c = assert(connect("/echo", { protocols = { "v5.channel.k8s.io" } }))
        for j = 1, 5 do
          assert(c:send(("%d/%d"):format(i, j)))
          assert.are.equal(("%d/%d"):format(i, j), c:receive())
        end
        c:close()
        return true
      end
    end
    local results = assert(vq.all(jobs))
    assert.are.equal(60, #results)
  end)

  it("lets a runbook end with a connection left open, closing every handle", function()
    local script = ([[
      local ws = require "vq.core.ws"
      local c = assert(ws.connect{url = %q})
      assert(c:receive() == "hello")
      local _, e = ws.connect{url = "ws://127.0.0.1:%d/"}
      assert(e.code == "connect")
      print("done")
    ]]):format(base .. "/hello", closed_port())
    local r = run.run { run.vqlua, "-e", script, timeout = 20 }
    assert.are.equal("", r.stderr)
    assert.are.equal("done\n", r.stdout)
    assert.are.equal(0, r.status)
  end)
end)

-- ---- wss: nginx terminates TLS (and checks client certificates) in front of the server ----

local NGINX = os.getenv("NGINX") or "/usr/sbin/nginx"
local has_nginx = uv.fs_stat(NGINX) and package.searchpath("spec.support.nginx", package.path)
local HOST = "ws.example.test"

describe("wss", function()
  local pki, n, tls_base, connect_to
  local function path(name) return pki:path(name) end
  local function read(name) return pki:read(name) end
  local function wss(route, opts)
    opts = opts or {}
    opts.url = tls_base .. route
    opts.connect_to = opts.connect_to or connect_to
    return ws.connect(opts)
  end

  setup(function()
    if not has_nginx then return end
    pki = require("spec.support.pki").new()
    pki:ca("ca", { key = "ec" })
    pki:ca("other-ca", { key = "ec" })
    pki:cert("server", { by = "ca", cn = HOST, san = "DNS:" .. HOST, key = "ec" })
    pki:cert("client", { by = "ca", cn = "vq-ws-client", usage = "client", key = "ec" })
    local upstream = listener:getsockname().port
    n = require("spec.support.nginx").start { servers = { {
      server_name = HOST, cert = path("server.crt"), key = path("server.key"),
      extra = ("ssl_client_certificate %s; ssl_verify_client optional; location /ws/ { proxy_pass http://127.0.0.1:%d/; "
        .. "proxy_http_version 1.1; proxy_set_header Upgrade websocket; proxy_set_header Connection upgrade; "
        .. "proxy_set_header X-Client-Verify $ssl_client_verify; }"):format(path("ca.crt"), upstream),
    } } }
    tls_base = ("wss://%s:%d/ws"):format(HOST, n.port)
    connect_to = ("%s:%d:127.0.0.1:%d"):format(HOST, n.port, n.port)
  end)

  teardown(function()
    if n then n:stop() end
    if pki then pki:remove() end
  end)

  local it_tls = has_nginx and it or pending

  it_tls("verifies the server against ca_data (a bundle) and names it by the URL's host", function()
    local c = assert(wss("/echo", { ca_data = read("other-ca.crt") .. read("ca.crt"), protocols = { "v4.channel.k8s.io" } }))
    assert.are.equal("v4.channel.k8s.io", c.protocol)
    assert(c:send("over tls"))
    assert.are.equal("over tls", c:receive())
    assert(c:close())
  end)

  it_tls("verifies against ca_file", function()
    local c = assert(wss("/echo", { ca_file = path("ca.crt") }))
    assert(c:close())
  end)

  it_tls("refuses a server its CA did not sign", function()
    local c, e = wss("/echo", { ca_data = read("other-ca.crt") })
    assert.is_nil(c)
    assert.are.equal("tls", e.code)
  end)

  it_tls("refuses a certificate for another name", function()
    local c, e = ws.connect { url = ("wss://127.0.0.1:%d/ws/echo"):format(n.port), ca_data = read("ca.crt") }
    assert.is_nil(c)
    assert.are.equal("tls", e.code)
  end)

  it_tls("accepts any certificate when insecure", function()
    local c = assert(ws.connect { url = ("wss://127.0.0.1:%d/ws/echo"):format(n.port), insecure = true })
    assert(c:close())
  end)

  it_tls("presents a client certificate from data or files", function()
    local c = assert(wss("/verify", { ca_data = read("ca.crt"), cert_data = read("client.crt"), key_data = read("client.key") }))
    assert.are.equal("SUCCESS", c:receive())
    c:close()
    c = assert(wss("/verify", { ca_data = read("ca.crt"), cert_file = path("client.crt"), key_file = path("client.key") }))
    assert.are.equal("SUCCESS", c:receive())
    c:close()
    c = assert(wss("/verify", { ca_data = read("ca.crt") }))
    assert.are.equal("NONE", c:receive())
    c:close()
  end)

  it_tls("says which TLS input is wrong, never what it holds", function()
    local c, e = wss("/echo", { ca_data = read("ca.crt"), cert_data = read("client.crt"), key_data = "-----BEGIN PRIVATE KEY-----\nnot a key\n" })
    assert.is_nil(c)
    assert.are.equal("tls", e.code)
    assert.matches("key_data", e.message)
    assert.not_matches("not a key", e.message, 1, true)
  end)
end)
