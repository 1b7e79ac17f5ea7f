-- status: a read-only report on a Vantiq installation — nodes, workloads and their
-- rollouts, pods that are not ready (with why, and their last log lines), where each pod
-- runs, and the backup CronJob. Changes nothing.
--
--   vqlua scripts/status.lua [--context C] [--namespace vantiq]
--   vqlua --rehearse scripts/status.lua            (against the simulator)
local kube = require "vq.kube"
local log = require "log"
local time = require "vq.time"

local function option(name)
  for i = 1, #arg do
    if arg[i] == "--" .. name then return arg[i + 1] end
  end
end

local k = assert(kube.connect { context = option("context") })
local steps, step_no = 6, 0
local function step(title)
  step_no = step_no + 1
  log.step(title, step_no, steps)
end

local function section_ok(title, ok)
  log.step_done(title, ok and "ok" or "warn")
end

-- The namespace holding the vantiq StatefulSet (site-specific), unless given.
local function find_vantiq_namespace()
  local given = option("namespace")
  if given then return given end
  for sts in k:each("statefulsets", { all_namespaces = true }) do
    if sts.metadata.name == "vantiq" then return sts.metadata.namespace end
  end
  return "vantiq"
end

step("Cluster")
local version = assert(k:version())
log.info("server %s at %s (context %s)", version.gitVersion, k.server, k.context)
local vantiq_ns = find_vantiq_namespace()
local namespaces = { vantiq_ns, "shared" }
log.info("Vantiq namespace: %s", vantiq_ns)
section_ok("Cluster", true)

step("Nodes")
local nodes_ok = true
for _, node in ipairs(assert(k:list("nodes"))) do
  local ready = "Unknown"
  for _, c in ipairs(node.status and node.status.conditions or {}) do
    if c.type == "Ready" then ready = c.status == "True" and "Ready" or "NotReady" end
    if c.type ~= "Ready" and c.status == "True" then log.warn("node %s: %s", node.metadata.name, c.type) nodes_ok = false end
  end
  local taints = {}
  for _, t in ipairs(node.spec and node.spec.taints or {}) do
    taints[#taints + 1] = ("%s=%s:%s"):format(t.key, t.value or "", t.effect)
  end
  local line = ("%-24s %-9s %s"):format(node.metadata.name, ready, #taints > 0 and ("taints " .. table.concat(taints, ", ")) or "")
  if ready == "Ready" then log.info("%s", line) else log.warn("%s", line) nodes_ok = false end
end
section_ok("Nodes", nodes_ok)

step("Workloads and rollouts")
local workloads_ok = true
for _, ns in ipairs(namespaces) do
  for _, kind in ipairs { "statefulsets", "deployments", "daemonsets" } do
    local items = k:list(kind, { namespace = ns }) or {}
    for _, obj in ipairs(items) do
      local msg, done = kube.rollout_state(obj.kind, obj)
      local text = ("%s/%s/%s: %s"):format(ns, kind, obj.metadata.name, msg or (done and done.message) or "?")
      if done == true then log.info("%s", text) else log.warn("%s", text) workloads_ok = false end
    end
  end
end
section_ok("Workloads and rollouts", workloads_ok)

step("Pods that are not ready")
local pods_ok = true
local placement = {}
for _, ns in ipairs(namespaces) do
  for _, p in ipairs(k:pods { namespace = ns } or {}) do
    placement[#placement + 1] = p
    if not p.is_ready and not p.done then
      pods_ok = false
      local why = {}
      for c, reason in pairs(p.waiting) do why[#why + 1] = c .. ": " .. reason end
      log.warn("%s/%s %s %s restarts=%d %s", ns, p.name, p.status, p.ready, p.restarts, table.concat(why, ", "))
      local lines, state = k:logs(p.name, { namespace = ns, tail = 3 })
      for line in lines do log.info("    | %s", line) end
      if state.err then log.info("    (no logs: %s)", state.err.message) end
    end
  end
end
if pods_ok then log.info("every pod is ready (or a finished job)") end
section_ok("Pods that are not ready", pods_ok)

step("Node placement")
table.sort(placement, function(a, b) return (a.node or "") .. a.name < (b.node or "") .. b.name end)
for _, p in ipairs(placement) do
  log.info("%-24s %s/%s", p.node or "<unscheduled>", p.namespace, p.name)
end
section_ok("Node placement", true)

step("MongoDB backup")
local backup_ok = false
local cj = k:get("cronjobs", "mongobackup", { namespace = vantiq_ns })
if not cj then
  log.warn("no CronJob mongobackup in %s", vantiq_ns)
else
  local st = cj.status or {}
  local last_ok = time.parse(st.lastSuccessfulTime)
  backup_ok = not cj.spec.suspend and last_ok ~= nil and os.time() - last_ok < 2 * 86400
  log.info("schedule %q, suspended %s, last scheduled %s, last succeeded %s",
    cj.spec.schedule, tostring(cj.spec.suspend), st.lastScheduleTime or "never", st.lastSuccessfulTime or "never")
  if not backup_ok then log.warn("the backup is suspended, or has not succeeded in the last two days") end
end
section_ok("MongoDB backup", backup_ok)
