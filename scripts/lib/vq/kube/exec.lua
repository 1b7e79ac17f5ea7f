-- pods/exec as kubectl >= 1.30 runs it: the request upgraded to a WebSocket that carries the
-- channel protocol v5.channel.k8s.io, or v4.channel.k8s.io with servers before 1.30.
--
--   k:exec("vantiq-0", {"date"}, {namespace=, container=, stdin=, on_stdout=, on_stderr=,
--                                timeout=, connect_timeout=})
--     -> {code = <exit code>, stdout =, stderr =, protocol =} | nil, err
--   for line in k:exec_lines("mongo-0", {"cat", "/etc/hosts"}, opts) do ... end
--
-- A non-zero exit is a result (r.code), not an error. Errors: the Status the server
-- answered instead of upgrading (code 404: no such pod; 400: no such container, or it is
-- not running), a transport error, or code "timeout". With on_stdout/on_stderr the output
-- streams to them as it comes and is not collected. stdin (a string) is sent, then closed;
-- closing it needs v5, so with stdin only v5 is offered. Commands run in a dry run too: a
-- runbook guards those that change something with vq.options.dry_run.
local vq = require "vq"
local json = require "json"
local log = require "log"

local STDIN, STDOUT, STDERR, ERROR, CLOSE = 0, 1, 2, 3, 255
local V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
local STDIN_CHUNK = 32 * 1024

local function err(code, message, details) return vq.error(code, message, details) end

-- What an error says about the call, as Client:request's errors do.
local function where(ctx) return { verb = "exec", resource = "pods/exec", name = ctx.pod, namespace = ctx.namespace } end

