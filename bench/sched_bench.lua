-- 10,000 tasks each sleeping 0-10 ms and returning a value.
-- Target: done within 1.5 x the longest sleep + 50 ms; peak RSS <= 20 MB.
local vq = require "vq"
local uv = require "uv"

local n, longest = 10000, 0.010
local t0 = vq.now()
local tasks = {}
for i = 1, n do
  tasks[i] = vq.spawn(function() vq.sleep((i % 11) / 1000) return i end)
end
local sum = 0
for i = 1, n do sum = sum + tasks[i]:wait() end
local elapsed = vq.now() - t0
assert(sum == n * (n + 1) // 2)
local rss_mb = uv.getrusage().maxrss / 1024
local budget = 1.5 * longest + 0.050
print(("scheduler: %d tasks in %.1f ms (budget %.1f ms, %s), peak RSS %.1f MB (budget 20 MB, %s)")
  :format(n, elapsed * 1000, budget * 1000, elapsed <= budget and "ok" or "OVER",
    rss_mb, rss_mb <= 20 and "ok" or "OVER"))
