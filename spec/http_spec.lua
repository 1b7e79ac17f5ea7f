local vq = require "vq"
local http = require "vq.http"
local core = require "vq.core.http"
local server_mod = require "sim.http"

local server, base
local seen_conns = {}

local function handler(req, res)
  seen_conns[req.conn_id] = true
  local p = req.path
  if p == "/hello" then
    res:send(200, "hello " .. (req.headers["x-name"] or "?"), { ["Content-Type"] = "text/plain", ["X-Multi"] = "a" })
  elseif p == "/echo" then
    res:send(200, req.method .. " " .. req.body, { ["Content-Type"] = "text/plain" })
  elseif p == "/json" then
    res:send(200, '{"replicas":3,"name":"vantiq"}', { ["Content-Type"] = "application/json" })
  elseif p == "/slow" then
    vq.sleep(tonumber(req.query.s or "1"))
    res:send(200, "slow")
  elseif p == "/trickle" then
    res:start(200, {})
    vq.sleep(0.3)
    res:write("late")
    res:finish()
  elseif p == "/lines" then
    res:start(200, { ["Content-Type"] = "text/plain" })
    local n = tonumber(req.query.n or "10")
    for i = 1, n do
      if not res:write(("line %d\n"):format(i)) then return end
      if req.query.pause then vq.sleep(0.001) end
    end
    res:finish()
  elseif p == "/big" then
    local n = tonumber(req.query.bytes)
    res:start(200, {})
    local block = ("x"):rep(64 * 1024)
    local sent = 0
    while sent < n and res:connected() do
      res:write(block)
      sent = sent + #block
    end
    res:finish()
  elseif p == "/busy" then
    local count = (server.busy or 0) + 1
    server.busy = count
    if count <= tonumber(req.query.times or "2") then
      res:send(tonumber(req.query.status or "503"), "busy", { ["Retry-After"] = "0" })
    else
      res:send(200, "ok after " .. (count - 1))
    end
  elseif p == "/busy-no-retry-after" then
    res:send(503, "down")
  elseif p == "/drop" then
    server.drops = (server.drops or 0) + 1
    if server.drops <= tonumber(req.query.times or "1") then
      server.drop_connections()
      return
    end
    res:send(200, "second try")
  else
    res:send(404, "no " .. p)
  end
end

setup(function()
  server = server_mod.serve { handler = handler }
  base = "http://127.0.0.1:" .. server.port
end)

teardown(function() server.close() end)

describe("http.request", function()
  it("returns status, headers and body", function()
    local r = assert(http.get(base .. "/hello", { headers = { ["X-Name"] = "op" } }))
    assert.are.equal(200, r.status)
    assert.are.equal("hello op", r.body)
    assert.are.equal("text/plain", r.headers["content-type"])
    assert.are.equal("a", r.headers["x-multi"])
  end)

  it("sends methods and bodies", function()
    local r = assert(http.request { method = "PATCH", url = base .. "/echo", body = "data" })
    assert.are.equal("PATCH data", r.body)
    local big = ("y"):rep(300000)
    r = assert(http.request { method = "PUT", url = base .. "/echo", body = big })
    assert.are.equal("PUT " .. big, r.body)
  end)

  it("does not treat a status as an error", function()
    local r = assert(http.get(base .. "/missing"))
    assert.are.equal(404, r.status)
  end)

  it("reuses one connection for sequential requests", function()
    seen_conns = {}
    for _ = 1, 20 do assert(http.get(base .. "/hello")) end
    local n = 0
    for _ in pairs(seen_conns) do n = n + 1 end
    assert.are.equal(1, n)
  end)

  it("runs many requests from many tasks at once", function()
    local tasks = {}
    for i = 1, 50 do
      tasks[i] = vq.spawn(function() return http.get(base .. "/slow?s=0.05").body end)
    end
    local t0 = vq.now()
    for i = 1, 50 do assert.are.equal("slow", tasks[i]:wait()) end
    assert.is_true(vq.now() - t0 < 2, "the requests ran one after another")
  end)

  it("times out", function()
    local r, err = http.request { url = base .. "/slow?s=5", timeout = 0.1 }
    assert.is_nil(r)
    assert.are.equal("timeout", err.code)
    assert.are.equal(base .. "/slow?s=5", err.url)
  end)

  it("says connect for a port nobody listens on", function()
    local uv = require "uv"
    local tcp = uv.new_tcp()
    tcp:bind("127.0.0.1", 0)
    local port = tcp:getsockname().port
    tcp:close()
    local r, err = http.request { url = "http://127.0.0.1:" .. port .. "/", retries = 0 }
    assert.is_nil(r)
    assert.are.equal("connect", err.code)
  end)

  it("is cancelled with its task", function()
    local t = vq.spawn(function() return http.get(base .. "/slow?s=5") end)
    vq.sleep(0.05)
    t:cancel()
    local ok, err = t:wait()
    assert.is_nil(ok)
    assert.are.equal("cancelled", err.code)
  end)

  it("is bounded by vq.timeout", function()
    local r, err = vq.timeout(0.05, http.get, base .. "/slow?s=5")
    assert.is_nil(r)
    assert.are.equal("timeout", err.code)
  end)

  it("limits the body it keeps", function()
    local r, err = core.request { url = base .. "/big?bytes=1000000", max_body = 100000 }
    assert.is_nil(r)
    assert.are.equal("body_too_large", err.code)
  end)

  it("decodes JSON and encodes it", function()
    if not pcall(function() return require("json").decode end) or not require("json").decode then
      pending("json codec not built yet")
      return
    end
    local r = assert(http.get(base .. "/json"))
    assert.are.equal(3, r.json.replicas)
  end)
end)

