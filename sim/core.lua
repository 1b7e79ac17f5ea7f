-- What the apiserver itself does beyond storing: defaults on create, the scale
-- subresource, ClusterIPs, the PVC protection finalizer, events.k8s.io's view of events,
-- access reviews, garbage collection by ownerReferences, namespace deletion, and (in
-- sim/crd.lua) the resources CustomResourceDefinitions define.
local json = require "json"
local util = require "sim.util"
local api_mod = require "sim.api"
local resources = require "sim.resources"

local M = {}

local function array(t) return setmetatable(t or {}, json.array_mt) end

-- ---- defaults ----

local function default_probe(probe)
  if not probe then return end
  probe.timeoutSeconds = probe.timeoutSeconds or 1
  probe.periodSeconds = probe.periodSeconds or 10
  probe.successThreshold = probe.successThreshold or 1
  probe.failureThreshold = probe.failureThreshold or 3
  if probe.httpGet then probe.httpGet.scheme = probe.httpGet.scheme or "HTTP" end
end

local function default_container(c)
  -- Always for :latest and for an image with neither tag nor digest
  local image = c.image or ""
  local untagged = not image:find("@", 1, true) and not image:match(":[^/]*$")
  c.imagePullPolicy = c.imagePullPolicy or ((image:find(":latest$") or untagged) and "Always" or "IfNotPresent")
  c.terminationMessagePath = c.terminationMessagePath or "/dev/termination-log"
  c.terminationMessagePolicy = c.terminationMessagePolicy or "File"
  c.resources = c.resources or {}
  for _, p in ipairs(c.ports or {}) do p.protocol = p.protocol or "TCP" end
  for _, e in ipairs(c.env or {}) do
    local ref = e.valueFrom and e.valueFrom.fieldRef
    if ref then ref.apiVersion = ref.apiVersion or "v1" end
  end
  for _, probe in ipairs { c.livenessProbe, c.readinessProbe, c.startupProbe } do default_probe(probe) end
end

-- SetDefaults_PodSpec: what every PodSpec gets, a pod's or a template's.
local function default_pod(obj)
  local spec = obj.spec or {}
  obj.spec = spec
  spec.restartPolicy = spec.restartPolicy or "Always"
  spec.terminationGracePeriodSeconds = spec.terminationGracePeriodSeconds or 30
  spec.dnsPolicy = spec.dnsPolicy or "ClusterFirst"
  spec.schedulerName = spec.schedulerName or "default-scheduler"
  spec.securityContext = spec.securityContext or {}
  -- the deprecated serviceAccount mirrors serviceAccountName
  spec.serviceAccount = spec.serviceAccount or spec.serviceAccountName
  spec.serviceAccountName = spec.serviceAccountName or spec.serviceAccount
  for _, list in ipairs { spec.containers or {}, spec.initContainers or {} } do
    for _, c in ipairs(list) do default_container(c) end
  end
  for _, v in ipairs(spec.volumes or {}) do
    for _, src in ipairs { v.secret or false, v.configMap or false, v.downwardAPI or false, v.projected or false } do
      if src then src.defaultMode = src.defaultMode or 420 end
    end
  end
  obj.status = obj.status or { phase = "Pending", qosClass = "BestEffort" }
end

-- A template: its pod defaults, no status, and the creationTimestamp: null the Go
-- encoding of its (zero) ObjectMeta writes.
local function default_template(template)
  default_pod(template)
  template.status = nil
  local meta = util.ensure(template, "metadata")
  if meta.creationTimestamp == nil then meta.creationTimestamp = json.null end
end

-- A StatefulSet's claim templates are whole PersistentVolumeClaims.
local function default_claim_templates(spec)
  for _, pvc in ipairs(spec.volumeClaimTemplates or {}) do
    pvc.apiVersion, pvc.kind = pvc.apiVersion or "v1", pvc.kind or "PersistentVolumeClaim"
    local meta = util.ensure(pvc, "metadata")
    if meta.creationTimestamp == nil then meta.creationTimestamp = json.null end
    pvc.spec = pvc.spec or {}
    pvc.spec.volumeMode = pvc.spec.volumeMode or "Filesystem"
    pvc.status = pvc.status or { phase = "Pending" }
  end
