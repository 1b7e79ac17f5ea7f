-- Server-side printing: the Table objects kubectl asks for (as=Table), with the columns
-- and cell text of the real apiserver's printers (pkg/printers/internalversion).
local json = require "json"
local util = require "sim.util"

local M = {}

local function array(t) return setmetatable(t or {}, json.array_mt) end

local function col(name, typ, priority, format, desc)
  return { name = name, type = typ or "string", format = format or "", description = desc or "", priority = priority or 0 }
end

-- A column the apiserver prints from minor version `minor` on (Job STATUS came in 1.30).
local function since_minor(minor, c)
  c.since_minor = minor
  return c
end

-- printBoolPtr
local function bool_text(v)
  if v == nil then return "<unset>" end
  return v and "True" or "False"
end

local NAME = col("Name", "string", 0, "name", "Name must be unique within a namespace.")

local function age(sim, obj)
  local t = util.parse_time(obj.metadata.creationTimestamp)
  if not t then return "<unknown>" end
  return util.human_duration(sim.clock:now() - t)
end

local function since(sim, ts)
  local t = util.parse_time(ts)
  if not t then return "<unknown>" end
  return util.human_duration(sim.clock:now() - t)
end

local function none(v)
  if v == nil or v == "" then return "<none>" end
  return v
end

