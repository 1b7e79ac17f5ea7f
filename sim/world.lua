-- The Vantiq installation the simulator starts with: nodes, the vantiq and shared
-- namespaces with everything `./gradlew deploy` puts there, the cluster's built-in RBAC,
-- certificates and secrets. Edit this file to change the world; or give --world a file
-- (`.json` from `vqlua scripts/snapshot.lua`, a list or a List of objects, or `.lua`
-- returning a list of objects) to start from a real cluster's objects instead.
--
--   opts.world          "production" (default: the triple configuration), "development"
--                       (one of each), or a path to a world file
--   opts.namespace      the vantiq namespace (site-specific; default "vantiq")
--   opts.vantiq_tag     the server's image tag (default "1.37.2")
--   opts.installation   vantiq.installation, the cluster's host name (default "vqsim")
--   opts.domain         default <installation>.vantiq.example.com
--   opts.provider       "aws" (default) or "azure": node names, zones, the LoadBalancer
--
-- sim.world_info (for the other modules and the specs): namespace, shared_namespace,
-- domain, lb_hostname (or lb_ip on azure), admin_key (the key that works: set when
-- vantiq-0 prints it on an empty database, nil once it died with a restart or 48 h),
-- admin_key_printed (the last banner's), admin_key_time/_expires (sim clock), vantiq_tag,
-- schema_version, ca_pem, ca_file, intermediate_pem, deployment, installation, provider,
-- nodes, keycloak = {admin_user, admin_password, db_user, db_password, db_host} (the right
-- values: what secrets.yaml holds), mongodb = {user, password, root_password}, grafana =
-- {admin_user, admin_password}, backup_bucket, backups = {{name, time}...}.
-- Also sim.influx_measurements[db] (sorted names), sim.grafana_datasources, and
-- sim.vantiq_auth_error (what an IDE login meets: kept in step with the served chain).
local json = require "json"
local util = require "sim.util"
local resources = require "sim.resources"
local certs = require "sim.world.certs"
local rbac = require "sim.world.rbac"
local programs = require "sim.programs"

local M = {}

local function array(t) return setmetatable(t or {}, json.array_mt) end

M.DEFAULT_TAG = "1.37.2"

-- Replica counts: development is the single configuration, production the triple one.
M.SIZES = {
  development = { compute = 1, database = 0, vantiq = 1, metrics = 1, vision = 1, mongodb = 1, keycloak = 1,
                  nginx = 1, coredns = 2, instance = "m5.4xlarge" },
  production = { compute = 3, database = 3, vantiq = 3, metrics = 1, vision = 2, mongodb = 3, keycloak = 3,
                 nginx = 2, coredns = 2, instance = "m5.2xlarge", db_instance = "r5.xlarge" },
}

M.PROVIDERS = {
  aws = { region = "ap-northeast-1", zones = { "ap-northeast-1a", "ap-northeast-1c", "ap-northeast-1d" } },
  azure = { region = "japaneast", zones = { "japaneast-1", "japaneast-2", "japaneast-3" } },
}

M.IMAGES = {
  vantiq = "quay.io/vantiq/vantiq-server", vision = "quay.io/vantiq/vision-analytics",
  mongodb = "mongo:4.4.29", backup = "quay.io/vantiq/mongo-backup:1.4.0",
  keycloak = "jboss/keycloak:12.0.4", influxdb = "influxdb:1.8.10", grafana = "grafana/grafana:7.5.17",
  telegraf = "telegraf:1.17.3", nginx = "k8s.gcr.io/ingress-nginx/controller:v0.44.0",
  backend = "k8s.gcr.io/defaultbackend-amd64:1.5", coredns = "registry.k8s.io/coredns/coredns:v1.11.1",
  kube_proxy = "registry.k8s.io/kube-proxy",
}

local DAY = 86400

-- ---- small builders ----

local function random_hex(n)
  local out = {}
  for i = 1, n do out[i] = ("%x"):format(math.random(0, 15)) end
  return table.concat(out)
end

local function password(n)
  local chars = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
  local out = {}
  for i = 1, n or 20 do
    local k = math.random(#chars)
    out[i] = chars:sub(k, k)
  end
  return table.concat(out)
end

local function b64map(t)
  local out = {}
  for k, v in pairs(t) do out[k] = util.base64(v) end
  return out
end

local function helm(release, ns, extra)
  local labels = { ["app.kubernetes.io/managed-by"] = "Helm" }
  for k, v in pairs(extra or {}) do labels[k] = v end
  return labels, { ["meta.helm.sh/release-name"] = release, ["meta.helm.sh/release-namespace"] = ns }
end

local function meta(name, ns, release, labels)
  local l, a = helm(release, ns, labels)
  return { name = name, namespace = ns, labels = l, annotations = a }
end

local function container(name, image, o)
  o = o or {}
  local c = { name = name, image = image, args = o.args and array(o.args), command = o.command and array(o.command),
              env = o.env and array(o.env), ports = o.ports and array(o.ports),
              resources = o.resources or {}, volumeMounts = o.mounts and array(o.mounts),
              readinessProbe = o.probe }
  return c
end

local function port(name, p) return { name = name, containerPort = p, protocol = "TCP" } end

local function res(cpu, mem, mem_limit)
  return { requests = { cpu = cpu, memory = mem }, limits = mem_limit and { memory = mem_limit } or nil }
end

local function http_probe(path, p, delay)
  return { httpGet = { path = path, port = p, scheme = "HTTP" }, initialDelaySeconds = delay or 5, periodSeconds = 10,
           timeoutSeconds = 1, successThreshold = 1, failureThreshold = 3 }
end

local function secret_env(name, secret, key)
  return { name = name, valueFrom = { secretKeyRef = { name = secret, key = key } } }
end

local function template(app, spec, annotations)
  return { metadata = { labels = { app = app }, annotations = annotations }, spec = spec }
end

local function pod_spec(containers, o)
  o = o or {}
  return { containers = array(containers), initContainers = o.init and array(o.init), volumes = o.volumes and array(o.volumes),
           serviceAccountName = o.sa, nodeSelector = o.node_selector, tolerations = o.tolerations and array(o.tolerations),
           imagePullSecrets = o.pull and array { { name = "quay-pull-secret" } } or nil, affinity = o.affinity,
           terminationGracePeriodSeconds = o.grace or 30 }
end

local function spread(app)
  return { podAntiAffinity = { preferredDuringSchedulingIgnoredDuringExecution = array { { weight = 100,
    podAffinityTerm = { topologyKey = "kubernetes.io/hostname", labelSelector = { matchLabels = { app = app } } } } } } }
end

local function program(name, of)
  local out = {}
  for c, p in pairs(of) do out["sim.vqlua.io/program." .. c] = p end
  out["sim.vqlua.io/workload"] = name
  return out
end

-- ---- nodes ----

local function node_name(w, pool, i)
  if w.provider == "azure" then return ("aks-%s-%08d-vmss%06d"):format(pool, 31852317 + #pool, i - 1) end
  local ip = ("10.0.%d.%d"):format(i, (pool == "vantiq" and 40 or 140) + i * 7)
  return ("ip-%s.%s.compute.internal"):format(ip:gsub("%.", "-"), w.region), ip
end

local function node_labels(w, pool, name, zone, instance)
  local labels = {
    ["kubernetes.io/arch"] = "amd64", ["kubernetes.io/os"] = "linux", ["kubernetes.io/hostname"] = name,
    ["beta.kubernetes.io/arch"] = "amd64", ["beta.kubernetes.io/os"] = "linux",
    ["node.kubernetes.io/instance-type"] = instance, ["beta.kubernetes.io/instance-type"] = instance,
    ["topology.kubernetes.io/region"] = w.region, ["topology.kubernetes.io/zone"] = zone,
    ["failure-domain.beta.kubernetes.io/region"] = w.region, ["failure-domain.beta.kubernetes.io/zone"] = zone,
    ["node-role.kubernetes.io/worker"] = "",
    ["vantiq.com/workload-preference"] = pool == "vantiq" and "compute" or "database",
  }
  if w.provider == "aws" then
    labels["eks.amazonaws.com/nodegroup"] = pool
    labels["eks.amazonaws.com/capacityType"] = "ON_DEMAND"
  else
    labels["kubernetes.azure.com/agentpool"] = pool
  end
  return labels
end

local function node_conditions(w)
  local since, now = util.rfc3339(w.sim.clock:now() - w.node_age), util.rfc3339(w.sim.clock:now())
  local function cond(typ, status, reason, message)
    return { type = typ, status = status, reason = reason, message = message, lastHeartbeatTime = now, lastTransitionTime = since }
  end
  return array {
    cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
  }
end

local function node_info(w)
  local aws = w.provider == "aws"
  return { kubeletVersion = w.sim.version, kubeProxyVersion = w.sim.version,
           osImage = aws and "Amazon Linux 2" or "Ubuntu 22.04.5 LTS",
           kernelVersion = aws and "5.10.228-219.884.amzn2.x86_64" or "5.15.0-1075-azure",
           containerRuntimeVersion = "containerd://1.7.23", architecture = "amd64", operatingSystem = "linux",
           machineID = random_hex(32), systemUUID = util.uuid(), bootID = util.uuid() }
end

-- cpu in cores, memory in GiB: what the instance type has, less the kubelet's reservation.
local function node_resources(cpu, mem)
  return { cpu = tostring(cpu), memory = ("%dKi"):format(mem * 1024 * 1024), pods = "58", ["ephemeral-storage"] = "104845292Ki" },
         { cpu = ("%dm"):format(cpu * 1000 - 90), memory = ("%dKi"):format(mem * 1024 * 1024 - 757000), pods = "58",
           ["ephemeral-storage"] = "95551679124" }
end

local function provider_id(w, pool, i, zone)
  if w.provider == "aws" then return ("aws:///%s/i-0%s"):format(zone, random_hex(16)) end
  return ("azure:///subscriptions/%s/resourceGroups/mc_vqsim/providers/Microsoft.Compute/virtualMachineScaleSets/aks-%s/virtualMachines/%d")
    :format(util.uuid(), pool, i - 1)
end

local function node(w, pool, i, instance, taints)
  local name, ip = node_name(w, pool, i)
  ip = ip or ("10.224.0.%d"):format((pool == "vantiq" and 4 or 40) + i)
  local zone = w.zones[(i - 1) % #w.zones + 1]
  local big = instance:find("4xlarge") and 2 or 1
  local capacity, allocatable = node_resources((pool == "vantiq" and 8 or 4) * big, 32 * big)
  return {
    metadata = { name = name, labels = node_labels(w, pool, name, zone, instance), annotations = {
      ["node.alpha.kubernetes.io/ttl"] = "0", ["volumes.kubernetes.io/controller-managed-attach-detach"] = "true" } },
    spec = { providerID = provider_id(w, pool, i, zone), taints = taints and array(taints) or nil },
    status = {
      capacity = capacity, allocatable = allocatable, conditions = node_conditions(w),
      addresses = array { { type = "InternalIP", address = ip }, { type = "Hostname", address = name },
                          w.provider == "aws" and { type = "InternalDNS", address = name } or nil },
      daemonEndpoints = { kubeletEndpoint = { Port = 10250 } }, nodeInfo = node_info(w),
    },
  }
end

local DB_TAINT = { key = "vantiq.com/mongodb", value = "true", effect = "NoSchedule" }
local DB_TOLERATION = { key = "vantiq.com/mongodb", operator = "Equal", value = "true", effect = "NoSchedule" }
local ANY_TOLERATION = { operator = "Exists" }

local function nodes(w)
  local out = {}
  for i = 1, w.size.compute do out[#out + 1] = node(w, "vantiq", i, w.size.instance) end
  for i = 1, w.size.database do out[#out + 1] = node(w, "mongodb", i, w.size.db_instance, { DB_TAINT }) end
  return out
end

-- ---- storage ----

local function storage_classes()
  return {
    { metadata = { name = "gp2", annotations = { ["storageclass.kubernetes.io/is-default-class"] = "true" } },
      provisioner = "kubernetes.io/aws-ebs", reclaimPolicy = "Delete", volumeBindingMode = "WaitForFirstConsumer",
      parameters = { type = "gp2", fsType = "ext4" } },
    { metadata = { name = "vantiq-sc" }, provisioner = "ebs.csi.aws.com", reclaimPolicy = "Retain",
      volumeBindingMode = "WaitForFirstConsumer", allowVolumeExpansion = true, parameters = { type = "gp3", fsType = "ext4" } },
  }
end

local function claim_template(name, size)
  return { metadata = { name = name }, spec = { accessModes = array { "ReadWriteOnce" }, storageClassName = "vantiq-sc",
           resources = { requests = { storage = size } } } }
end

-- A bound claim and its volume, as the StatefulSet and the provisioner left them.
local function bound_claim(w, ns, name, app, size, zone)
  local volume = "pvc-" .. util.uuid()
  local pvc = { metadata = { name = name, namespace = ns, labels = { app = app },
      annotations = { ["pv.kubernetes.io/bind-completed"] = "yes", ["pv.kubernetes.io/bound-by-controller"] = "yes",
                      ["volume.kubernetes.io/storage-provisioner"] = "ebs.csi.aws.com",
                      ["volume.kubernetes.io/selected-node"] = w.node_names[1] } },
    spec = { accessModes = array { "ReadWriteOnce" }, storageClassName = "vantiq-sc", volumeName = volume,
             resources = { requests = { storage = size } } },
    status = { phase = "Bound", accessModes = array { "ReadWriteOnce" }, capacity = { storage = size } } }
  local pv = { metadata = { name = volume, annotations = { ["pv.kubernetes.io/provisioned-by"] = "ebs.csi.aws.com" } },
    spec = { capacity = { storage = size }, accessModes = array { "ReadWriteOnce" }, persistentVolumeReclaimPolicy = "Retain",
             storageClassName = "vantiq-sc", volumeMode = "Filesystem",
             csi = { driver = "ebs.csi.aws.com", fsType = "ext4", volumeHandle = "vol-0" .. random_hex(16) },
             claimRef = { kind = "PersistentVolumeClaim", namespace = ns, name = name, apiVersion = "v1" },
             nodeAffinity = { required = { nodeSelectorTerms = array { { matchExpressions = array {
               { key = "topology.kubernetes.io/zone", operator = "In", values = array { zone } } } } } } } },
    status = { phase = "Bound" } }
  return pvc, pv
end

-- ---- the vantiq namespace ----

local function vantiq_sts(w)
  local ns, tag = w.namespace, w.tag
  local image = M.IMAGES.vantiq .. ":" .. tag
  local env = { { name = "VANTIQ_INSTALLATION", value = w.installation }, { name = "VANTIQ_DOMAIN", value = w.domain },
                { name = "MONGO_HOSTS", value = "mongodb-0.mongodb:27017" },
                secret_env("MONGO_PASSWORD", "mongodb-credentials", "mongodb-password") }
  local spec = pod_spec({
    container("vantiq", image, { ports = { port("http", 8080), port("metrics", 8081) }, env = env,
      resources = res("2", "8Gi", "12Gi"), probe = http_probe("/healthz", 8080, 30),
      mounts = { { name = "ssl", mountPath = "/opt/vantiq/ssl", readOnly = true },
                 { name = "license", mountPath = "/opt/vantiq/license", readOnly = true } } }) }, {
    init = { container("load-model", image, { command = { "/opt/vantiq/bin/loadModel" }, env = env, resources = res("500m", "1Gi") }) },
    volumes = { { name = "ssl", secret = { secretName = "vantiq-ssl-cert" } }, { name = "license", secret = { secretName = "vantiq-license" } } },
    pull = true, affinity = spread("vantiq"), grace = 60, sa = "vantiq",
  })
  return { metadata = meta("vantiq", ns, "vantiq", { app = "vantiq" }),
    spec = { replicas = w.size.vantiq, serviceName = "vantiq", podManagementPolicy = "OrderedReady",
             selector = { matchLabels = { app = "vantiq" } },
             template = template("vantiq", spec, program("vantiq", { vantiq = "vantiq-server", ["load-model"] = "load-model" })) } }
end

local function simple_sts(w, name, replicas, c, extra)
  extra = extra or {}
  local spec = pod_spec({ c }, extra)
  return { metadata = meta(name, extra.ns or w.namespace, extra.release or "vantiq", { app = name }),
    spec = { replicas = replicas, serviceName = name, podManagementPolicy = extra.policy or "OrderedReady",
             selector = { matchLabels = { app = name } }, template = template(name, spec, extra.annotations),
             volumeClaimTemplates = extra.claims and array(extra.claims) } }
end

local function mongodb_sts(w)
  local c = container("mongodb", M.IMAGES.mongodb, { command = { "mongod", "--replSet", "rs0", "--bind_ip_all" },
    ports = { port("mongodb", 27017) }, resources = res("1", "4Gi", "8Gi"),
    env = { { name = "MONGO_INITDB_ROOT_USERNAME", value = "root" }, secret_env("MONGO_INITDB_ROOT_PASSWORD", "mongodb-credentials", "mongodb-root-password") },
    mounts = { { name = "datadir", mountPath = "/data/db" } }, probe = { exec = { command = array { "mongo", "--eval", "db.adminCommand('ping')" } },
      initialDelaySeconds = 5, periodSeconds = 10 } })
  local placed = w.size.database > 0
  return simple_sts(w, "mongodb", w.size.mongodb, c, { policy = "Parallel", claims = { claim_template("datadir", "100Gi") },
    node_selector = placed and { ["vantiq.com/workload-preference"] = "database" } or nil,
    tolerations = { DB_TOLERATION }, affinity = spread("mongodb"), annotations = program("mongodb", { mongodb = "mongodb" }) })
end

local function backup_cronjob(w, name, schedule, suspend, prog)
  local c = container(name, M.IMAGES.backup, { command = { "/usr/local/bin/" .. name .. ".sh" },
    env = { { name = "MONGO_HOST", value = "mongodb-0.mongodb" }, { name = "BUCKET", value = w.bucket },
            secret_env("MONGO_PASSWORD", "mongodb-credentials", "mongodb-root-password") }, resources = res("200m", "512Mi") })
  local spec = pod_spec({ c }, { pull = true })
  spec.restartPolicy = "Never"
  return { metadata = meta(name, w.namespace, "vantiq", { app = name }),
    spec = { schedule = schedule, suspend = suspend, concurrencyPolicy = "Forbid", successfulJobsHistoryLimit = 3, failedJobsHistoryLimit = 1,
             jobTemplate = { spec = { backoffLimit = 1, template = template(name, spec, program(name, { [name] = prog })) } } } }
end

--- The last scheduled time of a daily 03:00 UTC schedule before t.
function M.last_daily(t, hour)
  local day = math.floor(t / DAY) * DAY + (hour or 3) * 3600
  return day <= t and day or day - DAY
end

local function vantiq_objects(w)
  local ns, tag = w.namespace, w.tag
  local out = {
    { "statefulsets.apps", vantiq_sts(w) },
    { "statefulsets.apps", simple_sts(w, "metrics-collector", w.size.metrics,
        container("metrics-collector", M.IMAGES.vantiq .. ":" .. tag, { ports = { port("http", 8080) }, resources = res("1", "4Gi", "6Gi"),
          probe = http_probe("/healthz", 8080, 30) }), { pull = true, annotations = program("metrics-collector", { ["metrics-collector"] = "vantiq-server" }) }) },
    { "statefulsets.apps", simple_sts(w, "vision-analytics", w.size.vision,
        container("vision-analytics", M.IMAGES.vision .. ":" .. tag, { ports = { port("http", 8080) }, resources = res("1", "2Gi", "4Gi") }),
        { pull = true, affinity = spread("vision-analytics"), annotations = program("vision-analytics", { ["vision-analytics"] = "vision-analytics" }) }) },
    { "statefulsets.apps", mongodb_sts(w) },
    { "cronjobs.batch", backup_cronjob(w, "mongobackup", "0 3 * * *", false, "mongobackup") },
    { "cronjobs.batch", backup_cronjob(w, "mongorestore", "0 0 1 1 *", true, "mongorestore") },
    { "cronjobs.batch", backup_cronjob(w, "userdbrestore", "0 0 1 1 *", true, "userdbrestore") },
  }
  for _, s in ipairs { { "vantiq", 8080 }, { "metrics-collector", 8080 }, { "vision-analytics", 8080 } } do
    out[#out + 1] = { "services", { metadata = meta(s[1], ns, "vantiq", { app = s[1] }),
      spec = { selector = { app = s[1] }, ports = array { { name = "http", port = s[2], targetPort = s[2] } } } } }
  end
  out[#out + 1] = { "services", { metadata = meta("mongodb", ns, "vantiq", { app = "mongodb" }),
    spec = { clusterIP = "None", selector = { app = "mongodb" }, publishNotReadyAddresses = true,
             ports = array { { name = "mongodb", port = 27017, targetPort = 27017 } } } } }
  out[#out + 1] = { "serviceaccounts", { metadata = meta("vantiq", ns, "vantiq") } }
  out[#out + 1] = { "ingresses.networking.k8s.io", { metadata = meta("vantiq", ns, "vantiq"),
    spec = { ingressClassName = "nginx", tls = array { { hosts = array { w.domain }, secretName = "vantiq-ssl-cert" } },
             rules = array { { host = w.domain, http = { paths = array { { path = "/", pathType = "Prefix",
               backend = { service = { name = "vantiq", port = { number = 8080 } } } } } } } } },
    status = { loadBalancer = { ingress = array { w.lb } } } } }
  return out
end

local function vantiq_claims(w)
  local out = {}
  for i = 0, w.size.mongodb - 1 do
    local zone = w.zones[i % #w.zones + 1]
    local pvc, pv = bound_claim(w, w.namespace, "datadir-mongodb-" .. i, "mongodb", "100Gi", zone)
    out[#out + 1] = { "persistentvolumes", pv }
    out[#out + 1] = { "persistentvolumeclaims", pvc }
  end
  local pvc, pv = bound_claim(w, w.shared, "influxdb-data-influxdb-0", "influxdb", "50Gi", w.zones[1])
  out[#out + 1] = { "persistentvolumes", pv }
  out[#out + 1] = { "persistentvolumeclaims", pvc }
  return out
end

-- ---- the shared namespace ----

local function keycloak_sts(w)
  local kc = w.info.keycloak
  local c = container("keycloak", M.IMAGES.keycloak, { ports = { port("http", 8080), port("https", 8443) }, resources = res("500m", "1Gi", "2Gi"),
    env = { { name = "KEYCLOAK_USER", value = kc.admin_user }, secret_env("KEYCLOAK_PASSWORD", "keycloak", "password"),
            { name = "DB_VENDOR", value = "postgres" }, { name = "DB_ADDR", value = kc.db_host }, { name = "DB_PORT", value = "5432" },
            { name = "DB_DATABASE", value = "keycloak" }, { name = "DB_USER", value = kc.db_user },
            secret_env("DB_PASSWORD", "keycloak", "db-password"), { name = "PROXY_ADDRESS_FORWARDING", value = "true" } },
    probe = http_probe("/auth/realms/master", 8080, 30) })
  return simple_sts(w, "keycloak", w.size.keycloak, c, { ns = w.shared, release = "keycloak", policy = "Parallel",
    affinity = spread("keycloak"), annotations = program("keycloak", { keycloak = "keycloak" }) })
end

local function deployment(w, name, ns, release, replicas, spec, annotations)
  return { metadata = meta(name, ns, release, { app = name }),
    spec = { replicas = replicas, selector = { matchLabels = { app = name } }, template = template(name, spec, annotations) } }
end

local function telegraf_container(w)
  return container("telegraf", M.IMAGES.telegraf, { resources = res("100m", "256Mi", "512Mi"),
    env = { { name = "HOSTNAME", valueFrom = { fieldRef = { fieldPath = "spec.nodeName" } } },
            { name = "INFLUX_URL", value = "http://influxdb:8086" } } })
end

local function influxdb_sts(w)
  local c = container("influxdb", M.IMAGES.influxdb, { ports = { port("api", 8086) }, resources = res("1", "4Gi", "8Gi"),
    probe = http_probe("/ping", 8086, 5), mounts = { { name = "influxdb-data", mountPath = "/var/lib/influxdb" } } })
  return simple_sts(w, "influxdb", 1, c, { ns = w.shared, release = "influxdb", claims = { claim_template("influxdb-data", "50Gi") },
    annotations = program("influxdb", { influxdb = "influxdb" }) })
end

local function grafana_deployment(w)
  local c = container("grafana", M.IMAGES.grafana, { ports = { port("http", 3000) }, resources = res("200m", "256Mi", "512Mi"),
    probe = http_probe("/api/health", 3000, 10), env = { secret_env("GF_SECURITY_ADMIN_PASSWORD", "grafana", "admin-password") },
    mounts = { { name = "datasources", mountPath = "/etc/grafana/provisioning/datasources" } } })
  return deployment(w, "grafana", w.shared, "grafana", 1,
    pod_spec({ c }, { volumes = { { name = "datasources", configMap = { name = "grafana-datasources" } } } }),
    program("grafana", { grafana = "grafana" }))
end

local function nginx_deployments(w)
  local ns = w.shared
  local c = container("nginx-ingress-controller", M.IMAGES.nginx, {
    ports = { port("http", 80), port("https", 443), port("metrics", 10254) },
    args = { "/nginx-ingress-controller", "--default-backend-service=" .. ns .. "/nginx-ingress-default-backend",
             "--publish-service=" .. ns .. "/nginx-ingress-controller", "--ingress-class=nginx",
             "--default-ssl-certificate=" .. ns .. "/default-ssl-cert" },
    resources = res("500m", "512Mi"), probe = http_probe("/healthz", 10254, 10) })
  local controller = deployment(w, "nginx-ingress-controller", ns, "nginx-ingress", w.size.nginx,
    pod_spec({ c }, { sa = "nginx-ingress", affinity = spread("nginx-ingress-controller") }),
    program("nginx-ingress-controller", { ["nginx-ingress-controller"] = "nginx-ingress" }))
  local backend = deployment(w, "nginx-ingress-default-backend", ns, "nginx-ingress", 1, pod_spec({
    container("nginx-ingress-default-backend", M.IMAGES.backend, { ports = { port("http", 8080) }, resources = res("10m", "20Mi") }) }))
  return controller, backend
end

-- telegraf-ds on every node (it tolerates every taint), telegraf-prom once.
local function telegraf_workloads(w)
  local ns = w.shared
  local prom = deployment(w, "telegraf-prom", ns, "telegraf-prom", 1, pod_spec({ telegraf_container(w) }, { sa = "telegraf-prom" }),
    program("telegraf-prom", { telegraf = "telegraf" }))
  local ds = { metadata = meta("telegraf-ds", ns, "telegraf-ds", { app = "telegraf-ds" }),
    spec = { selector = { matchLabels = { app = "telegraf-ds" } },
             template = template("telegraf-ds", pod_spec({ telegraf_container(w) }, { sa = "telegraf-ds", tolerations = { ANY_TOLERATION } }),
               program("telegraf-ds", { telegraf = "telegraf" })) } }
  return prom, ds
end

local function shared_workloads(w)
  local nginx, backend = nginx_deployments(w)
  local prom, ds = telegraf_workloads(w)
  return {
    { "statefulsets.apps", keycloak_sts(w) }, { "statefulsets.apps", influxdb_sts(w) },
    { "deployments.apps", grafana_deployment(w) }, { "deployments.apps", nginx }, { "deployments.apps", backend },
    { "deployments.apps", prom }, { "daemonsets.apps", ds },
  }
end

local function svc(name, ns, release, ports, o)
  o = o or {}
  local p = array()
  for _, x in ipairs(ports) do p[#p + 1] = { name = x[1], port = x[2], targetPort = x[3] or x[2], protocol = x[4] } end
  local m = meta(name, ns, release, { app = o.app or name })
  for k, v in pairs(o.annotations or {}) do m.annotations[k] = v end
  return { "services", { metadata = m, spec = { type = o.type, clusterIP = o.ip, selector = { app = o.app or name }, ports = p,
    externalTrafficPolicy = o.type == "LoadBalancer" and "Local" or nil }, status = o.status } }
end

local function shared_services(w)
  local ns = w.shared
  local lb_annotations = w.provider == "aws" and { ["service.beta.kubernetes.io/aws-load-balancer-backend-protocol"] = "tcp",
    ["service.beta.kubernetes.io/aws-load-balancer-connection-idle-timeout"] = "3600" } or {}
  return {
    svc("keycloak", ns, "keycloak", { { "http", 8080 }, { "https", 8443 } }),
    svc("keycloak-headless", ns, "keycloak", { { "http", 8080 } }, { app = "keycloak", ip = "None" }),
    svc("influxdb", ns, "influxdb", { { "api", 8086 }, { "rpc", 8088 } }),
    svc("grafana", ns, "grafana", { { "service", 3000 } }),
    svc("nginx-ingress-controller", ns, "nginx-ingress", { { "http", 80 }, { "https", 443 } },
      { type = "LoadBalancer", annotations = lb_annotations, status = { loadBalancer = { ingress = array { w.lb } } } }),
    svc("nginx-ingress-controller-metrics", ns, "nginx-ingress", { { "metrics", 10254 } }, { app = "nginx-ingress-controller" }),
    svc("nginx-ingress-default-backend", ns, "nginx-ingress", { { "http", 80, 8080 } }),
  }
end

-- ---- configuration, secrets, accounts ----

--- The datasources Grafana holds (its database): what the dashboards of the guide use.
function M.datasources(url)
  local out = {}
  for i, d in ipairs { { "internals", "_internal" }, { "kubernetes", "kubernetes" }, { "systemDB", "systemDB" },
                       { "vantiqServer", "vantiqServer" } } do
    out[i] = { id = i, uid = "vqsim-" .. d[1]:lower(), orgId = 1, name = d[1], type = "influxdb", access = "proxy",
               url = url, database = d[2], user = "", basicAuth = false, isDefault = d[1] == "kubernetes",
               jsonData = { httpMode = "GET" }, readOnly = false }
  end
  return out
end

local function datasources_yaml(list)
  local lines = { "apiVersion: 1", "datasources:" }
  for _, d in ipairs(list) do
    lines[#lines + 1] = ("- name: %s\n  type: influxdb\n  access: proxy\n  url: %s\n  database: %s\n  isDefault: %s")
      :format(d.name, d.url, d.database, tostring(d.isDefault))
  end
  return table.concat(lines, "\n") .. "\n"
end

function M.grafana_configmap(ns, list)
  return { metadata = meta("grafana-datasources", ns, "grafana"), data = { ["datasources.yaml"] = datasources_yaml(list) } }
end

--- A kubernetes.io/tls Secret holding chain and key.
function M.tls_secret(name, ns, release, chain, key)
  return { metadata = meta(name, ns, release), type = "kubernetes.io/tls",
           data = b64map { ["tls.crt"] = chain, ["tls.key"] = key } }
end

local function pull_secret(ns)
  local auth = util.base64("vantiq+vqsim:" .. password(32))
  local cfg = json.encode { auths = { ["quay.io"] = { auth = auth } } }
  return { metadata = { name = "quay-pull-secret", namespace = ns }, type = "kubernetes.io/dockerconfigjson",
           data = b64map { [".dockerconfigjson"] = cfg } }
end

local function license_key(w)
  local body = json.encode { issuedTo = "VQSim Customer", id = util.uuid(), installation = w.installation,
    expires = util.rfc3339(w.sim.clock:now() + 365 * DAY) }
  return "-----BEGIN VANTIQ LICENSE-----\n" .. util.base64(body):gsub(("."):rep(64), "%0\n") .. "\n-----END VANTIQ LICENSE-----\n"
end

local function secrets(w)
  local i, set = w.info, w.certs
  local ns, sh = w.namespace, w.shared
  return {
    { "secrets", M.tls_secret("vantiq-ssl-cert", ns, "vantiq", set.fullchain, set.key_pem) },
    { "secrets", M.tls_secret("default-ssl-cert", sh, "nginx-ingress", set.fullchain, set.key_pem) },
    { "secrets", { metadata = meta("vantiq-license", ns, "vantiq"), data = b64map { ["license.key"] = license_key(w), ["public.pem"] = set.public_pem } } },
    { "secrets", { metadata = meta("mongodb-credentials", ns, "vantiq"), data = b64map { ["mongodb-root-password"] = i.mongodb.root_password,
      ["mongodb-username"] = i.mongodb.user, ["mongodb-password"] = i.mongodb.password } } },
    { "secrets", { metadata = meta("keycloak", sh, "keycloak"), data = b64map { password = i.keycloak.admin_password,
      ["db-password"] = i.keycloak.db_password } } },
    { "secrets", { metadata = meta("grafana", sh, "grafana"), data = b64map { ["admin-user"] = i.grafana.admin_user,
      ["admin-password"] = i.grafana.admin_password } } },
    { "secrets", pull_secret(ns) }, { "secrets", pull_secret(sh) },
    { "configmaps", M.grafana_configmap(sh, M.datasources("http://influxdb:8086")) },
  }
end

--- The guide's k8s-additional-roles.yaml: what lets telegraf read the cluster.
function M.telegraf_rbac(shared)
  local g = "rbac.authorization.k8s.io/aggregate-view-telegraf"
  return {
    { "clusterroles.rbac.authorization.k8s.io", { metadata = { name = "influx:cluster:viewer", labels = { [g] = "true" } },
      rules = array { { apiGroups = array { "" }, resources = array { "persistentvolumes", "nodes" }, verbs = array { "get", "list" } } } } },
    { "clusterroles.rbac.authorization.k8s.io", { metadata = { name = "influx:telegraf" },
      aggregationRule = { clusterRoleSelectors = array { { matchLabels = { [g] = "true" } },
        { matchLabels = { ["rbac.authorization.k8s.io/aggregate-to-view"] = "true" } } } }, rules = array() } },
    { "clusterrolebindings.rbac.authorization.k8s.io", { metadata = { name = "influx:telegraf:viewer" },
      roleRef = { apiGroup = "rbac.authorization.k8s.io", kind = "ClusterRole", name = "influx:telegraf" },
      subjects = array { { kind = "ServiceAccount", name = "telegraf-ds", namespace = shared },
                         { kind = "ServiceAccount", name = "telegraf-prom", namespace = shared } } } },
  }
end

local function accounts(w)
  local out = {}
  for _, r in ipairs(rbac.builtin_roles()) do out[#out + 1] = { "clusterroles.rbac.authorization.k8s.io", r } end
  for _, b in ipairs(rbac.builtin_bindings()) do out[#out + 1] = { "clusterrolebindings.rbac.authorization.k8s.io", b } end
  for _, sa in ipairs { "telegraf-ds", "telegraf-prom", "nginx-ingress" } do
    out[#out + 1] = { "serviceaccounts", { metadata = meta(sa, w.shared, sa) } }
  end
  for _, x in ipairs(M.telegraf_rbac(w.shared)) do out[#out + 1] = x end
  return out
end

-- ---- kube-system and the cluster ----

local function system_objects(w)
  local dns = pod_spec({ container("coredns", M.IMAGES.coredns, { args = { "-conf", "/etc/coredns/Corefile" },
    ports = { { name = "dns", containerPort = 53, protocol = "UDP" }, port("dns-tcp", 53), port("metrics", 9153) },
    resources = res("100m", "70Mi", "170Mi"), probe = http_probe("/ready", 8181, 0) }) },
    { tolerations = { { key = "CriticalAddonsOnly", operator = "Exists" } }, sa = "coredns", affinity = spread("coredns") })
  local proxy = pod_spec({ container("kube-proxy", M.IMAGES.kube_proxy .. ":" .. w.sim.version,
    { command = { "kube-proxy", "--config=/var/lib/kube-proxy-config/config" }, resources = res("100m", "64Mi") }) },
    { tolerations = { ANY_TOLERATION }, sa = "kube-proxy" })
  local coredns = { metadata = { name = "coredns", namespace = "kube-system", labels = { ["k8s-app"] = "kube-dns" } },
    spec = { replicas = w.size.coredns, selector = { matchLabels = { ["k8s-app"] = "kube-dns" } },
             template = { metadata = { labels = { ["k8s-app"] = "kube-dns" } }, spec = dns } } }
  local kube_proxy = { metadata = { name = "kube-proxy", namespace = "kube-system", labels = { ["k8s-app"] = "kube-proxy" } },
    spec = { selector = { matchLabels = { ["k8s-app"] = "kube-proxy" } },
             template = { metadata = { labels = { ["k8s-app"] = "kube-proxy" } }, spec = proxy } } }
  return {
    { "services", { metadata = { name = "kubernetes", namespace = "default", labels = { component = "apiserver", provider = "kubernetes" } },
      spec = { clusterIP = "10.96.0.1", ports = array { { name = "https", port = 443, targetPort = 443 } } } } },
    { "services", { metadata = { name = "kube-dns", namespace = "kube-system", labels = { ["k8s-app"] = "kube-dns" } },
      spec = { clusterIP = "10.96.0.10", selector = { ["k8s-app"] = "kube-dns" }, ports = array {
        { name = "dns", port = 53, protocol = "UDP", targetPort = 53 }, { name = "dns-tcp", port = 53, protocol = "TCP", targetPort = 53 },
        { name = "metrics", port = 9153, protocol = "TCP", targetPort = 9153 } } } } },
    { "serviceaccounts", { metadata = { name = "coredns", namespace = "kube-system" } } },
    { "serviceaccounts", { metadata = { name = "kube-proxy", namespace = "kube-system" } } },
    { "deployments.apps", coredns }, { "daemonsets.apps", kube_proxy },
    { "ingressclasses.networking.k8s.io", { metadata = { name = "nginx", annotations = { ["ingressclass.kubernetes.io/is-default-class"] = "true" } },
      spec = { controller = "k8s.io/ingress-nginx" } } },
  }
end

-- ---- InfluxDB's measurements, as telegraf fills them ----

M.MEASUREMENTS = {
  kubernetes = { "cpu", "disk", "diskio", "docker", "docker_container_blkio", "docker_container_cpu", "docker_container_mem",
                 "docker_container_status", "go_gc_duration_seconds", "kernel", "mem", "net", "processes", "swap", "system" },
  _internal = { "cq", "database", "httpd", "queryExecutor", "runtime", "shard", "subscriber", "tsm1_cache", "tsm1_engine",
                "tsm1_filestore", "tsm1_wal", "write" },
  systemDB = { "active_sessions", "collaborations", "events", "requests", "resources", "rule_executions" },
  vantiqServer = { "http_requests", "jvm_gc", "jvm_memory", "jvm_threads", "mongodb_requests", "vertx_eventbus" },
}

local function measurements()
  local out = {}
  for db, list in pairs(M.MEASUREMENTS) do out[db] = { table.unpack(list) } end
  return out
end

-- ---- seeding ----

local function report_conflict(key, obj, status)
  if status and status.code ~= 409 then
    error(("world: cannot create %s %s: %s"):format(key, obj.metadata and obj.metadata.name or "?", status.message), 0)
  end
end

-- Objects the world seeds look as old as the installation (kubectl's AGE).
local function backdate(sim, key, obj, seconds)
  local copy = util.copy(obj)
  copy.metadata.creationTimestamp = util.rfc3339(sim.clock:now() - seconds)
  return sim.store:put(resources.store_key(sim:type(key)), copy, "MODIFIED")
end
M.backdate = backdate

--- Create each {key, object} pair; existing objects are kept. Returns the created ones.
function M.seed(sim, list, age)
  local created = {}
  for _, pair in ipairs(list) do
    local key, obj = pair[1], pair[2]
    local stored, status = sim:create(key, obj)
    if stored then
      if age and age > 0 then stored = backdate(sim, key, stored, age) end
      created[#created + 1] = { key, stored }
    else
      report_conflict(key, obj, status)
    end
  end
  return created
end

local function namespace_objects(w)
  local out = {}
  for _, ns in ipairs { w.namespace, w.shared } do
    out[#out + 1] = { "namespaces", { metadata = { name = ns, labels = { name = ns } } } }
  end
  return out
end

local function lb_of(w)
  if w.provider == "azure" then
    w.info.lb_ip = ("20.%d.%d.%d"):format(math.random(40, 250), math.random(0, 255), math.random(1, 254))
    return { ip = w.info.lb_ip }
  end
  w.info.lb_hostname = ("a%s-%d.%s.elb.amazonaws.com"):format(random_hex(31), math.random(100000000, 999999999), w.region)
  return { hostname = w.info.lb_hostname }
end

local function new_info(sim, opts, deployment)
  local installation = opts.installation or "vqsim"
  return {
    namespace = opts.namespace or "vantiq", shared_namespace = "shared", installation = installation,
    domain = opts.domain or (installation .. ".vantiq.example.com"), deployment = deployment,
    provider = opts.provider or "aws", vantiq_tag = opts.vantiq_tag or M.DEFAULT_TAG,
    schema_version = opts.vantiq_tag or M.DEFAULT_TAG, tls_secret = "default-ssl-cert",
    keycloak = { admin_user = "keycloak", admin_password = password(), db_user = "keycloak", db_password = password(),
                 db_host = installation .. "-keycloak.postgres.example.com" },
    mongodb = { user = "vantiq", password = password(), root_password = password() },
    grafana = { admin_user = "admin", admin_password = password() },
    backup_bucket = installation .. "-mongodb-backup", backups = {},
  }
end

local function new_world(sim, opts, deployment)
  local info = new_info(sim, opts, deployment)
  local provider = M.PROVIDERS[info.provider] or error("world: unknown provider " .. tostring(info.provider), 0)
  local w = { sim = sim, info = info, size = M.SIZES[deployment], namespace = info.namespace, shared = info.shared_namespace,
              tag = info.vantiq_tag, installation = info.installation, domain = info.domain, provider = info.provider,
              region = provider.region, zones = provider.zones, bucket = info.backup_bucket,
              node_age = (opts.node_age_days or 90) * DAY, age = (opts.age_days or 1) * DAY }
  w.lb = lb_of(w)
  w.certs = certs.generate(info.domain)
  info.ca_pem, info.ca_file, info.intermediate_pem = w.certs.ca_pem, w.certs.ca_file, w.certs.intermediate_pem
  return w
end

-- The backups the CronJob made on the days before; its status says the last one succeeded.
local function backup_history(sim, w)
  local last = M.last_daily(sim.clock:now())
  for d = 3, 0, -1 do
    local t = last - d * DAY + 95
    table.insert(w.info.backups, { name = "mongodump-" .. os.date("!%Y%m%dT%H%M%SZ", math.floor(t)) .. ".gz", time = t })
  end
  M.set_backup_status(sim, w.namespace, last, last + 95)
end

--- The mongobackup CronJob's status: last scheduled and last successful times.
function M.set_backup_status(sim, ns, scheduled, succeeded)
  local cj = sim:get("cronjobs.batch", ns, "mongobackup")
  if not cj then return end
  local copy = util.copy(cj)
  copy.status = { lastScheduleTime = util.rfc3339(scheduled), lastSuccessfulTime = succeeded and util.rfc3339(succeeded) or nil }
  return sim:update_status("cronjobs.batch", copy)
end

local function keycloak_ingress(w)
  return { "ingresses.networking.k8s.io", { metadata = meta("keycloak", w.shared, "keycloak"),
    spec = { ingressClassName = "nginx", tls = array { { hosts = array { w.domain }, secretName = "default-ssl-cert" } },
             rules = array { { host = w.domain, http = { paths = array { { path = "/auth", pathType = "Prefix",
               backend = { service = { name = "keycloak", port = { number = 8080 } } } } } } } } },
    status = { loadBalancer = { ingress = array { w.lb } } } } }
end

local function pairs_of(key, list)
  local out = {}
  for _, x in ipairs(list) do out[#out + 1] = { key, x } end
  return out
end

local function concat(...)
  local out = {}
  for _, list in ipairs { ... } do
    for _, x in ipairs(list) do out[#out + 1] = x end
  end
  return out
end

-- The cluster (nodes, storage, RBAC, kube-system) is older than the installation.
local function seed_cluster(sim, w)
  local node_list = nodes(w)
  w.node_names = {}
  for i, n in ipairs(node_list) do w.node_names[i] = n.metadata.name end
  w.info.nodes = w.node_names
  M.seed(sim, concat(namespace_objects(w), pairs_of("nodes", node_list),
    pairs_of("storageclasses.storage.k8s.io", storage_classes()), accounts(w), system_objects(w)), w.node_age)
end

local function build(sim, opts, deployment)
  local w = new_world(sim, opts, deployment)
  sim.world_info = w.info
  seed_cluster(sim, w)
  M.seed(sim, concat(secrets(w), vantiq_claims(w), vantiq_objects(w), shared_workloads(w), shared_services(w),
    { keycloak_ingress(w) }), w.age)
  backup_history(sim, w)
  sim.influx_measurements = measurements()
  for _, sa in ipairs { "telegraf-ds", "telegraf-prom" } do programs.add_measurements(sim, sa) end
  sim.grafana_datasources = M.datasources("http://influxdb:8086")
  return w
end

-- ---- world files (sim/world/file.lua reads them) ----

local function load_world(sim, opts)
  local file = require "sim.world.file"
  file.load(sim, opts.world)
  local builtin = {}
  for _, r in ipairs(rbac.builtin_roles()) do builtin[#builtin + 1] = { "clusterroles.rbac.authorization.k8s.io", r } end
  M.seed(sim, builtin)
  sim.world_info = file.describe(sim, new_info(sim, opts, "production"))
  sim.influx_measurements = measurements()
  sim.grafana_datasources = M.datasources("http://influxdb:8086")
end

-- ---- the module ----

function M.install(sim, opts)
  opts = opts or {}
  local world = opts.world or "production"
  programs.register(sim)
  if M.SIZES[world] then
    build(sim, opts, world)
  elseif type(world) == "string" and (world:match("%.json$") or world:match("%.lua$")) then
    load_world(sim, opts)
  else
    error(("world: %q is neither development, production nor a .json/.lua world file"):format(tostring(world)), 0)
  end
end

-- Tasks start only once every module installed: a failed start leaves none behind.
function M.started(sim)
  -- the controllers may have replaced sim.programs after our install
  programs.register(sim)
  rbac.start_aggregation(sim)
  programs.update_auth_error(sim)
  sim.store:on_change(function(ev)
    if ev.key == "secrets" and ev.object.metadata.name == (sim.world_info or {}).tls_secret then programs.update_auth_error(sim) end
  end)
end

--- The certificate set of the running world (for scenarios that re-issue the leaf).
function M.certificates(sim)
  return certs.generate(sim.world_info.domain)
end

return M
