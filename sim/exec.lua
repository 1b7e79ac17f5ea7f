-- pods/exec as the apiserver and the kubelet serve it: the checks made before upgrading
-- (as Status JSON), the two transports clients use (WebSocket with the channel protocols
-- v1-v5, as kubectl >= 1.30 and client libraries speak it; SPDY/3.1 with v1-v4, as
-- kubectl <= 1.29 speaks it and as newer ones fall back to), and commands run by Lua
-- handlers instead of containers.
--
--   sim.exec_handlers: a list of {match = function(argv, ctx) -> bool,
--                                 run = function(argv, io, ctx) -> exit code}
--     the first that matches runs; scenarios insert theirs at the front to override a
--     built-in. io:stdout(s), io:stderr(s), io:read() -> stdin data, or nil at EOF.
--     ctx: {sim, pod, ns, container, node, env = {names..., [name] = value}, tty}.
--   sim.pod_files[ns .. "/" .. pod][path] = content     what cat (and sh's <, >) see
--   sim.node_clock_skew[node] = seconds                 what date adds on that node
--   sim.exec:run{ns =, pod =, container =, command = {...}, stdin =}
--     -> exit code, stdout, stderr (the same handlers, without HTTP)
local vq = require "vq"
local json = require "json"
local api_mod = require "sim.api"
local logs_mod = require "sim.logs"
local util = require "sim.util"
local ws = require "sim.websocket"

local M = {}
local concat = table.concat

local STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
local OUT_CHUNK = 32 * 1024
local STREAMS_TIMEOUT = 30 -- seconds a SPDY client has to open its streams (the kubelet's)
local EXEC_START = 0.05 -- seconds from the upgrade to the process running (see upgrade_websocket)

-- ---- small helpers ----

local function basename(p) return (p or ""):match("([^/]*)$") end

local function split_list(s)
  local out = {}
  for v in (s or ""):gmatch("[^,%s]+") do out[#out + 1] = v end
  return out
end

local function flag(q, name) return q[name] == "true" or q[name] == "1" end

local function version_minor(sim) return tonumber(sim.version:match("^v%d+%.(%d+)")) or 30 end

-- ---- the status the error channel carries ----

local SUCCESS = '{"metadata":{},"status":"Success"}'

local function go_argv(argv) return "[" .. concat(argv, " ") .. "]" end

--- result: {code = exit code} or {internal = message}. Text for v1-v3, JSON for v4+.
local function status_payload(version, argv, result)
  if result.internal then
    if version < 4 then return result.internal end
    return json.encode { metadata = {}, status = "Failure", message = result.internal, reason = "InternalError",
                         details = { causes = api_mod.array { { message = result.internal } } }, code = 500 }
  end
  if result.code == 0 then return version >= 4 and SUCCESS or nil end
  local message = ("command terminated with non-zero exit code: error executing command %s, exit code %d"):format(go_argv(argv), result.code)
  if version < 4 then return message end
  return ('{"metadata":{},"status":"Failure","message":%s,"reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"%d"}]}}')
    :format(json.encode(message), result.code)
end
M.status_payload = status_payload

-- ---- io for handlers ----

local Io = {}
Io.__index = Io

--- out(s), err(s), read() -> data | nil; ctx.
function M.new_io(out, err, read, ctx)
  return setmetatable({ out = out, err = err, input = read, ctx = ctx }, Io)
end

function Io:stdout(s) if s and #s > 0 then self.out(s) end end
function Io:stderr(s) if s and #s > 0 then self.err(s) end end
function Io:read() return self.input() end

--- All of stdin, to EOF.
function Io:read_all()
  local parts = {}
  for data in self.read, self do parts[#parts + 1] = data end
  return concat(parts)
end

-- ---- running a command through the handlers ----

--- The exit code of argv run by the first matching handler, or nil when none matches.
function M.dispatch(sim, argv, io, ctx)
  for _, h in ipairs(sim.exec_handlers) do
    if h.match(argv, ctx) then
      local code = h.run(argv, io, ctx)
      return math.tointeger(code) or 0
    end
  end
  return nil
end

local function oci_not_found(argv, io)
  io:stderr(('OCI runtime exec failed: exec failed: unable to start container process: exec: "%s": executable file not found in $PATH: unknown\r\n')
    :format(argv[1]))
  return 126
end

--- Run a command as the container runtime would: an unknown executable is exit 126.
function M.run_command(sim, argv, io, ctx)
  local code = M.dispatch(sim, argv, io, ctx)
  if code == nil then return oci_not_found(argv, io) end
  return code
end

-- ---- the container's environment ----

local find_container = logs_mod.container_spec

local function key_of(sim, kind, ns, ref, k)
  local obj = ref and sim:get(kind, ns, ref.name)
  if not obj then return nil end
  if kind == "secrets" then
    local v = obj.data and obj.data[k]
    return v and util.unbase64(v) or (obj.stringData and obj.stringData[k])
  end
  return obj.data and obj.data[k]
end

local FIELD_REFS = {
  ["metadata.name"] = function(pod) return pod.metadata.name end,
  ["metadata.namespace"] = function(pod) return pod.metadata.namespace end,
  ["metadata.uid"] = function(pod) return pod.metadata.uid end,
  ["spec.nodeName"] = function(pod) return pod.spec.nodeName end,
  ["spec.serviceAccountName"] = function(pod) return pod.spec.serviceAccountName end,
  ["status.podIP"] = function(pod) return pod.status and pod.status.podIP end,
  ["status.hostIP"] = function(pod) return pod.status and pod.status.hostIP end,
}

local function env_value(sim, pod, e)
  if e.value ~= nil then return tostring(e.value) end
  local from = e.valueFrom or {}
  local ns = pod.metadata.namespace
  if from.secretKeyRef then return key_of(sim, "secrets", ns, from.secretKeyRef, from.secretKeyRef.key) end
  if from.configMapKeyRef then return key_of(sim, "configmaps", ns, from.configMapKeyRef, from.configMapKeyRef.key) end
  if from.fieldRef then
    local f = FIELD_REFS[from.fieldRef.fieldPath]
    return f and f(pod) or nil
  end
  return ""
end

local function set_env(env, name, value)
  if value == nil then return end
  if env[name] == nil then env[#env + 1] = name end
  env[name] = value
end

local function env_from(sim, pod, env, source)
  local kind = source.secretRef and "secrets" or "configmaps"
  local ref = source.secretRef or source.configMapRef
  local obj = ref and sim:get(kind, pod.metadata.namespace, ref.name)
  if not obj then return end
  local keys = {}
  for k in pairs(obj.data or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    set_env(env, (source.prefix or "") .. k, kind == "secrets" and util.unbase64(obj.data[k]) or obj.data[k])
  end
end

function M.container_env(sim, pod, container)
  local env = {}
  set_env(env, "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
  set_env(env, "HOSTNAME", pod.spec.hostname or pod.metadata.name)
  local c = find_container(pod, container) or {}
  for _, source in ipairs(c.envFrom or {}) do env_from(sim, pod, env, source) end
  for _, e in ipairs(c.env or {}) do set_env(env, e.name, env_value(sim, pod, e)) end
  set_env(env, "KUBERNETES_SERVICE_HOST", "10.96.0.1")
  set_env(env, "KUBERNETES_SERVICE_PORT", "443")
  set_env(env, "KUBERNETES_PORT", "tcp://10.96.0.1:443")
  set_env(env, "HOME", "/root")
  return env
end

function M.context(sim, pod, container, tty)
  return {
    sim = sim, pod = pod, ns = pod.metadata.namespace, container = container,
    container_spec = find_container(pod, container), node = pod.spec.nodeName, tty = tty,
    env = M.container_env(sim, pod, container),
  }
end

-- ---- built-in commands ----

local function pod_files(ctx)
  local sim, key = ctx.sim, ctx.ns .. "/" .. ctx.pod.metadata.name
  sim.pod_files = sim.pod_files or {}
  sim.pod_files[key] = sim.pod_files[key] or {}
  return sim.pod_files[key]
end

--- The node's time: the simulated clock plus the node's skew.
function M.node_time(ctx)
  local skew = (ctx.sim.node_clock_skew or {})[ctx.node or ""] or 0
  return ctx.sim.clock:now() + skew
end

local function date_format(fmt, t)
  local sec = math.floor(t)
  fmt = fmt:gsub("%%%%", "\0"):gsub("%%s", tostring(sec))
    :gsub("%%N", ("%09d"):format(math.floor((t - sec) * 1e9)))
    :gsub("%%:z", "+00:00"):gsub("%%Z", "UTC"):gsub("\0", "%%%%")
  local ok, out = pcall(os.date, "!" .. fmt, sec)
  return ok and out or nil
end

local ISO = { date = "%Y-%m-%d", hours = "%Y-%m-%dT%H%:z", minutes = "%Y-%m-%dT%H:%M%:z",
              seconds = "%Y-%m-%dT%H:%M:%S%:z", ns = "%Y-%m-%dT%H:%M:%S,%N%:z" }

local function date_cmd(argv, io, ctx)
  local fmt = "%a %b %e %H:%M:%S %Z %Y"
  for i = 2, #argv do
    local a = argv[i]
    if a:sub(1, 1) == "+" then fmt = a:sub(2)
    elseif a == "-R" or a == "--rfc-email" then fmt = "%a, %d %b %Y %H:%M:%S +0000"
    elseif a == "-I" or a:match("^%-%-iso%-8601") or a:match("^%-I%a") then
      local unit = a:match("=(%a+)$") or a:match("^%-I(%a+)$") or "date"
      fmt = ISO[unit] or ISO.date
    elseif a ~= "-u" and a ~= "--utc" and a ~= "--universal" then
      io:stderr(("date: invalid option -- '%s'\n"):format((a:gsub("^%-+", ""))))
      return 1
    end
  end
  local out = date_format(fmt, M.node_time(ctx))
  if not out then
    io:stderr("date: invalid format\n")
    return 1
  end
  io:stdout(out .. "\n")
  return 0
end

local function copy_stdin(io)
  for data in io.read, io do io:stdout(data) end
end

local function cat_cmd(argv, io, ctx)
  local files, code = pod_files(ctx), 0
  if #argv == 1 then
    copy_stdin(io)
    return 0
  end
  for i = 2, #argv do
    local path = argv[i]
    if path == "-" then copy_stdin(io)
    elseif files[path] then io:stdout(files[path])
    else
      io:stderr(("cat: %s: No such file or directory\n"):format(path))
      code = 1
    end
  end
  return code
end

local ESCAPES = { n = "\n", t = "\t", ["\\"] = "\\", r = "\r", a = "\a" }

local function echo_cmd(argv, io)
  local i, newline, escapes = 2, true, false
  while argv[i] and argv[i]:match("^%-[neE]+$") do
    if argv[i]:find("n", 1, true) then newline = false end
    if argv[i]:find("e", 1, true) then escapes = true end
    i = i + 1
  end
  local text = concat(argv, " ", i)
  if escapes then text = text:gsub("\\(.)", function(c) return ESCAPES[c] or ("\\" .. c) end) end
  io:stdout(text .. (newline and "\n" or ""))
  return 0
end

local function print_env(io, env)
  local out = {}
  for _, name in ipairs(env) do out[#out + 1] = name .. "=" .. env[name] .. "\n" end
  io:stdout(concat(out))
end

local function env_cmd(argv, io, ctx)
  local i = 2
  local env = util.copy(ctx.env)
  while argv[i] and argv[i]:match("^[%a_][%w_]*=") do
    local name, value = argv[i]:match("^([^=]+)=(.*)$")
    set_env(env, name, value)
    i = i + 1
  end
  if not argv[i] then
    print_env(io, env)
    return 0
  end
  local sub = setmetatable({ env = env }, { __index = ctx })
  return M.run_command(ctx.sim, table.move(argv, i, #argv, 1, {}), io, sub)
end

local function printenv_cmd(argv, io, ctx)
  if #argv == 1 then
    print_env(io, ctx.env)
    return 0
  end
  local code = 0
  for i = 2, #argv do
    local v = ctx.env[argv[i]]
    if v then io:stdout(v .. "\n") else code = 1 end
  end
  return code
end

local function hostname_cmd(argv, io, ctx)
  local pod = ctx.pod
  local name = pod.spec.hostname or pod.metadata.name
  if argv[2] == "-f" or argv[2] == "--fqdn" then
    if pod.spec.subdomain then name = ("%s.%s.%s.svc.cluster.local"):format(name, pod.spec.subdomain, ctx.ns) end
  elseif argv[2] == "-i" or argv[2] == "-I" then
    name = pod.status and pod.status.podIP or "10.244.0.10"
  end
  io:stdout(name .. "\n")
  return 0
end

local function sleep_cmd(argv, _, ctx)
  local seconds = tonumber((argv[2] or "0"):match("^[%d.]+")) or 0
  ctx.sim:delay(seconds)
  return 0
end

local function test_cmd(argv, _, ctx)
  local args = table.move(argv, 2, #argv, 1, {})
  if basename(argv[1]) == "[" then args[#args] = nil end
  local op, x = args[1], args[2]
  local files = pod_files(ctx)
  if op == "-f" or op == "-e" or op == "-r" or op == "-s" then
    return files[x] and (op ~= "-s" or #files[x] > 0) and 0 or 1
  elseif op == "-d" then
    for path in pairs(files) do if path:sub(1, #x + 1) == x .. "/" then return 0 end end
    return 1
  elseif op == "-n" then return (x or "") ~= "" and 0 or 1
  elseif op == "-z" then return (x or "") == "" and 0 or 1
  elseif args[2] == "=" or args[2] == "==" then return args[1] == args[3] and 0 or 1
  elseif args[2] == "!=" then return args[1] ~= args[3] and 0 or 1
  end
  return (op or "") ~= "" and 0 or 1
end

-- ---- sh -c: a small shell, enough for the one-liners runbooks send ----
-- Words with quotes, escapes and $VAR (expanded when the command runs, without word
-- splitting); ;, &&, ||, | and the redirections >, >>, <, 2>, 2>&1, >&2; exit, export,
-- cd, :, true, false. Anything else goes to the handlers.

local Lexer = {}
Lexer.__index = Lexer

local function lex(script)
  local lx = setmetatable({ s = script, i = 1, tokens = {} }, Lexer)
  lx:run()
  return lx.tokens
end

function Lexer:peek(n) return self.s:sub(self.i, self.i + (n or 1) - 1) end

function Lexer:var()
  local s = self.s
  local name = s:match("^{([%w_?]+)}", self.i)
  if name then self.i = self.i + #name + 2
  else
    name = s:match("^[%a_][%w_]*", self.i) or s:match("^[?$#0-9]", self.i)
    if not name then return "$" end
    self.i = self.i + #name
  end
  return { var = name }
end

--- A word as parts: strings, and {var = name} to expand when it runs.
function Lexer:word()
  local parts = {}
  while self.i <= #self.s do
    local c = self:peek()
    if c:match("[%s;&|<>]") then break end
    self.i = self.i + 1
    if c == "'" then
      local e = self.s:find("'", self.i, true) or (#self.s + 1)
      parts[#parts + 1] = self.s:sub(self.i, e - 1)
      self.i = e + 1
    elseif c == '"' then
      self:double_quoted(parts)
    elseif c == "\\" then
      parts[#parts + 1] = self:peek()
      self.i = self.i + 1
    elseif c == "$" then
      parts[#parts + 1] = self:var()
    else
      parts[#parts + 1] = c
    end
  end
  return parts
end

function Lexer:double_quoted(parts)
  while self.i <= #self.s do
    local c = self:peek()
    self.i = self.i + 1
    if c == '"' then break end
    if c == "\\" and self:peek():match('["\\$`]') then
      parts[#parts + 1] = self:peek()
      self.i = self.i + 1
    elseif c == "$" then
      parts[#parts + 1] = self:var()
    else
      parts[#parts + 1] = c
    end
  end
end

local OPERATORS = { "&&", "||", ";", "|", "\n" }

function Lexer:redirect(fd)
  local s = self.s
  local op = s:match("^>>", self.i) or s:match("^[<>]", self.i)
  self.i = self.i + #op
  if op ~= "<" and self:peek() == "&" then
    local to = s:match("^&(%d)", self.i)
    self.i = self.i + 2
    return { fd = fd or 1, dup = tonumber(to) }
  end
  self.i = s:find("%S", self.i) or (#s + 1)
  local target = self:word()
  return { fd = fd or (op == "<" and 0 or 1), path = target, append = op == ">>" }
end

function Lexer:run()
  local s, tokens = self.s, self.tokens
  while true do
    self.i = s:find("[^ \t]", self.i) or (#s + 1)
    if self.i > #s then break end
    local matched
    for _, op in ipairs(OPERATORS) do
      if s:sub(self.i, self.i + #op - 1) == op then matched = op break end
    end
    if matched then
      tokens[#tokens + 1] = { op = matched == "\n" and ";" or matched }
      self.i = self.i + #matched
    elseif s:match("^[12]?[<>]", self.i) then
      local fd = s:match("^[12]", self.i)
      if fd then self.i = self.i + 1 end
      tokens[#tokens + 1] = { redirect = self:redirect(tonumber(fd)) }
    elseif self:peek() == "#" then
      self.i = (s:find("\n", self.i, true) or #s + 1)
    else
      tokens[#tokens + 1] = { word = self:word() }
    end
  end
end

-- Parse tokens into {pipeline = {{argv, redirects}...}, connector = op} items.
local function parse_script(tokens)
  local items, pipeline, cmd = {}, {}, { argv = {}, redirects = {} }
  local function end_command()
    if #cmd.argv > 0 or #cmd.redirects > 0 then pipeline[#pipeline + 1] = cmd end
    cmd = { argv = {}, redirects = {} }
  end
  local function end_pipeline(op)
    end_command()
    if #pipeline > 0 then items[#items + 1] = { pipeline = pipeline, connector = op } end
    pipeline = {}
  end
  for _, t in ipairs(tokens) do
    if t.word then cmd.argv[#cmd.argv + 1] = t.word
    elseif t.redirect then cmd.redirects[#cmd.redirects + 1] = t.redirect
    elseif t.op == "|" then end_command()
    else end_pipeline(t.op) end
  end
  end_pipeline(nil)
  return items
end

local Shell = {}
Shell.__index = Shell

function M.shell(ctx, name)
  local env = util.copy(ctx.env)
  local sub = setmetatable({ env = env }, { __index = ctx })
  return setmetatable({ ctx = sub, env = env, name = name or "sh" }, Shell)
end

-- Apply redirections: returns an io whose streams go where the command line says.
--- A word's text now: its variables expanded from the shell's environment.
function Shell:expand(parts)
  local out = {}
  for i, p in ipairs(parts) do
    if type(p) == "string" then out[i] = p
    elseif p.var == "?" then out[i] = tostring(self.env["?"] or 0)
    else out[i] = self.env[p.var] or "" end
  end
  return concat(out)
end

function Shell:redirected(cmd, io)
  local out, err, read = io.out, io.err, io.input
  local files = pod_files(self.ctx)
  for _, r in ipairs(cmd.redirects) do
    local sink
    local path = r.path and self:expand(r.path)
    if r.dup then sink = (r.dup == 2) and err or out
    elseif r.fd == 0 then
      local data = files[path]
      if not data then return nil, ("%s: 1: cannot open %s: No such file\n"):format(self.name, path) end
      read = function() local d = data data = nil return d end
    elseif path == "/dev/null" then sink = function() end
    else
      if not r.append then files[path] = "" end
      sink = function(s) files[path] = (files[path] or "") .. s end
    end
    if sink then
      if r.fd == 2 then err = sink else out = sink end
    end
  end
  return M.new_io(out, err, read, io.ctx)
end

local SHELL_BUILTINS = {
  [":"] = function() return 0 end,
  ["true"] = function() return 0 end,
  ["false"] = function() return 1 end,
  cd = function() return 0 end,
  set = function() return 0 end,
}

function Shell:builtin(argv, io)
  local name = argv[1]
  if name == "exit" then
    self.exiting = true
    return tonumber(argv[2] or "") or (self.env["?"] or 0)
  elseif name == "export" then
    for i = 2, #argv do
      local k, v = argv[i]:match("^([%a_][%w_]*)=(.*)$")
      if k then set_env(self.env, k, v) end
    end
    return 0
  elseif SHELL_BUILTINS[name] then
    return SHELL_BUILTINS[name](argv, io)
  end
end

function Shell:simple(cmd, io)
  local rio, err = self:redirected(cmd, io)
  if not rio then
    io:stderr(err)
    return 2
  end
  local argv = {}
  for i, word in ipairs(cmd.argv) do argv[i] = self:expand(word) end
  if #argv == 0 then return 0 end
  local code = self:builtin(argv, rio)
  if code then return code end
  code = M.dispatch(self.ctx.sim, argv, rio, self.ctx)
  if code then return code end
  rio:stderr(("%s: 1: %s: not found\n"):format(self.name, argv[1]))
  return 127
end

function Shell:pipeline(cmds, io)
  if #cmds == 1 then return self:simple(cmds[1], io) end
  local input, code = nil, 0
  for i, cmd in ipairs(cmds) do
    local buf = {}
    local read = io.input
    if i > 1 then
      local data = input
      read = function() local d = data data = nil return d ~= "" and d or nil end
    end
    local out = i == #cmds and io.out or function(s) buf[#buf + 1] = s end
    code = self:simple(cmd, M.new_io(out, io.err, read, io.ctx))
    input = concat(buf)
  end
  return code
end

function Shell:run_script(script, io)
  local code, connector = 0, nil
  for _, item in ipairs(parse_script(lex(script))) do
    local skip = (connector == "&&" and code ~= 0) or (connector == "||" and code == 0)
    if not skip then
      code = self:pipeline(item.pipeline, io)
      self.env["?"] = code
      if self.exiting then return code end
    end
    connector = item.connector
  end
  return code
end

local function sh_cmd(argv, io, ctx)
  local shell = M.shell(ctx, basename(argv[1]))
  local i = 2
  while argv[i] and argv[i]:match("^%-") do
    if argv[i]:find("c", 2, true) then return shell:run_script(argv[i + 1] or "", io) end
    i = i + 1
  end
  if argv[i] then
    local script = pod_files(ctx)[argv[i]]
    if not script then
      io:stderr(("%s: 0: cannot open %s: No such file\n"):format(shell.name, argv[i]))
      return 2
    end
    return shell:run_script(script, io)
  end
  return shell:run_script(io:read_all(), io)
end

-- ---- mongo / mongosh: a replica set member's answers to the questions runbooks ask ----

local DOC = {}

--- An ordered document: doc("k1", v1, "k2", v2, ...); a nil value leaves its key out.
local function doc(...)
  local d = setmetatable({ _keys = {} }, DOC)
  for i = 1, select("#", ...), 2 do
    local k, v = select(i, ...)
    if v ~= nil then
      d._keys[#d._keys + 1] = k
      d[k] = v
    end
  end
  return d
end

local DATE = {}
local function date(t) return setmetatable({ t = t }, DATE) end

local function iso(t) return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) .. (".%03dZ"):format(math.floor((t % 1) * 1000)) end

local STYLES = {
  legacy = { key = function(k) return '"' .. k .. '"' end, sep = " : ", str = function(s) return json.encode(s) end,
             date = function(t) return 'ISODate("' .. iso(t) .. '")' end, indent = "\t", pad = " " },
  mongosh = { key = function(k) return k:match("^[%a_$][%w_$]*$") and k or ("'" .. k .. "'") end, sep = ": ",
              str = function(s) return "'" .. s:gsub("'", "\\'") .. "'" end,
              date = function(t) return "ISODate('" .. iso(t) .. "')" end, indent = "  ", pad = " " },
  json = { key = function(k) return json.encode(k) end, sep = ":", str = function(s) return json.encode(s) end,
           date = function(t) return json.encode(iso(t)) end, indent = "", pad = "" },
}

local function is_scalar(v) return type(v) ~= "table" or getmetatable(v) == DATE end

local function format_value(v, style, depth)
  local st = STYLES[style]
  if type(v) == "string" then return st.str(v) end
  if type(v) ~= "table" then return tostring(v) end
  if getmetatable(v) == DATE then return st.date(v.t) end
  local items, simple = {}, true
  local is_doc = getmetatable(v) == DOC
  for i, k in ipairs(is_doc and v._keys or v) do
    local x, label = k, ""
    if is_doc then x, label = v[k], st.key(k) .. st.sep end
    simple = simple and is_scalar(x)
    items[i] = label .. format_value(x, style, depth + 1)
  end
  local open, close = is_doc and "{" or "[", is_doc and "}" or "]"
  if #items == 0 then return open .. close end
  local one_line = open .. st.pad .. concat(items, "," .. st.pad) .. st.pad .. close
  if style == "json" or (simple and #one_line <= 72) then return one_line end
  local ind = st.indent:rep(depth + 1)
  return open .. "\n" .. ind .. concat(items, ",\n" .. ind) .. "\n" .. st.indent:rep(depth) .. close
end
M.format_value = format_value

local function mongo_version(ctx)
  local image = ctx.container_spec and ctx.container_spec.image or ""
  local v = image:match(":v?(%d+%.%d+%.%d+)") or image:match(":v?(%d+%.%d+)")
  if v and not v:match("%d+%.%d+%.%d+") then v = v .. ".0" end
  return v or "4.4.29"
end

-- The members of the pod's replica set: the pods its controller owns.
local function replica_members(ctx)
  local pod = ctx.pod
  local owner = pod.metadata.ownerReferences and pod.metadata.ownerReferences[1]
  local pods = { pod }
  local service = pod.spec.subdomain
  if owner then
    pods = ctx.sim:list("pods", ctx.ns, function(p)
      local o = p.metadata.ownerReferences and p.metadata.ownerReferences[1]
      return o and o.uid == owner.uid
    end)
    local sts = owner.kind == "StatefulSet" and ctx.sim:get("statefulsets.apps", ctx.ns, owner.name)
    service = service or (sts and sts.spec.serviceName) or owner.name
  end
  local members = {}
  for i, p in ipairs(pods) do
    local host = service and ("%s.%s.%s.svc.cluster.local:27017"):format(p.metadata.name, service, ctx.ns)
      or (p.metadata.name .. ":27017")
    members[i] = { host = host, primary = i == 1, self = p.metadata.name == pod.metadata.name }
  end
  return members
end

local function rs_status(ctx)
  local now = M.node_time(ctx)
  local out, me = {}, 1
  for i, m in ipairs(replica_members(ctx)) do
    if m.self then me = m.primary and 1 or 2 end
    out[i] = doc("_id", i - 1, "name", m.host, "health", 1, "state", m.primary and 1 or 2,
                   "stateStr", m.primary and "PRIMARY" or "SECONDARY", "uptime", 3600,
                   "optimeDate", date(now), "self", m.self or nil)
  end
  return doc("set", "rs0", "date", date(now), "myState", me, "term", 1, "members", out, "ok", 1)
end

local function hello(ctx)
  local members = replica_members(ctx)
  local hosts, primary, me = {}, nil, nil
  for i, m in ipairs(members) do
    hosts[i] = m.host
    if m.primary then primary = m.host end
    if m.self then me = m end
  end
  local is_primary = me and me.primary or false
  return doc("topologyVersion", doc("counter", 6), "hosts", hosts, "setName", "rs0", "setVersion", 1,
               "ismaster", is_primary, "isWritablePrimary", is_primary, "secondary", not is_primary,
               "primary", primary, "me", me and me.host, "maxBsonObjectSize", 16777216,
               "localTime", date(M.node_time(ctx)), "ok", 1)
end

local function command_doc(arg, ctx)
  if arg:find("ping") then return doc("ok", 1) end
  if arg:find("replSetGetStatus") then return rs_status(ctx) end
  if arg:find("isMaster") or arg:find("hello") then return hello(ctx) end
  if arg:find("serverStatus") then
    return doc("host", ctx.pod.metadata.name .. ":27017", "version", mongo_version(ctx), "process", "mongod",
                 "uptime", 3600, "localTime", date(M.node_time(ctx)), "ok", 1)
  end
  if arg:find("listDatabases") then
    return doc("databases", { doc("name", "admin", "sizeOnDisk", 40960, "empty", false),
                                doc("name", "ars02", "sizeOnDisk", 1048576, "empty", false) },
                 "totalSize", 1089536, "ok", 1)
  end
  return doc("ok", 1)
end

-- The value of a call at the start of an expression, and what follows it.
local CALLS = {
  { "^db%.version%(%)", function(ctx) return mongo_version(ctx) end },
  { "^db%.getName%(%)", function() return "test" end },
  { "^rs%.status%(%)", rs_status },
  { "^rs%.conf%(%)", function(ctx)
      local members = {}
      for i, m in ipairs(replica_members(ctx)) do members[i] = doc("_id", i - 1, "host", m.host) end
      return doc("_id", "rs0", "version", 1, "members", members)
    end },
  { "^db%.isMaster%(%)", hello }, { "^db%.hello%(%)", hello }, { "^rs%.isMaster%(%)", hello }, { "^rs%.hello%(%)", hello },
}

local function follow_path(v, path)
  for step in path:gmatch("[%.%[]([^%.%[%]]+)%]?") do
    if step == "length" and type(v) == "table" then
      v = #(getmetatable(v) == DOC and v._keys or v)
    elseif type(v) == "table" then
      local n = tonumber(step)
      v = n and v[n + 1] or v[(step:gsub("^['\"](.*)['\"]$", "%1"))]
    elseif type(v) == "string" and step == "length" then
      v = #v
    else
      return nil
    end
  end
  return v
end

local function mongo_value(expr, ctx)
  expr = expr:gsub("^%s+", ""):gsub("[%s;]+$", "")
  local str = expr:match("^'(.*)'$") or expr:match('^"(.*)"$')
  if str then return str end
  if tonumber(expr) then return tonumber(expr) end
  local inner = expr:match("^JSON%.stringify%((.*)%)$")
  if inner then return format_value(mongo_value(inner, ctx), "json", 0) end
  for _, c in ipairs(CALLS) do
    local s, e = expr:find(c[1])
    if s then return follow_path(c[2](ctx), expr:sub(e + 1)) end
  end
  local arg, rest = expr:match("^db[%w%.%(%)'\"]-%.%a*[cC]ommand(%b())(.*)$")
  if arg then return follow_path(command_doc(arg, ctx), rest) end
  return doc("ok", 1)
end

-- Statements at the top level of a script, split on ; outside quotes and brackets.
local function statements(js)
  local out, depth, quote, start = {}, 0, nil, 1
  for i = 1, #js do
    local c = js:sub(i, i)
    if quote then
      if c == quote then quote = nil end
    elseif c == "'" or c == '"' then quote = c
    elseif c:match("[%(%[{]") then depth = depth + 1
    elseif c:match("[%)%]}]") then depth = depth - 1
    elseif (c == ";" or c == "\n") and depth == 0 then
      out[#out + 1] = js:sub(start, i - 1)
      start = i + 1
    end
  end
  out[#out + 1] = js:sub(start)
  local kept = {}
  for _, s in ipairs(out) do if s:match("%S") then kept[#kept + 1] = s end end
  return kept
end

local function mongo_print(v, style)
  if type(v) == "string" then return v end
  if v == nil then return style == "mongosh" and "undefined" or "" end
  return format_value(v, style, 0)
end

local function mongo_eval(js, style, ctx)
  local out = {}
  local list = statements(js)
  for i, stmt in ipairs(list) do
    stmt = stmt:gsub("^%s+", "")
    local call, arg = stmt:match("^(%a+[%.%a]*)(%b())%s*$")
    if call == "print" or call == "printjson" or call == "console.log" then
      local v = mongo_value(arg:sub(2, -2), ctx)
      out[#out + 1] = (call == "printjson" and type(v) ~= "table") and format_value(v, style, 0) or mongo_print(v, style)
    elseif i == #list and not stmt:match("^var%s") and not stmt:match("^const%s") and not stmt:match("^let%s") then
      out[#out + 1] = mongo_print(mongo_value(stmt, ctx), style)
    end
  end
  return out
end

local function mongo_banner(style, version, ctx)
  if style == "mongosh" then
    return ("Current Mongosh Log ID:\t%s\nConnecting to:\t\tmongodb://127.0.0.1:27017/?directConnection=true&serverSelectionTimeoutMS=2000&appName=mongosh+2.2.5\nUsing MongoDB:\t\t%s\nUsing Mongosh:\t\t2.2.5\n\n")
      :format(util.uuid():gsub("-", ""):sub(1, 24), version)
  end
  return ("MongoDB shell version v%s\nconnecting to: mongodb://127.0.0.1:27017/?compressors=disabled&gssapiServiceName=mongodb\nImplicit session: session { \"id\" : UUID(\"%s\") }\nMongoDB server version: %s\n")
    :format(version, util.uuid(), version)
end

local function mongo_cmd(argv, io, ctx)
  local style = basename(argv[1]) == "mongosh" and "mongosh" or "legacy"
  local version = mongo_version(ctx)
  local js, quiet = nil, false
  for i = 2, #argv do
    if argv[i] == "--eval" then js = argv[i + 1]
    elseif argv[i] == "--quiet" then quiet = true
    elseif argv[i] == "--version" then
      io:stdout(style == "mongosh" and "2.2.5\n" or ("MongoDB shell version v%s\n"):format(version))
      return 0
    end
  end
  js = js or io:read_all()
  if not quiet then io:stdout(mongo_banner(style, version, ctx)) end
  local out = mongo_eval(js, style, ctx)
  if #out > 0 then io:stdout(concat(out, "\n") .. "\n") end
  return 0
end

-- ---- the built-ins as handlers ----

local function named(names, run)
  local set = {}
  for _, n in ipairs(names) do set[n] = true end
  return { names = names, match = function(argv) return set[basename(argv[1])] == true end, run = run }
end

function M.builtins()
  return {
    named({ "date" }, date_cmd),
    named({ "cat" }, cat_cmd),
    named({ "echo" }, echo_cmd),
    named({ "sh", "bash", "ash", "dash" }, sh_cmd),
    named({ "env" }, env_cmd),
    named({ "printenv" }, printenv_cmd),
    named({ "hostname" }, hostname_cmd),
    named({ "mongo", "mongosh" }, mongo_cmd),
    named({ "true" }, function() return 0 end),
    named({ "false" }, function() return 1 end),
    named({ "sleep" }, sleep_cmd),
    named({ "test", "[" }, test_cmd),
  }
end

-- ---- the request: the checks the apiserver and the kubelet make before upgrading ----

local function exec_error(code, message, details)
  return { code = code, message = message, details = details }
end

local function container_running(sim, pod, name)
  local cs = logs_mod.container_status(pod, name)
  if cs then return cs.state ~= nil and cs.state.running ~= nil end
  local inst = sim.logs and sim.logs:instance(pod.metadata.namespace, pod.metadata.name, name)
  return inst ~= nil and not inst.stopped
end

--- The exec's parameters, or nil, {code, message}.
function M.parse_request(sim, req, r)
  local pod = sim:get("pods", r.ns, r.name)
  if not pod then
    return nil, exec_error(404, ('pods "%s" not found'):format(r.name), { name = r.name, kind = "pods" })
  end
  local q = req.query
  local p = { pod = pod, command = req.query_all.command or {}, stdin = flag(q, "stdin"), stdout = flag(q, "stdout"),
              stderr = flag(q, "stderr"), tty = flag(q, "tty") }
  if #p.command == 0 then return nil, exec_error(400, "you must specify at least 1 command") end
  if not (p.stdin or p.stdout or p.stderr) then
    return nil, exec_error(400, "you must specify at least one of stdin, stdout, stderr")
  end
  local err
  p.container, err = logs_mod.pick_container(pod, q.container)
  if not p.container then return nil, exec_error(400, err) end
  if not pod.spec.nodeName or pod.spec.nodeName == "" then
    return nil, exec_error(400, ("pod %s does not have a host assigned"):format(pod.metadata.name))
  end
  if not container_running(sim, pod, p.container) then
    return nil, exec_error(400, ('container not found ("%s")'):format(p.container))
  end
  if p.tty then p.stderr = false end -- a terminal has one output stream
  return p
end

-- ---- WebSocket sessions ----

local WS_PROTOCOLS = { ["v5.channel.k8s.io"] = 5, ["v4.channel.k8s.io"] = 4, ["v3.channel.k8s.io"] = 3,
                       ["v2.channel.k8s.io"] = 2, ["channel.k8s.io"] = 1 }

-- The first protocol the client lists that this server version speaks (v5 came in 1.30).
local function pick_ws_protocol(sim, header)
  local offered = split_list(header)
  if #offered == 0 then return "", 1 end
  for _, p in ipairs(offered) do
    local v = WS_PROTOCOLS[p]
    if v and (v < 5 or version_minor(sim) >= 30) then return p, v end
  end
  return nil
end

local WsSession = {}
WsSession.__index = WsSession

local function ws_session(conn, version, p)
  local s = setmetatable({ conn = conn, version = version, stdin = vq.queue(), p = p }, WsSession)
  if not p.stdin then s.stdin:close() end
  s.reader = vq.spawn(WsSession.read_loop, s)
  return s
end

function WsSession:control(f)
  if f.op == ws.OP.PING then
    self.conn:write(ws.frame(ws.OP.PONG, f.payload))
  elseif f.op == ws.OP.CLOSE then
    self.peer_closed = true
    return true
  end
end

function WsSession:on_message(payload)
  local ch, data = payload:byte(1), payload:sub(2)
  if ch == STDIN then
    if #data > 0 then self.stdin:put(data) end
  elseif ch == CLOSE and self.version >= 5 then
    if data:byte(1) == STDIN then self.stdin:close() end
  elseif ch == RESIZE then
    self.size = data
  end
end

function WsSession:read_loop()
  local conn = self.conn
  while true do
    local op, payload = ws.read_message(conn, function(f) return self:control(f) end)
    if not op then break end
    if op == ws.OP.BINARY and #payload > 0 then self:on_message(payload) end
  end
  self.stdin:close()
  self.gone = true
end

function WsSession:send(ch, data)
  if self.gone or self.conn.closed then return end
  for i = 1, #data, OUT_CHUNK do
    self.conn:write(ws.frame(ws.OP.BINARY, string.char(ch) .. data:sub(i, i + OUT_CHUNK - 1)))
  end
end

function WsSession:read_stdin() return (self.stdin:get()) end

function WsSession:finish(payload)
  if payload then self:send(ERROR, payload) end
  if not self.conn.closed then self.conn:write(ws.close_frame(1000)) end
end

-- ---- SPDY/3.1 sessions (kubectl <= 1.29, and the fallback of newer ones) ----
-- Streams are told apart by the order client-go opens them (error, stdin, stdout,
-- stderr, resize, as the request asks for them), so the zlib-compressed header blocks
-- are skipped, not inflated. Our own header blocks are zlib stored blocks: valid
-- compressed data a reader needs no dictionary for.

local SPDY_PROTOCOLS = { ["v4.channel.k8s.io"] = 4, ["v3.channel.k8s.io"] = 3, ["v2.channel.k8s.io"] = 2, ["channel.k8s.io"] = 1 }
local SYN_STREAM, SYN_REPLY, RST_STREAM, PING, GOAWAY = 1, 2, 3, 6, 7
local FLAG_FIN = 1

local function pick_spdy_protocol(header)
  local offered = split_list(header)
  if #offered == 0 then return "", 1 end
  for _, p in ipairs(offered) do
    if SPDY_PROTOCOLS[p] then return p, SPDY_PROTOCOLS[p] end
  end
  return nil
end

local SpdySession = {}
SpdySession.__index = SpdySession

local function expected_streams(p, version)
  local list = { "error" }
  if p.stdin then list[#list + 1] = "stdin" end
  if p.stdout then list[#list + 1] = "stdout" end
  if p.stderr then list[#list + 1] = "stderr" end
  if p.tty and version >= 3 then list[#list + 1] = "resize" end
  return list
end

local function spdy_session(conn, version, p)
  local s = setmetatable({ conn = conn, version = version, stdin = vq.queue(), p = p, ids = {}, types = {},
                           expected = expected_streams(p, version), opened = 0, ready = vq.event() }, SpdySession)
  if not p.stdin then s.stdin:close() end
  s.reader = vq.spawn(SpdySession.read_loop, s)
  return s
end

function SpdySession:control_frame(ftype, flags, payload)
  return string.pack(">I2I2BI3", 0x8003, ftype, flags or 0, #payload) .. payload
end

-- An empty header block (no name/value pairs), compressed as a zlib stored block and
-- flushed as zlib's Z_SYNC_FLUSH does (an empty stored block): without that mark a reader
-- looks for the next block past the frame's end.
function SpdySession:header_block()
  local raw = "\0\0\0\0"
  local prefix = self.zlib_started and "" or "\x78\x01"
  self.zlib_started = true
  return prefix .. "\0" .. string.pack("<I2I2", #raw, ~#raw & 0xffff) .. raw .. "\0\0\0\xff\xff"
end

function SpdySession:on_syn_stream(payload)
  local id = string.unpack(">I4", payload) & 0x7fffffff
  self.opened = self.opened + 1
  local t = self.expected[self.opened] or "unknown"
  self.types[id], self.ids[t] = t, id
  self.conn:write(self:control_frame(SYN_REPLY, 0, string.pack(">I4", id) .. self:header_block()))
  if self.opened == #self.expected then self.ready:set() end
end

function SpdySession:on_control(ftype, payload)
  if ftype == SYN_STREAM then
    self:on_syn_stream(payload)
  elseif ftype == PING then
    self.conn:write(self:control_frame(PING, 0, payload))
  elseif ftype == RST_STREAM then
    local id = string.unpack(">I4", payload) & 0x7fffffff
    if self.types[id] == "stdin" then self.stdin:close() end
  elseif ftype == GOAWAY then
    return true
  end
end

function SpdySession:on_data(id, flags, data)
  if self.types[id] ~= "stdin" then return end
  if #data > 0 then self.stdin:put(data) end
  if flags & FLAG_FIN ~= 0 then self.stdin:close() end
end

function SpdySession:read_frame()
  local head, err = self.conn:read_exactly(8)
  if not head then return nil, err end
  local word, flags, len = string.unpack(">I4BI3", head)
  local payload = ""
  if len > 0 then
    payload, err = self.conn:read_exactly(len)
    if not payload then return nil, err end
  end
  return word, flags, payload
end

function SpdySession:read_loop()
  while true do
    local word, flags, payload = self:read_frame()
    if not word then break end
    if word & 0x80000000 ~= 0 then
      if self:on_control(word & 0xffff, payload) then break end
    else
      self:on_data(word, flags, payload)
    end
  end
  self.stdin:close()
  self.gone = true
  self.ready:set()
end

function SpdySession:data_frame(id, data, flags)
  return string.pack(">I4BI3", id, flags or 0, #data) .. data
end

local CHANNEL_STREAM = { [STDOUT] = "stdout", [STDERR] = "stderr", [ERROR] = "error" }

function SpdySession:send(ch, data)
  local id = self.ids[CHANNEL_STREAM[ch]]
  if not id or self.gone or self.conn.closed then return end
  for i = 1, #data, OUT_CHUNK do
    self.conn:write(self:data_frame(id, data:sub(i, i + OUT_CHUNK - 1)))
  end
end

function SpdySession:read_stdin() return (self.stdin:get()) end

--- Wait until the client has opened every stream the request asked for.
function SpdySession:wait_ready()
  self.ready:wait(STREAMS_TIMEOUT)
  return self.opened >= #self.expected and not self.gone
end

function SpdySession:finish(payload)
  if payload then self:send(ERROR, payload) end
  if self.gone or self.conn.closed then return end
  local frames = {}
  for _, t in ipairs(self.expected) do frames[#frames + 1] = self:data_frame(self.ids[t], "", FLAG_FIN) end
  frames[#frames + 1] = self:control_frame(GOAWAY, 0, string.pack(">I4I4", 0, 0))
  self.conn:write(concat(frames))
end

-- ---- one exec: a session, the command, its status ----

local function session_io(session, p, ctx)
  local function out(s)
    if ctx.tty then s = s:gsub("\r?\n", "\r\n") end
    if p.stdout then session:send(STDOUT, s) end
  end
  local err = out
  if not p.tty then err = function(s) if p.stderr then session:send(STDERR, s) end end end
  return M.new_io(out, err, function() return session:read_stdin() end, ctx)
end

local function run_in_session(sim, session, p)
  local ctx = M.context(sim, p.pod, p.container, p.tty)
  local ok, code = pcall(M.run_command, sim, p.command, session_io(session, p, ctx), ctx)
  if not ok then
    require("log").error("sim exec %s: %s", concat(p.command, " "), tostring(code))
    return { internal = "error executing command in container: " .. tostring(code) }
  end
  return { code = code }
end

local function upgrade_websocket(sim, req, res, p)
  local protocol, version = pick_ws_protocol(sim, req.headers["sec-websocket-protocol"])
  if not protocol then
    return api_mod.send_status(res, 400, ("unable to upgrade: requested protocol(s) are not supported: [%s]")
      :format(req.headers["sec-websocket-protocol"] or ""), "BadRequest")
  end
  local headers, err = ws.handshake_headers(req, protocol)
  if not headers then return api_mod.send_status(res, 400, err, "BadRequest") end
  local session = ws_session(res:upgrade(headers), version, p)
  -- A container runtime takes a moment to start the process; client-go's WebSocket
  -- executor only sets up its streams after the upgrade, and drops output that comes first.
  vq.sleep(EXEC_START)
  session:finish(status_payload(version, p.command, run_in_session(sim, session, p)))
end

local function upgrade_spdy(sim, req, res, p)
  local protocol, version = pick_spdy_protocol(req.headers["x-stream-protocol-version"])
  if not protocol then
    return api_mod.send_status(res, 403, ("unable to upgrade: unable to negotiate protocol: client supports [%s], server supports [v4.channel.k8s.io v3.channel.k8s.io v2.channel.k8s.io channel.k8s.io]")
      :format(req.headers["x-stream-protocol-version"] or ""), "Forbidden")
  end
  local headers = { Connection = "Upgrade", Upgrade = "SPDY/3.1" }
  if protocol ~= "" then headers["X-Stream-Protocol-Version"] = protocol end
  local session = spdy_session(res:upgrade(headers), version, p)
  if not session:wait_ready() then return end
  session:finish(status_payload(version, p.command, run_in_session(sim, session, p)))
end

function M.serve(sim, req, res, r)
  if req.method ~= "GET" and req.method ~= "POST" then
    return api_mod.send_status(res, 405, "method not allowed", "MethodNotAllowed")
  end
  local p, err = M.parse_request(sim, req, r)
  if not p then return api_mod.send_status(res, err.code, err.message, nil, err.details) end
  local upgrade = (req.headers.upgrade or ""):lower()
  if upgrade:find("websocket", 1, true) then return upgrade_websocket(sim, req, res, p) end
  if upgrade:find("spdy/3.1", 1, true) then return upgrade_spdy(sim, req, res, p) end
  api_mod.send_status(res, 400, "Upgrade request required", "BadRequest")
end

-- ---- in-process runs (scenarios, specs) ----

local Exec = {}
Exec.__index = Exec

--- Run a command in a pod's container through the handlers: exit code, stdout, stderr.
function Exec:run(o)
  local sim = self.sim
  local pod = assert(sim:get("pods", o.ns or "default", o.pod), "no pod " .. tostring(o.pod))
  local container = o.container or assert(logs_mod.pick_container(pod, nil))
  local ctx = M.context(sim, pod, container, false)
  local out, err, input = {}, {}, o.stdin
  local io = M.new_io(function(s) out[#out + 1] = s end, function(s) err[#err + 1] = s end,
    function() local d = input input = nil return d end, ctx)
  local code = M.run_command(sim, o.command, io, ctx)
  return code, concat(out), concat(err)
end

-- The program of a short-lived pod's container (restartPolicy Never or OnFailure) that
-- names a command: the interpreter runs command and args, the output is the container's
-- log, the command's status its exit code (what `kubectl run --rm` shows).
local function command_program(sim)
  return function(ctx)
    local argv = {}
    for _, a in ipairs(ctx.container.command or {}) do argv[#argv + 1] = a end
    for _, a in ipairs(ctx.container.args or {}) do argv[#argv + 1] = a end
    local partial = ""
    local function out(s)
      partial = partial .. s
      for line in partial:gmatch("([^\n]*)\n") do ctx:log(line) end
      partial = partial:match("[^\n]*$")
    end
    local ectx = M.context(sim, ctx.pod, ctx.container.name, false)
    local code = M.run_command(sim, argv, M.new_io(out, out, function() return nil end, ectx), ectx)
    if partial ~= "" then ctx:log(partial) end
    if code ~= 0 then ctx:exit(code) end
  end
end

function M.install(sim)
  sim.programs = sim.programs or {}
  sim.programs.command = sim.programs.command or command_program(sim)
  sim.exec_handlers = sim.exec_handlers or {}
  for _, h in ipairs(M.builtins()) do sim.exec_handlers[#sim.exec_handlers + 1] = h end
  sim.pod_files = sim.pod_files or {}
  sim.node_clock_skew = sim.node_clock_skew or {}
  sim.exec = setmetatable({ sim = sim }, Exec)
  sim.subresources["pods/exec"] = function(_, req, res, r) return M.serve(sim, req, res, r) end
end

return M
