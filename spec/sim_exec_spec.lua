-- The simulator's pods/exec: kubectl 1.27 (SPDY), 1.30 and 1.33 (WebSocket v5) running
-- the built-in commands, a raw WebSocket client checking the protocol itself, and the
-- handlers run in-process.
local vq = require "vq"
local uv = require "luv"
local http = require "vq.http"
local json = require "json"
local util = require "sim.util"
local ws = require "sim.websocket"
local cluster = require "spec.support.cluster"

local MODULES = { "sim.auth", "sim.core", "sim.logs", "sim.exec" }
local NS = "default"

local function start(version) return cluster.start { speed = 0.02, version = version, modules = MODULES } end
local kubectl = cluster.run_kubectl

--- A pod with running containers (or the given states) on node-1.
local function pod(sim, name, o)
  o = o or {}
  local containers = {}
  for _, cname in ipairs(o.containers or { "app" }) do
    containers[#containers + 1] = { name = cname, image = o.image or "vantiq/vantiq-server:1.40", env = o.env }
  end
  local created = assert(sim:create("pods", { metadata = { name = name, namespace = NS, labels = o.labels,
      ownerReferences = o.owner and { o.owner } or nil },
    spec = { nodeName = "node-1", hostname = o.hostname, subdomain = o.subdomain, containers = containers } }))
  local copy = util.copy(created)
  local statuses = {}
  for _, ct in ipairs(containers) do
    statuses[#statuses + 1] = { name = ct.name, image = ct.image, restartCount = 0, ready = true,
      state = (o.states or {})[ct.name] or { running = { startedAt = util.rfc3339(sim.clock:now()) } } }
  end
  copy.status = { phase = "Running", podIP = "10.244.1.9", containerStatuses = statuses }
  return assert(sim:update_status("pods", copy))
end

local function exec_path(name, query) return "/api/v1/namespaces/default/pods/" .. name .. "/exec?" .. query end

-- ---- a raw WebSocket client, to see the frames themselves ----

local function connect(port)
  local tcp = uv.new_tcp()
  local c = { tcp = tcp, buf = "", readable = vq.event() }
  local connected = vq.event()
  tcp:connect("127.0.0.1", port, function(err) c.err = err connected:set() end)
  connected:wait(5)
  assert(not c.err, c.err)
  tcp:read_start(function(err, chunk)
    if chunk then c.buf = c.buf .. chunk else c.eof = true end
    c.readable:set()
  end)
  function c.read_exactly(_, n)
    while #c.buf < n do
      if c.eof then return nil, "eof" end
      c.readable:clear()
      if not c.readable:wait(10) then return nil, "timeout" end
    end
    local data = c.buf:sub(1, n)
    c.buf = c.buf:sub(n + 1)
    return data
  end
  function c.read_until(_, pattern)
    while not c.buf:find(pattern, 1, true) do
      if c.eof then return nil, "eof" end
      c.readable:clear()
      if not c.readable:wait(10) then return nil, "timeout" end
    end
    local s, e = c.buf:find(pattern, 1, true)
    local head = c.buf:sub(1, s - 1)
    c.buf = c.buf:sub(e + 1)
    return head
  end
  function c.send(_, data) tcp:write(data) end
  function c.close() if not tcp:is_closing() then tcp:close() end end
  return c
end

local MASK = "\1\2\3\4"

-- A client frame: masked, as RFC 6455 requires.
local function client_frame(op, payload, fin)
  local b1 = (fin == false and 0 or 0x80) | op
  local n = #payload
  local head = n < 126 and string.pack(">BB", b1, 0x80 | n) or string.pack(">BBI2", b1, 0x80 | 126, n)
  return head .. MASK .. ws.unmask(payload, MASK)
end

local KEY = "dGhlIHNhbXBsZSBub25jZQ=="

--- Upgrade to exec: the response head (status line, headers) and the connection.
local function ws_exec(sim, name, query, protocols)
  local c = connect(sim.port)
  c:send(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" ..
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Protocol: %s\r\n\r\n")
    :format(exec_path(name, query), KEY, protocols))
  local head = assert(c:read_until("\r\n\r\n"))
  local headers = {}
  for k, v in head:gmatch("\r\n([^:]+):%s*([^\r]*)") do headers[k:lower()] = v end
  return head:match("^HTTP/1.1 (%d+)"), headers, c
end

--- Every frame until the server closes: {op, channel, data} with channels for data.
local function read_frames(c)
  local frames = {}
  while true do
    local f = ws.read_frame(c)
    if not f then break end
    if f.op == ws.OP.BINARY then
      frames[#frames + 1] = { op = f.op, channel = f.payload:byte(1), data = f.payload:sub(2) }
    else
      frames[#frames + 1] = { op = f.op, data = f.payload }
    end
    if f.op == ws.OP.CLOSE then break end
  end
  return frames
end

local function channel_text(frames, ch)
  local out = {}
  for _, f in ipairs(frames) do if f.channel == ch then out[#out + 1] = f.data end end
  return table.concat(out)
end

-- ---- kubectl exec ----

local function kubectl_exec_suite(label, version)
  describe("kubectl exec against " .. label, function()
    local s
    setup(function()
      s = start(version)
      pod(s, "vantiq-0", { env = { { name = "VANTIQ_ENV", value = "rehearsal" } } })
      pod(s, "two", { containers = { "app", "sidecar" } })
      pod(s, "crashing", { states = { app = { waiting = { reason = "CrashLoopBackOff" } } } })
      s.pod_files["default/vantiq-0"] = { ["/opt/vantiq/config/app.yaml"] = "port: 8080\n" }
    end)
    teardown(function() cluster.finish(s) end)

    it("runs date on the node's clock, skew included", function()
      s.node_clock_skew["node-1"] = 7200
      local r = kubectl(s, { "exec", "vantiq-0", "-c", "app", "--", "date", "+%s" })
      s.node_clock_skew["node-1"] = nil
      assert.are.equal(0, r.status, r.stderr)
      assert.is_true(math.abs(tonumber(r.stdout) - (os.time() + 7200)) <= 2, r.stdout)
      r = kubectl(s, { "exec", "vantiq-0", "--", "date" })
      assert.matches("^%a%a%a %a%a%a [ %d]%d %d%d:%d%d:%d%d UTC %d%d%d%d\n$", r.stdout)
    end)

    it("feeds stdin to cat and ends it at EOF", function()
      local r = kubectl(s, { "exec", "-i", "vantiq-0", "-c", "app", "--", "cat" }, { stdin = "line one\nline two\n" })
      assert.are.equal(0, r.status, r.stderr)
      assert.are.equal("line one\nline two\n", r.stdout)
    end)

    it("reads the pod's files", function()
      local r = kubectl(s, { "exec", "vantiq-0", "--", "cat", "/opt/vantiq/config/app.yaml" })
      assert.are.equal("port: 8080\n", r.stdout)
      r = kubectl(s, { "exec", "vantiq-0", "--", "cat", "/nope" })
      assert.are.equal(1, r.status)
      assert.matches("cat: /nope: No such file or directory", r.stderr, 1, true)
    end)

    it("passes on exit codes, stdout and stderr apart", function()
      local r = kubectl(s, { "exec", "vantiq-0", "--", "sh", "-c", "echo out; echo err >&2; exit 3" })
      assert.are.equal(3, r.status)
      assert.are.equal("out\n", r.stdout)
      assert.matches("^err\n", r.stderr)
      assert.matches("command terminated with exit code 3", r.stderr, 1, true)
    end)

    it("says an unknown command is not in the container, exit 126", function()
      local r = kubectl(s, { "exec", "vantiq-0", "--", "vantiq-doctor", "--all" })
      assert.are.equal(126, r.status)
      assert.matches('exec: "vantiq-doctor": executable file not found in $PATH: unknown', r.stderr, 1, true)
    end)

    it("shows the container's environment and hostname", function()
      local r = kubectl(s, { "exec", "vantiq-0", "--", "env" })
      assert.matches("\nVANTIQ_ENV=rehearsal\n", r.stdout, 1, true)
      assert.matches("HOSTNAME=vantiq-0\n", r.stdout, 1, true)
      assert.are.equal("vantiq-0\n", kubectl(s, { "exec", "vantiq-0", "--", "hostname" }).stdout)
    end)

    it("refuses a container that is not running", function()
      local r = kubectl(s, { "exec", "crashing", "--", "date" })
      assert.are.equal(1, r.status)
      assert.matches('container not found ("app")', r.stderr, 1, true)
    end)

    it("runs a scenario's handler before the built-ins", function()
      local handler = {
        match = function(argv) return argv[1] == "mongo" end,
        run = function(_, io) io:stderr("MongoNetworkError: connect ECONNREFUSED\n") return 1 end,
      }
      table.insert(s.exec_handlers, 1, handler)
      local r = kubectl(s, { "exec", "vantiq-0", "--", "mongo", "--eval", "db.version()" })
      table.remove(s.exec_handlers, 1)
      assert.are.equal(1, r.status)
      assert.matches("ECONNREFUSED", r.stderr, 1, true)
    end)
  end)
end

kubectl_exec_suite("the default version (kubectl 1.30, WebSocket v5)")

describe("kubectl exec of other versions", function()
  for _, case in ipairs { { "v1.27.16", "SPDY/3.1" }, { "v1.33.1", "WebSocket" } } do
    it("works with kubectl " .. case[1] .. " over " .. case[2], function()
      local s = start(case[1])
      local ok, err = pcall(function()
        pod(s, "vantiq-0")
        local r = kubectl(s, { "exec", "vantiq-0", "-v=6", "--", "date", "+%Y" })
        assert.are.equal(0, r.status, r.stderr)
        assert.are.equal(os.date("!%Y") .. "\n", r.stdout)
        -- SPDY is a POST, WebSocket a GET (the log line's shape changed in 1.33)
        local method = r.stderr:match("(%u+) http[^\n]*/exec%?") or r.stderr:match('verb="(%u+)" url="[^"]*/exec%?')
        assert.are.equal(case[2] == "WebSocket" and "GET" or "POST", method)
        r = kubectl(s, { "exec", "-i", "vantiq-0", "--", "sh", "-c", "cat; exit 5" }, { stdin = "piped\n" })
        assert.are.equal(5, r.status)
        assert.are.equal("piped\n", r.stdout)
        local v = json.decode(kubectl(s, { "version", "-o", "json" }).stdout)
        assert.are.equal(case[1]:match("^v1%.(%d+)"), v.clientVersion.minor)
      end)
      cluster.finish(s)
      assert(ok, err)
    end)
  end
end)

-- ---- the protocol, frame by frame ----

describe("pods/exec over WebSocket", function()
  local s
  setup(function()
    s = start()
    pod(s, "ws")
    pod(s, "pair", { containers = { "a", "b" } })
  end)
  teardown(function() cluster.finish(s) end)

  it("answers the handshake with the accept key and the best protocol offered", function()
    local status, headers, conn = ws_exec(s, "ws", "command=true&stdout=true",
      "v4.channel.k8s.io, v5.channel.k8s.io, channel.k8s.io")
    conn:close()
    assert.are.equal("101", status)
    assert.are.equal("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", headers["sec-websocket-accept"])
    assert.are.equal("v4.channel.k8s.io", headers["sec-websocket-protocol"])
  end)

  it("takes fragmented stdin, answers pings, and closes stdin on [255, 0] (v5)", function()
    local status, headers, conn = ws_exec(s, "ws", "command=cat&stdin=true&stdout=true&stderr=true",
      "v5.channel.k8s.io,v4.channel.k8s.io")
    assert.are.equal("101", status)
    assert.are.equal("v5.channel.k8s.io", headers["sec-websocket-protocol"])
    conn:send(client_frame(ws.OP.BINARY, "\0hel", false))
    conn:send(client_frame(ws.OP.PING, "still there?"))
    conn:send(client_frame(ws.OP.CONTINUATION, "lo\n", true))
    conn:send(client_frame(ws.OP.BINARY, "\255\0"))
    local frames = read_frames(conn)
    conn:close()
    assert.are.equal("hello\n", channel_text(frames, 1))
    assert.are.equal('{"metadata":{},"status":"Success"}', channel_text(frames, 3))
    local pong, close
    for _, f in ipairs(frames) do
      if f.op == ws.OP.PONG then pong = f.data end
      if f.op == ws.OP.CLOSE then close = f.data end
    end
    assert.are.equal("still there?", pong)
    assert.are.equal(string.pack(">I2", 1000), close)
  end)

  it("reports a non-zero exit as a Status on the error channel", function()
    local _, _, conn = ws_exec(s, "ws", "command=sh&command=-c&command=echo%20no%20>%262%3B%20exit%202&stdout=true&stderr=true",
      "v4.channel.k8s.io")
    local frames = read_frames(conn)
    conn:close()
    assert.are.equal("no\n", channel_text(frames, 2))
    local status = json.decode(channel_text(frames, 3))
    assert.are.same({ metadata = {}, status = "Failure", reason = "NonZeroExitCode",
      message = "command terminated with non-zero exit code: error executing command [sh -c echo no >&2; exit 2], exit code 2",
      details = { causes = { { reason = "ExitCode", message = "2" } } } }, status)
  end)

  it("does not offer v5 when the server is older than 1.30", function()
    local old = start("v1.29.5")
    pod(old, "ws")
    local status, headers, conn = ws_exec(old, "ws", "command=true&stdout=true", "v5.channel.k8s.io")
    conn:close()
    assert.are.equal("400", status)
    status, headers, conn = ws_exec(old, "ws", "command=true&stdout=true", "v5.channel.k8s.io, v4.channel.k8s.io")
    conn:close()
    cluster.finish(old)
    assert.are.equal("v4.channel.k8s.io", headers["sec-websocket-protocol"])
  end)

  it("refuses before upgrading, with a Status", function()
    local function get(name, query)
      return assert(http.get(s.url .. exec_path(name, query), { retries = 0,
        headers = { Connection = "Upgrade", Upgrade = "websocket", ["Sec-WebSocket-Key"] = KEY,
                    ["Sec-WebSocket-Version"] = "13", ["Sec-WebSocket-Protocol"] = "v5.channel.k8s.io" } }))
    end
    local r = get("missing", "command=date&stdout=true")
    assert.are.equal(404, r.status)
    assert.are.equal('pods "missing" not found', r.json.message)
    r = get("pair", "command=date&stdout=true")
    assert.are.equal(400, r.status)
    assert.are.equal("a container name must be specified for pod pair, choose one of: [a b]", r.json.message)
    r = get("ws", "stdout=true")
    assert.are.equal(400, r.status)
    r = assert(http.get(s.url .. exec_path("ws", "command=date&stdout=true"), { retries = 0 }))
    assert.are.equal(400, r.status)
    assert.are.equal("Upgrade request required", r.json.message)
  end)
end)

-- ---- the handlers, in-process ----

describe("exec handlers", function()
  local s
  setup(function()
    s = start()
    pod(s, "box", { env = { { name = "GREETING", value = "hi there" } } })
    local sts_owner = { apiVersion = "apps/v1", kind = "StatefulSet", name = "mongodb", uid = "sts-uid", controller = true }
    for i = 0, 2 do pod(s, "mongodb-" .. i, { image = "mongo:4.4.18", owner = sts_owner, subdomain = "mongodb" }) end
  end)
  teardown(function() cluster.finish(s) end)

  local function sh(script, stdin)
    return s.exec:run { pod = "box", command = { "sh", "-c", script }, stdin = stdin }
  end

  it("runs small shell scripts", function()
    local code, out = sh("echo $GREETING && false || echo fallback; echo \"quoted 'x'\" 'single $GREETING'")
    assert.are.equal(0, code)
    assert.are.equal("hi there\nfallback\nquoted 'x' single $GREETING\n", out)
    code, out = sh("echo one | cat")
    assert.are.equal("one\n", out)
    local err
    code, out, err = sh("nosuch --flag")
    assert.are.equal(127, code)
    assert.are.equal("sh: 1: nosuch: not found\n", err)
    code, out, err = sh("nosuch 2>/dev/null; echo $?")
    assert.are.equal("127\n", out)
    assert.are.equal("", err)
    code, out = sh("echo saved > /tmp/f && cat /tmp/f")
    assert.are.equal("saved\n", out)
    code, out, err = sh("echo to-err 1>&2")
    assert.are.equal("", out)
    assert.are.equal("to-err\n", err)
    code, out = sh("export WHERE=rehearsal; echo \"${WHERE}-1\"")
    assert.are.equal("rehearsal-1\n", out)
    code, out = sh("exit 7; echo never")
    assert.are.equal(7, code)
    assert.are.equal("", out)
  end)

  it("answers mongo and mongosh as a replica set member would", function()
    local function mongo(shell, js, pod_name)
      local code, out = s.exec:run { pod = pod_name or "mongodb-1", command = { shell, "--quiet", "--eval", js } }
      assert.are.equal(0, code)
      return out
    end
    assert.are.equal("4.4.18\n", mongo("mongo", "db.version()"))
    assert.are.equal('{ "ok" : 1 }\n', mongo("mongo", "db.adminCommand({ping: 1})"))
    assert.are.equal("{ ok: 1 }\n", mongo("mongosh", "db.adminCommand({ ping: 1 })"))
    assert.are.equal("1\n", mongo("mongo", "rs.status().ok"))
    assert.are.equal("3\n", mongo("mongo", "rs.status().members.length"))
    assert.are.equal("PRIMARY\n", mongo("mongosh", "rs.status().members[0].stateStr"))
    assert.are.equal("mongodb-0.mongodb.default.svc.cluster.local:27017\n", mongo("mongosh", "db.hello().primary"))
    assert.are.equal("false\n", mongo("mongo", "db.isMaster().ismaster"))
    assert.are.equal("true\n", mongo("mongo", "rs.isMaster().ismaster", "mongodb-0"))
    local status = mongo("mongosh", "rs.status()")
    assert.matches("set: 'rs0'", status, 1, true)
    assert.matches("stateStr: 'SECONDARY'", status, 1, true)
    assert.are.equal("hello\n", mongo("mongosh", "print('hello')"))
    assert.are.equal("{ ok: 1 }\n", mongo("mongosh", "db.getSiblingDB('vantiq').createUser({user: 'x'})"))
    local code, out = s.exec:run { pod = "mongodb-0", command = { "mongo", "--eval", "db.version()" } }
    assert.are.equal(0, code)
    assert.matches("^MongoDB shell version v4%.4%.18\n", out)
  end)

  it("formats date as asked", function()
    local code, out = s.exec:run { pod = "box", command = { "date", "-u", "+%Y-%m-%dT%H:%M:%SZ" } }
    assert.are.equal(0, code)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ\n$", out)
    code, out = s.exec:run { pod = "box", command = { "date", "-Iseconds" } }
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%+00:00\n$", out)
    code = s.exec:run { pod = "box", command = { "date", "--bogus" } }
    assert.are.equal(1, code)
  end)
end)
