-- The default scheduler: pods without a node go to a Ready node that passes the filters
-- the real one runs first (unschedulable, taints, node selector and affinity, resources,
-- claims); none fitting leaves the pod Pending with PodScheduled=False/Unschedulable and a
-- FailedScheduling event worded as kube-scheduler words it.
local util = require "sim.util"
local json = require "json"
local api_mod = require "sim.api"
local R = require "sim.controllers.runtime"

local M = {}

local COMPONENT = "default-scheduler"
local RETRY_UNSCHEDULABLE = 300   -- podMaxInUnschedulablePodsDuration

-- ---- taints and tolerations ----

function M.tolerates(tol, taint)
  if tol.effect and tol.effect ~= "" and tol.effect ~= taint.effect then return false end
  if tol.operator == "Exists" then
    return (tol.key or "") == "" or tol.key == taint.key
  end
  return tol.key == taint.key and (tol.value or "") == (taint.value or "")
end

function M.tolerated(tolerations, taint)
  for _, tol in ipairs(tolerations or {}) do
    if M.tolerates(tol, taint) then return true end
  end
  return false
end

--- The first NoSchedule/NoExecute taint of the node the pod does not tolerate.
function M.untolerated_taint(node, tolerations)
  for _, taint in ipairs(node.spec and node.spec.taints or {}) do
    if (taint.effect == "NoSchedule" or taint.effect == "NoExecute") and not M.tolerated(tolerations, taint) then
      return taint
    end
  end
end

-- ---- node selector and affinity ----

local function match_expression(expr, value)
  local op = expr.operator
  if op == "Exists" then return value ~= nil end
  if op == "DoesNotExist" then return value == nil end
  if op == "In" or op == "NotIn" then
    local found = false
    for _, v in ipairs(expr.values or {}) do if v == value then found = true end end
    if op == "In" then return value ~= nil and found end
    return not found
  end
  if op == "Gt" or op == "Lt" then
    local n, bound = tonumber(value), tonumber((expr.values or {})[1])
    if not n or not bound then return false end
    if op == "Gt" then return n > bound end
    return n < bound
  end
  return false
end

local function match_term(term, node)
  local labels = node.metadata.labels or {}
  local any = false
  for _, e in ipairs(term.matchExpressions or {}) do
    any = true
    if not match_expression(e, labels[e.key]) then return false end
  end
  for _, e in ipairs(term.matchFields or {}) do
    any = true
    local value = e.key == "metadata.name" and node.metadata.name or nil
    if not match_expression(e, value) then return false end
  end
  return any
end

--- nodeSelector and requiredDuringSchedulingIgnoredDuringExecution node affinity.
function M.node_matches(spec, node)
  local labels = node.metadata.labels or {}
  for k, v in pairs(spec.nodeSelector or {}) do
    if labels[k] ~= v then return false end
  end
  local required = spec.affinity and spec.affinity.nodeAffinity
    and spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution
  if required and required.nodeSelectorTerms then
    for _, term in ipairs(required.nodeSelectorTerms) do
      if match_term(term, node) then return true end
    end
    return false
  end
  return true
end

-- ---- resources ----

local function container_requests(c, into)
  local req = c.resources and (c.resources.requests or c.resources.limits) or {}
  into.cpu = (into.cpu or 0) + (R.quantity(req.cpu) or 0)
  into.memory = (into.memory or 0) + (R.quantity(req.memory) or 0)
  return into
end

--- What a pod requests: its containers together, or its largest init container.
function M.pod_requests(spec)
  local total = { cpu = 0, memory = 0 }
  for _, c in ipairs(spec.containers or {}) do container_requests(c, total) end
  for _, c in ipairs(spec.initContainers or {}) do
    local one = container_requests(c, {})
    total.cpu = math.max(total.cpu, one.cpu)
    total.memory = math.max(total.memory, one.memory)
  end
  return total
end

