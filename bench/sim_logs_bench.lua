-- Log streaming throughput of the simulator: 1,000,000 lines in one container, read back
-- by curl over loopback (a separate process, so only the server's work is measured here).
-- Target: >= 50 MB/s on a 2-core machine, for a plain read, a read with timestamps and a
-- follow that receives the lines as they are written.
--   build/vqlua bench/sim_logs_bench.lua [lines]
local vq = require "vq"
local util = require "sim.util"
local run = require("spec.support.run").run

local N = tonumber(arg and arg[1]) or 1000000
local TARGET = 50

local sim = require("sim").start { speed = 0.02, log_max_lines = N, log_max_bytes = 1 << 40,
                                  modules = { "sim.auth", "sim.core", "sim.logs" } }
local pod = assert(sim:create("pods", { metadata = { name = "bench", namespace = "default" },
  spec = { nodeName = "node-1", containers = { { name = "app", image = "vantiq/vantiq-server:1.40" } } } }))
local running = util.copy(pod)
running.status = { phase = "Running", containerStatuses = { { name = "app", ready = true, restartCount = 0,
  state = { running = { startedAt = util.rfc3339(sim.clock:now()) } } } } }
assert(sim:update_status("pods", running))

-- Vantiq-server-like lines of ~110 bytes, made once so that the timings are the
-- simulator's and not this script's formatting.
local POOL = {}
for i = 1, 4096 do
  POOL[i] = ("2024-05-01 12:00:00.000 INFO  [vert.x-eventloop-thread-1] io.vantiq.server.Request - request %09d handled in 3 ms"):format(i)
end

local function write_lines(from, to)
  local logs = sim.logs
  for i = from, to do logs:write("default", "bench", "app", POOL[i % 4096 + 1]) end
end

local URL = sim.url .. "/api/v1/namespaces/default/pods/bench/log"

local function curl(query)
  local r = run { "curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", URL .. query, timeout = 300 }
  assert(r.status == 0, "curl failed: " .. r.stderr)
  local bytes, seconds = r.stdout:match("^(%d+) ([%d.]+)")
  return tonumber(bytes), tonumber(seconds)
end

local function report(what, bytes, seconds)
  local mbs = bytes / seconds / 1e6
  print(("%-34s %7.1f MB in %6.3f s: %7.1f MB/s (target %d, %s)"):format(
    what, bytes / 1e6, seconds, mbs, TARGET, mbs >= TARGET and "ok" or "UNDER"))
  return mbs
end

sim.logs:start("default", "bench", "app", 0)
local t0 = vq.now()
write_lines(1, N)
print(("writing %d lines into the store: %.3f s"):format(N, vq.now() - t0))

report("plain read (" .. N .. " lines)", curl("?container=app"))
report("read with timestamps", curl("?container=app&timestamps=true"))

-- A follow: curl keeps reading while the lines are written in batches; the container
-- stops at the end, which ends the stream.
sim.logs:start("default", "bench", "app", 0) -- a new pod: the first instance goes
local follower = vq.spawn(function() return table.pack(curl("?container=app&follow=true")) end)
vq.sleep(0.2) -- curl connected and waiting
local started = vq.now()
local batch = 10000
for from = 1, N, batch do
  write_lines(from, math.min(N, from + batch - 1))
  vq.sleep(0)
end
sim.logs:stop("default", "bench", "app")
local got = follower:wait()
report("follow while writing", got[1], vq.now() - started)

print(("peak RSS %.0f MB (%d lines kept)"):format(require("luv").getrusage().maxrss / 1024, N))
sim:stop()