local function containers_images(spec)
  local names, images = {}, {}
  for _, c in ipairs(spec and spec.containers or {}) do
    names[#names + 1] = c.name
    images[#images + 1] = c.image
  end
  return table.concat(names, ","), table.concat(images, ",")
end

local function selector_text(sel)
  if not sel then return "<none>" end
  local parts = {}
  local keys = {}
  for k in pairs(sel.matchLabels or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. sel.matchLabels[k] end
  for _, e in ipairs(sel.matchExpressions or {}) do
    local op = e.operator == "In" and "in" or e.operator == "NotIn" and "notin" or nil
    if op then parts[#parts + 1] = ("%s %s (%s)"):format(e.key, op, table.concat(e.values or {}, ","))
    elseif e.operator == "Exists" then parts[#parts + 1] = e.key
    elseif e.operator == "DoesNotExist" then parts[#parts + 1] = "!" .. e.key end
  end
  return #parts > 0 and table.concat(parts, ",") or "<none>"
end

local function map_text(m)
  local keys = {}
  for k in pairs(m or {}) do keys[#keys + 1] = k end
  if #keys == 0 then return "<none>" end
  table.sort(keys)
  for i, k in ipairs(keys) do keys[i] = k .. "=" .. m[k] end
  return table.concat(keys, ",")
end

-- ---- pods ----

local pod_status = require("vq.kube.pods").status

local function initialized(pod)
  for _, c in ipairs((pod.status or {}).conditions or {}) do
    if c.type == "Initialized" then return c.status == "True" end
  end
  return false
end

-- printPod's RESTARTS: the init containers' while the pod initializes, else the
-- containers' and the sidecars' (restartable init containers), with the last restart's age.
local function pod_restarts(sim, pod, initializing)
  local st, sidecar = pod.status or {}, {}
  for _, c in ipairs((pod.spec or {}).initContainers or {}) do sidecar[c.name] = c.restartPolicy == "Always" end
  local function count(list, only_sidecars)
    local n, last = 0, nil
    for _, c in ipairs(list or {}) do
      if not only_sidecars or sidecar[c.name] then
        n = n + (c.restartCount or 0)
        local lt = c.lastState and c.lastState.terminated
        local t = lt and util.parse_time(lt.finishedAt)
        if t and (not last or t > last) then last = t end
      end
    end
    return n, last
  end
  local restarts, last = count(st.initContainerStatuses)
  if not initializing or initialized(pod) then
    restarts, last = count(st.initContainerStatuses, true)
    local n, t = count(st.containerStatuses)
    restarts = restarts + n
    if t and (not last or t > last) then last = t end
  end
  if restarts > 0 and last then
    return ("%d (%s ago)"):format(restarts, util.human_duration(sim.clock:now() - last))
  end
  return tostring(restarts)
end

local function pod_ip(pod)
  local st = pod.status or {}
  return st.podIPs and st.podIPs[1] and st.podIPs[1].ip or st.podIP
end

-- "true gates/gates" of spec.readinessGates, by the pod's conditions
local function readiness_gates(pod)
  local gates = pod.spec and pod.spec.readinessGates
  if not gates or #gates == 0 then return "<none>" end
  local n = 0
  for _, g in ipairs(gates) do
    for _, c in ipairs((pod.status or {}).conditions or {}) do
      if c.type == g.conditionType then
        if c.status == "True" then n = n + 1 end
        break
      end
    end
  end
  return ("%d/%d"):format(n, #gates)
end

local printers = {}

printers.pods = {
  columns = { NAME, col("Ready", "string", 0, "", "The aggregate readiness state of this pod for accepting traffic."),
    col("Status", "string", 0, "", "The aggregate status of the containers in this pod."),
    col("Restarts", "string", 0, "", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
    col("Age"), col("IP", "string", 1), col("Node", "string", 1), col("Nominated Node", "string", 1),
    col("Readiness Gates", "string", 1) },
  row = function(sim, pod)
    local reason, ready = pod_status(pod)
    return { pod.metadata.name, ready, reason, pod_restarts(sim, pod, reason:match("^Init:") ~= nil), age(sim, pod),
      none(pod_ip(pod)), none(pod.spec and pod.spec.nodeName),
      none(pod.status and pod.status.nominatedNodeName), readiness_gates(pod) }
  end,
}

printers.nodes = {
  columns = { NAME, col("Status", "string", 0, "", "The status of the node"), col("Roles", "string", 0, "", "The roles of the node"),
    col("Age"), col("Version", "string", 0, "", "Kubelet Version reported by the node."),
    col("Internal-IP", "string", 1), col("External-IP", "string", 1), col("OS-Image", "string", 1),
    col("Kernel-Version", "string", 1), col("Container-Runtime", "string", 1) },
  row = function(sim, node)
    local status = "Unknown"
    for _, c in ipairs((node.status or {}).conditions or {}) do
      if c.type == "Ready" then status = c.status == "True" and "Ready" or "NotReady" end
    end
    if node.spec and node.spec.unschedulable then status = status .. ",SchedulingDisabled" end
    local roles = {}
    for k in pairs(node.metadata.labels or {}) do
      local role = k:match("^node%-role%.kubernetes%.io/(.+)$")
      if role then roles[#roles + 1] = role end
      if k == "kubernetes.io/role" then roles[#roles + 1] = node.metadata.labels[k] end
    end
    table.sort(roles)
    local ips = { InternalIP = {}, ExternalIP = {} }
    for _, a in ipairs((node.status or {}).addresses or {}) do
      if ips[a.type] then table.insert(ips[a.type], a.address) end
    end
    local info = (node.status or {}).nodeInfo or {}
    return { node.metadata.name, status, #roles > 0 and table.concat(roles, ",") or "<none>", age(sim, node),
      info.kubeletVersion or "", ips.InternalIP[1] or "<none>", ips.ExternalIP[1] or "<none>",
      info.osImage or "<unknown>", info.kernelVersion or "<unknown>", info.containerRuntimeVersion or "<unknown>" }
  end,
}

printers.services = {
  columns = { NAME, col("Type"), col("Cluster-IP"), col("External-IP"), col("Port(s)"), col("Age"), col("Selector", "string", 1) },
  row = function(sim, svc)
    local spec = svc.spec or {}
    local typ = spec.type or "ClusterIP"
    local external = "<none>"
    if typ == "LoadBalancer" then
      local ing = svc.status and svc.status.loadBalancer and svc.status.loadBalancer.ingress or {}
      local addrs = {}
      for _, i in ipairs(ing) do addrs[#addrs + 1] = i.ip or i.hostname end
      for _, ip in ipairs(spec.externalIPs or {}) do addrs[#addrs + 1] = ip end
      external = #addrs > 0 and table.concat(addrs, ",") or "<pending>"
    elseif typ == "ExternalName" then
      external = spec.externalName or "<none>"
    elseif spec.externalIPs and #spec.externalIPs > 0 then
      external = table.concat(spec.externalIPs, ",")
    end
    local ports = {}
    for _, p in ipairs(spec.ports or {}) do
      local proto = p.protocol or "TCP"
      if p.nodePort and (typ == "NodePort" or typ == "LoadBalancer") then
        ports[#ports + 1] = ("%d:%d/%s"):format(p.port, p.nodePort, proto)
      else
        ports[#ports + 1] = ("%d/%s"):format(p.port, proto)
      end
    end
    return { svc.metadata.name, typ, none(spec.clusterIP), external, #ports > 0 and table.concat(ports, ",") or "<none>",
      age(sim, svc), map_text(spec.selector) }
  end,
}

local function data_count(obj)
  local n = 0
  for _ in pairs(obj.data or {}) do n = n + 1 end
  for _ in pairs(obj.binaryData or {}) do n = n + 1 end
  return n
end

printers.secrets = {
  columns = { NAME, col("Type"), col("Data", "string"), col("Age") },
  row = function(sim, s) return { s.metadata.name, s.type or "Opaque", tostring(data_count(s)), age(sim, s) } end,
}

printers.configmaps = {
  columns = { NAME, col("Data", "string"), col("Age") },
  row = function(sim, c) return { c.metadata.name, tostring(data_count(c)), age(sim, c) } end,
}

printers.namespaces = {
  columns = { NAME, col("Status"), col("Age") },
  row = function(sim, n) return { n.metadata.name, (n.status or {}).phase or "Active", age(sim, n) } end,
}

printers.serviceaccounts = {
  columns = { NAME, col("Secrets", "string"), col("Age") },
  row = function(sim, s) return { s.metadata.name, tostring(#(s.secrets or {})), age(sim, s) } end,
}

printers["statefulsets.apps"] = {
  columns = { NAME, col("Ready"), col("Age"), col("Containers", "string", 1), col("Images", "string", 1) },
  row = function(sim, s)
    local names, images = containers_images(s.spec and s.spec.template and s.spec.template.spec)
    local st = s.status or {}
    return { s.metadata.name, ("%d/%d"):format(st.readyReplicas or 0, (s.spec or {}).replicas or 1), age(sim, s), names, images }
  end,
}

printers["deployments.apps"] = {
  columns = { NAME, col("Ready"), col("Up-to-date", "string"), col("Available", "string"), col("Age"),
    col("Containers", "string", 1), col("Images", "string", 1), col("Selector", "string", 1) },
  row = function(sim, d)
    local st = d.status or {}
    local names, images = containers_images(d.spec and d.spec.template and d.spec.template.spec)
    return { d.metadata.name, ("%d/%d"):format(st.readyReplicas or 0, (d.spec or {}).replicas or 1),
      st.updatedReplicas or 0, st.availableReplicas or 0, age(sim, d), names, images,
      selector_text(d.spec and d.spec.selector) }
  end,
}

printers["daemonsets.apps"] = {
  columns = { NAME, col("Desired", "integer"), col("Current", "integer"), col("Ready", "integer"), col("Up-to-date", "integer"),
    col("Available", "integer"), col("Node Selector"), col("Age"), col("Containers", "string", 1),
    col("Images", "string", 1), col("Selector", "string", 1) },
  row = function(sim, d)
    local st = d.status or {}
    local tspec = d.spec and d.spec.template and d.spec.template.spec or {}
    local names, images = containers_images(tspec)
    return { d.metadata.name, st.desiredNumberScheduled or 0, st.currentNumberScheduled or 0,
      st.numberReady or 0, st.updatedNumberScheduled or 0, st.numberAvailable or 0,
      map_text(tspec.nodeSelector), age(sim, d), names, images, selector_text(d.spec and d.spec.selector) }
  end,
}

printers["replicasets.apps"] = {
  columns = { NAME, col("Desired", "integer"), col("Current", "integer"), col("Ready", "integer"), col("Age"),
    col("Containers", "string", 1), col("Images", "string", 1), col("Selector", "string", 1) },
  row = function(sim, r)
    local st = r.status or {}
    local names, images = containers_images(r.spec and r.spec.template and r.spec.template.spec)
    return { r.metadata.name, (r.spec or {}).replicas or 1, st.replicas or 0, st.readyReplicas or 0, age(sim, r),
      names, images, selector_text(r.spec and r.spec.selector) }
  end,
}

local function has_condition(obj, typ)
  for _, c in ipairs((obj.status or {}).conditions or {}) do
    if c.type == typ and c.status == "True" then return true end
  end
  return false
end

local function job_status(j)
  if has_condition(j, "Complete") then return "Complete" end
  if has_condition(j, "Failed") then return "Failed" end
  if j.metadata.deletionTimestamp then return "Terminating" end
  if has_condition(j, "Suspended") then return "Suspended" end
  if has_condition(j, "FailureTarget") then return "FailureTarget" end
  return "Running"
end

printers["jobs.batch"] = {
  columns = { NAME, since_minor(30, col("Status", "string", 0, "", "Status of the job.")), col("Completions"), col("Duration"),
    col("Age"), col("Containers", "string", 1), col("Images", "string", 1), col("Selector", "string", 1) },
  row = function(sim, j)
    local st, spec = j.status or {}, j.spec or {}
    local completions
    if spec.completions then
      completions = ("%d/%d"):format(st.succeeded or 0, spec.completions)
    elseif (spec.parallelism or 0) > 1 then
      completions = ("%d/1 of %d"):format(st.succeeded or 0, spec.parallelism)
    else
      completions = ("%d/1"):format(st.succeeded or 0)
    end
    local duration = ""
    local start = util.parse_time(st.startTime)
    if start then
      local finish = util.parse_time(st.completionTime) or sim.clock:now()
      duration = util.human_duration(finish - start)
    end
    local names, images = containers_images(spec.template and spec.template.spec)
    return { j.metadata.name, job_status(j), completions, duration, age(sim, j), names, images, selector_text(spec.selector) }
  end,
}

printers["cronjobs.batch"] = {
  columns = { NAME, col("Schedule"), since_minor(30, col("Timezone")), col("Suspend", "boolean"), col("Active", "integer"),
    col("Last Schedule"), col("Age"), col("Containers", "string", 1), col("Images", "string", 1), col("Selector", "string", 1) },
  row = function(sim, c)
    local spec, st = c.spec or {}, c.status or {}
    local tspec = spec.jobTemplate and spec.jobTemplate.spec and spec.jobTemplate.spec.template and spec.jobTemplate.spec.template.spec
    local names, images = containers_images(tspec)
    return { c.metadata.name, spec.schedule or "", spec.timeZone or "<none>", bool_text(spec.suspend), #(st.active or {}),
      st.lastScheduleTime and since(sim, st.lastScheduleTime) or "<none>", age(sim, c), names, images,
      selector_text(spec.jobTemplate and spec.jobTemplate.spec and spec.jobTemplate.spec.selector) }
  end,
}

local function access_modes(modes)
  local short = { ReadWriteOnce = "RWO", ReadOnlyMany = "ROX", ReadWriteMany = "RWX", ReadWriteOncePod = "RWOP" }
  local out = {}
  for _, m in ipairs(modes or {}) do out[#out + 1] = short[m] or m end
  return table.concat(out, ",")
end

local function unset(v)
  if v == nil then return "<unset>" end
  return v
end

local function storage_class(obj)
  local beta = (obj.metadata.annotations or {})["volume.beta.kubernetes.io/storage-class"]
  return beta or (obj.spec or {}).storageClassName or ""
end

printers.persistentvolumes = {
  columns = { NAME, col("Capacity"), col("Access Modes"), col("Reclaim Policy"), col("Status"), col("Claim"),
    col("StorageClass"), since_minor(29, col("VolumeAttributesClass")), col("Reason"), col("Age"), col("VolumeMode", "string", 1) },
  row = function(sim, pv)
    local spec, st = pv.spec or {}, pv.status or {}
    local claim = spec.claimRef and ((spec.claimRef.namespace or "") .. "/" .. (spec.claimRef.name or "")) or ""
    local phase = pv.metadata.deletionTimestamp and "Terminating" or st.phase or ""
    return { pv.metadata.name, (spec.capacity or {}).storage or "0", access_modes(spec.accessModes),
      spec.persistentVolumeReclaimPolicy or "", phase, claim, storage_class(pv),
      unset(spec.volumeAttributesClassName), st.reason or "", age(sim, pv), unset(spec.volumeMode) }
  end,
}

printers.persistentvolumeclaims = {
  columns = { NAME, col("Status"), col("Volume"), col("Capacity"), col("Access Modes"), col("StorageClass"),
    since_minor(29, col("VolumeAttributesClass")), col("Age"), col("VolumeMode", "string", 1) },
  row = function(sim, pvc)
    local spec, st = pvc.spec or {}, pvc.status or {}
    local phase = pvc.metadata.deletionTimestamp and "Terminating" or st.phase or ""
    -- capacity and access modes are the bound volume's: none before binding
    local capacity, modes = "", ""
    if (spec.volumeName or "") ~= "" then
      capacity, modes = (st.capacity or {}).storage or "0", access_modes(st.accessModes)
    end
    return { pvc.metadata.name, phase, spec.volumeName or "", capacity, modes, storage_class(pvc),
      unset(spec.volumeAttributesClassName), age(sim, pvc), unset(spec.volumeMode) }
  end,
}

printers.events = {
  columns = { col("Last Seen"), col("Type"), col("Reason"), col("Object"), col("Subobject", "string", 1),
    col("Source", "string", 1), col("Message"), col("First Seen", "string", 1), col("Count", "string", 1), col("Name", "string", 1) },
  row = function(sim, e)
    local io = e.involvedObject or {}
    local last = e.lastTimestamp or e.eventTime or e.metadata.creationTimestamp
    local first = e.firstTimestamp or e.eventTime or e.metadata.creationTimestamp
    local source = e.source and e.source.component or e.reportingComponent or ""
    if e.source and e.source.host then source = source .. ", " .. e.source.host end
    return { since(sim, last), e.type or "Normal", e.reason or "", (io.kind or ""):lower() .. "/" .. (io.name or ""),
      io.fieldPath or "", source, e.message or "", since(sim, first), tostring(e.count or 1), e.metadata.name }
  end,
}

printers["clusterroles.rbac.authorization.k8s.io"] = {
  columns = { NAME, col("Created At", "date") },
  row = function(_, r) return { r.metadata.name, r.metadata.creationTimestamp } end,
}
printers["roles.rbac.authorization.k8s.io"] = printers["clusterroles.rbac.authorization.k8s.io"]

local function binding_subjects(b, kind)
  local out = {}
  for _, s in ipairs(b.subjects or {}) do
    if s.kind == kind then out[#out + 1] = kind == "ServiceAccount" and ((s.namespace or "") .. "/" .. s.name) or s.name end
  end
  return table.concat(out, ", ")
end

printers["clusterrolebindings.rbac.authorization.k8s.io"] = {
  columns = { NAME, col("Role"), col("Age"), col("Users", "string", 1), col("Groups", "string", 1), col("ServiceAccounts", "string", 1) },
  row = function(sim, b)
    local ref = b.roleRef or {}
    return { b.metadata.name, (ref.kind or "") .. "/" .. (ref.name or ""), age(sim, b), binding_subjects(b, "User"),
      binding_subjects(b, "Group"), binding_subjects(b, "ServiceAccount") }
  end,
}
printers["rolebindings.rbac.authorization.k8s.io"] = printers["clusterrolebindings.rbac.authorization.k8s.io"]

printers.endpoints = {
  columns = { NAME, col("Endpoints"), col("Age") },
  row = function(sim, ep)
    local out = {}
    for _, s in ipairs(ep.subsets or {}) do
      for _, a in ipairs(s.addresses or {}) do
        for _, p in ipairs(s.ports or {}) do out[#out + 1] = a.ip .. ":" .. p.port end
      end
    end
    return { ep.metadata.name, #out > 0 and table.concat(out, ",") or "<none>", age(sim, ep) }
  end,
}

printers["ingresses.networking.k8s.io"] = {
  columns = { NAME, col("Class"), col("Hosts"), col("Address"), col("Ports"), col("Age") },
  row = function(sim, i)
    local hosts = {}
    for _, r in ipairs((i.spec or {}).rules or {}) do hosts[#hosts + 1] = r.host or "*" end
    local addrs = {}
    for _, a in ipairs(i.status and i.status.loadBalancer and i.status.loadBalancer.ingress or {}) do addrs[#addrs + 1] = a.ip or a.hostname end
    return { i.metadata.name, (i.spec or {}).ingressClassName or "<none>", #hosts > 0 and table.concat(hosts, ",") or "*",
      table.concat(addrs, ","), (i.spec and i.spec.tls) and "80, 443" or "80", age(sim, i) }
  end,
}

printers["storageclasses.storage.k8s.io"] = {
  columns = { NAME, col("Provisioner"), col("ReclaimPolicy"), col("VolumeBindingMode"), col("AllowVolumeExpansion"), col("Age") },
  row = function(sim, s)
    local name = s.metadata.name
    if (s.metadata.annotations or {})["storageclass.kubernetes.io/is-default-class"] == "true" then name = name .. " (default)" end
    return { name, s.provisioner or "", s.reclaimPolicy or "Delete", s.volumeBindingMode or "Immediate",
      tostring(s.allowVolumeExpansion or false), age(sim, s) }
  end,
}

local default_printer = {
  columns = { NAME, col("Created At", "date", 0, "", "CreationTimestamp is a timestamp representing the server time when this object was created.") },
  row = function(_, obj) return { obj.metadata.name, obj.metadata.creationTimestamp } end,
}

-- ---- custom resources: the columns their CRD declares ----

-- One step of a JSONPath (the part inside brackets) applied to a value: a quoted name, an
-- index, * or a filter [?(@.field=="value")].
local function bracket(v, expr, out)
  if type(v) ~= "table" then return end
  local name = expr:match("^'(.*)'$") or expr:match('^"(.*)"$')
  if name then out[#out + 1] = v[name] return end
  local index = tonumber(expr:match("^%-?%d+$") or "")
  if index then
    out[#out + 1] = v[index < 0 and #v + index + 1 or index + 1]
    return
  end
  if expr == "*" then
    for _, x in ipairs(v) do out[#out + 1] = x end
    return
  end
  local field, op, lit = expr:match("^%?%(@%.([%w_%-%.]+)%s*([=!]=)%s*(.-)%)$")
  if not field then return end
  local want = lit:match("^'(.*)'$") or lit:match('^"(.*)"$') or tonumber(lit) or (lit == "true") or (lit ~= "false" and lit)
  for _, x in ipairs(v) do
    if (util.get_path(x, field) == want) == (op == "==") then out[#out + 1] = x end
  end
end

--- The values a JSONPath (.a.b, [0], ['x.y'], [*], [?(@.type=="Ready")]) selects in obj.
local function json_path(obj, path)
  local vals, i = { obj }, 1
  path = path:gsub("^{(.*)}$", "%1")
  while i <= #path and #vals > 0 do
    local name, j = path:match("^%.([%w_%-/]+)()", i)
    local out = {}
    if name then
      for _, v in ipairs(vals) do if type(v) == "table" then out[#out + 1] = v[name] end end
    else
      local expr
      expr, j = path:match("^%[(.-)%]()", i)
      if not expr then return {} end
      for _, v in ipairs(vals) do bracket(v, expr, out) end
    end
    vals, i = out, j
  end
  return vals
end
M.json_path = json_path

-- A cell as the apiextensions table convertor makes it from a column's first value.
local function custom_cell(sim, typ, v)
  if v == nil or v == json.null then return json.null end
  if typ == "string" then
    if type(v) == "table" then return json.encode(v) end
    return tostring(v)
  elseif typ == "integer" then
    return type(v) == "number" and math.floor(v) or json.null
  elseif typ == "number" then
    return type(v) == "number" and v or json.null
  elseif typ == "boolean" then
    return type(v) == "boolean" and v or json.null
  elseif typ == "date" then
    if type(v) ~= "string" then return json.null end
    return util.parse_time(v) and since(sim, v) or "<invalid>"
  end
  return json.null
end

-- A CRD version without additionalPrinterColumns prints its objects' age
-- (serveDefaultColumnsIfEmpty); one with them prints those only, after the name.
local DEFAULT_CUSTOM_COLUMNS = { { name = "Age", type = "date", jsonPath = ".metadata.creationTimestamp",
  description = "CreationTimestamp is a timestamp representing the server time when this object was created." } }

--- The printer of a custom resource version, from its CRD's additionalPrinterColumns.
function M.custom(columns)
  if not columns or #columns == 0 then columns = DEFAULT_CUSTOM_COLUMNS end
  local cols = { NAME }
  for _, c in ipairs(columns) do
    cols[#cols + 1] = col(c.name, c.type, c.priority, c.format,
      c.description or ("Custom resource definition column (in JSONPath format): " .. tostring(c.jsonPath)))
  end
  return {
    columns = cols,
    row = function(sim, obj)
      local cells = { obj.metadata.name }
      for i, c in ipairs(columns) do cells[i + 1] = custom_cell(sim, c.type, json_path(obj, c.jsonPath or "")[1]) end
      return cells
    end,
  }
end

--- A meta.k8s.io/v1 Table of objects of type t. Rows carry PartialObjectMetadata
--- (includeObject=Metadata, kubectl's default) or the object (includeObject=Object).
function M.table(sim, t, objects, query, rv)
  local p = t.printer or printers[t.shared_with or t.key] or default_printer
  local include = query and query.includeObject or "Metadata"
  local minor, keep = sim:minor(), {}
  local cols = array()
  for i, c in ipairs(p.columns) do
    if (c.since_minor or 0) <= minor then
      keep[#keep + 1] = i
      cols[#cols + 1] = { name = c.name, type = c.type, format = c.format, description = c.description, priority = c.priority }
    end
  end
  local rows = array()
  for _, obj in ipairs(objects) do
    local all, cells = p.row(sim, obj), array()
    for j, i in ipairs(keep) do cells[j] = all[i] end
    local row = { cells = cells }
    if include == "Object" then
      row.object = obj
    elseif include ~= "None" then
      row.object = { kind = "PartialObjectMetadata", apiVersion = "meta.k8s.io/v1", metadata = obj.metadata }
    end
    rows[#rows + 1] = row
  end
  return { kind = "Table", apiVersion = "meta.k8s.io/v1", metadata = { resourceVersion = tostring(rv) },
    columnDefinitions = cols, rows = rows }
end

return M
