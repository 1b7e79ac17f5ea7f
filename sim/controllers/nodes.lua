-- Nodes: the kubelet registers each node (conditions, capacity, node info) and keeps its
-- heartbeats (conditions and its Lease); the node lifecycle controller taints a node that
-- is not Ready, marks its pods not ready and evicts them once their toleration runs out;
-- pod GC removes the pods of a node that is gone. sim.set_node_ready(name, ready) is how
-- a scenario takes a node down.
local vq = require "vq"
local util = require "sim.util"
local resources = require "sim.resources"
local R = require "sim.controllers.runtime"
local scheduler = require "sim.controllers.scheduler"

local M = {}

local array = R.array
local LEASE_PERIOD, STATUS_PERIOD = 10, 60
local DEFAULT_TOLERATION = 300     -- DefaultTolerationSeconds for not-ready / unreachable

local PRESSURE = {
  { "MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available", "NodeHasSufficientMemory" },
  { "DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure", "NodeHasNoDiskPressure" },
  { "PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available", "NodeHasSufficientPID" },
}

local function taint_key(state)
  if state == "Unknown" then return "node.kubernetes.io/unreachable" end
  return "node.kubernetes.io/not-ready"
end

local function ready_state(node)
  local c = R.condition(node.status, "Ready")
  return c and c.status or "True"
end

-- ---- registration ----

local function default_status(sim, node, index)
  local st = util.copy(node.status or {})
  local now = R.now(sim)
  st.capacity = st.capacity or { cpu = "4", memory = "16393216Ki", pods = "110", ["ephemeral-storage"] = "129886128Ki",
                                 ["hugepages-1Gi"] = "0", ["hugepages-2Mi"] = "0" }
  st.allocatable = st.allocatable or util.copy(st.capacity)
  st.nodeInfo = st.nodeInfo or {
    kubeletVersion = sim.version, kubeProxyVersion = sim.version, containerRuntimeVersion = "containerd://1.7.15",
    osImage = "Ubuntu 22.04.4 LTS", kernelVersion = "5.15.0-1064-azure", operatingSystem = "linux", architecture = "amd64",
    machineID = R.hex64(node.metadata.name):sub(1, 32), systemUUID = util.uuid(), bootID = util.uuid(),
  }
  st.addresses = st.addresses or array {
    { type = "InternalIP", address = ("10.0.0.%d"):format(10 + index) }, { type = "Hostname", address = node.metadata.name } }
  st.daemonEndpoints = st.daemonEndpoints or { kubeletEndpoint = { Port = 10250 } }
  st.conditions = st.conditions or array()
  for _, p in ipairs(PRESSURE) do
    if not R.condition(st, p[1]) then
      R.set_condition(st, { type = p[1], status = "False", reason = p[2], message = p[3], lastHeartbeatTime = now }, now)
    end
  end
  if not R.condition(st, "Ready") then
    R.set_condition(st, { type = "Ready", status = "True", reason = "KubeletReady", message = "kubelet is posting ready status",
                          lastHeartbeatTime = now }, now)
  end
  return st
end

local function default_labels(node)
  local labels = util.copy(node.metadata.labels or {})
  local defaults = {
    ["kubernetes.io/hostname"] = node.metadata.name, ["kubernetes.io/os"] = "linux", ["kubernetes.io/arch"] = "amd64",
    ["beta.kubernetes.io/os"] = "linux", ["beta.kubernetes.io/arch"] = "amd64",
  }
  local changed = false
  for k, v in pairs(defaults) do
    if labels[k] == nil then labels[k], changed = v, true end
  end
  return labels, changed
end

local function announce_registration(sim, node)
  local name = node.metadata.name
  sim.event(node, "Normal", "Starting", "Starting kubelet.", "kubelet", { host = name })
  for _, p in ipairs(PRESSURE) do
    sim.event(node, "Normal", p[4], ("Node %s status is now: %s"):format(name, p[4]), "kubelet", { host = name })
  end
  sim.event(node, "Normal", "NodeAllocatableEnforced", "Updated Node Allocatable limit across pods", "kubelet", { host = name })
  if ready_state(node) == "True" then
    sim.event(node, "Normal", "NodeReady", ("Node %s status is now: NodeReady"):format(name), "kubelet", { host = name })
  end
  sim.event(node, "Normal", "RegisteredNode", ("Node %s event: Registered Node %s in Controller"):format(name, name), "node-controller")
