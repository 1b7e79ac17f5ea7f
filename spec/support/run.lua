-- Run a program on the loop (luv spawn), capture its output, optionally signal it.
-- Used by specs that test vqlua itself as a user runs it.
local uv = require "luv"
local vq = require "vq"

local M = {}

M.vqlua = os.getenv("VQLUA") or "build/vqlua"

--- A new empty folder of the spec's own (mkdtemp: no race, mode 0700).
function M.tmpdir()
  return assert(uv.fs_mkdtemp((os.getenv("TMPDIR") or "/tmp") .. "/vqspec-XXXXXX"))
end

--- run{cmd, args..., stdin =, env =, timeout =, on_stdout = function(chunk, proc)}
--- → {status =, signal =, stdout =, stderr =}
function M.run(spec)
  local stdout, stderr, stdin = uv.new_pipe(false), uv.new_pipe(false), uv.new_pipe(false)
  local out, err = {}, {}
  local done = vq.event()
  local result = {}
  local args = {}
  for i = 2, #spec do args[#args + 1] = spec[i] end
  local env
  if spec.env then
    env = {}
    for k, v in pairs(spec.env) do env[#env + 1] = k .. "=" .. v end
    for _, k in ipairs { "PATH", "HOME", "LANG" } do
      if not spec.env[k] and os.getenv(k) then env[#env + 1] = k .. "=" .. os.getenv(k) end
    end
  end
  local handle, pid
  local closed = 0
  local function maybe_done()
    if closed == 3 then done:set() end
  end
  handle, pid = uv.spawn(spec[1], { args = args, stdio = { stdin, stdout, stderr }, env = env },
    function(code, signal)
      result.status, result.signal = code, signal
      handle:close()
      closed = closed + 1
      maybe_done()
    end)
  assert(handle, pid)
  local proc = { pid = pid }
  function proc.kill(sig) uv.process_kill(handle, sig or "sigterm") end
  local function reader(buf, pipe)
    return function(e, chunk)
      assert(not e, e)
      if chunk then
        buf[#buf + 1] = chunk
        if buf == out and spec.on_stdout then spec.on_stdout(table.concat(out), proc) end
      else
        pipe:close()
        closed = closed + 1
        maybe_done()
      end
    end
  end
  stdout:read_start(reader(out, stdout))
  stderr:read_start(reader(err, stderr))
  if spec.stdin then stdin:write(spec.stdin) end
  stdin:shutdown(function() stdin:close() end)
  local ok = done:wait(spec.timeout or 30)
  if not ok then
    uv.process_kill(handle, "sigkill")
    error("timed out running " .. spec[1] .. ": " .. table.concat(out) .. table.concat(err))
  end
  result.stdout, result.stderr = table.concat(out), table.concat(err)
  return result
end

--- Run vqlua with the given arguments.
function M.vq(spec)
  local s = { M.vqlua }
  for i = 1, #spec do s[#s + 1] = spec[i] end
  for k, v in pairs(spec) do if type(k) == "string" then s[k] = v end end
  return M.run(s)
end

return M
