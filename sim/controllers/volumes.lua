-- Volumes: the PersistentVolume controller binds claims to a matching volume or to one it
-- provisions for the claim's StorageClass (at once, or for WaitForFirstConsumer once the
-- scheduler picked a node), releases volumes whose claim is gone; the protection
-- controllers let a claim go only when no pod uses it, a volume only when it is not bound.
local util = require "sim.util"
local core = require "sim.core"
local resources = require "sim.resources"
local R = require "sim.controllers.runtime"
local scheduler = require "sim.controllers.scheduler"

local M = {}

local array = R.array
local COMPONENT = "persistentvolume-controller"
local PVC_PROTECTION, PV_PROTECTION = "kubernetes.io/pvc-protection", "kubernetes.io/pv-protection"

local function has_finalizer(obj, name)
  for _, f in ipairs(obj.metadata.finalizers or {}) do if f == name then return true end end
  return false
end

local function request_of(pvc)
  local res = pvc.spec and pvc.spec.resources or {}
  return R.quantity((res.requests or {}).storage) or 0
end

local function modes_cover(pv_modes, wanted)
  local have = {}
  for _, m in ipairs(pv_modes or {}) do have[m] = true end
  for _, m in ipairs(wanted or {}) do if not have[m] then return false end end
  return true
end

local function class_name(pvc, sc)
  if pvc.spec.storageClassName ~= nil then return pvc.spec.storageClassName end
  return sc and sc.metadata.name or ""
end

--- The smallest available volume that satisfies the claim, as the binder chooses.
local function find_volume(sim, pvc, sc)
  local want, cls = request_of(pvc), class_name(pvc, sc)
  local sel = pvc.spec.selector and pvc.spec.selector.matchLabels
  local best, best_size
  for _, pv in ipairs(sim:list("persistentvolumes", nil)) do
    local ref = pv.spec.claimRef
    local free = (pv.status or {}).phase == "Available" and (not ref or (ref.namespace == pvc.metadata.namespace and ref.name == pvc.metadata.name))
    local size = R.quantity((pv.spec.capacity or {}).storage) or 0
    local labels_ok = true
    for k, v in pairs(sel or {}) do if (pv.metadata.labels or {})[k] ~= v then labels_ok = false end end
    if free and not pv.metadata.deletionTimestamp and size >= want and (pv.spec.storageClassName or "") == cls
       and modes_cover(pv.spec.accessModes, pvc.spec.accessModes) and labels_ok
       and (pv.spec.volumeMode or "Filesystem") == (pvc.spec.volumeMode or "Filesystem") then
      if not best or size < best_size then best, best_size = pv, size end
    end
  end
  return best
end

local function bind(sim, rt, pvc, pv, provisioner)
  local pv_copy = util.copy(pv)
  pv_copy.spec.claimRef = { kind = "PersistentVolumeClaim", namespace = pvc.metadata.namespace, name = pvc.metadata.name,
                            uid = pvc.metadata.uid, apiVersion = "v1", resourceVersion = pvc.metadata.resourceVersion }
  pv_copy.metadata.annotations = pv_copy.metadata.annotations or {}
  if not pv.spec.claimRef then pv_copy.metadata.annotations["pv.kubernetes.io/bound-by-controller"] = "yes" end
  pv = sim:update("persistentvolumes", pv_copy)
  pv = rt:write_status("persistentvolumes", pv, { phase = "Bound" })
  local claim = util.copy(pvc)
  claim.spec.volumeName = pv.metadata.name
  claim.metadata.annotations = claim.metadata.annotations or {}
  local ann = claim.metadata.annotations
  ann["pv.kubernetes.io/bind-completed"] = "yes"
  ann["pv.kubernetes.io/bound-by-controller"] = "yes"
  if provisioner then
    ann["volume.beta.kubernetes.io/storage-provisioner"] = provisioner
    ann["volume.kubernetes.io/storage-provisioner"] = provisioner
  end
  claim = sim:update("persistentvolumeclaims", claim)
  rt:write_status("persistentvolumeclaims", claim, {
    phase = "Bound", accessModes = util.copy(pv.spec.accessModes or array()), capacity = util.copy(pv.spec.capacity or {}),
  })
