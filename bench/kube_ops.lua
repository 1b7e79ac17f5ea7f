-- 30 operations a runbook does (gets, scales, patches, lists, a rollout status), in one
-- vqlua process. bench/kube_ops.sh does the same with one kubectl call each.
-- usage: vqlua bench/kube_ops.lua KUBECONFIG NAMESPACE [SPLIT_FILE]
-- With SPLIT_FILE, appends "<ms in the other 29 operations> <ms waiting for the rollout>".
local kube = require "vq.kube"
local uv = require "uv"
local kc, ns, split_file = arg[1], arg[2], arg[3]
local t0 = uv.hrtime()
local k = assert(kube.connect { kubeconfig = kc, namespace = ns })
assert(k:create { apiVersion = "v1", kind = "Namespace", metadata = { name = ns } })
assert(k:create { apiVersion = "apps/v1", kind = "Deployment", metadata = { name = "web", namespace = ns },
  spec = { replicas = 2, selector = { matchLabels = { app = "web" } },
    template = { metadata = { labels = { app = "web" } }, spec = { containers = { { name = "web", image = "nginx:1.25" } } } } } })
for _ = 1, 10 do assert(k:get("deploy", "web")) end
for _, n in ipairs { 3, 2, 3, 2, 3 } do assert(k:scale("deploy/web", n)) end
for i = 1, 5 do assert(k:patch("deploy/web", { metadata = { annotations = { ["bench/step"] = tostring(i) } } })) end
for _ = 1, 5 do assert(k:list("pods", { labels = "app=web" })) end
local t1 = uv.hrtime()
assert(k:rollout_status("deploy/web", { timeout = 120, on_progress = function() end }))
local t2 = uv.hrtime()
assert(k:get("ns", ns))
assert(k:delete("ns", ns))
if split_file then
  local f = assert(io.open(split_file, "a"))
  f:write(("%.1f %.1f\n"):format((uv.hrtime() - t2 + t1 - t0) / 1e6, (t2 - t1) / 1e6))
  f:close()
end