local function node_usage(sim, node_name)
  local used = { cpu = 0, memory = 0, pods = 0 }
  for _, p in ipairs(sim:list("pods", nil, function(p) return p.spec and p.spec.nodeName == node_name end)) do
    if not R.pod_terminal(p) then
      local r = M.pod_requests(p.spec)
      used.cpu, used.memory, used.pods = used.cpu + r.cpu, used.memory + r.memory, used.pods + 1
    end
  end
  return used
end
M.node_usage = node_usage

local function insufficient(sim, node, spec)
  local alloc = node.status and (node.status.allocatable or node.status.capacity) or {}
  local used = node_usage(sim, node.metadata.name)
  local want = M.pod_requests(spec)
  local reasons = {}
  local max_pods = R.quantity(alloc.pods)
  if max_pods and used.pods + 1 > max_pods then reasons[#reasons + 1] = "Too many pods" end
  local cpu, mem = R.quantity(alloc.cpu), R.quantity(alloc.memory)
  if cpu and want.cpu > 0 and used.cpu + want.cpu > cpu + 1e-9 then reasons[#reasons + 1] = "Insufficient cpu" end
  if mem and want.memory > 0 and used.memory + want.memory > mem then reasons[#reasons + 1] = "Insufficient memory" end
  return reasons, used
end

-- ---- inter-pod affinity (required terms) ----

--- A metav1.LabelSelector against labels.
function M.selector_matches(sel, labels)
  if not sel then return false end
  labels = labels or {}
  for k, v in pairs(sel.matchLabels or {}) do
    if labels[k] ~= v then return false end
  end
  for _, e in ipairs(sel.matchExpressions or {}) do
    if not match_expression(e, labels[e.key]) then return false end
  end
  return true
end

local function term_namespaces(term, pod)
  local set = {}
  for _, ns in ipairs(term.namespaces or {}) do set[ns] = true end
  if next(set) == nil then set[pod.metadata.namespace] = true end
  return set
end

local function required_terms(pod, kind)
  local a = pod.spec.affinity and pod.spec.affinity[kind]
  return a and a.requiredDuringSchedulingIgnoredDuringExecution or {}
end

--- Pods placed (or running) on nodes, with their node, for the topology checks.
local function placed_pods(sim)
  local out = {}
  for _, p in ipairs(sim:list("pods", nil)) do
    if p.spec.nodeName and not R.pod_terminal(p) and not p.metadata.deletionTimestamp then
      local node = sim:get("nodes", nil, p.spec.nodeName)
      if node then out[#out + 1] = { pod = p, node = node } end
    end
  end
  return out
end

local function same_domain(node_a, node_b, key)
  local a = (node_a.metadata.labels or {})[key]
  return a ~= nil and a == (node_b.metadata.labels or {})[key]
end

local function term_matches(term, owner, other)
  return term_namespaces(term, owner)[other.metadata.namespace] and M.selector_matches(term.labelSelector, other.metadata.labels)
end

--- Why the InterPodAffinity filter rejects the node, or nil.
local function inter_pod(pod, node, placed)
  for _, term in ipairs(required_terms(pod, "podAntiAffinity")) do
    for _, x in ipairs(placed) do
      if term_matches(term, pod, x.pod) and same_domain(node, x.node, term.topologyKey) then
        return "node(s) didn't match pod anti-affinity rules"
      end
    end
  end
  for _, x in ipairs(placed) do
    for _, term in ipairs(required_terms(x.pod, "podAntiAffinity")) do
      if term_matches(term, x.pod, pod) and same_domain(node, x.node, term.topologyKey) then
        return "node(s) didn't satisfy existing pods anti-affinity rules"
      end
    end
  end
  for _, term in ipairs(required_terms(pod, "podAffinity")) do
    local anywhere, here = false, false
    for _, x in ipairs(placed) do
      if term_matches(term, pod, x.pod) then
        anywhere = true
        if same_domain(node, x.node, term.topologyKey) then here = true end
      end
    end
    -- the first pod of a group that wants to be with itself may go anywhere
    local itself = term_matches(term, pod, pod)
    if not here and (anywhere or not itself) then return "node(s) didn't match pod affinity rules" end
  end
end

--- A bound volume that lives elsewhere (a zonal disk) keeps the pod off this node.
local function volume_conflict(sim, pod, node)
  for _, v in ipairs(pod.spec.volumes or {}) do
    local claim = v.persistentVolumeClaim and v.persistentVolumeClaim.claimName
    local pvc = claim and sim:get("persistentvolumeclaims", pod.metadata.namespace, claim)
    local pv = pvc and pvc.spec.volumeName and sim:get("persistentvolumes", nil, pvc.spec.volumeName)
    local required = pv and pv.spec.nodeAffinity and pv.spec.nodeAffinity.required
    if required and required.nodeSelectorTerms then
      local fits = false
      for _, term in ipairs(required.nodeSelectorTerms) do
        if match_term(term, node) then fits = true end
      end
      if not fits then return true end
    end
  end
  return false
end

-- ---- the filters, in the default profile's order ----

--- Why a node does not fit (a list of reasons, and whether preemption could help), or nil.
local function filter(sim, node, pod, placed)
  local spec = pod.spec
  if node.spec and node.spec.unschedulable then
    local taint = { key = "node.kubernetes.io/unschedulable", effect = "NoSchedule" }
    if not M.tolerated(spec.tolerations, taint) then return { "node(s) were unschedulable" }, false end
  end
  local taint = M.untolerated_taint(node, spec.tolerations)
  if taint then
    return { ("node(s) had untolerated taint {%s: %s}"):format(taint.key, taint.value or "") }, false
  end
  if not M.node_matches(spec, node) then return { "node(s) didn't match Pod's node affinity/selector" }, false end
  local reasons = insufficient(sim, node, spec)
  if #reasons > 0 then return reasons, true end
  if volume_conflict(sim, pod, node) then return { "node(s) had volume node affinity conflict" }, false end
  local affinity = inter_pod(pod, node, placed)
  if affinity then return { affinity }, true end
  return nil
end

--- The claims a pod uses must exist and not be going away (the VolumeBinding prefilter).
local function claims_problem(sim, pod)
  for _, v in ipairs(pod.spec.volumes or {}) do
    local claim = v.persistentVolumeClaim and v.persistentVolumeClaim.claimName
    if claim then
      local pvc = sim:get("persistentvolumeclaims", pod.metadata.namespace, claim)
      if not pvc then return ('persistentvolumeclaim "%s" not found'):format(claim) end
      if pvc.metadata.deletionTimestamp then return ('persistentvolumeclaim "%s" is being deleted'):format(claim) end
      if (pvc.status or {}).phase ~= "Bound" and not M.waits_for_consumer(sim, pvc) and not M.can_provision(sim, pvc) then
        return "pod has unbound immediate PersistentVolumeClaims"
      end
    end
  end
end

function M.storage_class(sim, pvc)
  local name = pvc.spec and pvc.spec.storageClassName
  if name == nil then
    for _, sc in ipairs(sim:list("storageclasses.storage.k8s.io", nil)) do
      if (sc.metadata.annotations or {})["storageclass.kubernetes.io/is-default-class"] == "true" then return sc end
    end
    return nil
  end
  if name == "" then return nil end
  return sim:get("storageclasses.storage.k8s.io", nil, name)
end

function M.waits_for_consumer(sim, pvc)
  local sc = M.storage_class(sim, pvc)
  return sc ~= nil and sc.volumeBindingMode == "WaitForFirstConsumer"
end

function M.can_provision(sim, pvc)
  local sc = M.storage_class(sim, pvc)
  return sc ~= nil and sc.provisioner ~= nil and sc.provisioner ~= "kubernetes.io/no-provisioner"
end

local function histogram(counts)
  local parts = {}
  for reason, n in pairs(counts) do parts[#parts + 1] = ("%d %s"):format(n, reason) end
  table.sort(parts)
  return table.concat(parts, ", ")
end

--- kube-scheduler's FitError text, with the preemption post-filter's summary.
local function fit_error(total, counts, preempt)
  return ("0/%d nodes are available: %s. preemption: 0/%d nodes are available: %s."):format(
    total, histogram(counts), total, histogram(preempt))
end

local function owner_key(pod)
  local ref = R.controller_of(pod)
  return ref and ref.uid
end

--- Spread pods of one owner, then prefer the least requested node (the default scores).
local function pick(sim, pod, nodes)
  local owner = owner_key(pod)
  local best, best_score
  for _, node in ipairs(nodes) do
    local siblings = 0
    if owner then
      siblings = #sim:list("pods", pod.metadata.namespace, function(p)
        return p.spec.nodeName == node.metadata.name and owner_key(p) == owner and R.pod_active(p)
      end)
    end
    local alloc = node.status and node.status.allocatable or {}
    local used = node_usage(sim, node.metadata.name)
    local cpu = R.quantity(alloc.cpu)
    local load = cpu and cpu > 0 and used.cpu / cpu or 0
    local score = siblings * 1000 + load * 100 + used.pods * 0.01
    if not best or score < best_score then best, best_score = node, score end
  end
  return best
end

-- ---- binding ----

--- Bind a pod to a node as the binding subresource does: nodeName and PodScheduled=True.
function M.bind(sim, pod, node_name)
  local copy = util.copy(pod)
  copy.spec.nodeName = node_name
  copy.status = copy.status or {}
  R.set_condition(copy.status, { type = "PodScheduled", status = "True", lastProbeTime = json.null }, R.now(sim))
  copy.metadata.resourceVersion = nil
  return sim.store:put("pods", copy, "MODIFIED")
end

local function binding_handler(sim, req, res, r)
  if req.method ~= "POST" then return api_mod.send_status(res, 405, "method not allowed", "MethodNotAllowed") end
  local ok, body = pcall(json.decode, req.body or "")
  local target = ok and type(body) == "table" and body.target and body.target.name
  if not target then return api_mod.send_status(res, 400, "binding target is required", "BadRequest") end
  local pod = sim:get("pods", r.ns, r.name)
  if not pod then return api_mod.send_status(res, 404, ('pods "%s" not found'):format(r.name), "NotFound") end
  if pod.spec.nodeName and pod.spec.nodeName ~= "" then
    return api_mod.send_status(res, 409, ('Operation cannot be fulfilled on pods/binding "%s": pod %s is already assigned to node "%s"'):format(r.name, r.name, pod.spec.nodeName), "Conflict")
  end
  M.bind(sim, pod, target)
  api_mod.send_json(res, 201, { kind = "Status", apiVersion = "v1", metadata = {}, status = "Success", code = 201 })
end

-- ---- the scheduling loop ----

local function unschedulable(sim, rt, ctl, pod, message, announce)
  local status = util.copy(pod.status or {})
  R.set_condition(status, { type = "PodScheduled", status = "False", reason = "Unschedulable", message = message,
                            lastProbeTime = json.null }, R.now(sim))
  local changed = not R.same(status, pod.status or {})
  rt:write_status("pods", pod, status)
  if changed or announce then sim.event(pod, "Warning", "FailedScheduling", message, COMPONENT) end
  ctl:after(RETRY_UNSCHEDULABLE, pod.metadata.namespace, pod.metadata.name)
end

local function schedule(sim, rt, ctl, pod, announce)
  local nodes = sim:list("nodes", nil)
  if #nodes == 0 then return unschedulable(sim, rt, ctl, pod, "no nodes available to schedule pods", announce) end
  local problem = claims_problem(sim, pod)
  if problem then
    local message = ("0/%d nodes are available: %s. preemption: 0/%d nodes are available: %d Preemption is not helpful for scheduling.")
      :format(#nodes, problem, #nodes, #nodes)
    return unschedulable(sim, rt, ctl, pod, message, announce)
  end
  local fits, counts, preempt = {}, {}, {}
  local placed = placed_pods(sim)
  for _, node in ipairs(nodes) do
    local reasons, helpful = filter(sim, node, pod, placed)
    if reasons then
      for _, r in ipairs(reasons) do counts[r] = (counts[r] or 0) + 1 end
      local p = helpful and "No preemption victims found for incoming pod" or "Preemption is not helpful for scheduling"
      preempt[p] = (preempt[p] or 0) + 1
    else
      fits[#fits + 1] = node
    end
  end
  if #fits == 0 then return unschedulable(sim, rt, ctl, pod, fit_error(#nodes, counts, preempt), announce) end
  local node = pick(sim, pod, fits)
  M.select_node_for_claims(sim, pod, node.metadata.name)
  M.bind(sim, pod, node.metadata.name)
  sim.event(pod, "Normal", "Scheduled", ("Successfully assigned %s/%s to %s"):format(pod.metadata.namespace, pod.metadata.name, node.metadata.name), COMPONENT)
end

--- Claims of a WaitForFirstConsumer class learn their node (the volume binder's annotation).
function M.select_node_for_claims(sim, pod, node_name)
  for _, v in ipairs(pod.spec.volumes or {}) do
    local claim = v.persistentVolumeClaim and v.persistentVolumeClaim.claimName
    local pvc = claim and sim:get("persistentvolumeclaims", pod.metadata.namespace, claim)
    if pvc and (pvc.status or {}).phase ~= "Bound" then
      local ann = pvc.metadata.annotations or {}
      if ann["volume.kubernetes.io/selected-node"] ~= node_name then
        local copy = util.copy(pvc)
        copy.metadata.annotations = copy.metadata.annotations or {}
        copy.metadata.annotations["volume.kubernetes.io/selected-node"] = node_name
        sim:update("persistentvolumeclaims", copy)
      end
    end
  end
end

local function needs_scheduling(pod)
  local spec = pod.spec or {}
  return (spec.nodeName == nil or spec.nodeName == "") and not pod.metadata.deletionTimestamp
    and (spec.schedulerName == nil or spec.schedulerName == COMPONENT)
end

-- Node changes that can make a pending pod fit (not heartbeats).
local function node_fitness(node)
  if not node then return "" end
  local ready = R.condition(node.status, "Ready")
  return json.encode({ node.metadata.labels or {}, node.spec and node.spec.taints or {}, node.spec and node.spec.unschedulable or false,
                       node.status and node.status.allocatable or {}, ready and ready.status or "" }, { sort_keys = true })
end

function M.install(sim, rt)
  sim.subresources["pods/binding"] = binding_handler
  local retry = {}   -- pods to try again because the cluster changed: announce the new failure
  local ctl
  ctl = rt:controller("scheduler", function(ns, name)
    local pod = sim:get("pods", ns, name)
    local announce = retry[ns .. "/" .. name]
    retry[ns .. "/" .. name] = nil
    if pod and needs_scheduling(pod) then schedule(sim, rt, ctl, pod, announce) end
  end)
  local function retry_pending()
    for _, pod in ipairs(sim:list("pods", nil, needs_scheduling)) do
      retry[pod.metadata.namespace .. "/" .. pod.metadata.name] = true
      ctl:enqueue(pod.metadata.namespace, pod.metadata.name)
    end
  end
  rt:watch("pods", function(ev)
    local pod = ev.object
    if ev.type == "DELETED" then
      if pod.spec and pod.spec.nodeName then retry_pending() end
    elseif needs_scheduling(pod) and (ev.type == "ADDED" or not ev.old or not R.same(ev.old.spec, pod.spec)) then
      ctl:enqueue(pod.metadata.namespace, pod.metadata.name)
    end
  end)
  rt:watch("nodes", function(ev)
    if ev.type == "DELETED" or node_fitness(ev.old) ~= node_fitness(ev.object) then retry_pending() end
  end)
  rt:watch("persistentvolumeclaims", function(ev)
    if not ev.old or (ev.old.status or {}).phase ~= (ev.object.status or {}).phase or ev.type ~= "MODIFIED" then retry_pending() end
  end)
  rt.scheduler = ctl
  rt.retry_pending = retry_pending
end

return M
