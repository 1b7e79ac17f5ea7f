-- Rehearsal: run a runbook against the simulator on this process's loop. The simulator
-- is seeded with a Vantiq world (or a snapshot of the operator's own cluster), the
-- runbook's kube context points at it through KUBECONFIG, and its tools dir is a scratch
-- copy whose gradlew is the deployment tool's stand-in: nothing outside is touched.
local vq = require "vq"
local log = require "log"
local uv = require "uv"

local M = {}

local function scratch_dir()
  local base = os.getenv("TMPDIR") or "/tmp"
  local dir = uv.fs_mkdtemp(base .. "/vqlua-rehearsal-XXXXXX")
  return assert(dir, "cannot create a scratch folder")
end

--- Start a simulator for a rehearsal; returns sim, kubeconfig path, scratch folder.
function M.start(opts)
  opts = opts or {}
  local sim = require("sim").start {
    world = opts.world, scenarios = opts.scenarios, speed = opts.speed or tonumber(os.getenv("VQ_SIM_SPEED") or "") or 0.05,
  }
  -- A production cluster is in a steady state before a procedure starts: so is this one.
  if not sim:settle(opts.settle_timeout or 60) then
    log.warn("rehearsal: the simulated cluster did not settle; going on anyway")
  end
  local dir = scratch_dir()
  local kc = sim:write_kubeconfig(dir .. "/kubeconfig")
  uv.os_setenv("KUBECONFIG", kc)
  uv.os_setenv("VQ_REHEARSAL", "1")
  return sim, kc, dir
end

--- vqlua --rehearse script.lua args...: arg is the script's arg table.
function M.main(arg)
  local settings = vq.options.rehearsal or {}
  local scenarios = {}
  for i, s in ipairs(settings) do scenarios[i] = s end
  local sim, kc, dir = M.start { world = settings.world, scenarios = scenarios }
  log.info("rehearsal: simulator %s (%s world%s) at %s", sim.version, settings.world or "production",
    #scenarios > 0 and (", scenarios " .. table.concat(scenarios, ", ")) or "", sim.url)
  log.info("rehearsal: kubeconfig %s, scratch folder %s", kc, dir)
  -- the runbook's tools dir (VQ_TOOLS_DIR, --tools DIR) is swapped for a scratch copy
  local tools, terr = require("sim.gradlew.tools").rehearsal_copy(arg, dir, kc)
  if terr then
    sim:stop()
    error(terr.message, 0)
  end
  if tools then
    log.info("rehearsal: tools dir %s (VQ_TOOLS_DIR), a scratch copy of %s with the stand-in gradlew", tools.dir,
      tools.from or "the template")
    for _, link in ipairs(tools.links) do log.warn("rehearsal: copied the target of the tools dir's symlink %s", link) end
  end
  local script = arg[0]
  local chunk, lerr = loadfile(script)
  if not chunk then
    sim:stop()
    error(lerr, 0)
  end
  local results = table.pack(xpcall(chunk, debug.traceback, table.unpack(arg, 1, #arg)))
  sim:stop()
  if not results[1] then error(results[2], 0) end
  -- The rehearsal ends with its runbook: nothing the simulated cluster was still doing
  -- (a rollout the runbook started, a stand-in's child) may keep it running.
  os.exit(0)
end

return M
