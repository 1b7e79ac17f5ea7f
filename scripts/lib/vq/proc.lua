-- vq.proc: run programs from a runbook. The mechanism (spawning on the loop, pipes with
-- back-pressure, process groups, reaping) is vq.core.proc; what a runbook wants from it
-- (environments, collected output, callbacks, the log, timeouts as errors) is here.
--
--   proc.run{argv..., cwd=, env=, env_clear=, stdin=, timeout=, grace=, on_stdout=,
--            on_stderr=, on_line=, log=, max_output=}
--     -> {code=, signal=, stdout=, stderr=, duration=, pid=, truncated=} | nil, err
--   proc.spawn{... as run, stdin = true to write it, buffer=, max_line=, linger=}
--     -> process: p:lines(), p:read(), p:wait(), p:kill(sig), p:terminate(grace),
--        p:write(data), p:close_stdin(), p:close() (also <close> and collection), p:pid(),
--        p:stats()
--
-- Programs run from an argv list, never through a shell: nothing in a file name or a
-- value is ever interpreted. A non-zero exit is a result (r.code), not an error.
local core = require "vq.core.proc"
local vq = require "vq"
local log = require "log"
local uv = require "luv"

local M = {}

M.DEFAULT_MAX_OUTPUT = 4 * 1024 * 1024

local function argv_of(opts, level)
  local argv = type(opts) == "table" and (opts.argv or opts)
  if type(argv) ~= "table" or type(argv[1]) ~= "string" or argv[1] == "" then
    error("proc: argv must be a list of strings starting with the program", level + 1)
  end
  local list = {}
  for i, a in ipairs(argv) do
    if type(a) == "number" then a = tostring(a) end
    if type(a) ~= "string" then
      error(("proc: argv[%d] is a %s, not a string"):format(i, type(a)), level + 1)
    end
    list[i] = a
  end
  return list
end

