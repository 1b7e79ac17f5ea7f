-- The DaemonSet controller: one pod per node the template may run on (node selector,
-- affinity, taints with the tolerations every daemon pod gets), pinned by node affinity
-- and placed by the scheduler; a template change rolls node by node within maxUnavailable.
local util = require "sim.util"
local R = require "sim.controllers.runtime"
local history = require "sim.controllers.history"
local scheduler = require "sim.controllers.scheduler"

local M = {}

local KEY = "daemonsets.apps"
local COMPONENT = "daemonset-controller"
local HASH_LABEL = "controller-revision-hash"
local array = R.array

local DAEMON_TOLERATIONS = {
  { key = "node.kubernetes.io/not-ready", operator = "Exists", effect = "NoExecute" },
  { key = "node.kubernetes.io/unreachable", operator = "Exists", effect = "NoExecute" },
  { key = "node.kubernetes.io/disk-pressure", operator = "Exists", effect = "NoSchedule" },
  { key = "node.kubernetes.io/memory-pressure", operator = "Exists", effect = "NoSchedule" },
  { key = "node.kubernetes.io/pid-pressure", operator = "Exists", effect = "NoSchedule" },
  { key = "node.kubernetes.io/unschedulable", operator = "Exists", effect = "NoSchedule" },
}