return function(kube, Client)

  local function exec_url(self, ns, pod, argv, o)
    local q = { command = argv, container = o.container, stdin = o.stdin ~= nil and "true" or "false",
                stdout = "true", stderr = "true", tty = "false" }
    local base = (self.tls.base or self.server):gsub("^http", "ws")
    return ("%s/api/v1/namespaces/%s/pods/%s/exec%s"):format(base, ns, pod, kube.query_string(q))
  end

  -- What Client:request sends, for ws.connect: the same credentials and TLS settings.
  local function connect_options(self, url, creds, o)
    local t = { url = url, protocols = o.stdin ~= nil and { V5 } or { V5, V4 },
                headers = { ["User-Agent"] = self.user_agent }, timeout = o.connect_timeout or self.timeout }
    if creds.token then t.headers.Authorization = "Bearer " .. creds.token end
    for k, v in pairs(self.tls) do
      if k ~= "base" and k ~= "proxy" then t[k] = v end
    end
    if creds.cert_data then t.cert_data, t.key_data, t.cert_file, t.key_file = creds.cert_data, creds.key_data, nil, nil end
    return t
  end

  -- A refused upgrade carries a Status, as any failed request does.
  local function open_error(e, ctx)
    if e.status then
      local st = json.decode(e.body or "")
      st = type(st) == "table" and st or {}
      local message = st.message or (e.body ~= "" and e.body) or ("HTTP " .. e.status)
      if e.status == 400 and not ctx.v4_allowed and tostring(message):find("protocol", 1, true) then
        message = message .. " (closing stdin needs " .. V5 .. ", Kubernetes 1.30 or later)"
      end
      e = err(e.status, message, { reason = st.reason, details = st.details, status = e.status })
    end
    for k, v in pairs(where(ctx)) do e[k] = v end
    return e
  end

  local function connect(self, ctx, argv, o)
    local ws = require "vq.core.ws"
    if self.limiter then self.limiter:take() end -- an exec is a request, as client-go counts it
    local creds, ce = self:credentials()
    if not creds then return nil, ce end
    local conn, e = ws.connect(connect_options(self, exec_url(self, ctx.namespace, ctx.pod, argv, o), creds, o))
    -- An expired exec credential: run the plugin again, once.
    if not conn and e.status == 401 and self.settings.exec and not ctx.reauthed then
      self.exec_cred, ctx.reauthed = nil, true
      return connect(self, ctx, argv, o)
    end
    if not conn then return nil, open_error(e, ctx) end
    return conn
  end

  -- The writer: stdin in chunks on channel 0, then v5's "stdin is closed".
  local function feed_stdin(conn, data)
    for i = 1, #data, STDIN_CHUNK do
      if not conn:send(string.char(STDIN) .. data:sub(i, i + STDIN_CHUNK - 1), true) then return end
    end
    conn:send(string.char(CLOSE, STDIN), true)
  end

  -- The error channel's Status: the exit code, or nil, err.
  local function exit_code(text, ctx)
    if text == nil then return nil, err("connection", "the exec ended without reporting an exit status", ctx) end
    local st = json.decode(text)
    if type(st) ~= "table" then return nil, err("exec", "unreadable exit status: " .. text, ctx) end
    if st.status == "Success" then return 0 end
    if st.reason == "NonZeroExitCode" then
      for _, cause in ipairs((st.details or {}).causes or {}) do
        if cause.reason == "ExitCode" then return tonumber(cause.message) end
      end
    end
    local e = err(st.code or "exec", st.message or text, ctx)
    e.reason = st.reason
    return nil, e
  end

  -- Reads channels until the server closes: stdout and stderr to their sinks, the status.
  local function pump(conn, sinks)
    local status
    while true do
      local msg, e = conn:receive()
      if not msg then
        if e and not status then return nil, e end
        return status
      end
      local ch, data = msg:byte(1), msg:sub(2)
      if ch == STDOUT or ch == STDERR then
        if #data > 0 then sinks[ch](data) end
      elseif ch == ERROR then
        status = (status or "") .. data
      end
    end
  end

  local function finished(task)
    local st = task:status()
    return st == "done" or st == "failed" or st == "cancelled"
  end

  local function sinks_for(o, out, errs)
    return {
      [STDOUT] = o.on_stdout or function(s) out[#out + 1] = s end,
      [STDERR] = o.on_stderr or function(s) errs[#errs + 1] = s end,
    }
  end

  local function run(self, ctx, argv, o)
    local conn <close>, e = connect(self, ctx, argv, o)
    if not conn then return nil, e end
    ctx.protocol = conn.protocol
    local writer = o.stdin ~= nil and vq.spawn(feed_stdin, conn, o.stdin)
    local out, errs = {}, {}
    local status, pe = pump(conn, sinks_for(o, out, errs))
    if writer then
      if not finished(writer) then writer:cancel() end
      writer:wait()
    end
    if pe then
      for k, v in pairs(where(ctx)) do pe[k] = v end
      return nil, pe
    end
    local code, ce = exit_code(status, where(ctx))
    if not code then return nil, ce end
    return { code = code, stdout = table.concat(out), stderr = table.concat(errs), protocol = ctx.protocol }
  end

  local function pod_name(pod)
    if type(pod) ~= "string" or pod == "" then error("exec: the pod must be a name", 3) end
    return pod:match("^pods?/(.+)$") or pod
  end

  local function check_argv(argv)
    if type(argv) ~= "table" or type(argv[1]) ~= "string" then
      error("exec: argv must be a list of strings, the program first", 3)
    end
    for i, a in ipairs(argv) do
      if type(a) ~= "string" then error(("exec: argv[%d] is a %s, not a string"):format(i, type(a)), 3) end
    end
  end

  --- Run argv in a pod's container; see the top of this file.
  function Client:exec(pod, argv, opts)
    local o = opts or {}
    check_argv(argv)
    if o.stdin ~= nil and type(o.stdin) ~= "string" then error("exec: stdin must be a string", 2) end
    local ctx = { pod = pod_name(pod), namespace = o.namespace or self.namespace, v4_allowed = o.stdin == nil }
    if self.tls.proxy then
      return nil, err("unsupported", "exec does not go through a proxy (the kubeconfig's proxy-url)", where(ctx))
    end
    local started = vq.now()
    local r, e
    if o.timeout then r, e = vq.timeout(o.timeout, run, self, ctx, argv, o)
    else r, e = run(self, ctx, argv, o) end
    if not r and e and e.code == "timeout" and o.timeout then
      e.message = ("exec in %s/%s timed out after %gs"):format(ctx.namespace, ctx.pod, o.timeout)
    end
    -- The program's name only: arguments may hold secrets.
    log.audit("kube.exec", { pod = ctx.pod, namespace = ctx.namespace, container = o.container, program = argv[1],
      outcome = r and "ok" or "failed", exit_code = r and r.code or nil, code = e and e.code or nil,
      duration_ms = math.floor((vq.now() - started) * 1000), context = self.context })
    return r, e
  end

  -- Splits chunks into lines; the last, unfinished one waits for more.
  local function line_splitter(emit)
    local rest = ""
    return function(chunk)
      if chunk == nil then
        if rest ~= "" then emit(rest) end
        rest = ""
        return
      end
      rest = rest .. chunk
      local start = 1
      while true do
        local nl = rest:find("\n", start, true)
        if not nl then break end
        emit((rest:sub(start, nl - 1):gsub("\r$", "")))
        start = nl + 1
      end
      rest = rest:sub(start)
    end
  end

  --- The lines of argv's stdout as they come. Returns an iterator, a state (state.result:
  --- {code=, stderr=} at the end; state.err on failure) and a closing value: leaving the
  --- loop early ends the exec.
  function Client:exec_lines(pod, argv, opts)
    check_argv(argv)
    pod_name(pod)
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    local lines, state = vq.queue(256), {}
    local split = line_splitter(function(line) lines:put(line) end)
    local errs = {}
    o.on_stdout = split
    o.on_stderr = o.on_stderr or function(s) errs[#errs + 1] = s end
    local producer = vq.spawn(function()
      local r, e = self:exec(pod, argv, o)
      split(nil)
      if r then r.stderr = table.concat(errs) end
      state.result, state.err = r, e
      lines:close()
    end)
    local closer = setmetatable({}, { __close = function()
      if finished(producer) then producer:wait() else producer:cancel() end
    end })
    return function()
      local line = lines:get()
      if line ~= nil then return line end
      producer:wait()
      return nil
    end, state, nil, closer
  end
end
