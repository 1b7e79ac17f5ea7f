-- A simulator for a spec, with its own kubectl home and kubeconfig, and the small things
-- such specs ask of it.
--
--   local cluster = require "spec.support.cluster"
--   local s = cluster.start { speed = 0.02, world = "development", version = "v1.27.16", settle = 60 }
--   cluster.kubectl(s, { "get", "pods", "-A" })     -- stdout, or raises (may_fail: no check)
--   cluster.run_kubectl(s, { "logs", "web" })       -- the run's result, whatever its status
--   cluster.file(s, "pod.yaml", text)               -- a file in kubectl's home: its path
--   cluster.eventually(function() return ... end, 30, "what")
--   cluster.finish(s)
local vq = require "vq"
local run = require "spec.support.run"

local M = {}

--- sim.start(opts), a home for kubectl and a kubeconfig there (its namespace opts.namespace,
--- else the world's). opts.settle: seconds to wait for the world to settle, else an error.
function M.start(opts)
  opts = opts or {}
  local s = require("sim").start(opts)
  s.spec_home = run.tmpdir()
  s.spec_kubeconfig = s:write_kubeconfig(s.spec_home .. "/kubeconfig", { namespace = opts.namespace })
  if opts.settle and not s:settle(opts.settle) then
    M.finish(s)
    error("the world did not settle", 2)
  end
  return s
end

--- Stop the simulator and remove kubectl's home with it.
function M.finish(s)
  s:stop()
  os.execute("rm -rf '" .. s.spec_home .. "'")
end

--- Write a file into kubectl's home (a manifest for -f): its path.
function M.file(s, name, text)
  local path = s.spec_home .. "/" .. name
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return path
end

--- kubectl (opts.bin, else the one on PATH) against the spec's simulator, with args as given:
--- the run's result, whatever its status. opts: request_timeout ("20s"), stdin, on_stdout,
--- timeout (of the run, default 60).
function M.run_kubectl(s, args, opts)
  opts = opts or {}
  local cmd = { opts.bin or "kubectl", "--kubeconfig", s.spec_kubeconfig }
  if opts.request_timeout then cmd[#cmd + 1] = "--request-timeout=" .. opts.request_timeout end
  for _, a in ipairs(args) do cmd[#cmd + 1] = a end
  cmd.env = { HOME = s.spec_home, KUBECACHEDIR = s.spec_home .. "/cache" }
  cmd.stdin, cmd.on_stdout, cmd.timeout = opts.stdin, opts.on_stdout, opts.timeout or 60
  return run.run(cmd)
end

--- run_kubectl with a 20 s request timeout (request_timeout = false: none): stdout and the
--- run's result; a failure raises unless opts.may_fail.
function M.kubectl(s, args, opts)
  opts = opts or {}
  local r = M.run_kubectl(s, args, { bin = opts.bin, stdin = opts.stdin, on_stdout = opts.on_stdout,
    timeout = opts.timeout, request_timeout = opts.request_timeout == nil and "20s" or opts.request_timeout })
  if not opts.may_fail then
    assert(r.status == 0, ("kubectl %s exited %s: %s%s"):format(table.concat(args, " "), tostring(r.status), r.stdout, r.stderr))
  end
  return r.stdout, r
end

--- fn() until it gives a true value (returned), or an error after `seconds`.
function M.eventually(fn, seconds, what)
  local deadline = vq.now() + (seconds or 30)
  while true do
    local v = fn()
    if v then return v end
    if vq.now() > deadline then error("timed out waiting for " .. (what or "a condition"), 2) end
    vq.sleep(0.05)
  end
end

--- Whether a pod's Ready condition is True.
function M.ready(p)
  for _, c in ipairs(p and p.status and p.status.conditions or {}) do
    if c.type == "Ready" then return c.status == "True" end
  end
  return false
end

return M
