-- PodDisruptionBudgets and evictions: the disruption controller keeps each budget's
-- status (expected, healthy, allowed disruptions), and the pods/eviction subresource that
-- kubectl drain posts to deletes a pod only when its budget allows, answering 429 as the
-- apiserver does otherwise.
local json = require "json"
local util = require "sim.util"
local api_mod = require "sim.api"
local R = require "sim.controllers.runtime"
local scheduler = require "sim.controllers.scheduler"

local M = {}

local KEY = "poddisruptionbudgets.policy"
local array = R.array

local function matching_pods(sim, pdb)
  return sim:list("pods", pdb.metadata.namespace, function(p)
    return scheduler.selector_matches(pdb.spec.selector, p.metadata.labels) and not R.pod_terminal(p)
  end)
end

--- How many pods the budget expects: the scale of their controllers, as the real one reads it.
local function expected_pods(sim, pods)
  local seen, total = {}, 0
  for _, p in ipairs(pods) do
    local ref = R.controller_of(p)
    if not ref then
      total = total + 1
    elseif not seen[ref.uid] then
      seen[ref.uid] = true
      local key = ({ ReplicaSet = "replicasets.apps", StatefulSet = "statefulsets.apps", DaemonSet = "daemonsets.apps" })[ref.kind]
      local owner = key and sim:get(key, p.metadata.namespace, ref.name)
      if owner and owner.kind == "DaemonSet" then
        total = total + ((owner.status or {}).desiredNumberScheduled or 0)
      elseif owner then
        total = total + ((owner.spec or {}).replicas or 1)
      else
        total = total + 1
      end
    end
  end
  return total
end

local function desired_healthy(pdb, expected)
  local spec = pdb.spec
  if spec.minAvailable ~= nil then return R.int_or_percent(spec.minAvailable, expected, true) end
  if spec.maxUnavailable ~= nil then return math.max(0, expected - R.int_or_percent(spec.maxUnavailable, expected, true)) end
  return expected
end

local function budget_status(sim, pdb)
  local pods = matching_pods(sim, pdb)
  local healthy = 0
  for _, p in ipairs(pods) do
    if R.pod_ready(p) and not p.metadata.deletionTimestamp then healthy = healthy + 1 end
  end
  local expected = expected_pods(sim, pods)
  local desired = desired_healthy(pdb, expected)
  local allowed = math.max(0, healthy - desired)
  local st = {
    observedGeneration = pdb.metadata.generation, expectedPods = expected, currentHealthy = healthy,
    desiredHealthy = desired, disruptionsAllowed = allowed,
    conditions = util.copy((pdb.status or {}).conditions or array()),
  }
  local now = R.now(sim)
  if allowed > 0 then
    R.set_condition(st, { type = "DisruptionAllowed", status = "True", reason = "SufficientPods", message = "",
                          observedGeneration = pdb.metadata.generation }, now)
  else
    R.set_condition(st, { type = "DisruptionAllowed", status = "False", reason = "InsufficientPods", message = "",
                          observedGeneration = pdb.metadata.generation }, now)
  end
  return st
end

local function budgets_for(sim, pod)
  return sim:list(KEY, pod.metadata.namespace, function(pdb)
    return scheduler.selector_matches(pdb.spec.selector, pod.metadata.labels)
  end)
end

local function evict(sim, req, res, r)
  if req.method ~= "POST" then return api_mod.send_status(res, 405, "method not allowed", "MethodNotAllowed") end
  local pod = sim:get("pods", r.ns, r.name)
  if not pod then return api_mod.send_status(res, 404, ('pods "%s" not found'):format(r.name), "NotFound", { name = r.name, kind = "pods" }) end
  local ok, body = pcall(json.decode, req.body or "")
  local opts = ok and type(body) == "table" and body.deleteOptions or {}
  local done = { kind = "Status", apiVersion = "v1", metadata = {}, status = "Success", code = 201 }
  if pod.metadata.deletionTimestamp then return api_mod.send_json(res, 201, done) end
  local budgets = budgets_for(sim, pod)
  if #budgets > 1 then
    return api_mod.send_status(res, 500, "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.", "InternalError")
  end
  local pdb = budgets[1]
  if pdb and R.pod_ready(pod) then
    local st = budget_status(sim, pdb)
    if st.disruptionsAllowed <= 0 then
      return api_mod.send_status(res, 429, "Cannot evict pod as it would violate the pod's disruption budget.", "TooManyRequests",
        { causes = array { { reason = "DisruptionBudget",
          message = ("The disruption budget %s needs %d healthy pods and has %d currently"):format(pdb.metadata.name, st.desiredHealthy, st.currentHealthy) } } })
    end
    st.disruptionsAllowed = st.disruptionsAllowed - 1
    st.disruptedPods = { [pod.metadata.name] = util.rfc3339(sim.clock:now()) }
    local copy = util.copy(pdb)
    copy.status = st
    sim:update_status(KEY, copy)
  end
  if req.query.dryRun ~= "All" then
    sim:delete("pods", pod, { grace = opts.gracePeriodSeconds })
  end
  api_mod.send_json(res, 201, done)
end

function M.install(sim, rt)
  sim.subresources["pods/eviction"] = evict
  local ctl = rt:controller("disruption", function(ns, name)
    local pdb = sim:get(KEY, ns, name)
    if pdb then rt:write_status(KEY, pdb, budget_status(sim, pdb)) end
  end)
  rt:watch(KEY, function(ev)
    if ev.type ~= "DELETED" then ctl:enqueue(ev.object.metadata.namespace, ev.object.metadata.name) end
  end)
  rt:watch("pods", function(ev)
    local pod = ev.object
    for _, pdb in ipairs(budgets_for(sim, pod)) do ctl:enqueue(pdb.metadata.namespace, pdb.metadata.name) end
  end)
  rt.disruption = ctl
end

function M.started(sim, rt)
  for _, pdb in ipairs(sim:list(KEY, nil)) do rt.disruption:enqueue(pdb.metadata.namespace, pdb.metadata.name) end
end

return M
