-- The controllers and the kubelet of the simulator: what makes objects written to the
-- store come alive as on a real cluster — pods scheduled, started and reported, workloads
-- rolled out, jobs run, claims bound, nodes watched, evictions weighed against budgets,
-- endpoints listed, events recorded. Each part is in sim/controllers/.
--
-- Contracts other modules use:
--   sim.programs[name] = function(ctx)   what a container does (see sim/controllers/programs.lua)
--   sim.program_for_image(image, pod, container)  optional: the program name for an image
--   sim.event(obj, type, reason, message, component[, {field_path=, host=}])
--   sim.set_node_ready(name, true | false | "Unknown"[, {message=}])
--   sim.image_pull_error(image, pod)     optional: a message makes the pull fail
-- Options (sim.start opts): ready_delay, pull_delay, termination_delay, heartbeat
-- (simulated seconds). sim.controllers is the runtime they share.
local R = require "sim.controllers.runtime"

local M = {}

local PARTS = {
  "sim.controllers.scheduler", "sim.controllers.kubelet", "sim.controllers.nodes", "sim.controllers.volumes",
  "sim.controllers.statefulset", "sim.controllers.deployment", "sim.controllers.daemonset",
  "sim.controllers.job", "sim.controllers.cronjob", "sim.controllers.disruption", "sim.controllers.endpoints",
  "sim.controllers.serviceaccounts",
}

function M.install(sim, opts)
  local rt = R.new(sim, opts)
  sim.controllers = rt
  require("sim.controllers.events").install(sim, rt)
  for _, name in ipairs(PARTS) do require(name).install(sim, rt, opts or {}) end
end

--- Objects that were in the store before the controllers watched it get their turn.
function M.started(sim)
  local rt = sim.controllers
  for _, name in ipairs(PARTS) do
    local part = require(name)
    if part.started then part.started(sim, rt) end
  end
  rt.retry_pending()
end

return M