end

-- ---- taints for readiness ----

local function wanted_taints(node)
  local state = ready_state(node)
  local keep = array()
  for _, t in ipairs(node.spec and node.spec.taints or {}) do
    if t.key ~= "node.kubernetes.io/not-ready" and t.key ~= "node.kubernetes.io/unreachable" then keep[#keep + 1] = t end
  end
  if state ~= "True" then
    local key = taint_key(state)
    local since
    for _, t in ipairs(node.spec and node.spec.taints or {}) do
      if t.key == key and t.effect == "NoExecute" then since = t.timeAdded end
    end
    keep[#keep + 1] = { key = key, effect = "NoSchedule" }
    keep[#keep + 1] = { key = key, effect = "NoExecute", timeAdded = since }
  end
  return keep
end

--- How long a pod stays on a node with this NoExecute taint: nil for ever, else seconds.
local function toleration_seconds(pod, taint)
  local tolerated_for, tolerated = nil, false
  for _, tol in ipairs(pod.spec.tolerations or {}) do
    if (tol.effect == nil or tol.effect == "" or tol.effect == "NoExecute") and scheduler.tolerates(tol, taint) then
      tolerated = true
      if tol.tolerationSeconds == nil then return nil end
      tolerated_for = math.min(tolerated_for or math.huge, tol.tolerationSeconds)
    end
  end
  if tolerated then return tolerated_for end
  return DEFAULT_TOLERATION
end

--- A periodic wait: simulated seconds, but never shorter than floor real seconds, so a
--- fast simulation does not spin on heartbeats.
local function periodic_sleep(rt, seconds, floor)
  vq.sleep(math.max(seconds * rt.sim.speed, floor))
end

function M.install(sim, rt, opts)
  local registered = {}      -- node name -> true once announced
  local evictions = {}       -- node name -> task
  -- one numbering of nodes for their addresses and their pods' subnets
  local function node_index(name) return rt.kubelet:node_index(name) end

  local function evict(node_name, taint)
    for _, pod in ipairs(sim:list("pods", nil, function(p) return p.spec.nodeName == node_name end)) do
      if not pod.metadata.deletionTimestamp and not R.pod_terminal(pod) then
        local secs = toleration_seconds(pod, taint)
        if secs then
          rt:spawn("evict " .. pod.metadata.name, function()
            rt:delay(secs)
            local current = sim:get("pods", pod.metadata.namespace, pod.metadata.name)
            local node = sim:get("nodes", nil, node_name)
            if current and current.metadata.uid == pod.metadata.uid and node and ready_state(node) ~= "True"
               and not current.metadata.deletionTimestamp then
              sim.event(current, "Normal", "TaintManagerEviction",
                ("Marking for deletion Pod %s/%s"):format(current.metadata.namespace, current.metadata.name), "taint-eviction-controller")
              sim:delete("pods", current)
            end
          end)
        end
      end
    end
  end

  local function schedule_evictions(node)
    local name = node.metadata.name
    local state = ready_state(node)
    if state == "True" then
      if evictions[name] then rt:cancel(evictions[name]) evictions[name] = nil end
      return
    end
    if evictions[name] then return end
    evictions[name] = rt:spawn("taint eviction " .. name, function()
      evict(name, { key = taint_key(state), effect = "NoExecute" })
    end)
  end

  local ctl = rt:controller("node-lifecycle", function(_, name)
    local node = sim:get("nodes", nil, name)
    if not node then return end
    local labels, relabel = default_labels(node)
    local taints = wanted_taints(node)
    for _, t in ipairs(taints) do
      if t.effect == "NoExecute" and not t.timeAdded then t.timeAdded = R.now(sim) end
    end
    if relabel or not R.same(taints, node.spec and node.spec.taints or array()) then
      local copy = util.copy(node)
      copy.metadata.labels = labels
      copy.spec = copy.spec or {}
      copy.spec.taints = #taints > 0 and taints or nil
      node = sim:update("nodes", copy)
    end
    -- a node that comes with its conditions has been registered long before we watched
    local joining = not R.condition(node.status, "Ready")
    node = rt:write_status("nodes", node, default_status(sim, node, node_index(name)))
    if not registered[name] then
      registered[name] = true
      if joining then announce_registration(sim, node) end
    end
    schedule_evictions(node)
  end)

  rt:watch("nodes", function(ev)
    local name = ev.object.metadata.name
    if ev.type == "DELETED" then
      registered[name] = nil
      if evictions[name] then rt:cancel(evictions[name]) evictions[name] = nil end
      rt:spawn("pod gc " .. name, function()
        for _, pod in ipairs(sim:list("pods", nil, function(p) return p.spec.nodeName == name end)) do
          sim.api:remove(resources.by_key.pods, pod, { grace = 0 })
        end
      end)
      return
    end
    ctl:enqueue(nil, name)
  end)

  --- Take a node out (false: the kubelet reports NotReady; "Unknown": it stopped posting
  --- status, its pods can no longer be stopped) or bring it back (true).
  sim.set_node_ready = function(name, ready, o)
    o = o or {}
    local node = sim:get("nodes", nil, name)
    if not node then return nil, ('nodes "%s" not found'):format(name) end
    local copy = util.copy(node)
    copy.status = copy.status or {}
    local now = R.now(sim)
    local was = ready_state(node)
    if ready == true then
      R.set_condition(copy.status, { type = "Ready", status = "True", reason = "KubeletReady",
        message = "kubelet is posting ready status", lastHeartbeatTime = now }, now)
      for _, p in ipairs(PRESSURE) do
        R.set_condition(copy.status, { type = p[1], status = "False", reason = p[2], message = p[3], lastHeartbeatTime = now }, now)
      end
    elseif ready == "Unknown" or o.unreachable then
      for _, t in ipairs { "Ready", "MemoryPressure", "DiskPressure", "PIDPressure" } do
        local old = R.condition(copy.status, t) or {}
        R.set_condition(copy.status, { type = t, status = "Unknown", reason = "NodeStatusUnknown",
          message = "Kubelet stopped posting node status.", lastHeartbeatTime = old.lastHeartbeatTime or now }, now)
      end
    else
      R.set_condition(copy.status, { type = "Ready", status = "False", reason = "KubeletNotReady",
        message = o.message or "container runtime status check may not have completed yet", lastHeartbeatTime = now }, now)
    end
    local stored = sim:update_status("nodes", copy)
    local state = ready_state(stored)
    if state ~= was then
      local component = state == "Unknown" and "node-controller" or "kubelet"
      local what = state == "True" and "NodeReady" or "NodeNotReady"
      sim.event(stored, "Normal", what, ("Node %s status is now: %s"):format(name, what), component, { host = name })
    end
    ctl:enqueue(nil, name)
    rt.kubelet:resync_node(name)
    return stored
  end

  local function renew_lease(node)
    local name = node.metadata.name
    local now = util.rfc3339_micro(sim.clock:now())
    local lease = sim:get("leases.coordination.k8s.io", "kube-node-lease", name)
    if not lease then
      if not sim:get("namespaces", nil, "kube-node-lease") then return end
      sim:create("leases.coordination.k8s.io", {
        metadata = { name = name, namespace = "kube-node-lease",
                     ownerReferences = array { { apiVersion = "v1", kind = "Node", name = name, uid = node.metadata.uid } } },
        spec = { holderIdentity = name, leaseDurationSeconds = 40, renewTime = now },
      })
      return
    end
    local copy = util.copy(lease)
    copy.spec.renewTime = now
    sim:update("leases.coordination.k8s.io", copy)
  end

  local function post_status(node)
    local copy = util.copy(node)
    local now = R.now(sim)
    for _, c in ipairs(copy.status and copy.status.conditions or {}) do c.lastHeartbeatTime = now end
    sim:update_status("nodes", copy)
  end

  local period = opts.heartbeat or LEASE_PERIOD
  rt:spawn("node heartbeats", function()
    local since_status = 0
    while true do
      periodic_sleep(rt, period, 1)
      since_status = since_status + period
      for _, node in ipairs(sim:list("nodes", nil)) do
        if ready_state(node) ~= "Unknown" then
          renew_lease(node)
          if since_status >= STATUS_PERIOD then post_status(node) end
        end
      end
      if since_status >= STATUS_PERIOD then since_status = 0 end
    end
  end)
  rt.node_lifecycle = ctl
end

function M.started(sim, rt)
  for _, node in ipairs(sim:list("nodes", nil)) do rt.node_lifecycle:enqueue(nil, node.metadata.name) end
end

return M
