-- What a simulated container does: a program, a function of a context. Other modules add
-- programs to sim.programs and may map images to them with sim.program_for_image(image);
-- a pod picks one per container with the annotation sim.vqlua.io/program.<container>.
local vq = require "vq"
local R = require "sim.controllers.runtime"

local M = {}

M.ANNOTATION = "sim.vqlua.io/program."

local Exit = {}
Exit.__index = Exit
Exit.__tostring = function(e) return ("exit %d (%s)"):format(e.exit_code, e.reason) end

local Ctx = {}
Ctx.__index = Ctx

--- Append a line to the container's log (the logs module keeps it, if there is one).
function Ctx:log(line)
  local logs = self.sim.logs
  if logs then logs:write(self.namespace, self.name, self.container.name, tostring(line)) end
end

--- Report the container ready or not (what a readiness probe would find).
function Ctx:ready(flag)
  self._on_ready(flag ~= false)
end

--- Sleep a simulated duration.
function Ctx:sleep(seconds)
  if seconds and seconds > 0 then vq.sleep(seconds * self.sim.speed) else coroutine.yield() end
end

--- End the container with an exit code; reason defaults to Completed (0) or Error.
function Ctx:exit(code, reason)
  code = math.tointeger(code) or 1
  error(setmetatable({ exit_code = code, reason = reason or (code == 0 and "Completed" or "Error") }, Exit), 0)
end

--- The context of a container run. fields: sim, pod, container, name (the pod's),
--- namespace, restart_count, env, args, ready_delay; on_ready(flag) is the kubelet's.
function M.context(fields, on_ready)
  fields._on_ready = on_ready
  fields.container_name = fields.container.name
  fields.args = fields.args or {}
  fields.env = fields.env or {}
  return setmetatable(fields, Ctx)
end

--- The program of a container: the pod's annotation, else the image's, else a short-lived
--- pod's command, else "service".
function M.choose(sim, pod, container)
  local ann = pod.metadata.annotations or {}
  local name = ann[M.ANNOTATION .. container.name]
  if name == nil and sim.program_for_image then name = sim.program_for_image(container.image, pod, container) end
  if type(name) == "function" then return name, "<function>" end
  local short_lived = (pod.spec.restartPolicy == "Never" or pod.spec.restartPolicy == "OnFailure")
  if not name and short_lived and type(container.command) == "table" and #container.command > 0 and sim.programs.command then
    name = "command" -- sim/exec.lua: the command runs through the exec interpreter
  end
  name = name or "service"
  return sim.programs[name], name
end

--- Run a program to its end: exit code, reason and message. A cancellation (the
--- container stopped) goes through.
function M.run(program, ctx, name)
  if not program then
    ctx:log(("sim: no program %q"):format(name))
    return 128, "StartError", ("failed to create containerd task: exec: %q: executable file not found in $PATH"):format(name)
  end
  local ok, err = pcall(program, ctx)
  if ok then return 0, "Completed" end
  if getmetatable(err) == Exit then return err.exit_code, err.reason end
  if R.cancelled(err) then error(err, 0) end
  ctx:log(tostring(err))
  return 1, "Error"
end

-- ---- the built-in programs ----

local FOREVER = 3600

M.builtin = {
  --- Long-running: ready after the readiness delay, runs until stopped.
  service = function(ctx)
    ctx:log(("starting %s"):format(ctx.container.name))
    ctx:sleep(ctx.ready_delay or 0)
    ctx:ready(true)
    ctx:log(("%s is ready"):format(ctx.container.name))
    while true do vq.sleep(FOREVER) end
  end,
  --- A batch step: does its work and exits 0.
  job = function(ctx)
    ctx:log(("%s: running"):format(ctx.container.name))
    ctx:sleep(ctx.run_time or 2)
    ctx:log(("%s: done"):format(ctx.container.name))
  end,
  --- Fails after a moment, so restarts end in CrashLoopBackOff.
  crash = function(ctx)
    ctx:log(("starting %s"):format(ctx.container.name))
    ctx:sleep(1)
    ctx:log(("fatal: %s cannot start"):format(ctx.container.name))
    ctx:exit(1)
  end,
  --- Ready at once; sleeps for its first numeric argument, or until stopped.
  sleep = function(ctx)
    ctx:ready(true)
    local seconds
    for _, a in ipairs(ctx.args) do seconds = seconds or tonumber(a) end
    if seconds then
      ctx:sleep(seconds)
      return
    end
    while true do vq.sleep(FOREVER) end
  end,
}

function M.install(sim)
  sim.programs = sim.programs or {}
  for name, fn in pairs(M.builtin) do
    if sim.programs[name] == nil then sim.programs[name] = fn end
  end
end

return M
