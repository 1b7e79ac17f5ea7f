-- The StatefulSet controller, after the real one's updateStatefulSet: pods <set>-<ordinal>
-- with their claims, created in order each after its predecessor is Running and Ready
-- (OrderedReady) or all at once (Parallel); the highest ordinal removed first; a template
-- change rolled out highest ordinal first, one pod at a time, waiting for each to be
-- Ready — so a pod that never gets Ready holds the rollout until someone deletes it.
local util = require "sim.util"
local R = require "sim.controllers.runtime"
local history = require "sim.controllers.history"

local M = {}

local KEY = "statefulsets.apps"
local COMPONENT = "statefulset-controller"
local REVISION_LABEL = "controller-revision-hash"
local array = R.array

local function ordinal_of(sts, pod)
  local prefix = sts.metadata.name .. "-"
  local name = pod.metadata.name
  if name:sub(1, #prefix) ~= prefix then return nil end
  return math.tointeger(tonumber(name:sub(#prefix + 1)))
end

local function revision_of(pod) return (pod.metadata.labels or {})[REVISION_LABEL] end

local function healthy(pod) return R.running_and_ready(pod) and not R.is_terminating(pod) end

local function claim_name(template, sts, ordinal)
  return ("%s-%s-%d"):format(template.metadata.name, sts.metadata.name, ordinal)
end

-- ---- pods and claims ----

local function new_pod(sts, template, revision, ordinal)
  local name = ("%s-%d"):format(sts.metadata.name, ordinal)
  local meta = template.metadata or {}
  local labels = util.copy(meta.labels or {})
  labels["statefulset.kubernetes.io/pod-name"] = name
  labels["apps.kubernetes.io/pod-index"] = tostring(ordinal)
  labels[REVISION_LABEL] = revision
  local spec = util.copy(template.spec)
  spec.hostname = name
  spec.subdomain = sts.spec.serviceName
  local volumes = array()
  local claimed = {}
  for _, t in ipairs(sts.spec.volumeClaimTemplates or {}) do
    claimed[t.metadata.name] = true
    volumes[#volumes + 1] = { name = t.metadata.name, persistentVolumeClaim = { claimName = claim_name(t, sts, ordinal) } }
  end
  for _, v in ipairs(spec.volumes or {}) do
    if not claimed[v.name] then volumes[#volumes + 1] = v end
  end
  spec.volumes = #volumes > 0 and volumes or nil
  return {
    metadata = { name = name, namespace = sts.metadata.namespace, labels = labels,
                 annotations = meta.annotations and util.copy(meta.annotations) or nil,
                 ownerReferences = array { R.owner_ref(sts, "StatefulSet", "apps/v1") } },
    spec = spec,
  }
end

--- Claims of an ordinal that do not exist yet are created, kept when the pod goes.
local function create_claims(sim, sts, ordinal, pod_name)
  for _, t in ipairs(sts.spec.volumeClaimTemplates or {}) do
    local name = claim_name(t, sts, ordinal)
    if not sim:get("persistentvolumeclaims", sts.metadata.namespace, name) then
      local labels = util.copy(sts.spec.selector and sts.spec.selector.matchLabels or {})
      for k, v in pairs(t.metadata.labels or {}) do labels[k] = v end
      local claim = sim:create("persistentvolumeclaims", {
        metadata = { name = name, namespace = sts.metadata.namespace, labels = labels,
                     annotations = t.metadata.annotations and util.copy(t.metadata.annotations) or nil },
        spec = util.copy(t.spec),
      })
      if claim then
        sim.event(sts, "Normal", "SuccessfulCreate", ("create Claim %s Pod %s in StatefulSet %s success"):format(name, pod_name, sts.metadata.name), COMPONENT)
      else
        sim.event(sts, "Warning", "FailedCreate", ("create Claim %s for Pod %s in StatefulSet %s failed"):format(name, pod_name, sts.metadata.name), COMPONENT)
      end
    end
  end
end

local function create_pod(sim, sts, revs, ordinal)
  local partition = sts.spec.updateStrategy and sts.spec.updateStrategy.rollingUpdate
    and sts.spec.updateStrategy.rollingUpdate.partition or 0
  local rev = revs.update
  if sts.spec.updateStrategy and sts.spec.updateStrategy.type == "RollingUpdate" and ordinal < partition then rev = revs.current end
  local pod = new_pod(sts, history.template_of(rev), rev.metadata.name, ordinal)
  create_claims(sim, sts, ordinal, pod.metadata.name)
  local created, status = sim:create("pods", pod)
  if created then
    sim.event(sts, "Normal", "SuccessfulCreate", ("create Pod %s in StatefulSet %s successful"):format(pod.metadata.name, sts.metadata.name), COMPONENT)
  else
    sim.event(sts, "Warning", "FailedCreate", ("create Pod %s in StatefulSet %s failed error: %s"):format(pod.metadata.name, sts.metadata.name, status and status.message or "?"), COMPONENT)
  end
end

local function delete_pod(sim, sts, pod)
  sim:delete("pods", pod)
  sim.event(sts, "Normal", "SuccessfulDelete", ("delete Pod %s in StatefulSet %s successful"):format(pod.metadata.name, sts.metadata.name), COMPONENT)
end

-- ---- the sync ----

--- One pass of the real controller's updateStatefulSet: returns after the first action
--- when pods are managed in order.
local function sync_pods(sim, rt, ctl, sts, revs, pods)
  local monotonic = sts.spec.podManagementPolicy ~= "Parallel"
  local replicas = sts.spec.replicas or 1
  local min_ready = sts.spec.minReadySeconds or 0
  local slots, condemned = {}, {}
  for _, pod in ipairs(pods) do
    local ord = ordinal_of(sts, pod)
    if ord and ord >= 0 and ord < replicas then slots[ord] = pod
    elseif ord then condemned[#condemned + 1] = { ord, pod } end
  end
  table.sort(condemned, function(a, b) return a[1] > b[1] end)
  for ord = 0, replicas - 1 do
    local pod = slots[ord]
    if pod and R.pod_terminal(pod) and not R.is_terminating(pod) then
      -- a failed pod is replaced
      delete_pod(sim, sts, pod)
      if monotonic then return end
    elseif not pod then
      create_pod(sim, sts, revs, ord)
      if monotonic then return end
    elseif R.is_terminating(pod) then
      if monotonic then return end
    elseif not R.running_and_ready(pod) then
      if monotonic then return end
    elseif not rt:pod_available(pod, min_ready) then
      ctl:after(rt:until_available(pod, min_ready) or 1, sts.metadata.namespace, sts.metadata.name)
      if monotonic then return end
    end
  end
  local first_unhealthy
  for _, c in ipairs(condemned) do
    if not healthy(c[2]) then first_unhealthy = first_unhealthy or c[2] end
  end
  for _, c in ipairs(condemned) do
    local pod = c[2]
    if R.is_terminating(pod) then
      if monotonic then return end
    elseif monotonic and not healthy(pod) and pod ~= first_unhealthy then
      return
    else
      delete_pod(sim, sts, pod)
      if monotonic then return end
    end
  end
  local strategy = sts.spec.updateStrategy or {}
  if strategy.type == "OnDelete" then return end
  local partition = strategy.rollingUpdate and strategy.rollingUpdate.partition or 0
  for target = replicas - 1, partition, -1 do
    local pod = slots[target]
    if pod then
      if revision_of(pod) ~= revs.update.metadata.name and not R.is_terminating(pod) then
        delete_pod(sim, sts, pod)
        return
      end
      if not healthy(pod) then return end
    end
  end
end

--- Status from the pods as they are now, as computeReplicaStatus and completeRollingUpdate set it.
local function status_of(rt, sts, revs, pods)
  local st = {
    observedGeneration = sts.metadata.generation, replicas = 0, readyReplicas = 0, currentReplicas = 0,
    updatedReplicas = 0, availableReplicas = 0, currentRevision = revs.current.metadata.name,
    updateRevision = revs.update.metadata.name, collisionCount = (sts.status or {}).collisionCount or 0,
  }
  local min_ready = sts.spec.minReadySeconds or 0
  for _, pod in ipairs(pods) do
    if pod.status and pod.status.phase then st.replicas = st.replicas + 1 end
    if R.running_and_ready(pod) then
      st.readyReplicas = st.readyReplicas + 1
      if rt:pod_available(pod, min_ready) then st.availableReplicas = st.availableReplicas + 1 end
    end
    if pod.status and pod.status.phase and not R.is_terminating(pod) then
      local rev = revision_of(pod)
      if rev == st.currentRevision then st.currentReplicas = st.currentReplicas + 1 end
      if rev == st.updateRevision then st.updatedReplicas = st.updatedReplicas + 1 end
    end
  end
  local strategy = sts.spec.updateStrategy or {}
  if strategy.type == "RollingUpdate" and st.updatedReplicas == st.replicas and st.readyReplicas == st.replicas then
    st.currentReplicas = st.updatedReplicas
    st.currentRevision = st.updateRevision
  end
  local old = sts.status or {}
  st.conditions = old.conditions
  return st
end

local function reconcile(sim, rt, ctl, ns, name)
  local sts = sim:get(KEY, ns, name)
  if not sts or sts.metadata.deletionTimestamp then return end
  local update, current, revisions = history.sync(sim, rt, sts, (sts.status or {}).currentRevision)
  if not update then
    local st = util.copy(sts.status or {})
    st.collisionCount = (st.collisionCount or 0) + 1
    rt:write_status(KEY, sts, st)
    return
  end
  local revs = { update = update, current = current }
  sync_pods(sim, rt, ctl, sts, revs, rt:owned("pods", sts))
  local pods = rt:owned("pods", sts)
  local st = status_of(rt, sts, revs, pods)
  sts = rt:write_status(KEY, sts, st)
  local live = { [st.currentRevision] = true, [st.updateRevision] = true }
  for _, pod in ipairs(pods) do live[revision_of(pod) or ""] = true end
  history.truncate(sim, revisions, live, sts.spec.revisionHistoryLimit)
end

function M.install(sim, rt)
  local ctl
  ctl = rt:controller("statefulset", function(ns, name) reconcile(sim, rt, ctl, ns, name) end)
  rt:watch(KEY, function(ev)
    if ev.type ~= "DELETED" then ctl:enqueue(ev.object.metadata.namespace, ev.object.metadata.name) end
  end)
  rt:watch("pods", function(ev)
    local ref = R.controller_of(ev.object)
    if ref and ref.kind == "StatefulSet" then ctl:enqueue(ev.object.metadata.namespace, ref.name) end
  end)
  rt.statefulsets = ctl
end

function M.started(sim, rt)
  for _, sts in ipairs(sim:list(KEY, nil)) do rt.statefulsets:enqueue(sts.metadata.namespace, sts.metadata.name) end
end

return M