-- The child's environment as "K=V" strings, or nil to inherit ours unchanged. A value
-- false removes a variable.
local function env_list(opts, level)
  if opts.env == nil and not opts.env_clear then return nil end
  local env = opts.env_clear and {} or uv.os_environ()
  for k, v in pairs(opts.env or {}) do
    if type(k) ~= "string" or k == "" or k:find("=", 1, true) then
      error(("proc: bad environment variable name %q"):format(tostring(k)), level + 1)
    end
    if v == false then env[k] = nil else env[k] = tostring(v) end
  end
  local list = {}
  for k, v in pairs(env) do list[#list + 1] = k .. "=" .. v end
  table.sort(list)
  return list
end

local function check_cwd(cwd)
  if cwd == nil then return true end
  local st = uv.fs_stat(cwd)
  if st and st.type == "directory" then return true end
  return nil, vq.error("cwd", ("cannot run in %s: no such directory"):format(cwd), { cwd = cwd })
end

local function core_options(opts, argv, level)
  return {
    argv = argv, cwd = opts.cwd, env = env_list(opts, level + 1), stdin = opts.stdin,
    timeout = opts.timeout, grace = opts.grace, buffer = opts.buffer,
    max_line = opts.max_line, linger = opts.linger, kill_on_cancel = opts.kill_on_cancel,
  }
end

--- Start a program; returns the process object (close it, or let a <close> variable do
--- it: an unfinished process is then terminated) or nil, err.
function M.spawn(opts)
  local argv = argv_of(opts, 2)
  local ok, err = check_cwd(opts.cwd)
  if not ok then return nil, err end
  return core.spawn(core_options(opts, argv, 2))
end

--- A bounded text buffer keeping the last `limit` bytes added.
function M.collector(limit)
  local parts, first, last, size, dropped = {}, 1, 0, 0, 0
  local c = {}
  function c:add(s)
    if #s > limit then
      dropped = dropped + #s - limit
      s = s:sub(-limit)
    end
    last = last + 1
    parts[last] = s
    size = size + #s
    while size > limit do
      size = size - #parts[first]
      dropped = dropped + #parts[first]
      parts[first] = nil
      first = first + 1
    end
  end
  function c:text() return table.concat(parts, "", first, last) end
  function c:dropped() return dropped end
  return c
end

local function basename(path) return path:match("([^/]+)$") or path end

-- Where each line goes: the callbacks, and the log when asked.
local function line_sink(opts, argv)
  local prefix = opts.log == true and basename(argv[1]) or opts.log or nil
  local on_line, on_stdout, on_stderr = opts.on_line, opts.on_stdout, opts.on_stderr
  return function(line, stream)
    line = line:gsub("\r$", "")
    if prefix then log.info("%s| %s", prefix, line) end
    if on_line then on_line(line, stream) end
    if stream == "stdout" then
      if on_stdout then on_stdout(line) end
    elseif on_stderr then
      on_stderr(line)
    end
  end
end

local function output_fields(t, out, err)
  t.stdout, t.stderr = out:text(), err:text()
  if out:dropped() > 0 or err:dropped() > 0 then t.truncated = true end
  return t
end

-- The wait was interrupted (a vq.timeout around run): end the process and report.
local function interrupted(p, e, out, err)
  p:terminate()
  local r = p:wait()
  if r then e.signal, e.pid = r.signal, r.pid end
  return nil, output_fields(e, out, err)
end

local function finish(r, out, err, argv, timeout)
  if r.timed_out then
    local e = vq.error("timeout", ("%s did not finish within %gs"):format(argv[1], timeout),
      { signal = r.signal, pid = r.pid, duration = r.duration, program = argv[1] })
    return nil, output_fields(e, out, err)
  end
  return output_fields({ code = r.code, signal = r.signal, duration = r.duration, pid = r.pid },
    out, err)
end

--- Run a program to its end. Lines of output go to the callbacks (on_line(line, stream),
--- on_stdout(line), on_stderr(line)) and to the log (log = true or a prefix) as they
--- come; stdout and stderr are also collected (the last max_output bytes of each).
--- Returns the result, or nil, err: "spawn", "cwd", "timeout" (after SIGTERM to the
--- process group and, grace seconds later, SIGKILL). A cancelled task's process is
--- terminated the same way, and the cancellation goes on.
function M.run(opts)
  local argv = argv_of(opts, 2)
  if opts.stdin ~= nil and type(opts.stdin) ~= "string" then
    error("proc.run: stdin must be a string (proc.spawn keeps stdin open for writing)", 2)
  end
  local ok, cwd_err = check_cwd(opts.cwd)
  if not ok then return nil, cwd_err end
  local copts = core_options(opts, argv, 2)
  copts.kill_on_cancel = true
  local p <close>, spawn_err = core.spawn(copts)
  if not p then return nil, spawn_err end
  local limit = opts.max_output or M.DEFAULT_MAX_OUTPUT
  local out, err = M.collector(limit), M.collector(limit)
  local sink = line_sink(opts, argv)
  while true do
    local line, stream, terminated = p:read()
    if line == nil then
      if stream ~= nil then return interrupted(p, stream, out, err) end
      break
    end
    local buf = stream == "stdout" and out or err
    buf:add(terminated and line .. "\n" or line)
    sink(line, stream)
  end
  local r, wait_err = p:wait()
  if not r then return interrupted(p, wait_err, out, err) end
  return finish(r, out, err, argv, opts.timeout)
end

--- The path of an executable found in PATH (or the given list), or nil.
function M.which(program, path)
  if program:find("/", 1, true) then
    return uv.fs_access(program, "X") and program or nil
  end
  for dir in (path or os.getenv("PATH") or ""):gmatch("[^:]+") do
    local candidate = dir .. "/" .. program
    local st = uv.fs_stat(candidate)
    if st and st.type ~= "directory" and uv.fs_access(candidate, "X") then return candidate end
  end
  return nil
end

return M
