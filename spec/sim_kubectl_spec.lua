-- The simulator as real kubectl sees it: the commands of the runbooks and the guide, with
-- kubectl 1.30 (the default server version), 1.27 and 1.33, must print what they print on
-- a real cluster (headers, cell formats, messages, exit codes). The Google Cloud SDK's
-- kubectl dispatcher runs the kubectl of the server's minor version.
local vq = require "vq"
local json = require "json"
local yaml = require "yaml"
local sim_mod = require "sim"
local cluster = require "spec.support.cluster"

local NS = "vantiq"
local LOG_POD = "fidelity-logs"

local function lines_of(text)
  local out = {}
  for l in (text or ""):gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

-- ---- reading kubectl's tables ----

--- Columns of a header line: name and start position (names may hold one space).
local function header_columns(header)
  local cols, i = {}, 1
  while true do
    local s = header:find("%S", i)
    if not s then break end
    local e = header:find("%s%s", s) or (#header + 1)
    cols[#cols + 1] = { name = (header:sub(s, e - 1):gsub("%s+$", "")), start = s }
    i = e
  end
  return cols
end

--- A printed table: {names = {...}, rows = {{COL = cell}...}}; cells cut at the header's
--- column starts, as the tabwriter aligns them.
local function parse_table(text)
  local lines = lines_of(text)
  local cols = header_columns(lines[1] or "")
  local t = { names = {}, rows = {} }
  for i, c in ipairs(cols) do t.names[i] = c.name end
  for n = 2, #lines do
    local row = {}
    for i, c in ipairs(cols) do
      local stop = cols[i + 1] and cols[i + 1].start - 1 or #lines[n]
      row[c.name] = (lines[n]:sub(c.start, stop):gsub("^%s+", ""):gsub("%s+$", ""))
    end
    t.rows[#t.rows + 1] = row
  end
  return t
end

--- The tables of `kubectl get a,b,c`, one per type, keyed by the NAME prefix (statefulset.apps).
local function parse_tables(text)
  local out = {}
  for block in (text .. "\n\n"):gmatch("(.-)\n\n+") do
    if block:match("%S") then
      local t = parse_table(block)
      local prefix = t.rows[1] and t.rows[1].NAME:match("^([^/]+)/")
      if prefix then out[prefix] = t end
    end
  end
  return out
end

local function row_named(t, name)
  for _, r in ipairs(t.rows) do
    if r.NAME == name then return r end
  end
end

local function pattern_escape(s) return (s:gsub("%p", "%%%0")) end

-- An age as duration.HumanDuration prints it (5s, 3m12s, 24h, 90d).
local AGE = "^%d+[smhdy]%d*[smhd]?$"

-- ---- the cluster ----

local function start(version)
  return cluster.start { speed = 0.02, version = version, scenarios = { "telegraf-rbac" }, settle = 60 }
end

-- ---- the guide's manifests ----

local TELEGRAF_RBAC = assert(io.open("scripts/doctor/telegraf-rbac.yaml")):read("a")

local LOG_POD_MANIFEST = ([[
apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  annotations:
    sim.vqlua.io/program.app: fidelity-logs
spec:
  containers:
  - name: app
    image: busybox:1.36
]]):format(LOG_POD, NS)

local VOLUMES = [[
apiVersion: v1
kind: PersistentVolume
metadata:
  name: fidelity-pv
spec:
  capacity:
    storage: 1Gi
  accessModes: ["ReadWriteOnce"]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: manual
  hostPath:
    path: /data/fidelity
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: fidelity-pvc
  namespace: vantiq
spec:
  accessModes: ["ReadWriteOnce"]
  storageClassName: manual
  resources:
    requests:
      storage: 1Gi
]]

-- A container that dies once (for --previous), then logs a line two hours old and three
-- new ones, and one more when told to (for -f), and exits.
local function install_log_program(sim)
  local more = vq.event()
  sim.programs["fidelity-logs"] = function(ctx)
    local logs, now = ctx.sim.logs, ctx.sim.clock:now()
    if ctx.restart_count == 0 then
      ctx:log("first life")
      ctx:exit(1)
    end
    logs:write(ctx.namespace, ctx.name, "app", "two hours ago", now - 7200)
    for i = 1, 3 do ctx:log("line " .. i) end
    ctx:ready(true)
    more:wait()
    ctx:log("line 4")
    ctx:sleep(1)
    ctx:exit(0)
  end
  return more
end

-- ---- what a real cluster of each version serves ----

-- kubectl api-resources of a 1.30 cluster: name, short names, apiVersion, namespaced, kind.
local API_RESOURCES = {
  { "bindings", "", "v1", "true", "Binding" }, { "componentstatuses", "cs", "v1", "false", "ComponentStatus" },
  { "configmaps", "cm", "v1", "true", "ConfigMap" }, { "endpoints", "ep", "v1", "true", "Endpoints" },
  { "events", "ev", "v1", "true", "Event" }, { "limitranges", "limits", "v1", "true", "LimitRange" },
  { "namespaces", "ns", "v1", "false", "Namespace" }, { "nodes", "no", "v1", "false", "Node" },
  { "persistentvolumeclaims", "pvc", "v1", "true", "PersistentVolumeClaim" },
  { "persistentvolumes", "pv", "v1", "false", "PersistentVolume" }, { "pods", "po", "v1", "true", "Pod" },
  { "podtemplates", "", "v1", "true", "PodTemplate" }, { "replicationcontrollers", "rc", "v1", "true", "ReplicationController" },
  { "resourcequotas", "quota", "v1", "true", "ResourceQuota" }, { "secrets", "", "v1", "true", "Secret" },
  { "serviceaccounts", "sa", "v1", "true", "ServiceAccount" }, { "services", "svc", "v1", "true", "Service" },
  { "mutatingwebhookconfigurations", "", "admissionregistration.k8s.io/v1", "false", "MutatingWebhookConfiguration" },
  { "validatingadmissionpolicies", "", "admissionregistration.k8s.io/v1", "false", "ValidatingAdmissionPolicy" },
  { "validatingadmissionpolicybindings", "", "admissionregistration.k8s.io/v1", "false", "ValidatingAdmissionPolicyBinding" },
  { "validatingwebhookconfigurations", "", "admissionregistration.k8s.io/v1", "false", "ValidatingWebhookConfiguration" },
  { "customresourcedefinitions", "crd,crds", "apiextensions.k8s.io/v1", "false", "CustomResourceDefinition" },
  { "apiservices", "", "apiregistration.k8s.io/v1", "false", "APIService" },
  { "controllerrevisions", "", "apps/v1", "true", "ControllerRevision" }, { "daemonsets", "ds", "apps/v1", "true", "DaemonSet" },
  { "deployments", "deploy", "apps/v1", "true", "Deployment" }, { "replicasets", "rs", "apps/v1", "true", "ReplicaSet" },
  { "statefulsets", "sts", "apps/v1", "true", "StatefulSet" },
  { "selfsubjectreviews", "", "authentication.k8s.io/v1", "false", "SelfSubjectReview" },
  { "tokenreviews", "", "authentication.k8s.io/v1", "false", "TokenReview" },
  { "localsubjectaccessreviews", "", "authorization.k8s.io/v1", "true", "LocalSubjectAccessReview" },
  { "selfsubjectaccessreviews", "", "authorization.k8s.io/v1", "false", "SelfSubjectAccessReview" },
  { "selfsubjectrulesreviews", "", "authorization.k8s.io/v1", "false", "SelfSubjectRulesReview" },
  { "subjectaccessreviews", "", "authorization.k8s.io/v1", "false", "SubjectAccessReview" },
  { "horizontalpodautoscalers", "hpa", "autoscaling/v2", "true", "HorizontalPodAutoscaler" },
  { "cronjobs", "cj", "batch/v1", "true", "CronJob" }, { "jobs", "", "batch/v1", "true", "Job" },
  { "certificatesigningrequests", "csr", "certificates.k8s.io/v1", "false", "CertificateSigningRequest" },
  { "leases", "", "coordination.k8s.io/v1", "true", "Lease" },
  { "endpointslices", "", "discovery.k8s.io/v1", "true", "EndpointSlice" },
  { "events", "ev", "events.k8s.io/v1", "true", "Event" },
  { "flowschemas", "", "flowcontrol.apiserver.k8s.io/v1", "false", "FlowSchema" },
  { "prioritylevelconfigurations", "", "flowcontrol.apiserver.k8s.io/v1", "false", "PriorityLevelConfiguration" },
  { "ingressclasses", "", "networking.k8s.io/v1", "false", "IngressClass" },
  { "ingresses", "ing", "networking.k8s.io/v1", "true", "Ingress" },
  { "networkpolicies", "netpol", "networking.k8s.io/v1", "true", "NetworkPolicy" },
  { "runtimeclasses", "", "node.k8s.io/v1", "false", "RuntimeClass" },
  { "poddisruptionbudgets", "pdb", "policy/v1", "true", "PodDisruptionBudget" },
  { "clusterrolebindings", "", "rbac.authorization.k8s.io/v1", "false", "ClusterRoleBinding" },
  { "clusterroles", "", "rbac.authorization.k8s.io/v1", "false", "ClusterRole" },
  { "rolebindings", "", "rbac.authorization.k8s.io/v1", "true", "RoleBinding" },
  { "roles", "", "rbac.authorization.k8s.io/v1", "true", "Role" },
  { "priorityclasses", "pc", "scheduling.k8s.io/v1", "false", "PriorityClass" },
  { "csidrivers", "", "storage.k8s.io/v1", "false", "CSIDriver" }, { "csinodes", "", "storage.k8s.io/v1", "false", "CSINode" },
  { "csistoragecapacities", "", "storage.k8s.io/v1", "true", "CSIStorageCapacity" },
  { "storageclasses", "sc", "storage.k8s.io/v1", "false", "StorageClass" },
  { "volumeattachments", "", "storage.k8s.io/v1", "false", "VolumeAttachment" },
}

--- The api-resources rows of a cluster of that minor version, sorted as kubectl sorts them.
local function api_resources(minor)
  local out = {}
  for _, r in ipairs(API_RESOURCES) do
    local row = { table.unpack(r) }
    if minor < 28 and row[1] == "selfsubjectreviews" then row[3] = "authentication.k8s.io/v1beta1" end
    if minor < 29 and row[3] == "flowcontrol.apiserver.k8s.io/v1" then row[3] = "flowcontrol.apiserver.k8s.io/v1beta3" end
    if minor >= 30 or not row[1]:match("^validatingadmissionpolic") then out[#out + 1] = row end
  end
  if minor >= 33 then
    table.insert(out, { "ipaddresses", "ip", "networking.k8s.io/v1", "false", "IPAddress" })
    table.insert(out, { "servicecidrs", "", "networking.k8s.io/v1", "false", "ServiceCIDR" })
  end
  local function group(row) return row[3]:match("^(.*)/") or "" end
  table.sort(out, function(a, b)
    if group(a) ~= group(b) then return group(a) < group(b) end
    return a[1] < b[1]
  end)
  return out
end

-- The tables' headers by type, as the apiserver of that minor version prints them.
local function headers(minor)
  local function cols(list)
    local out = {}
    for _, c in ipairs(list) do
      if type(c) == "string" then out[#out + 1] = c elseif minor >= c[2] then out[#out + 1] = c[1] end
    end
    return out
  end
  return {
    pods = cols { "NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE" },
    pods_wide = cols { "NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE", "READINESS GATES" },
    ["statefulset.apps"] = cols { "NAMESPACE", "NAME", "READY", "AGE" },
    ["cronjob.batch"] = cols { "NAMESPACE", "NAME", "SCHEDULE", { "TIMEZONE", 30 }, "SUSPEND", "ACTIVE", "LAST SCHEDULE", "AGE" },
    ["job.batch"] = cols { "NAMESPACE", "NAME", { "STATUS", 30 }, "COMPLETIONS", "DURATION", "AGE" },
    service = cols { "NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE" },
    secret = cols { "NAMESPACE", "NAME", "TYPE", "DATA", "AGE" },
    persistentvolume = cols { "NAMESPACE", "NAME", "CAPACITY", "ACCESS MODES", "RECLAIM POLICY", "STATUS", "CLAIM",
      "STORAGECLASS", { "VOLUMEATTRIBUTESCLASS", 29 }, "REASON", "AGE" },
    persistentvolumeclaim = cols { "NAMESPACE", "NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS",
      { "VOLUMEATTRIBUTESCLASS", 29 }, "AGE" },
    node = cols { "NAMESPACE", "NAME", "STATUS", "ROLES", "AGE", "VERSION" },
  }
end

-- ---- what kubectl 1.27 reads and 1.32+ writes: protobuf ----

describe("the simulator's protobuf", function()
  local pb = require "sim.protobuf"

  local function envelope(api_version, kind, raw)
    return pb.MAGIC .. pb.message(1, { pb.bytes(1, api_version), pb.bytes(2, kind) }) .. pb.bytes(2, raw)
  end

  it("reads a Job as client-go encodes it: zero pointers kept, empty non-pointers left out", function()
    local container = { pb.bytes(1, "backup"), pb.bytes(2, "mongo-backup:1.4.0"), pb.bytes(5, ""),
      pb.message(7, { pb.bytes(1, "PASSWORD"), pb.bytes(2, ""), pb.message(3, {
        pb.message(4, { pb.message(1, { pb.bytes(1, "mongodb-credentials") }), pb.bytes(2, "password") }) }) }),
      pb.bool(16, false) }
    local pod_spec = { pb.message(2, container), pb.bytes(3, "Never"), pb.int(4, 0), pb.bytes(8, "") }
    local job = table.concat {
      pb.message(1, { pb.bytes(1, "backup-now"), pb.bytes(2, ""), pb.bytes(3, "vantiq"), pb.int(7, 0), pb.message(8, {}),
        pb.message(11, { pb.bytes(1, "app"), pb.bytes(2, "mongobackup") }) }),
      pb.message(2, { pb.int(7, 0), pb.bool(10, false), pb.int(3, -1),
        pb.message(6, { pb.message(1, { pb.message(8, {}) }), pb.message(2, pod_spec) }) }),
    }
    local obj = assert(pb.decode(envelope("batch/v1", "Job", job)))
    assert.are.same({ "batch/v1", "Job" }, { obj.apiVersion, obj.kind })
    assert.are.same({ name = "backup-now", namespace = "vantiq", labels = { app = "mongobackup" }, creationTimestamp = json.null },
      obj.metadata)
    assert.are.same({ 0, false, -1 }, { obj.spec.backoffLimit, obj.spec.suspend, obj.spec.activeDeadlineSeconds })
    local spec = obj.spec.template.spec
    assert.are.equal(json.null, obj.spec.template.metadata.creationTimestamp)
    assert.are.same({ "Never", 0 }, { spec.restartPolicy, spec.terminationGracePeriodSeconds })
    assert.is_nil(spec.serviceAccountName)
    assert.are.same({ { name = "backup", image = "mongo-backup:1.4.0", env = { { name = "PASSWORD",
      valueFrom = { secretKeyRef = { name = "mongodb-credentials", key = "password" } } } } } }, spec.containers)
    assert.are.equal(json.array_mt, getmetatable(spec.containers))
  end)

  it("reads a Secret's bytes as base64 and refuses what it does not know", function()
    local secret = pb.message(1, { pb.bytes(1, "s") }) .. pb.message(2, { pb.bytes(1, "k"), pb.bytes(2, "v\0\255") }) .. pb.bytes(3, "Opaque")
    local obj = assert(pb.decode(envelope("v1", "Secret", secret)))
    assert.are.same({ k = require("sim.util").base64("v\0\255") }, obj.data)
    assert.is_nil(pb.decode(envelope("example.com/v1", "Widget", "")))
    assert.is_nil(pb.decode('{"kind":"Secret"}'))
  end)

  it("writes varints as Go does, negative ones in ten bytes, and durations as Go prints them", function()
    assert.are.same({ "1m30s", "1.5ms", "2h0m0s", "0s" },
      { pb.go_duration(90000000000), pb.go_duration(1500000), pb.go_duration(7200000000000), pb.go_duration(0) })
    assert.are.equal("\1", pb.varint(1))
    assert.are.equal("\172\2", pb.varint(300))
    assert.are.equal(10, #pb.varint(-1))
    for num, _, v in pb.fields(pb.int(3, -5)) do assert.are.same({ 3, -5 }, { num, v }) end
  end)

  it("serves /openapi/v2 as kubectl 1.27 asks for it: a PATCH with fieldValidation per kind", function()
    local sim = sim_mod.start { speed = 0.02, modules = { "sim.auth", "sim.core", "sim.openapi" } }
    local ok, err = pcall(function()
      local http = require "vq.http"
      local r = assert(http.request { url = sim.url .. "/openapi/v2", retries = 0,
        headers = { Accept = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf" } })
      assert.are.equal(200, r.status)
      local doc = {}
      for num, _, v in pb.fields(r.body) do doc[num] = doc[num] or v end
      assert.are.equal("2.0", doc[1])
      -- find the StatefulSet's PATCH: Paths.path[] -> PathItem.patch -> vendor extensions and parameters
      local found
      for num, _, item in pb.fields(doc[8]) do
        if num == 2 then
          local f = {}
          for n, _, v in pb.fields(item) do f[n] = v end
          if f[1] == "/apis/apps/v1/namespaces/{namespace}/statefulsets/{name}" then found = f[2] end
        end
      end
      assert(found, "no statefulsets path")
      local body = assert(found:match("x%-kubernetes%-group%-version%-kind.-(group: apps\nkind: StatefulSet\nversion: v1\n)"))
      assert.truthy(body)
      assert.truthy(found:find("fieldValidation", 1, true))
      r = assert(http.request { url = sim.url .. "/openapi/v2", retries = 0, headers = { Accept = "application/json" } })
      local patch = r.json.paths["/api/v1/namespaces/{namespace}/pods/{name}"].patch
      assert.are.same({ group = "", kind = "Pod", version = "v1" }, patch["x-kubernetes-group-version-kind"])
      local names = {}
      for _, p in ipairs(patch.parameters) do names[#names + 1] = p.name end
      assert.are.same({ "dryRun", "fieldManager", "fieldValidation", "force", "pretty" }, names)
    end)
    sim:stop()
    assert(ok, err)
  end)
end)

-- ---- the suite, once per version ----

local function kubectl_suite(version)
  local label = version or (sim_mod.DEFAULT_VERSION .. " (the default)")
  describe("kubectl against a " .. label .. " simulator", function()
    local s, minor, h, more
    local function kubectl(args, opts) return cluster.run_kubectl(s, args, opts) end
    -- kubectl that must succeed: its stdout and the run's result
    local function ok(args) return cluster.kubectl(s, args, { request_timeout = false }) end

    setup(function()
      s = start(version)
      minor = s:minor()
      h = headers(minor)
      more = install_log_program(s)
    end)
    teardown(function() if s then cluster.finish(s) end end)

    it("is the kubectl of the server's minor version, and prints the versions", function()
      local v = json.decode((ok { "version", "-o", "json" }))
      assert.are.equal(tostring(minor), v.clientVersion.minor)
      assert.are.equal(s.version, v.serverVersion.gitVersion)
      assert.are.equal(tostring(minor), v.serverVersion.minor)
      assert.are.equal(minor >= 33 and tostring(minor) or nil, v.serverVersion.emulationMinor)
      local out, r = ok { "version" }
      local client = out:match("Client Version: (%S+)")
      if minor <= 27 then
        -- 1.27 still prints version.Info and warns that --short becomes the default
        assert.matches('Server Version: version.Info{Major:"1", Minor:"27", GitVersion:"' .. pattern_escape(s.version) .. '"', out)
        assert.matches("WARNING: This version information is deprecated", r.stderr, 1, true)
      else
        assert.matches("^v1%." .. minor .. "%.%d+$", client)
        assert.matches("\nKustomize Version: v%S+\nServer Version: " .. pattern_escape(s.version) .. "\n$", out)
        assert.are.equal("", r.stderr)
      end
    end)

    it("lists every resource type of that version in api-resources", function()
      local t = parse_table((ok { "api-resources" }))
      assert.are.same({ "NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND" }, t.names)
      local got = {}
      for i, r in ipairs(t.rows) do got[i] = { r.NAME, r.SHORTNAMES, r.APIVERSION, r.NAMESPACED, r.KIND } end
      assert.are.same(api_resources(minor), got)
    end)

    it("prints get pods -A as the apiserver's pod table", function()
      local pods = s:list("pods")
      local t = parse_table((ok { "get", "pods", "-A" }))
      assert.are.same(h.pods, t.names)
      assert.are.equal(#pods, #t.rows)
      local by_name = {}
      for _, p in ipairs(pods) do by_name[p.metadata.namespace .. "/" .. p.metadata.name] = p end
      for _, r in ipairs(t.rows) do
        local p = by_name[r.NAMESPACE .. "/" .. r.NAME]
        assert(p, r.NAMESPACE .. "/" .. r.NAME)
        local ready = 0
        for _, cs in ipairs(p.status.containerStatuses or {}) do if cs.ready then ready = ready + 1 end end
        assert.are.equal(("%d/%d"):format(ready, #p.spec.containers), r.READY)
        assert.are.equal(p.status.phase == "Succeeded" and "Completed" or p.status.phase, r.STATUS)
        assert.matches("^%d+$", r.RESTARTS)
        assert.matches(AGE, r.AGE)
      end
      -- -o wide adds the priority-1 columns
      local wide = parse_table((ok { "get", "pods", "-A", "-o", "wide" }))
      assert.are.same(h.pods_wide, wide.names)
      for _, r in ipairs(wide.rows) do
        local p = by_name[r.NAMESPACE .. "/" .. r.NAME]
        assert.are.same({ p.status.podIP, p.spec.nodeName, "<none>", "<none>" },
          { r.IP, r.NODE, r["NOMINATED NODE"], r["READINESS GATES"] })
      end
    end)

    it("prints get pods -A -o json and -o yaml as a v1 List", function()
      local n = #s:list("pods")
      local list = json.decode((ok { "get", "pods", "-A", "-o", "json" }))
      assert.are.same({ "v1", "List", "" }, { list.apiVersion, list.kind, list.metadata.resourceVersion })
      assert.are.equal(n, #list.items)
      assert.are.same({ "v1", "Pod" }, { list.items[1].apiVersion, list.items[1].kind })
      local y = yaml.decode((ok { "get", "pods", "-A", "-o", "yaml" }))
      assert.are.same({ "v1", "List" }, { y.apiVersion, y.kind })
      assert.are.equal(n, #y.items)
      assert.are.equal(list.items[1].metadata.uid, y.items[1].metadata.uid)
    end)

    it("selects pods by label and by field, and says when nothing matches", function()
      local t = parse_table((ok { "get", "pods", "-A", "-l", "app=vantiq" }))
      local names = {}
      for i, r in ipairs(t.rows) do names[i] = r.NAMESPACE .. "/" .. r.NAME end
      assert.are.same({ "vantiq/vantiq-0", "vantiq/vantiq-1", "vantiq/vantiq-2" }, names)
      local running = s:list("pods", nil, function(p) return p.status.phase == "Running" end)
      t = parse_table((ok { "get", "pods", "-A", "--field-selector", "status.phase=Running" }))
      assert.are.equal(#running, #t.rows)
      for _, r in ipairs(t.rows) do assert.are.equal("Running", r.STATUS) end
      local out, r = ok { "get", "pods", "-A", "-l", "app=nothing-here" }
      assert.are.same({ "", "No resources found\n" }, { out, r.stderr })
      out, r = ok { "get", "pods", "-n", NS, "--field-selector", "status.phase=Pending" }
      assert.are.same({ "", "No resources found in vantiq namespace.\n" }, { out, r.stderr })
      r = kubectl { "get", "pods", "-A", "--field-selector", "spec.nothing=x" }
      assert.are.equal(1, r.status)
      assert.are.equal('Error from server (BadRequest): Unable to find "/v1, Resource=pods" that match label selector "", ' ..
        'field selector "spec.nothing=x": field label not supported: spec.nothing\n', r.stderr)
    end)

    it("describes a node and a pod", function()
      local node = s:get("pods", NS, "vantiq-0").spec.nodeName
      local out = ok { "describe", "node", node }
      assert.matches("^Name:%s+" .. pattern_escape(node) .. "\n", out)
      for _, l in ipairs { "\nRoles:%s+%S+\n", "\nTaints:%s+", "\nUnschedulable:%s+false\n", "\nConditions:\n",
                           "\n  Ready%s+True%s+", "\nAddresses:\n  InternalIP:%s+[%d.]+\n", "\nCapacity:\n",
                           "\nSystem Info:\n", "\n  Kubelet Version:%s+" .. pattern_escape(s.version) .. "\n",
                           "\nNon%-terminated Pods:%s+%(%d+ in total%)\n", "vantiq%s+vantiq%-0%s+", "\nAllocated resources:\n",
                           "\nEvents:%s+" } do
        assert.matches(l, out)
      end
      out = ok { "describe", "pod", "vantiq-0", "-n", NS }
      for _, l in ipairs { "^Name:%s+vantiq%-0\n", "\nNamespace:%s+vantiq\n", "\nNode:%s+" .. pattern_escape(node) .. "/[%d.]+\n",
                           "\nStatus:%s+Running\n", "\nControlled By:%s+StatefulSet/vantiq\n", "\nContainers:\n  vantiq:\n",
                           "\n    State:%s+Running\n", "\n    Ready:%s+True\n", "\nConditions:\n", "\nQoS Class:%s+%a+\n",
                           "\nEvents:" } do
        assert.matches(l, out)
      end
      local r = kubectl { "describe", "pod", "nope", "-n", NS }
      assert.are.same({ 1, 'Error from server (NotFound): pods "nope" not found\n' }, { r.status, r.stderr })
    end)

    it("taints a node and takes the taint off again", function()
      local node = s:get("pods", NS, "vantiq-0").spec.nodeName
      assert.are.equal(("node/%s tainted\n"):format(node), (ok { "taint", "nodes", node, "vqsim-maint=true:NoSchedule" }))
      local r = kubectl { "taint", "nodes", node, "vqsim-maint=true:NoSchedule" }
      assert.are.same({ 1, ("error: node %s already has vqsim-maint taint(s) with same effect(s) and --overwrite is false\n"):format(node) },
        { r.status, r.stderr })
      assert.matches("\nTaints:%s+vqsim%-maint=true:NoSchedule\n", (ok { "describe", "node", node }))
      assert.are.equal(("node/%s untainted\n"):format(node), (ok { "taint", "nodes", node, "vqsim-maint:NoSchedule-" }))
      r = kubectl { "taint", "nodes", node, "vqsim-maint:NoSchedule-" }
      assert.are.same({ 1, 'error: taint "vqsim-maint:NoSchedule" not found\n' }, { r.status, r.stderr })
      for _, t in ipairs(s:get("nodes", nil, node).spec.taints or {}) do assert.are_not.equal("vqsim-maint", t.key) end
    end)

    it("scales and restarts the vantiq StatefulSet, and rollout status waits for the rollout", function()
      local function rolled_out(replicas)
        local sts = s:get("statefulsets.apps", NS, "vantiq")
        local pods = s:list("pods", NS, function(p) return (p.metadata.labels or {}).app == "vantiq" end)
        if #pods ~= replicas then return false end
        for _, p in ipairs(pods) do
          local ready = false
          for _, cond in ipairs(p.status.conditions or {}) do ready = ready or (cond.type == "Ready" and cond.status == "True") end
          if not ready or p.metadata.labels["controller-revision-hash"] ~= sts.status.updateRevision or p.metadata.deletionTimestamp then
            return false
          end
        end
        return true
      end
      assert.are.equal("statefulset.apps/vantiq scaled\n", (ok { "scale", "sts/vantiq", "--replicas=2", "-n", NS }))
      assert.are.equal(2, s:get("statefulsets.apps", NS, "vantiq").spec.replicas)
      local out = ok { "rollout", "status", "sts/vantiq", "-n", NS, "--timeout=60s" }
      assert.matches("partitioned roll out complete: 2 new pods have been updated...\n$", out)
      assert(rolled_out(2), "rollout status finished before the scale-down did")
      assert.are.equal("statefulset.apps/vantiq restarted\n", (ok { "rollout", "restart", "sts/vantiq", "-n", NS }))
      local sts = s:get("statefulsets.apps", NS, "vantiq")
      assert.truthy(sts.spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"])
      out = ok { "rollout", "status", "sts/vantiq", "-n", NS, "--timeout=60s" }
      assert.matches("partitioned roll out complete: 2 new pods have been updated...\n$", out)
      assert(rolled_out(2), "rollout status finished before the rollout did")
      assert.are.equal("statefulset.apps/vantiq scaled\n", (ok { "scale", "sts/vantiq", "--replicas=3", "-n", NS }))
      out = ok { "rollout", "status", "sts/vantiq", "-n", NS, "--timeout=60s" }
      assert.matches("partitioned roll out complete: 3 new pods have been updated...\n$", out)
      assert(rolled_out(3), "rollout status finished before the scale-up did")
    end)

    it("creates a Job from the mongobackup CronJob and waits for it to complete", function()
      local out = ok { "create", "job", "fidelity-backup", "--from=cronjob/mongobackup", "-n", NS }
      assert.are.equal("job.batch/fidelity-backup created\n", out)
      local job = s:get("jobs.batch", NS, "fidelity-backup")
      local cj = s:get("cronjobs.batch", NS, "mongobackup")
      assert.are.equal("manual", job.metadata.annotations["cronjob.kubernetes.io/instantiate"])
      assert.are.same({ "CronJob", "mongobackup", cj.metadata.uid },
        { job.metadata.ownerReferences[1].kind, job.metadata.ownerReferences[1].name, job.metadata.ownerReferences[1].uid })
      -- kubectl 1.32+ posts it as protobuf: the same Job must arrive
      assert.are.same(cj.spec.jobTemplate.spec.template.spec.containers, job.spec.template.spec.containers)
      assert.are.equal(cj.spec.jobTemplate.spec.backoffLimit, job.spec.backoffLimit)
      out = ok { "wait", "--for=condition=complete", "job/fidelity-backup", "-n", NS, "--timeout=60s" }
      assert.are.equal("job.batch/fidelity-backup condition met\n", out)
      local r = kubectl { "create", "job", "fidelity-backup", "--from=cronjob/mongobackup", "-n", NS }
      assert.are.same({ 1, 'error: failed to create job: jobs.batch "fidelity-backup" already exists\n' }, { r.status, r.stderr })
    end)

    it("prints get sts,cronjob,job,svc,secret,pv,pvc,nodes -A as the apiserver's tables", function()
      local wi = s.world_info
      -- the CronJob controller drops the finished Job from status.active on its next sync
      cluster.eventually(function() return not s:get("cronjobs.batch", NS, "mongobackup").status.active end, 30,
        "the finished Job to leave status.active")
      local tables = parse_tables((ok { "get", "sts,cronjob,job,svc,secret,pv,pvc,nodes", "-A" }))
      for kind, want in pairs(h) do
        if not kind:match("^pods") then
          assert(tables[kind], "no table of " .. kind)
          assert.are.same(want, tables[kind].names)
        end
      end
      local sts = row_named(tables["statefulset.apps"], "statefulset.apps/vantiq")
      assert.are.same({ NS, "3/3" }, { sts.NAMESPACE, sts.READY })
      local cj = row_named(tables["cronjob.batch"], "cronjob.batch/mongobackup")
      assert.are.same({ "0 3 * * *", "False", "0" }, { cj.SCHEDULE, cj.SUSPEND, cj.ACTIVE })
      assert.are.equal("True", row_named(tables["cronjob.batch"], "cronjob.batch/mongorestore").SUSPEND)
      if minor >= 30 then assert.are.equal("<none>", cj.TIMEZONE) end
      local job = row_named(tables["job.batch"], "job.batch/fidelity-backup")
      assert.are.equal("1/1", job.COMPLETIONS)
      assert.matches(AGE, job.DURATION)
      if minor >= 30 then assert.are.equal("Complete", job.STATUS) end
      local lb = row_named(tables.service, "service/nginx-ingress-controller")
      assert.are.same({ "LoadBalancer", wi.lb_hostname }, { lb.TYPE, lb["EXTERNAL-IP"] })
      assert.matches("^80:%d+/TCP,443:%d+/TCP$", lb["PORT(S)"])
      local headless = row_named(tables.service, "service/mongodb")
      assert.are.same({ "ClusterIP", "None", "<none>", "27017/TCP" },
        { headless.TYPE, headless["CLUSTER-IP"], headless["EXTERNAL-IP"], headless["PORT(S)"] })
      local tls = row_named(tables.secret, "secret/vantiq-ssl-cert")
      assert.are.same({ "kubernetes.io/tls", "2" }, { tls.TYPE, tls.DATA })
      local claim = s:get("persistentvolumeclaims", NS, "datadir-mongodb-0")
      local pv = row_named(tables.persistentvolume, "persistentvolume/" .. claim.spec.volumeName)
      assert.are.same({ "", "RWO", "Bound", "vantiq/datadir-mongodb-0", "" },
        { pv.NAMESPACE, pv["ACCESS MODES"], pv.STATUS, pv.CLAIM, pv.REASON })
      local pvc = row_named(tables.persistentvolumeclaim, "persistentvolumeclaim/datadir-mongodb-0")
      assert.are.same({ "Bound", claim.spec.volumeName, "RWO" }, { pvc.STATUS, pvc.VOLUME, pvc["ACCESS MODES"] })
      if minor >= 29 then
        assert.are.same({ "<unset>", "<unset>" }, { pv.VOLUMEATTRIBUTESCLASS, pvc.VOLUMEATTRIBUTESCLASS })
      end
      for _, n in ipairs(tables.node.rows) do
        assert.are.same({ "", "Ready", s.version }, { n.NAMESPACE, n.STATUS, n.VERSION })
      end
      assert.are.equal(#s:list("nodes"), #tables.node.rows)
    end)

    it("shows a container's logs with -c, --tail, --since, --timestamps, --previous and -f", function()
      ok { "apply", "-f", cluster.file(s, "logs.yaml", LOG_POD_MANIFEST) }
      cluster.eventually(function()
        local p = s:get("pods", NS, LOG_POD)
        local cs = p and p.status.containerStatuses and p.status.containerStatuses[1]
        return cs and cs.ready and cs.restartCount == 1
      end, 30, "the log pod to come back after its crash")
      local function logs(...) return ok { "logs", LOG_POD, "-n", NS, ... } end
      assert.are.equal("two hours ago\nline 1\nline 2\nline 3\n", logs("-c", "app"))
      assert.are.equal("line 2\nline 3\n", logs("-c", "app", "--tail=2"))
      assert.are.equal("line 1\nline 2\nline 3\n", logs("-c", "app", "--since=1h"))
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d+Z line 3\n$", logs("-c", "app", "--tail=1", "--timestamps"))
      assert.are.equal("first life\n", logs("-c", "app", "--previous"))
      local r = kubectl { "logs", LOG_POD, "-n", NS, "-c", "nope" }
      assert.are.same({ 1, ("error: container nope is not valid for pod %s\n"):format(LOG_POD) }, { r.status, r.stderr })
      r = kubectl { "logs", "vantiq-0", "-n", NS, "-c", "vantiq", "--previous" }
      assert.are.same({ 1, 'Error from server (BadRequest): previous terminated container "vantiq" in pod "vantiq-0" not found\n' },
        { r.status, r.stderr })
      -- -f follows until the container ends
      local seen = vq.event()
      local follow = vq.spawn(function()
        return kubectl({ "logs", "-f", LOG_POD, "-n", NS, "-c", "app", "--tail=1" },
          { on_stdout = function(out) if out:find("line 3") then seen:set() end end })
      end)
      assert(seen:wait(30), "kubectl logs -f printed nothing")
      more:set()
      r = assert(follow:wait())
      assert.are.same({ 0, "line 3\nline 4\n" }, { r.status, r.stdout })
    end)

    it("applies the guide's telegraf RBAC manifest server-side, and a re-apply conflicts with the aggregation", function()
      local r = kubectl { "get", "clusterrole", "influx:telegraf" }
      assert.are.same({ 1, 'Error from server (NotFound): clusterroles.rbac.authorization.k8s.io "influx:telegraf" not found\n' },
        { r.status, r.stderr })
      local path = cluster.file(s, "telegraf-rbac.yaml", TELEGRAF_RBAC)
      local out = ok { "apply", "--server-side", "-f", path }
      assert.are.equal("clusterrole.rbac.authorization.k8s.io/influx:cluster:viewer serverside-applied\n" ..
        "clusterrole.rbac.authorization.k8s.io/influx:telegraf serverside-applied\n" ..
        "clusterrolebinding.rbac.authorization.k8s.io/influx:telegraf:viewer serverside-applied\n", out)
      local function aggregated()
        local role = s:get("clusterroles.rbac.authorization.k8s.io", nil, "influx:telegraf")
        for _, rule in ipairs(role and role.rules or {}) do
          for _, res in ipairs(rule.resources or {}) do if res == "nodes" then return true end end
        end
        return false
      end
      cluster.eventually(aggregated, 30, "the aggregation controller to fill influx:telegraf")
      local b = parse_table((ok { "get", "clusterrolebinding", "influx:telegraf:viewer", "-o", "wide" }))
      assert.are.same({ "ClusterRole/influx:telegraf", "shared/telegraf-ds, shared/telegraf-prom" },
        { b.rows[1].ROLE, b.rows[1].SERVICEACCOUNTS })
      r = kubectl { "apply", "--server-side", "-f", path }
      assert.are.equal(1, r.status)
      assert.are.equal("clusterrole.rbac.authorization.k8s.io/influx:cluster:viewer serverside-applied\n" ..
        "clusterrolebinding.rbac.authorization.k8s.io/influx:telegraf:viewer serverside-applied\n", r.stdout)
      assert.matches('^error: Apply failed with 1 conflict: conflict with "clusterrole%-aggregation%-controller" using ' ..
        'rbac%.authorization%.k8s%.io/v1: %.rules\n', r.stderr)
      assert(aggregated(), "the conflicting apply emptied the aggregated rules")
    end)

    it("applies client-side (kubectl 1.27 validates through /openapi/v2) and deletes a claim and its volume", function()
      local path = cluster.file(s, "volumes.yaml", VOLUMES)
      assert.are.equal("persistentvolume/fidelity-pv created\npersistentvolumeclaim/fidelity-pvc created\n",
        (ok { "apply", "-f", path }))
      assert.are.equal("persistentvolume/fidelity-pv unchanged\npersistentvolumeclaim/fidelity-pvc unchanged\n",
        (ok { "apply", "-f", path }))
      cluster.eventually(function()
        local pvc = s:get("persistentvolumeclaims", NS, "fidelity-pvc")
        return pvc and pvc.status.phase == "Bound"
      end, 30, "fidelity-pvc to be bound")
      local t = parse_table((ok { "get", "pvc", "fidelity-pvc", "-n", NS }))
      assert.are.same({ "Bound", "fidelity-pv", "1Gi", "RWO", "manual" },
        { t.rows[1].STATUS, t.rows[1].VOLUME, t.rows[1].CAPACITY, t.rows[1]["ACCESS MODES"], t.rows[1].STORAGECLASS })
      assert.are.equal('persistentvolumeclaim "fidelity-pvc" deleted\n', (ok { "delete", "pvc", "fidelity-pvc", "-n", NS }))
      assert.is_nil(s:get("persistentvolumeclaims", NS, "fidelity-pvc"))
      cluster.eventually(function() return s:get("persistentvolumes", nil, "fidelity-pv").status.phase == "Released" end, 30,
        "fidelity-pv to be Released")
      t = parse_table((ok { "get", "pv", "fidelity-pv" }))
      assert.are.same({ "Released", "vantiq/fidelity-pvc", "Retain" }, { t.rows[1].STATUS, t.rows[1].CLAIM, t.rows[1]["RECLAIM POLICY"] })
      assert.are.equal('persistentvolume "fidelity-pv" deleted\n', (ok { "delete", "pv", "fidelity-pv" }))
      assert.is_nil(s:get("persistentvolumes", nil, "fidelity-pv"))
      local r = kubectl { "delete", "pv", "fidelity-pv" }
      assert.are.same({ 1, 'Error from server (NotFound): persistentvolumes "fidelity-pv" not found\n' }, { r.status, r.stderr })
    end)

    it("leaves a claim a pod still uses Terminating", function()
      local out = ok { "delete", "pvc", "datadir-mongodb-2", "-n", NS, "--wait=false" }
      assert.are.equal('persistentvolumeclaim "datadir-mongodb-2" deleted\n', out)
      local t = parse_table((ok { "get", "pvc", "datadir-mongodb-2", "-n", NS }))
      assert.are.equal("Terminating", t.rows[1].STATUS)
    end)
  end)
end

kubectl_suite(nil)
kubectl_suite("v1.27.16")
kubectl_suite("v1.33.1")