end

local PRIORITIES = { ["system-cluster-critical"] = 2000000000, ["system-node-critical"] = 2000001000 }

-- The ServiceAccount admission plugin: the pod's token, CA and namespace, mounted in
-- every container unless the pod or its account opts out.
local function mount_service_account(sim, obj)
  local spec = obj.spec
  local sa = sim.store:get("serviceaccounts", obj.metadata.namespace, spec.serviceAccountName)
  if spec.automountServiceAccountToken == false or (sa and sa.automountServiceAccountToken == false) then return end
  local name = "kube-api-access-" .. util.random_suffix(5)
  spec.volumes = spec.volumes or array()
  table.insert(spec.volumes, { name = name, projected = { defaultMode = 420, sources = array {
    { serviceAccountToken = { expirationSeconds = 3607, path = "token" } },
    { configMap = { name = "kube-root-ca.crt", items = array { { key = "ca.crt", path = "ca.crt" } } } },
    { downwardAPI = { items = array { { path = "namespace", fieldRef = { apiVersion = "v1", fieldPath = "metadata.namespace" } } } } },
  } } })
  for _, list in ipairs { spec.containers or {}, spec.initContainers or {} } do
    for _, c in ipairs(list) do
      c.volumeMounts = c.volumeMounts or array()
      table.insert(c.volumeMounts, { name = name, mountPath = "/var/run/secrets/kubernetes.io/serviceaccount", readOnly = true })
    end
  end
end

-- What a pod gets beyond its spec's defaults: the defaults of SetDefaults_Pod and the
-- ServiceAccount and Priority admission plugins.
local function admit_pod(sim, obj)
  default_pod(obj)
  local spec = obj.spec
  spec.serviceAccountName = spec.serviceAccountName or "default"
  spec.serviceAccount = spec.serviceAccountName
  if spec.enableServiceLinks == nil then spec.enableServiceLinks = true end
  if spec.priority == nil then
    local pc = spec.priorityClassName and sim.store:get("priorityclasses.scheduling.k8s.io", nil, spec.priorityClassName)
    spec.priority = pc and pc.value or PRIORITIES[spec.priorityClassName or ""] or 0
  end
  spec.preemptionPolicy = spec.preemptionPolicy or "PreemptLowerPriority"
  mount_service_account(sim, obj)
end