describe("retries, as client-go does them", function()
  it("retries 503 with Retry-After and then succeeds", function()
    server.busy = 0
    local retries = {}
    local r = assert(http.request { url = base .. "/busy?times=2", on_retry = function(n, wait) retries[#retries + 1] = n end })
    assert.are.equal(200, r.status)
    assert.are.equal("ok after 2", r.body)
    assert.are.same({ 1, 2 }, retries)
  end)

  it("retries 429 too", function()
    server.busy = 0
    local r = assert(http.request { url = base .. "/busy?times=1&status=429" })
    assert.are.equal("ok after 1", r.body)
  end)

  it("does not retry a 503 without Retry-After", function()
    local r = assert(http.request { url = base .. "/busy-no-retry-after" })
    assert.are.equal(503, r.status)
  end)

  it("gives up after the maximum and returns the last answer", function()
    server.busy = 0
    local r = assert(http.request { url = base .. "/busy?times=100", retries = 3 })
    assert.are.equal(503, r.status)
  end)

  it("retries a dropped connection for GET only", function()
    -- libcurl itself re-sends once when a reused connection turns out dead, so drop twice
    server.drops = 0
    local r = assert(http.request { url = base .. "/drop?times=2" })
    assert.are.equal("second try", r.body)
    server.drops = 0
    local r2, err = http.request { method = "POST", url = base .. "/drop?times=2", body = "x" }
    assert.is_nil(r2)
    assert.are.equal("connection", err.code)
  end)
end)

describe("rate limiter", function()
  it("lets a burst through and then paces to qps", function()
    local limiter = http.rate_limiter(50, 5)
    local t0 = vq.now()
    for _ = 1, 15 do limiter:take() end
    local elapsed = vq.now() - t0
    assert.is_true(elapsed >= 0.18, "too fast: " .. elapsed)
    assert.is_true(elapsed < 1, "too slow: " .. elapsed)
  end)
end)

describe("http.stream", function()
  it("gives the head first, then the body line by line", function()
    local head = assert(http.stream { url = base .. "/lines?n=1000" })
    assert.are.equal(200, head.status)
    local n, last = 0, nil
    for line in http.lines(head.stream) do n = n + 1 last = line end
    assert.are.equal(1000, n)
    assert.are.equal("line 1000", last)
    assert.are.equal("done", head.stream:status())
  end)

  it("delivers every byte through a small receive buffer", function()
    local head = assert(http.stream { url = base .. "/lines?n=5000", buffer_size = 1024 })
    local n, last = 0, nil
    for line in http.lines(head.stream) do n = n + 1 last = line end
    assert.are.equal(5000, n)
    assert.are.equal("line 5000", last)
    local big = assert(core.stream { url = base .. "/big?bytes=" .. 1024 * 1024, buffer_size = 1024 })
    local got = 0
    for chunk in function() return big.stream:read() end do got = got + #chunk end
    assert.are.equal(1024 * 1024, got)
  end)

  it("keeps memory flat: a slow reader pauses a fast server", function()
    local head = assert(core.stream { url = base .. "/big?bytes=" .. 64 * 1024 * 1024, buffer = 256 * 1024 })
    local got, biggest = 0, 0
    for _ = 1, 20 do
      local chunk = head.stream:read()
      biggest = math.max(biggest, #chunk)
      got = got + #chunk
      vq.sleep(0.005)
    end
    head.stream:close()
    assert.is_true(biggest < 2 * 1024 * 1024, "buffer grew to " .. biggest)
    assert.are.equal("closed", head.stream:status())
  end)

  it("closes at scope exit", function()
    local s
    do
      local head = assert(core.stream { url = base .. "/lines?n=100000&pause=1" })
      local stream <close> = head.stream
      s = stream
      assert(stream:read())
    end
    assert.are.equal("closed", s:status())
  end)

  it("a read waiting when another task closes the stream ends with closed", function()
    local head = assert(core.stream { url = base .. "/trickle" })
    local reader = vq.spawn(function() return head.stream:read() end)
    vq.sleep(0.02)
    head.stream:close()
    local chunk, err = reader:wait()
    assert.is_nil(chunk)
    assert.are.equal("closed", err.code)
  end)

  it("a timed-out read leaves the stream usable", function()
    local head = assert(core.stream { url = base .. "/trickle" })
    local chunk, err = vq.timeout(0.05, head.stream.read, head.stream)
    assert.is_nil(chunk)
    assert.are.equal("timeout", err.code)
    assert.are.equal("late", head.stream:read())
    assert.is_nil(head.stream:read())
  end)
end)

describe("loading the plugin", function()
  it("leaves no GnuTLS opt-out behind for child processes", function()
    assert.is_nil(os.getenv("GNUTLS_NO_IMPLICIT_INIT"))
    local proc = require "vq.proc"
    local r = assert(proc.run { argv = { "sh", "-c", "echo ${GNUTLS_NO_IMPLICIT_INIT-unset}" } })
    assert.are.equal("unset\n", r.stdout)
  end)
end)