local function tolerations_for(spec)
  local out = array()
  for _, t in ipairs(spec.tolerations or {}) do out[#out + 1] = util.copy(t) end
  for _, t in ipairs(DAEMON_TOLERATIONS) do out[#out + 1] = util.copy(t) end
  if spec.hostNetwork then
    out[#out + 1] = { key = "node.kubernetes.io/network-unavailable", operator = "Exists", effect = "NoSchedule" }
  end
  return out
end

--- Nodes a daemon pod should run on.
local function eligible(ds, node)
  local spec = ds.spec.template.spec
  if not scheduler.node_matches(spec, node) then return false end
  return scheduler.untolerated_taint(node, tolerations_for(spec)) == nil
end

local function target_node(pod)
  if pod.spec.nodeName and pod.spec.nodeName ~= "" then return pod.spec.nodeName end
  local req = pod.spec.affinity and pod.spec.affinity.nodeAffinity
    and pod.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution
  for _, term in ipairs(req and req.nodeSelectorTerms or {}) do
    for _, f in ipairs(term.matchFields or {}) do
      if f.key == "metadata.name" and f.values then return f.values[1] end
    end
  end
end

local function new_pod(ds, revision, node_name)
  local template = history.template_of(revision)
  local meta = template.metadata or {}
  local labels = util.copy(meta.labels or {})
  labels[HASH_LABEL] = history.hash_of(revision)
  labels["pod-template-generation"] = tostring(ds.metadata.generation or 1)
  local spec = util.copy(template.spec)
  spec.tolerations = tolerations_for(spec)
  spec.affinity = spec.affinity or {}
  spec.affinity.nodeAffinity = spec.affinity.nodeAffinity or {}
  spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution = {
    nodeSelectorTerms = array { { matchFields = array { { key = "metadata.name", operator = "In", values = array { node_name } } } } },
  }
  return {
    metadata = { generateName = ds.metadata.name .. "-", namespace = ds.metadata.namespace, labels = labels,
                 annotations = meta.annotations and util.copy(meta.annotations) or nil,
                 ownerReferences = array { R.owner_ref(ds, "DaemonSet", "apps/v1") } },
    spec = spec,
  }
end

local function create(sim, ds, revision, node_name)
  local pod, status = sim:create("pods", new_pod(ds, revision, node_name))
  if pod then
    sim.event(ds, "Normal", "SuccessfulCreate", "Created pod: " .. pod.metadata.name, COMPONENT)
  else
    sim.event(ds, "Warning", "FailedCreate", "Error creating: " .. (status and status.message or "?"), COMPONENT)
  end
end

local function delete(sim, ds, pod)
  sim:delete("pods", pod)
  sim.event(ds, "Normal", "SuccessfulDelete", "Deleted pod: " .. pod.metadata.name, COMPONENT)
end

local function by_node(pods)
  local out = {}
  for _, pod in ipairs(pods) do
    local n = target_node(pod)
    if n then
      out[n] = out[n] or {}
      table.insert(out[n], pod)
    end
  end
  return out
end

local function manage(sim, rt, ds, revision, nodes, pods)
  local placed = by_node(pods)
  for _, node in ipairs(nodes) do
    local name = node.metadata.name
    local mine = {}
    for _, pod in ipairs(placed[name] or {}) do
      if R.pod_terminal(pod) and not R.is_terminating(pod) then delete(sim, ds, pod)
      elseif R.pod_active(pod) then mine[#mine + 1] = pod end
    end
    local wanted = eligible(ds, node)
    if wanted and #mine == 0 and #(placed[name] or {}) == 0 then
      create(sim, ds, revision, name)
    elseif not wanted then
      for _, pod in ipairs(mine) do delete(sim, ds, pod) end
    elseif #mine > 1 then
      table.sort(mine, function(a, b) return (a.metadata.creationTimestamp or "") < (b.metadata.creationTimestamp or "") end)
      for i = 2, #mine do delete(sim, ds, mine[i]) end
    end
  end
  for name, list in pairs(placed) do
    if not sim:get("nodes", nil, name) then
      for _, pod in ipairs(list) do if R.pod_active(pod) then delete(sim, ds, pod) end end
    end
  end
end

--- Replace old pods: unavailable ones at once, available ones within maxUnavailable.
local function roll(sim, rt, ds, hash, nodes, pods)
  local strategy = ds.spec.updateStrategy or {}
  if strategy.type == "OnDelete" then return end
  local desired, unavailable, old_ok = 0, 0, {}
  local placed = by_node(pods)
  local min_ready = ds.spec.minReadySeconds or 0
  for _, node in ipairs(nodes) do
    if eligible(ds, node) then
      desired = desired + 1
      local pod
      for _, p in ipairs(placed[node.metadata.name] or {}) do if R.pod_active(p) then pod = p end end
      local available = pod and rt:pod_available(pod, min_ready)
      if not available then unavailable = unavailable + 1 end
      if pod and (pod.metadata.labels or {})[HASH_LABEL] ~= hash then
        if available then old_ok[#old_ok + 1] = pod else delete(sim, ds, pod) end
      end
    end
  end
  local max_unavailable = R.int_or_percent(strategy.rollingUpdate and strategy.rollingUpdate.maxUnavailable or 1, desired, false)
  if max_unavailable < 1 then max_unavailable = 1 end
  for _, pod in ipairs(old_ok) do
    if unavailable >= max_unavailable then break end
    delete(sim, ds, pod)
    unavailable = unavailable + 1
  end
end

local function status_of(rt, ds, hash, nodes, pods)
  local st = { desiredNumberScheduled = 0, currentNumberScheduled = 0, numberMisscheduled = 0, numberReady = 0,
               updatedNumberScheduled = 0, numberAvailable = 0, observedGeneration = ds.metadata.generation }
  local placed = by_node(pods)
  local min_ready = ds.spec.minReadySeconds or 0
  for _, node in ipairs(nodes) do
    local active = {}
    for _, p in ipairs(placed[node.metadata.name] or {}) do if R.pod_active(p) then active[#active + 1] = p end end
    if eligible(ds, node) then
      st.desiredNumberScheduled = st.desiredNumberScheduled + 1
      local pod = active[1]
      if pod then
        st.currentNumberScheduled = st.currentNumberScheduled + 1
        if R.pod_ready(pod) then st.numberReady = st.numberReady + 1 end
        if rt:pod_available(pod, min_ready) then st.numberAvailable = st.numberAvailable + 1 end
        if (pod.metadata.labels or {})[HASH_LABEL] == hash then st.updatedNumberScheduled = st.updatedNumberScheduled + 1 end
      end
    elseif #active > 0 then
      st.numberMisscheduled = st.numberMisscheduled + 1
    end
  end
  local unavailable = st.desiredNumberScheduled - st.numberAvailable
  st.numberUnavailable = unavailable > 0 and unavailable or nil
  st.collisionCount = (ds.status or {}).collisionCount
  return st
end

local function reconcile(sim, rt, ns, name)
  local ds = sim:get(KEY, ns, name)
  if not ds or ds.metadata.deletionTimestamp then return end
  local update, _, revisions = history.sync(sim, rt, ds, nil)
  if not update then
    local st = util.copy(ds.status or {})
    st.collisionCount = (st.collisionCount or 0) + 1
    rt:write_status(KEY, ds, st)
    return
  end
  local hash = history.hash_of(update)
  local nodes = sim:list("nodes", nil)
  manage(sim, rt, ds, update, nodes, rt:owned("pods", ds))
  roll(sim, rt, ds, hash, nodes, rt:owned("pods", ds))
  local pods = rt:owned("pods", ds)
  rt:write_status(KEY, ds, status_of(rt, ds, hash, nodes, pods))
  local live = { [update.metadata.name] = true }
  for _, rev in ipairs(revisions) do
    for _, pod in ipairs(pods) do
      if (pod.metadata.labels or {})[HASH_LABEL] == history.hash_of(rev) then live[rev.metadata.name] = true end
    end
  end
  history.truncate(sim, revisions, live, ds.spec.revisionHistoryLimit)
end

function M.install(sim, rt)
  local ctl = rt:controller("daemonset", function(ns, name) reconcile(sim, rt, ns, name) end)
  rt:watch(KEY, function(ev)
    if ev.type ~= "DELETED" then ctl:enqueue(ev.object.metadata.namespace, ev.object.metadata.name) end
  end)
  rt:watch("pods", function(ev)
    local ref = R.controller_of(ev.object)
    if ref and ref.kind == "DaemonSet" then ctl:enqueue(ev.object.metadata.namespace, ref.name) end
  end)
  local function all()
    for _, ds in ipairs(sim:list(KEY, nil)) do ctl:enqueue(ds.metadata.namespace, ds.metadata.name) end
  end
  rt:watch("nodes", function(ev)
    local old, new = ev.old, ev.object
    if ev.type ~= "MODIFIED" or not R.same(old.metadata.labels, new.metadata.labels) or not R.same(old.spec, new.spec) then all() end
  end)
  rt.daemonsets = ctl
  rt.resync_daemonsets = all
end

function M.started(sim, rt) rt.resync_daemonsets() end

return M
