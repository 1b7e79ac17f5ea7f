-- each() keeps memory flat however long the list: list 5,000 then 20,000 pods from a
-- simulator in this process, in a child vqlua, and compare the child's peak RSS.
-- Target: less than 10 MB more for 20,000 than for 5,000.
local proc = require "vq.proc"
local util = require "sim.util"

local sim = require("sim").start { modules = { "sim.auth", "sim.core" } }
local kc = sim:write_kubeconfig(os.tmpname())
for _, ns in ipairs { "seed-1", "seed-2", "seed-3", "seed-4" } do sim:create("namespaces", { metadata = { name = ns } }) end

local function seed(upto, from)
  for i = from, upto do
    local ns = "seed-" .. (i % 4 + 1)
    local pod = assert(sim:create("pods", { metadata = { name = ("pod-%05d"):format(i), namespace = ns,
      labels = { app = "seed", ["pod-template-hash"] = "5d8f7c9b4" }, annotations = { note = ("x"):rep(200) } },
      spec = { nodeName = "fake-node-" .. (i % 3 + 1), containers = { { name = "app", image = "registry.example/app:1.0",
        env = { { name = "A", value = "1" }, { name = "B", value = "2" } }, resources = { requests = { cpu = "10m" } } } } } }))
    local copy = util.copy(pod)
    copy.status = { phase = "Running", podIP = "10.244.0." .. (i % 250), hostIP = "10.0.0.1",
      conditions = { { type = "Ready", status = "True" } },
      containerStatuses = { { name = "app", ready = true, restartCount = 0, image = "registry.example/app:1.0",
        state = { running = { startedAt = util.rfc3339(sim.clock:now()) } } } } }
    sim:update_status("pods", copy)
  end
end

local function measure(n)
  local r = assert(proc.run { argv = { "/usr/bin/time", "-f", "%e %M", arg[-1] or "build/vqlua", "bench/kube_list.lua", kc },
    max_output = 64 * 1024 * 1024 })
  local secs, kb = r.stderr:match("([%d.]+) (%d+)%s*$")
  print(("each over %6d pods: %.2f s, peak RSS %.1f MB"):format(n, tonumber(secs), tonumber(kb) / 1024))
  return tonumber(kb) / 1024
end

seed(5000, 1)
local small = measure(5000)
seed(20000, 5001)
local large = measure(20000)
print(("growth %.1f MB (target < 10 MB): %s"):format(large - small, large - small < 10 and "ok" or "OVER"))
sim:stop()
os.remove(kc)