end

--- A disk made for the node the scheduler picked lives in that node's zone.
local function zone_affinity(sim, pvc)
  local node_name = (pvc.metadata.annotations or {})["volume.kubernetes.io/selected-node"]
  local node = node_name and sim:get("nodes", nil, node_name)
  local zone = node and (node.metadata.labels or {})["topology.kubernetes.io/zone"]
  if not zone then return nil end
  return { required = { nodeSelectorTerms = array { { matchExpressions = array {
    { key = "topology.kubernetes.io/zone", operator = "In", values = array { zone } } } } } } }
end

local function provision(sim, rt, pvc, sc)
  local name = "pvc-" .. pvc.metadata.uid
  sim.event(pvc, "Normal", "Provisioning", ('External provisioner is provisioning volume for claim "%s/%s"'):format(pvc.metadata.namespace, pvc.metadata.name), sc.provisioner)
  local pv = sim:get("persistentvolumes", nil, name) or sim:create("persistentvolumes", {
    metadata = { name = name, annotations = { ["pv.kubernetes.io/provisioned-by"] = sc.provisioner } },
    spec = {
      capacity = { storage = ((pvc.spec.resources or {}).requests or {}).storage or "1Gi" },
      accessModes = util.copy(pvc.spec.accessModes or array { "ReadWriteOnce" }),
      persistentVolumeReclaimPolicy = sc.reclaimPolicy or "Delete",
      storageClassName = sc.metadata.name, volumeMode = pvc.spec.volumeMode or "Filesystem",
      csi = { driver = sc.provisioner, volumeHandle = name, fsType = "ext4" },
      nodeAffinity = zone_affinity(sim, pvc),
      claimRef = { kind = "PersistentVolumeClaim", namespace = pvc.metadata.namespace, name = pvc.metadata.name,
                   uid = pvc.metadata.uid, apiVersion = "v1" },
    },
  })
  if not pv then return end
  sim.event(pvc, "Normal", "ProvisioningSucceeded", ("Successfully provisioned volume %s"):format(name), sc.provisioner)
  bind(sim, rt, pvc, pv, sc.provisioner)
end

--- Pods that keep a claim in use: scheduled and not finished.
local function claim_in_use(sim, pvc)
  for _, pod in ipairs(sim:list("pods", pvc.metadata.namespace)) do
    if pod.spec.nodeName and not R.pod_terminal(pod) then
      for _, v in ipairs(pod.spec.volumes or {}) do
        if v.persistentVolumeClaim and v.persistentVolumeClaim.claimName == pvc.metadata.name then return true end
      end
    end
  end
  return false
end

local function sync_claim(sim, rt, pvc)
  if pvc.metadata.deletionTimestamp then
    if has_finalizer(pvc, PVC_PROTECTION) and not claim_in_use(sim, pvc) then
      core.remove_finalizer(sim, resources.by_key.persistentvolumeclaims, pvc, PVC_PROTECTION)
    end
    return
  end
  if (pvc.status or {}).phase == "Bound" then return end
  if pvc.spec.volumeName and pvc.spec.volumeName ~= "" then
    local pv = sim:get("persistentvolumes", nil, pvc.spec.volumeName)
    local ref = pv and pv.spec.claimRef
    local ours = ref and ref.namespace == pvc.metadata.namespace and ref.name == pvc.metadata.name
      and (not ref.uid or ref.uid == pvc.metadata.uid)
    -- pre-bound both ways (a restored or copied claim and volume): complete the binding
    if pv and ((pv.status or {}).phase ~= "Bound" or (ours and ref.uid == nil)) then bind(sim, rt, pvc, pv) end
    return
  end
  local sc = scheduler.storage_class(sim, pvc)
  local pv = find_volume(sim, pvc, sc)
  if pv then return bind(sim, rt, pvc, pv) end
  if sc and scheduler.can_provision(sim, pvc) then
    local selected = (pvc.metadata.annotations or {})["volume.kubernetes.io/selected-node"]
    if sc.volumeBindingMode == "WaitForFirstConsumer" and not selected then
      sim.event(pvc, "Normal", "WaitForFirstConsumer", "waiting for first consumer to be created before binding", COMPONENT)
      return
    end
    return provision(sim, rt, pvc, sc)
  end
  if not sc then
    sim.event(pvc, "Normal", "FailedBinding", "no persistent volumes available for this claim and no storage class is set", COMPONENT)
  else
    sim.event(pvc, "Warning", "ProvisioningFailed", ('storageclass.storage.k8s.io "%s" not found'):format(class_name(pvc, sc)), COMPONENT)
  end
