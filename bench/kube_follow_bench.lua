-- Many pods' logs at once: vqlua's k:follow against `kubectl logs -f -l … --prefix
-- --max-log-requests=50 | grep`, on a simulator in this process whose containers have
-- already written their lines (so the server outpaces both clients). Then 1,000
-- containers followed by one process.
-- usage: vqlua bench/kube_follow_bench.lua [PODS=50] [LINES_PER_POD=2000]
local vq = require "vq"
local proc = require "vq.proc"
local util = require "sim.util"

local pods_n, per_pod = tonumber(arg[1] or "50"), tonumber(arg[2] or "2000")
local vqlua = arg[-1] or "build/vqlua"
local kubectl = "/usr/lib/google-cloud-sdk/bin/kubectl.1.30"

local sim = require("sim").start { modules = { "sim.auth", "sim.core", "sim.logs" } }
local kc = sim:write_kubeconfig(os.tmpname())

local function add_pods(prefix, n, lines)
  for i = 1, n do
    local name = ("%s-%04d"):format(prefix, i)
    local pod = assert(sim:create("pods", { metadata = { name = name, namespace = "default", labels = { app = prefix } },
      spec = { nodeName = "node-1", containers = { { name = "app", image = "app:1" } } } }))
    local copy = util.copy(pod)
    copy.status = { phase = "Running", conditions = { { type = "Ready", status = "True" } },
      containerStatuses = { { name = "app", ready = true, restartCount = 0, state = { running = { startedAt = util.rfc3339(sim.clock:now()) } } } } }
    sim:update_status("pods", copy)
    sim.logs:start("default", name, "app", 0)
    for j = 1, lines do
      sim.logs:write("default", name, "app", ("%s line %d level=%s some payload to make it realistic"):format(name, j, j % 10 == 0 and "ERROR" or "info"))
    end
  end
end

local function vm_hwm_kb(pid)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then return 0 end
  local text = f:read("a")
  f:close()
  return tonumber(text:match("VmHWM:%s+(%d+)")) or 0
end

local function cpu_seconds(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return 0 end
  local fields = {}
  for x in f:read("a"):gsub("^.*%) ", ""):gmatch("%S+") do fields[#fields + 1] = x end
  f:close()
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100
end

-- The process and every process below it (kubectl runs under sh in the kubectl pipeline).
local function family(pid)
  local out, parent_of = { pid }, {}
  local ls = io.popen("ls /proc")
  for entry in ls:lines() do
    if entry:match("^%d+$") then
      local f = io.open("/proc/" .. entry .. "/stat")
      if f then
        local ppid = f:read("a"):match("^.-%) %S+ (%d+)")
        f:close()
        parent_of[tonumber(entry)] = tonumber(ppid)
      end
    end
  end
  ls:close()
  local changed = true
  while changed do
    changed = false
    for child, parent in pairs(parent_of) do
      for _, p in ipairs(out) do
        if parent == p then out[#out + 1] = child parent_of[child] = nil changed = true break end
      end
    end
  end
  return out
end

-- Run argv until `want` lines matching the filter came out; wall, CPU and peak RSS (the
-- sums over the process and its children).
local function until_lines(argv, want)
  local p = assert(proc.spawn { argv = argv })
  local t0, n, cpu, rss = vq.now(), 0, 0, 0
  for line in p:lines() do
    if line:find("ERROR", 1, true) then n = n + 1 end
    if n >= want then
      for _, pid in ipairs(family(p:pid())) do
        cpu, rss = cpu + cpu_seconds(pid), rss + vm_hwm_kb(pid)
      end
      break
    end
  end
  local wall = vq.now() - t0
  p:kill("sigkill")
  p:wait()
  return wall, cpu, rss / 1024, n
end

add_pods("bench", pods_n, per_pod)
local want = pods_n * per_pod // 10
local follower = ([[
io.stdout:setvbuf("line")
local k = assert(require("vq.kube").connect{kubeconfig = %q})
local f = k:follow{selector = "app=bench", grep = "ERROR", concurrency = 1000}
for item in f:lines() do io.write(f.format(item, false), "\n") end
]]):format(kc)

local vw, vc, vr, vn = until_lines({ vqlua, "-e", follower }, want)
local kw, kcpu, kr, kn = until_lines({ "sh", "-c", ("%s --kubeconfig %s logs -f -l app=bench --tail=-1 --max-log-requests=%d --prefix | grep --line-buffered ERROR")
  :format(kubectl, kc, pods_n) }, want)
print(("%d pods x %d lines, %d matching: vqlua %.2f s (cpu %.2f s, %.0f MB) | kubectl|grep %.2f s (cpu %.2f s, %.0f MB)")
  :format(pods_n, per_pod, want, vw, vc, vr, kw, kcpu, kr))
print(("throughput ratio %.1fx (target >= 2x on a server that outpaces both)"):format(kw / vw))
assert(vn >= want and kn >= want)

-- 1,000 containers in one process
add_pods("many", 1000, 20)
local many = ([[
io.stdout:setvbuf("line")
local k = assert(require("vq.kube").connect{kubeconfig = %q})
local f = k:follow{selector = "app=many", grep = "ERROR"}
for item in f:lines() do io.write(item.pod, " ", item.text, "\n") end
]]):format(kc)
local mw, _, mr = until_lines({ vqlua, "-e", many }, 1000 * 2)
print(("1,000 containers followed: all lines in %.2f s, peak RSS %.0f MB (target <= 150 MB)"):format(mw, mr))
sim:stop()
os.remove(kc)
