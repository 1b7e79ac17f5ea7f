-- ReplicaSets keep their number of pods; Deployments keep one ReplicaSet per template
-- (named by pod-template-hash) and roll from the old ones to the new one within
-- maxSurge/maxUnavailable, with the status and conditions kubectl rollout status reads.
local vq = require "vq"
local util = require "sim.util"
local json = require "json"
local R = require "sim.controllers.runtime"

local M = {}

local RS, DEPLOY = "replicasets.apps", "deployments.apps"
local HASH_LABEL = "pod-template-hash"
local REVISION = "deployment.kubernetes.io/revision"
local array = R.array

-- ---- ReplicaSet ----

-- Which pods go first when there are too many: as controller.ActivePods sorts them.
local function deletion_rank(pod)
  local st = pod.status or {}
  if not pod.spec.nodeName then return 0 end
  if st.phase == "Pending" then return 1 end
  if st.phase ~= "Running" then return 2 end
  if not R.pod_ready(pod) then return 3 end
  return 4
end

local function pick_victims(pods, n)
  table.sort(pods, function(a, b)
    local ra, rb = deletion_rank(a), deletion_rank(b)
    if ra ~= rb then return ra < rb end
    return (a.metadata.creationTimestamp or "") > (b.metadata.creationTimestamp or "")
  end)
  local out = {}
  for i = 1, math.min(n, #pods) do out[i] = pods[i] end
  return out
end

local function new_rs_pod(rs)
  local t = rs.spec.template
  local meta = t.metadata or {}
  return {
    metadata = { generateName = rs.metadata.name .. "-", namespace = rs.metadata.namespace,
                 labels = util.copy(meta.labels or {}), annotations = meta.annotations and util.copy(meta.annotations) or nil,
                 ownerReferences = array { R.owner_ref(rs, "ReplicaSet", "apps/v1") } },
    spec = util.copy(t.spec),
  }
end

local function rs_status(rt, rs, pods)
  local labels = rs.spec.template.metadata and rs.spec.template.metadata.labels or {}
  local st = { replicas = 0, fullyLabeledReplicas = 0, readyReplicas = 0, availableReplicas = 0,
               observedGeneration = rs.metadata.generation }
  for _, pod in ipairs(pods) do
    if R.pod_active(pod) then
      st.replicas = st.replicas + 1
      local full = true
      for k, v in pairs(labels) do if (pod.metadata.labels or {})[k] ~= v then full = false end end
      if full then st.fullyLabeledReplicas = st.fullyLabeledReplicas + 1 end
      if R.pod_ready(pod) then st.readyReplicas = st.readyReplicas + 1 end
      if rt:pod_available(pod, rs.spec.minReadySeconds) then st.availableReplicas = st.availableReplicas + 1 end
    end
  end
  st.conditions = (rs.status or {}).conditions
  return st
end

local function sync_replicaset(sim, rt, ctl, ns, name)
  local rs = sim:get(RS, ns, name)
  if not rs or rs.metadata.deletionTimestamp then return end
  local active = {}
  for _, pod in ipairs(rt:owned("pods", rs)) do
    if R.pod_active(pod) then active[#active + 1] = pod end
  end
  local diff = #active - (rs.spec.replicas or 1)
  local component = "replicaset-controller"
  if diff < 0 then
    for _ = 1, -diff do
      local pod, status = sim:create("pods", new_rs_pod(rs))
      if pod then
        sim.event(rs, "Normal", "SuccessfulCreate", "Created pod: " .. pod.metadata.name, component)
      else
        sim.event(rs, "Warning", "FailedCreate", "Error creating: " .. (status and status.message or "?"), component)
      end
    end
  elseif diff > 0 then
    for _, pod in ipairs(pick_victims(active, diff)) do
      sim:delete("pods", pod)
      sim.event(rs, "Normal", "SuccessfulDelete", "Deleted pod: " .. pod.metadata.name, component)
    end
  end
  local pods = rt:owned("pods", rs)
  rt:write_status(RS, rs, rs_status(rt, rs, pods))
  for _, pod in ipairs(pods) do
    local wait = rs.spec.minReadySeconds and rs.spec.minReadySeconds > 0 and rt:until_available(pod, rs.spec.minReadySeconds)
    if wait and wait > 0 then ctl:after(wait, ns, name) end
  end
end

-- ---- Deployment ----

local function template_without_hash(template)
  local t = util.copy(template)
  if t.metadata and t.metadata.labels then t.metadata.labels[HASH_LABEL] = nil end
  return R.canonical(t) or {}
end

local function revision_of(rs) return tonumber((rs.metadata.annotations or {})[REVISION] or "0") or 0 end

local function surge_and_unavailable(d)
  local replicas = d.spec.replicas or 1
  local ru = d.spec.strategy and d.spec.strategy.rollingUpdate or {}
  local surge = R.int_or_percent(ru.maxSurge or "25%", replicas, true)
  local unavailable = R.int_or_percent(ru.maxUnavailable or "25%", replicas, false)
  if surge == 0 and unavailable == 0 then unavailable = 1 end
  return surge, unavailable
end

local function scale(sim, d, rs, count)
  local from = rs.spec.replicas or 0
  if from == count then return rs end
  local copy = util.copy(rs)
  copy.spec.replicas = count
  local surge = surge_and_unavailable(d)
  copy.metadata.annotations = copy.metadata.annotations or {}
  copy.metadata.annotations["deployment.kubernetes.io/desired-replicas"] = tostring(d.spec.replicas or 1)
  copy.metadata.annotations["deployment.kubernetes.io/max-replicas"] = tostring((d.spec.replicas or 1) + surge)
  local stored = sim:update(RS, copy)
  sim.event(d, "Normal", "ScalingReplicaSet", ("Scaled %s replica set %s to %d from %d"):format(
    count > from and "up" or "down", rs.metadata.name, count, from), "deployment-controller")
  return stored or rs
end

local function new_rs_object(d, hash, replicas, revision)
  local template = util.copy(d.spec.template)
  template.metadata = template.metadata or {}
  template.metadata.labels = template.metadata.labels or {}
  template.metadata.labels[HASH_LABEL] = hash
  local selector = util.copy(d.spec.selector or {})
  selector.matchLabels = selector.matchLabels or {}
  selector.matchLabels[HASH_LABEL] = hash
  local surge = surge_and_unavailable(d)
  local labels = util.copy(template.metadata.labels)
  return {
    metadata = {
      name = d.metadata.name .. "-" .. hash, namespace = d.metadata.namespace, labels = labels,
      annotations = { [REVISION] = tostring(revision),
                      ["deployment.kubernetes.io/desired-replicas"] = tostring(d.spec.replicas or 1),
                      ["deployment.kubernetes.io/max-replicas"] = tostring((d.spec.replicas or 1) + surge) },
      ownerReferences = array { R.owner_ref(d, "Deployment", "apps/v1") },
    },
    spec = { replicas = replicas, minReadySeconds = d.spec.minReadySeconds, selector = selector, template = template },
  }
end

local function sum(list, fn)
  local n = 0
  for _, x in ipairs(list) do n = n + (fn(x) or 0) end
  return n
end

local function spec_replicas(rs) return rs.spec.replicas or 0 end

--- The new ReplicaSet for the template, created if need be; its revision is the newest.
local function find_or_create_new(sim, d, rss)
  local want = json.encode(template_without_hash(d.spec.template), { sort_keys = true })
  local max_rev = 0
  local new
  for _, rs in ipairs(rss) do
    max_rev = math.max(max_rev, revision_of(rs))
    if json.encode(template_without_hash(rs.spec.template), { sort_keys = true }) == want then new = rs end
  end
  if new then
    if revision_of(new) < max_rev then
      local copy = util.copy(new)
      copy.metadata.annotations = copy.metadata.annotations or {}
      copy.metadata.annotations[REVISION] = tostring(max_rev + 1)
      new = sim:update(RS, copy)
    end
    return new, false
  end
  if d.spec.paused then return nil, false end
  local replicas = d.spec.replicas or 1
  local initial = replicas
  local strategy = d.spec.strategy and d.spec.strategy.type or "RollingUpdate"
  if strategy == "Recreate" and sum(rss, spec_replicas) > 0 then initial = 0 end
  if strategy ~= "Recreate" and #rss > 0 then
    local surge = surge_and_unavailable(d)
    initial = math.max(0, math.min(replicas, replicas + surge - sum(rss, spec_replicas)))
  end
  local collisions = (d.status or {}).collisionCount or 0
  local hash = R.safe_hash(template_without_hash(d.spec.template), collisions)
  local created, status = sim:create(RS, new_rs_object(d, hash, initial, max_rev + 1))
  if not created then return nil, false, status end
  sim.event(d, "Normal", "ScalingReplicaSet", ("Scaled up replica set %s to %d"):format(created.metadata.name, initial), "deployment-controller")
  return created, true
end

local function rolling_update(sim, d, new, olds)
  local replicas = d.spec.replicas or 1
  local surge, max_unavailable = surge_and_unavailable(d)
  local all = { new }
  for _, rs in ipairs(olds) do all[#all + 1] = rs end
  -- scale the new ReplicaSet up within the surge
  if spec_replicas(new) > replicas then
    new = scale(sim, d, new, replicas)
  elseif spec_replicas(new) < replicas then
    local room = replicas + surge - sum(all, spec_replicas)
    if room > 0 then new = scale(sim, d, new, spec_replicas(new) + math.min(room, replicas - spec_replicas(new))) end
  end
  all[1] = new
  -- scale old ones down while enough pods stay available
  local min_available = replicas - max_unavailable
  local new_unavailable = spec_replicas(new) - ((new.status or {}).availableReplicas or 0)
  local max_scaled_down = sum(all, spec_replicas) - min_available - new_unavailable
  if max_scaled_down <= 0 then return end
  table.sort(olds, function(a, b) return (a.metadata.creationTimestamp or "") < (b.metadata.creationTimestamp or "") end)
  -- unhealthy old replicas go first
  for _, rs in ipairs(olds) do
    if max_scaled_down <= 0 then break end
    local unhealthy = spec_replicas(rs) - ((rs.status or {}).availableReplicas or 0)
    if unhealthy > 0 then
      local n = math.min(unhealthy, max_scaled_down)
      scale(sim, d, rs, spec_replicas(rs) - n)
      max_scaled_down = max_scaled_down - n
    end
  end
  local available = sum(all, function(rs) return (rs.status or {}).availableReplicas end)
  local budget = math.min(available - min_available, max_scaled_down)
  for _, rs in ipairs(olds) do
    if budget <= 0 then break end
    local current = sim:get(RS, rs.metadata.namespace, rs.metadata.name)
    local n = math.min(spec_replicas(current), budget)
    if n > 0 then
      scale(sim, d, current, spec_replicas(current) - n)
      budget = budget - n
    end
  end
end

local function recreate(sim, rt, d, new, olds)
  local old_pods = 0
  for _, rs in ipairs(olds) do
    if spec_replicas(rs) > 0 then scale(sim, d, rs, 0) end
    for _, pod in ipairs(rt:owned("pods", rs)) do if not R.pod_terminal(pod) then old_pods = old_pods + 1 end end
  end
  if old_pods == 0 then scale(sim, d, new, d.spec.replicas or 1) end
end

local function cleanup(sim, d, olds)
  local limit = d.spec.revisionHistoryLimit or 10
  local idle = {}
  for _, rs in ipairs(olds) do
    if spec_replicas(rs) == 0 and ((rs.status or {}).replicas or 0) == 0 and not rs.metadata.deletionTimestamp then idle[#idle + 1] = rs end
  end
  table.sort(idle, function(a, b) return revision_of(a) < revision_of(b) end)
  for i = 1, #idle - limit do sim:delete(RS, idle[i]) end
end

local function deployment_status(sim, d, new, all)
  local replicas = d.spec.replicas or 1
  local _, max_unavailable = surge_and_unavailable(d)
  local old = d.status or {}
  local st = {
    observedGeneration = d.metadata.generation,
    replicas = sum(all, function(rs) return (rs.status or {}).replicas end),
    updatedReplicas = new and ((new.status or {}).replicas or 0) or 0,
    readyReplicas = sum(all, function(rs) return (rs.status or {}).readyReplicas end),
    availableReplicas = sum(all, function(rs) return (rs.status or {}).availableReplicas end),
    collisionCount = old.collisionCount,
    conditions = util.copy(old.conditions or array()),
  }
  st.unavailableReplicas = math.max(0, replicas - st.availableReplicas)
  if st.unavailableReplicas == 0 then st.unavailableReplicas = nil end
  local now = R.now(sim)
  if st.availableReplicas >= replicas - max_unavailable then
    R.set_condition(st, { type = "Available", status = "True", reason = "MinimumReplicasAvailable",
                          message = "Deployment has minimum availability.", lastUpdateTime = now }, now)
  else
    R.set_condition(st, { type = "Available", status = "False", reason = "MinimumReplicasUnavailable",
                          message = "Deployment does not have minimum availability.", lastUpdateTime = now }, now)
  end
  return st
end

local function progressing(rt, d, st, new, created)
  local now = R.now(rt.sim)
  local replicas = d.spec.replicas or 1
  local name = new and new.metadata.name or ""
  local old = R.condition(d.status, "Progressing")
  local complete = new and st.updatedReplicas == replicas and st.replicas == replicas and st.availableReplicas >= replicas
  local uid = d.metadata.uid
  local cond
  if d.spec.paused then
    cond = { type = "Progressing", status = "Unknown", reason = "DeploymentPaused", message = "Deployment is paused" }
  elseif created then
    cond = { type = "Progressing", status = "True", reason = "NewReplicaSetCreated", message = ('Created new replica set "%s"'):format(name) }
    rt.progress[uid] = vq.now()
  elseif complete then
    cond = { type = "Progressing", status = "True", reason = "NewReplicaSetAvailable", message = ('ReplicaSet "%s" has successfully progressed.'):format(name) }
    rt.progress[uid] = nil
  else
    local fingerprint = ("%d/%d/%d/%d"):format(st.replicas, st.updatedReplicas, st.readyReplicas, st.availableReplicas)
    local last = rt.progress_mark[uid]
    if last ~= fingerprint or not rt.progress[uid] then
      rt.progress_mark[uid] = fingerprint
      rt.progress[uid] = vq.now()
      cond = { type = "Progressing", status = "True", reason = "ReplicaSetUpdated", message = ('ReplicaSet "%s" is progressing.'):format(name) }
    elseif rt:elapsed(rt.progress[uid]) >= (d.spec.progressDeadlineSeconds or 600) then
      cond = { type = "Progressing", status = "False", reason = "ProgressDeadlineExceeded", message = ('ReplicaSet "%s" has timed out progressing.'):format(name) }
    else
      cond = old and util.copy(old) or { type = "Progressing", status = "True", reason = "ReplicaSetUpdated", message = ('ReplicaSet "%s" is progressing.'):format(name) }
    end
  end
  local same = old and old.status == cond.status and old.reason == cond.reason and old.message == cond.message
  cond.lastUpdateTime = same and old.lastUpdateTime or now
  if cond.reason == "ReplicaSetUpdated" and not same then cond.lastUpdateTime = now end
  R.set_condition(st, cond, now)
  return complete
end

local function sync_deployment(sim, rt, ctl, ns, name)
  local d = sim:get(DEPLOY, ns, name)
  if not d or d.metadata.deletionTimestamp then return end
  local rss = rt:owned(RS, d)
  local new, created, err = find_or_create_new(sim, d, rss)
  if err then
    local st = util.copy(d.status or {})
    st.collisionCount = (st.collisionCount or 0) + 1
    rt:write_status(DEPLOY, d, st)
    return
  end
  local olds = {}
  for _, rs in ipairs(rss) do
    if not new or rs.metadata.uid ~= new.metadata.uid then olds[#olds + 1] = rs end
  end
  if new and not d.spec.paused then
    local strategy = d.spec.strategy and d.spec.strategy.type or "RollingUpdate"
    if strategy == "Recreate" then recreate(sim, rt, d, new, olds) else rolling_update(sim, d, new, olds) end
    local rev = (new.metadata.annotations or {})[REVISION]
    if rev and (d.metadata.annotations or {})[REVISION] ~= rev then
      local copy = util.copy(d)
      copy.metadata.annotations = copy.metadata.annotations or {}
      copy.metadata.annotations[REVISION] = rev
      d = sim:update(DEPLOY, copy) or d
    end
  end
  rss = rt:owned(RS, d)
  local all, fresh_new = {}, nil
  for _, rs in ipairs(rss) do
    all[#all + 1] = rs
    if new and rs.metadata.uid == new.metadata.uid then fresh_new = rs end
  end
  local st = deployment_status(sim, d, fresh_new, all)
  local complete = progressing(rt, d, st, fresh_new, created)
  rt:write_status(DEPLOY, d, st)
  if not complete and not d.spec.paused then ctl:after((d.spec.progressDeadlineSeconds or 600) + 1, ns, name) end
  local remaining = {}
  for _, rs in ipairs(rss) do if not fresh_new or rs.metadata.uid ~= fresh_new.metadata.uid then remaining[#remaining + 1] = rs end end
  cleanup(sim, d, remaining)
end

function M.install(sim, rt)
  rt.progress, rt.progress_mark = {}, {}
  local rs_ctl, d_ctl
  rs_ctl = rt:controller("replicaset", function(ns, name) sync_replicaset(sim, rt, rs_ctl, ns, name) end)
  d_ctl = rt:controller("deployment", function(ns, name) sync_deployment(sim, rt, d_ctl, ns, name) end)
  rt:watch(RS, function(ev)
    local rs = ev.object
    if ev.type ~= "DELETED" then rs_ctl:enqueue(rs.metadata.namespace, rs.metadata.name) end
    local ref = R.controller_of(rs)
    if ref and ref.kind == "Deployment" then d_ctl:enqueue(rs.metadata.namespace, ref.name) end
  end)
  rt:watch(DEPLOY, function(ev)
    if ev.type ~= "DELETED" then d_ctl:enqueue(ev.object.metadata.namespace, ev.object.metadata.name) end
  end)
  rt:watch("pods", function(ev)
    local ref = R.controller_of(ev.object)
    if ref and ref.kind == "ReplicaSet" then rs_ctl:enqueue(ev.object.metadata.namespace, ref.name) end
  end)
  rt.replicasets, rt.deployments = rs_ctl, d_ctl
end

function M.started(sim, rt)
  for _, rs in ipairs(sim:list(RS, nil)) do rt.replicasets:enqueue(rs.metadata.namespace, rs.metadata.name) end
  for _, d in ipairs(sim:list(DEPLOY, nil)) do rt.deployments:enqueue(d.metadata.namespace, d.metadata.name) end
end

return M
