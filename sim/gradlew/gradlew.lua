-- vqlua sim/gradlew/gradlew.lua [-Pcluster=<name>] [-P<key>=<value>...] <task>...
-- The Vantiq deployment tool's ./gradlew, stood in for rehearsals and specs: the guide's
-- tasks (configureClient, configureVantiqSystem, clusterInfo, setupCluster, generateSecrets,
-- deploy, deployNginx, deployShared, deployVantiq, undeployVantiq) run in the current
-- folder (the tools dir) and change the cluster targetCluster/kubeconfig names, with
-- Gradle's console output and exit status. See runner.lua for failure injection.
local uv = require "luv"

-- The repository root on the path: the vqlua running this may not know where sim/ is.
local here = (uv.fs_realpath(arg[0]) or arg[0]):match("^(.*)/[^/]*$") or "."
local root = here:gsub("/sim/gradlew$", "")
package.path = root .. "/?.lua;" .. root .. "/?/init.lua;" .. package.path

io.stdout:setvbuf("line")
local code = require("sim.gradlew.runner").run { args = arg, template = here .. "/template" }
io.stdout:flush()
io.stderr:flush()
os.exit(code)