end

local function sync_volume(sim, rt, pv)
  local phase = (pv.status or {}).phase
  local ref = pv.spec.claimRef
  if phase == "Bound" and ref then
    local pvc = sim:get("persistentvolumeclaims", ref.namespace, ref.name)
    if not pvc or (ref.uid and pvc.metadata.uid ~= ref.uid) then
      pv = rt:write_status("persistentvolumes", pv, { phase = "Released" })
      phase = "Released"
      if pv.spec.persistentVolumeReclaimPolicy == "Delete" and not pv.metadata.deletionTimestamp then
        sim:delete("persistentvolumes", pv)
        pv = sim:get("persistentvolumes", nil, pv.metadata.name)
        if not pv then return end
      end
    end
  end
  if pv.metadata.deletionTimestamp and has_finalizer(pv, PV_PROTECTION) and phase ~= "Bound" then
    core.remove_finalizer(sim, resources.by_key.persistentvolumes, pv, PV_PROTECTION)
  end
end

function M.install(sim, rt)
  local claims = rt:controller("persistentvolume-binder", function(ns, name)
    local pvc = sim:get("persistentvolumeclaims", ns, name)
    if pvc then sync_claim(sim, rt, pvc) end
  end)
  local volumes = rt:controller("persistentvolume", function(_, name)
    local pv = sim:get("persistentvolumes", nil, name)
    if pv then sync_volume(sim, rt, pv) end
  end)
  local function pending_claims()
    for _, pvc in ipairs(sim:list("persistentvolumeclaims", nil, function(c) return (c.status or {}).phase ~= "Bound" end)) do
      claims:enqueue(pvc.metadata.namespace, pvc.metadata.name)
    end
  end
  rt:watch("persistentvolumeclaims", function(ev)
    local pvc = ev.object
    if ev.type == "DELETED" then
      if pvc.spec and pvc.spec.volumeName then volumes:enqueue(nil, pvc.spec.volumeName) end
      return
    end
    claims:enqueue(pvc.metadata.namespace, pvc.metadata.name)
  end)
  rt:watch("persistentvolumes", function(ev)
    if ev.type ~= "DELETED" then
      volumes:enqueue(nil, ev.object.metadata.name)
      if (ev.object.status or {}).phase == "Available" then pending_claims() end
    end
  end)
  rt:watch("storageclasses.storage.k8s.io", function() pending_claims() end)
  rt:watch("pods", function(ev)
    local pod = ev.object
    local gone = ev.type == "DELETED" or R.pod_terminal(pod)
    if not gone then return end
    for _, v in ipairs(pod.spec and pod.spec.volumes or {}) do
      if v.persistentVolumeClaim then claims:enqueue(pod.metadata.namespace, v.persistentVolumeClaim.claimName) end
    end
  end)
  rt.claims, rt.volumes = claims, volumes
end

function M.started(sim, rt)
  for _, pvc in ipairs(sim:list("persistentvolumeclaims", nil)) do rt.claims:enqueue(pvc.metadata.namespace, pvc.metadata.name) end
  for _, pv in ipairs(sim:list("persistentvolumes", nil)) do rt.volumes:enqueue(nil, pv.metadata.name) end
end

return M