-- The DefaultTolerationSeconds admission plugin (pods only, not templates): a pod rides
-- out a NotReady or unreachable node for five minutes.
local function default_tolerations(spec)
  local tolerations = spec.tolerations or array()
  for _, key in ipairs { "node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable" } do
    local has = false
    for _, t in ipairs(tolerations) do
      if t.key == key and (t.effect == nil or t.effect == "NoExecute") then has = true end
    end
    if not has then
      tolerations[#tolerations + 1] = { key = key, operator = "Exists", effect = "NoExecute", tolerationSeconds = 300 }
    end
  end
  spec.tolerations = tolerations
end

local function default_workload(obj, kind)
  local spec = obj.spec or {}
  obj.spec = spec
  if kind ~= "DaemonSet" then spec.replicas = spec.replicas or 1 end
  spec.revisionHistoryLimit = spec.revisionHistoryLimit or 10
  if kind == "StatefulSet" then
    spec.podManagementPolicy = spec.podManagementPolicy or "OrderedReady"
    spec.updateStrategy = spec.updateStrategy or { type = "RollingUpdate" }
    if spec.updateStrategy.type == "RollingUpdate" then
      spec.updateStrategy.rollingUpdate = spec.updateStrategy.rollingUpdate or { partition = 0 }
    end
    spec.persistentVolumeClaimRetentionPolicy = spec.persistentVolumeClaimRetentionPolicy or { whenDeleted = "Retain", whenScaled = "Retain" }
  elseif kind == "Deployment" then
    spec.strategy = spec.strategy or { type = "RollingUpdate", rollingUpdate = { maxSurge = "25%", maxUnavailable = "25%" } }
    spec.progressDeadlineSeconds = spec.progressDeadlineSeconds or 600
  elseif kind == "DaemonSet" then
    spec.updateStrategy = spec.updateStrategy or { type = "RollingUpdate", rollingUpdate = { maxUnavailable = 1, maxSurge = 0 } }
  end
  if spec.template then default_template(spec.template) end
  if kind == "StatefulSet" then default_claim_templates(spec) end
  obj.status = obj.status or {}
end

local function default_job(sim, obj)
  local spec = obj.spec or {}
  obj.spec = spec
  -- JobPodReplacementPolicy (beta, on) from 1.29
  if sim:minor() >= 29 then spec.podReplacementPolicy = spec.podReplacementPolicy or "TerminatingOrFailed" end
  spec.parallelism = spec.parallelism or 1
  spec.completions = spec.completions or 1
  spec.backoffLimit = spec.backoffLimit or 6
  spec.completionMode = spec.completionMode or "NonIndexed"
  spec.suspend = spec.suspend or false
  local uid = obj.metadata.uid
  spec.selector = spec.selector or { matchLabels = { ["batch.kubernetes.io/controller-uid"] = uid } }
  spec.template = spec.template or {}
  local tm = util.ensure(spec.template, "metadata")
  tm.labels = tm.labels or {}
  tm.labels["batch.kubernetes.io/controller-uid"] = uid
  tm.labels["batch.kubernetes.io/job-name"] = obj.metadata.name
  tm.labels["controller-uid"] = uid
  tm.labels["job-name"] = obj.metadata.name
  obj.metadata.labels = obj.metadata.labels or {}
  obj.metadata.labels["batch.kubernetes.io/controller-uid"] = uid
  obj.metadata.labels["batch.kubernetes.io/job-name"] = obj.metadata.name
  obj.metadata.labels["controller-uid"] = uid
  obj.metadata.labels["job-name"] = obj.metadata.name
  default_template(spec.template)
  spec.template.spec.restartPolicy = spec.template.spec.restartPolicy ~= "Always" and spec.template.spec.restartPolicy or "Never"
  obj.status = obj.status or {}
end

local function next_cluster_ip(sim)
  sim.next_ip = (sim.next_ip or 10) + 1
  return ("10.96.%d.%d"):format(sim.next_ip // 250, sim.next_ip % 250 + 1)
end

local function default_service(sim, obj)
  local spec = obj.spec or {}
  obj.spec = spec
  spec.type = spec.type or "ClusterIP"
  spec.sessionAffinity = spec.sessionAffinity or "None"
  if spec.type ~= "ExternalName" then
    spec.internalTrafficPolicy = spec.internalTrafficPolicy or "Cluster"
    spec.ipFamilies = spec.ipFamilies or array { "IPv4" }
    spec.ipFamilyPolicy = spec.ipFamilyPolicy or "SingleStack"
  end
  if spec.type == "NodePort" or spec.type == "LoadBalancer" then
    spec.externalTrafficPolicy = spec.externalTrafficPolicy or "Cluster"
  end
  if spec.type == "LoadBalancer" and spec.allocateLoadBalancerNodePorts == nil then spec.allocateLoadBalancerNodePorts = true end
  if spec.clusterIP == nil and spec.type ~= "ExternalName" then spec.clusterIP = next_cluster_ip(sim) end
  if spec.clusterIP and spec.clusterIP ~= "None" then spec.clusterIPs = array { spec.clusterIP } end
  for _, p in ipairs(spec.ports or {}) do
    p.protocol = p.protocol or "TCP"
    p.targetPort = p.targetPort or p.port
    if (spec.type == "NodePort" or spec.type == "LoadBalancer") and not p.nodePort then
      sim.next_node_port = (sim.next_node_port or 30000) + 1
      p.nodePort = sim.next_node_port
    end
  end
  obj.status = obj.status or { loadBalancer = {} }
end

local function validate_containers(obj, path, spec)
  local causes = {}
  if not spec or not spec.containers or #spec.containers == 0 then
    causes[#causes + 1] = { reason = "FieldValueRequired", message = "Required value", field = path .. ".containers" }
  end
  for i, c in ipairs(spec and spec.containers or {}) do
    if not c.image or c.image == "" then
      causes[#causes + 1] = { reason = "FieldValueRequired", message = "Required value", field = ("%s.containers[%d].image"):format(path, i - 1) }
    end
  end
  return causes
end

local function invalid(t, obj, causes)
  local msgs = {}
  for _, c in ipairs(causes) do msgs[#msgs + 1] = c.field .. ": " .. c.message end
  return false, api_mod.status(422, ('%s "%s" is invalid: %s'):format(t, obj.metadata.name, table.concat(msgs, ", ")),
    "Invalid", { name = obj.metadata.name, kind = t, causes = array(causes) })
end

local function install_defaults(sim)
  local a = sim.admission
  a.pods = function(s, op, obj, old)
    if op == "create" then
      admit_pod(s, obj)
      default_tolerations(obj.spec)
      local causes = validate_containers(obj, "spec", obj.spec)
      if #causes > 0 then return invalid("Pod", obj, causes) end
    elseif old and obj.spec and old.spec then
      -- a pod's spec is immutable but for images, tolerations and a few more
      for _, f in ipairs { "nodeName", "restartPolicy", "serviceAccountName", "serviceAccount", "enableServiceLinks",
                           "priority", "preemptionPolicy", "volumes" } do
        obj.spec[f] = old.spec[f]
      end
    end
  end
  for _, kind in ipairs { "StatefulSet", "Deployment", "DaemonSet", "ReplicaSet" } do
    a[kind:lower() .. "s.apps"] = function(_, op, obj)
      if op == "create" then default_workload(obj, kind) end
      local tspec = obj.spec and obj.spec.template and obj.spec.template.spec
      local causes = validate_containers(obj, "spec.template.spec", tspec)
      if #causes > 0 then return invalid(kind, obj, causes) end
    end
  end
  a["jobs.batch"] = function(s, op, obj, old)
    if op == "create" then default_job(s, obj)
    elseif old and old.spec and obj.spec and json.encode(old.spec.template, { sort_keys = true }) ~= json.encode(obj.spec.template, { sort_keys = true }) then
      return false, api_mod.status(422, ('Job.batch "%s" is invalid: spec.template: Invalid value: field is immutable'):format(obj.metadata.name), "Invalid")
    end
  end
  a["cronjobs.batch"] = function(_, op, obj)
    if op == "create" then
      local spec = obj.spec or {}
      obj.spec = spec
      spec.suspend = spec.suspend or false
      spec.concurrencyPolicy = spec.concurrencyPolicy or "Allow"
      spec.successfulJobsHistoryLimit = spec.successfulJobsHistoryLimit or 3
      spec.failedJobsHistoryLimit = spec.failedJobsHistoryLimit or 1
      -- the pod template inside the job template gets the pod defaults, as any PodSpec does
      local jt = spec.jobTemplate
      if jt then
        local meta = util.ensure(jt, "metadata")
        if meta.creationTimestamp == nil then meta.creationTimestamp = json.null end
        if jt.spec and jt.spec.template then default_template(jt.spec.template) end
      end
      obj.status = obj.status or {}
    end
  end
  a.services = function(s, op, obj, old)
    if op == "create" then default_service(s, obj)
    elseif old then
      obj.spec = obj.spec or {}
      obj.spec.clusterIP = old.spec.clusterIP
      obj.spec.clusterIPs = old.spec.clusterIPs
    end
  end
  a.namespaces = function(_, op, obj)
    if op == "create" then
      obj.spec = { finalizers = array { "kubernetes" } }
      obj.status = { phase = "Active" }
      obj.metadata.labels = obj.metadata.labels or {}
      obj.metadata.labels["kubernetes.io/metadata.name"] = obj.metadata.name
    end
  end
  a.secrets = function(_, op, obj)
    if op == "create" then obj.type = obj.type or "Opaque" end
    -- stringData is write-only: folded into data as base64
    if obj.stringData then
      obj.data = obj.data or {}
      for k, v in pairs(obj.stringData) do obj.data[k] = util.base64(v) end
      obj.stringData = nil
    end
  end
  a.persistentvolumeclaims = function(_, op, obj)
    if op == "create" then
      obj.metadata.finalizers = obj.metadata.finalizers or array()
      table.insert(obj.metadata.finalizers, "kubernetes.io/pvc-protection")
      obj.status = obj.status or { phase = "Pending" }
      obj.spec = obj.spec or {}
      obj.spec.volumeMode = obj.spec.volumeMode or "Filesystem"
    end
  end
  a.persistentvolumes = function(_, op, obj)
    if op == "create" then
      obj.metadata.finalizers = obj.metadata.finalizers or array()
      table.insert(obj.metadata.finalizers, "kubernetes.io/pv-protection")
      obj.spec = obj.spec or {}
      obj.spec.persistentVolumeReclaimPolicy = obj.spec.persistentVolumeReclaimPolicy or "Retain"
      if obj.spec.hostPath then obj.spec.hostPath.type = obj.spec.hostPath.type or "" end
      obj.spec.volumeMode = obj.spec.volumeMode or "Filesystem"
      -- a volume created for a claim (claimRef) is still Available until the binder binds it
      obj.status = obj.status or { phase = "Available" }
    end
  end
  a.events = function(s, op, obj)
    if op == "create" then
      local now = util.rfc3339(s.clock:now())
      obj.firstTimestamp = obj.firstTimestamp or now
      obj.lastTimestamp = obj.lastTimestamp or now
      obj.count = obj.count or 1
      obj.type = obj.type or "Normal"
    end
  end
end

-- ---- the scale subresource ----

-- Where a type keeps its replicas: a custom resource where its CRD's scale subresource says
-- (specReplicasPath, statusReplicasPath, labelSelectorPath), the built-in ones in spec and status.
local BUILTIN_SCALE = { specReplicasPath = ".spec.replicas", statusReplicasPath = ".status.replicas" }

local function selector_text(t, obj)
  if t.scale then
    local sel = t.scale.labelSelectorPath and util.get_path(obj, t.scale.labelSelectorPath)
    return type(sel) == "string" and sel or nil
  end
  local sel = obj.spec and obj.spec.selector and obj.spec.selector.matchLabels or {}
  local parts = {}
  for k, v in pairs(sel) do parts[#parts + 1] = k .. "=" .. v end
  table.sort(parts)
  return table.concat(parts, ",")
end

local function scale_of(t, obj)
  local paths = t.scale or BUILTIN_SCALE
  local function int(path)
    local v = util.get_path(obj, path)
    return type(v) == "number" and v or 0
  end
  return {
    kind = "Scale", apiVersion = "autoscaling/v1",
    metadata = { name = obj.metadata.name, namespace = obj.metadata.namespace, uid = obj.metadata.uid,
                 resourceVersion = obj.metadata.resourceVersion, creationTimestamp = obj.metadata.creationTimestamp },
    spec = { replicas = int(paths.specReplicasPath) },
    status = { replicas = int(paths.statusReplicasPath), selector = selector_text(t, obj) },
  }
end

-- The object with its desired replicas set (a copy).
local function with_replicas(t, obj, replicas)
  local new = util.copy(obj)
  local path = (t.scale or BUILTIN_SCALE).specReplicasPath
  local parent, field = path:match("^(.*)%.([^.]+)$")
  util.ensure(new, parent)[field] = replicas
  return new
end

local function scale_handler(sim, req, res, r)
  local t = r.t
  local obj = sim.store:get(resources.store_key(t), r.ns, r.name)
  if not obj then
    return api_mod.send_status(res, 404, ('%s "%s" not found'):format(t.key, r.name), "NotFound", { name = r.name, group = t.group, kind = t.plural })
  end
  if req.method == "GET" then return api_mod.send_json(res, 200, scale_of(t, obj)) end
  local body, replicas, rv = nil, nil, nil
  local ok, decoded = pcall(json.decode, req.body or "")
  body = ok and decoded or nil
  if type(body) ~= "table" then return api_mod.send_status(res, 400, "invalid body", "BadRequest") end
  if req.method == "PUT" then
    replicas = body.spec and body.spec.replicas
    rv = body.metadata and body.metadata.resourceVersion
  elseif req.method == "PATCH" then
    local ct = (req.headers["content-type"] or ""):match("^[^;]+")
    local patched, err = require("sim.patch").patch(ct, scale_of(t, obj), req.body, t)
    if not patched then
      if type(err) == "table" and err.code == 415 then return api_mod.send_json(res, 415, err) end
      return api_mod.send_status(res, 400, "invalid patch", "BadRequest")
    end
    replicas = patched.spec and patched.spec.replicas
  else
    return api_mod.send_status(res, 405, "method not allowed", "MethodNotAllowed")
  end
  if math.type(replicas) ~= "integer" or replicas < 0 then
    return api_mod.send_status(res, 422, ('Scale.autoscaling "%s" is invalid: spec.replicas: Invalid value: %s: must be greater than or equal to 0'):format(r.name, tostring(replicas)), "Invalid")
  end
  local new = with_replicas(t, obj, replicas)
  new.metadata.resourceVersion = rv
  local stored, status = sim.api:replace(t, r.ns, r.name, new, { dry_run = req.query.dryRun == "All",
    manager = req.query.fieldManager or require("sim.patch").manager_from_agent(req.headers["user-agent"]) })
  if not stored then return api_mod.send_json(res, status.code, status) end
  api_mod.send_json(res, 200, scale_of(t, stored))
end

-- ---- events.k8s.io/v1: the same events, in that API's shape ----

local function event_v1(e)
  local io = e.involvedObject or {}
  return {
    kind = "Event", apiVersion = "events.k8s.io/v1", metadata = e.metadata,
    eventTime = e.eventTime or json.null, reason = e.reason, note = e.message, type = e.type,
    regarding = io, reportingController = e.reportingComponent or (e.source and e.source.component),
    reportingInstance = e.reportingInstance or (e.source and e.source.host),
    deprecatedCount = e.count, deprecatedFirstTimestamp = e.firstTimestamp, deprecatedLastTimestamp = e.lastTimestamp,
    deprecatedSource = e.source, action = e.action or e.reason,
  }
end

-- ---- access reviews: the simulator's user may do everything a scenario does not deny ----

local function access_review(sim, req, res, r, obj)
  local attrs = obj.spec and (obj.spec.resourceAttributes or obj.spec.nonResourceAttributes) or {}
  local denied = sim.denied and sim.denied(attrs)
  obj.status = { allowed = not denied, denied = denied or nil,
    reason = denied and ("scenario denies %s %s"):format(attrs.verb or "?", attrs.resource or attrs.path or "?") or nil }
  obj.metadata = obj.metadata or {}
  obj.metadata.creationTimestamp = json.null
  api_mod.send_json(res, 201, obj)
end

local function self_subject_review(sim, req, res, r, obj)
  obj.status = { userInfo = { username = "vqsim-admin", groups = array { "system:masters", "system:authenticated" } } }
  api_mod.send_json(res, 201, obj)
end

-- ---- garbage collection ----

local function dependents_of(sim, owner_uid)
  local out = {}
  for _, pair in ipairs(sim.store:owned_by(owner_uid)) do
    local t = sim.types:get(pair[1])
    if t then out[#out + 1] = { t = t, obj = pair[2] } end
  end
  return out
end

local function remove_finalizer(sim, t, obj, name)
  local copy = util.copy(obj)
  local keep = array()
  for _, f in ipairs(copy.metadata.finalizers or {}) do if f ~= name then keep[#keep + 1] = f end end
  copy.metadata.finalizers = keep
  copy.metadata.resourceVersion = nil
  return sim.api:replace(t, copy.metadata.namespace, copy.metadata.name, copy)
end

local function collect(sim, t, owner, policy)
  local deps = dependents_of(sim, owner.metadata.uid)
  if policy == "Orphan" then
    for _, d in ipairs(deps) do
      local copy = util.copy(d.obj)
      local refs = array()
      for _, ref in ipairs(copy.metadata.ownerReferences or {}) do
        if ref.uid ~= owner.metadata.uid then refs[#refs + 1] = ref end
      end
      copy.metadata.ownerReferences = #refs > 0 and refs or nil
      sim.api:replace(d.t, copy.metadata.namespace, copy.metadata.name, copy)
    end
    return
  end
  for _, d in ipairs(deps) do
    local current = sim.store:get(resources.store_key(d.t), d.obj.metadata.namespace, d.obj.metadata.name)
    if current and not current.metadata.deletionTimestamp then sim.api:remove(d.t, current, { propagation = "Background" }) end
  end
  if policy == "Foreground" then
    -- the owner goes once its dependents are gone
    sim:spawn(function()
      for _ = 1, 600 do
        if #dependents_of(sim, owner.metadata.uid) == 0 then break end
        sim:delay(0.1)
      end
      local current = sim.store:get(resources.store_key(t), owner.metadata.namespace, owner.metadata.name)
      if current then remove_finalizer(sim, t, current, "foregroundDeletion") end
    end)
  end
end

local function delete_namespace_contents(sim, ns)
  sim:spawn(function()
    sim:delay(0.05)
    for _, t in ipairs(sim.types:list()) do
      if t.namespaced and not t.shared_with then
        for _, obj in ipairs(sim.store:list(resources.store_key(t), ns.metadata.name)) do
          sim.api:remove(t, obj, { propagation = "Background", grace = 0 })
        end
      end
    end
    local current = sim.store:get("namespaces", nil, ns.metadata.name)
    if current then sim.store:remove("namespaces", current) end
  end)
end

function M.install(sim)
  install_defaults(sim)
  -- the apiextensions part of the apiserver: CRDs and the resources they define
  require("sim.crd").install(sim)
  for _, key in ipairs { "statefulsets.apps", "deployments.apps", "replicasets.apps", "replicationcontrollers" } do
    sim.subresources[key .. "/scale"] = scale_handler
  end
  sim.convert["events.events.k8s.io"] = event_v1
  sim.create_handlers["selfsubjectaccessreviews.authorization.k8s.io"] = access_review
  sim.create_handlers["selfsubjectreviews.authentication.k8s.io"] = self_subject_review
  sim.create_handlers["selfsubjectrulesreviews.authorization.k8s.io"] = function(_, _, res, _, obj)
    obj.status = { resourceRules = array { { verbs = array { "*" }, apiGroups = array { "*" }, resources = array { "*" } } },
                   nonResourceRules = array { { verbs = array { "*" }, nonResourceURLs = array { "*" } } }, incomplete = false }
    api_mod.send_json(res, 201, obj)
  end
  sim.on_delete = function(t, obj, policy)
    if t.key == "namespaces" then
      local current = sim.store:get("namespaces", nil, obj.metadata.name)
      if current and current.status.phase ~= "Terminating" then
        local copy = util.copy(current)
        copy.status.phase = "Terminating"
        copy.metadata.deletionTimestamp = copy.metadata.deletionTimestamp or util.rfc3339(sim.clock:now())
        copy.metadata.resourceVersion = nil
        sim.store:put("namespaces", copy, "MODIFIED")
      end
      return delete_namespace_contents(sim, obj)
    end
    collect(sim, t, obj, policy)
    if sim.after_delete then sim.after_delete(t, obj) end
  end
  -- the root CA publisher: every namespace gets the kube-root-ca.crt ConfigMap
  sim.store:on_change(function(ev)
    if ev.key ~= "namespaces" or ev.type ~= "ADDED" then return end
    local ns = ev.object.metadata.name
    sim:spawn(function()
      if sim.store:get("configmaps", ns, "kube-root-ca.crt") then return end
      sim:create("configmaps", { metadata = { name = "kube-root-ca.crt", namespace = ns,
        annotations = { ["kubernetes.io/description"] = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters." } },
        data = { ["ca.crt"] = sim.world_info and sim.world_info.ca_pem or "" } })
    end)
  end)
  -- namespaces exist before anything is created in them
  for _, ns in ipairs { "default", "kube-system", "kube-public", "kube-node-lease" } do
    sim:create("namespaces", { metadata = { name = ns } })
  end
end

M.scale_of = scale_of
M.scale_handler = scale_handler
M.remove_finalizer = remove_finalizer
return M
