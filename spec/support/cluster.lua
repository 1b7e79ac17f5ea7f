-- A simulator for a spec, with its own kubectl home and kubeconfig, and the small things
-- such specs ask of it.
--
--   local cluster = require "spec.support.cluster"
--   local s = cluster.start { speed = 0.02, world = "development" }
--   cluster.kubectl(s, { "get", "pods", "-A" })     -- stdout, or raises (may_fail: no check)
--   cluster.eventually(function() return ... end, 30, "what")
--   cluster.finish(s)
local vq = require "vq"
local run = require "spec.support.run"

local M = {}

function M.start(opts)
  local s = require("sim").start(opts)
  s.spec_home = run.tmpdir()
  s.spec_kubeconfig = s:write_kubeconfig(s.spec_home .. "/kubeconfig")
  return s
end

--- Stop the simulator and remove kubectl's home with it.
function M.finish(s)
  s:stop()
  os.execute("rm -rf '" .. s.spec_home .. "'")
end

--- kubectl against the spec's simulator: stdout and the run's result; a failure raises
--- unless opts.may_fail.
function M.kubectl(s, args, opts)
  local cmd = { "kubectl", "--kubeconfig", s.spec_kubeconfig, "--request-timeout=20s" }
  for _, a in ipairs(args) do cmd[#cmd + 1] = a end
  cmd.env = { HOME = s.spec_home, KUBECACHEDIR = s.spec_home .. "/cache" }
  cmd.stdin = opts and opts.stdin
  cmd.timeout = 60
  local r = run.run(cmd)
  if not (opts and opts.may_fail) then
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
