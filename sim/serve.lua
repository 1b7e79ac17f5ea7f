-- vqlua sim/serve.lua [--port P] [--scenario name ...] [--world world.json|world.lua|development|production]
--                     [--k8s-version v1.30.6] [--speed 0.1] [--kubeconfig path] [--list-scenarios]
-- Starts the simulator on loopback, writes a kubeconfig for it, prints its path and serves
-- until interrupted.
local sim_mod = require "sim"
local log = require "log"

local function usage()
  io.stderr:write([[
usage: vqlua sim/serve.lua [options]
  --port P              listen on 127.0.0.1:P (default: a free port)
  --scenario NAME       start with a fault scenario (repeatable); --list-scenarios names them
  --world W             development, production (default), or a world file (.json, .lua)
  --k8s-version V       the version the server reports (default ]] .. sim_mod.DEFAULT_VERSION .. [[)
  --speed S             scale every simulated delay (0.05 for fast rehearsals)
  --kubeconfig PATH     where to write the kubeconfig (default: a temp file)
]])
  os.exit(2)
end

local opts = { scenarios = {} }
local kubeconfig
local i = 1
while i <= #arg do
  local a = arg[i]
  local function value()
    i = i + 1
    if not arg[i] then usage() end
    return arg[i]
  end
  if a == "--port" then opts.port = tonumber(value())
  elseif a == "--scenario" then table.insert(opts.scenarios, value())
  elseif a == "--world" then opts.world = value()
  elseif a == "--k8s-version" then opts.version = value()
  elseif a == "--speed" then opts.speed = tonumber(value())
  elseif a == "--kubeconfig" then kubeconfig = value()
  elseif a == "--list-scenarios" then opts.list_scenarios = true
  elseif a == "-h" or a == "--help" then usage()
  else usage() end
  i = i + 1
end

if opts.list_scenarios then
  local ok, scenarios = pcall(require, "sim.scenarios")
  if ok then
    for _, s in ipairs(scenarios.catalogue()) do print(("%-28s %s"):format(s.name, s.summary)) end
  end
  return
end

local sim = sim_mod.start(opts)
kubeconfig = kubeconfig or (os.tmpname() .. ".kubeconfig")
sim:write_kubeconfig(kubeconfig)
log.info("simulator %s serving %s", sim.version, sim.url)
print(kubeconfig)
io.stdout:flush()
-- serve until Ctrl-C
require("vq").event():wait()
