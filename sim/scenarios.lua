-- Scenarios: the troubleshooting cases of the maintenance guide (docs/procedures.md §6)
-- and transport faults, each turning the healthy world into one with a known symptom.
--
--   sim/serve.lua --scenario keycloak-db-password --scenario fault-429:count=5,path=^/api/v1/pods
--   require("sim").start { scenarios = { "telegraf-rbac", { name = "fault-slow", delay = 1 } } }
--   sim.start_scenario("node-not-ready")            -- at run time
--
-- A scenario's parameters come after a colon, key=value separated by commas. Active
-- scenarios are sim.scenarios[name] = params (the programs look there).
local vq = require "vq"
local util = require "sim.util"
local faults = require "sim.faults"
local programs = require "sim.programs"

local M = {}

local DAY = 86400

-- ---- helpers ----

local function info(sim) return sim.world_info or {} end

local function edit(sim, key, ns, name, fn)
  local obj = sim:get(key, ns, name)
  if not obj then return nil end
  local copy = util.copy(obj)
  fn(copy)
  return sim:update(key, copy)
end

local function set_secret_key(sim, ns, name, key, value)
  return edit(sim, "secrets", ns, name, function(s)
    s.data = s.data or {}
    s.data[key] = util.base64(value)
  end)
end

-- Replace the served certificate (nginx's default-ssl-cert) and vantiq's copy of it, as
-- generateSecrets + deployVantiq + deployNginx do from the files in deploy/sensitive.
local function install_chain(sim, chain)
  local wi = info(sim)
  local key = require("sim.world").certificates(sim).key_pem
  set_secret_key(sim, wi.shared_namespace or "shared", "default-ssl-cert", "tls.crt", chain)
  set_secret_key(sim, wi.namespace or "vantiq", "vantiq-ssl-cert", "tls.crt", chain)
  set_secret_key(sim, wi.shared_namespace or "shared", "default-ssl-cert", "tls.key", key)
  set_secret_key(sim, wi.namespace or "vantiq", "vantiq-ssl-cert", "tls.key", key)
end

local function certificates(sim) return require("sim.world").certificates(sim) end

-- The compute nodes (where vantiq runs), in the world's order.
local function compute_nodes(sim)
  local out = {}
  for _, name in ipairs(info(sim).nodes or {}) do
    local n = sim:get("nodes", nil, name)
    local pool = n and (n.metadata.labels or {})["vantiq.com/workload-preference"]
    if n and pool ~= "database" then out[#out + 1] = name end
  end
  return out
end

local function set_node_condition(sim, name, ready)
  edit(sim, "nodes", nil, name, function(n)
    for _, c in ipairs(n.status.conditions or {}) do
      if c.type == "Ready" then
        c.status = ready and "True" or "Unknown"
        c.reason = ready and "KubeletReady" or "NodeStatusUnknown"
        c.message = ready and "kubelet is posting ready status" or "Kubelet stopped posting node status."
        c.lastTransitionTime = util.rfc3339(sim.clock:now())
      end
    end
  end)
end

-- ---- the troubleshooting cases ----

local S = {}

S["keycloak-db-password"] = {
  summary = "keycloak pods crash (CrashLoopBackOff): the Secret's database password is not the one secrets.yaml holds",
  install = function(sim, p)
    local wi = info(sim)
    local wrong = p.password or ((wi.keycloak or {}).db_password or "keycloak"):sub(1, -3) .. "x9"
    set_secret_key(sim, wi.shared_namespace or "shared", "keycloak", "db-password", wrong)
  end,
}

S["telegraf-rbac"] = {
  summary = "Grafana panels empty: telegraf gets 403 on the cluster scope until the guide's RBAC manifest is applied",
  install = function(sim)
    local keys = { "clusterrolebindings.rbac.authorization.k8s.io", "clusterroles.rbac.authorization.k8s.io",
                   "clusterroles.rbac.authorization.k8s.io" }
    for i, name in ipairs { "influx:telegraf:viewer", "influx:telegraf", "influx:cluster:viewer" } do
      local obj = sim:get(keys[i], nil, name)
      if obj then sim:delete(keys[i], obj) end
    end
    local db = sim.influx_measurements and sim.influx_measurements.kubernetes or {}
    for i = #db, 1, -1 do
      if db[i]:find("^nginx_") or db[i]:find("^kubernetes_") or db[i]:find("^mongodb_") then table.remove(db, i) end
    end
  end,
  -- Once RBAC lets telegraf in, its next scrape fills the measurements (also without pods).
  started = function(sim)
    local changed = vq.event()
    sim.store:on_change(function(ev)
      if ev.key:find("^cluster") and ev.key:find("rbac") then changed:set() end
    end)
    sim:spawn(function()
      local ns = info(sim).shared_namespace or "shared"
      while not sim.stopped do
        changed:wait()
        changed:clear()
        sim:delay(10)
        for _, sa in ipairs { "telegraf-ds", "telegraf-prom" } do
          if not programs.telegraf_denied(sim, ns, sa) then programs.add_measurements(sim, sa) end
        end
      end
    end)
  end,
}

S["grafana-datasource-url"] = {
  summary = "Grafana's InfluxDB datasources point at http://influxdb-influxdb:8086 (the service is influxdb)",
  install = function(sim, p)
    local world = require "sim.world"
    local url = p.url or "http://influxdb-influxdb:8086"
    sim.grafana_datasources = world.datasources(url)
    local ns = info(sim).shared_namespace or "shared"
    edit(sim, "configmaps", ns, "grafana-datasources", function(cm)
      cm.data = world.grafana_configmap(ns, sim.grafana_datasources).data
    end)
  end,
}

S["vantiq-self-signed"] = {
  summary = "IDE login fails with SSLHandshakeException: nginx serves a self-signed certificate vantiq does not trust",
  install = function(sim)
    install_chain(sim, require("sim.world.certs").leaf(certificates(sim), { self_signed = true }))
  end,
}

S["missing-intermediate"] = {
  summary = "default-ssl-cert holds the leaf without its intermediate: PKIX path building fails",
  install = function(sim)
    install_chain(sim, certificates(sim).leaf_pem)
  end,
}

S["cert-expiring"] = {
  summary = "the served certificate expires in 5 days (days=N)",
  install = function(sim, p)
    local days = (p.days or 5) + sim.clock.offset / DAY
    local set = certificates(sim)
    install_chain(sim, require("sim.world.certs").leaf(set, { days = math.floor(days + 0.5) }) .. set.intermediate_pem)
  end,
}

S["node-clock-skew"] = {
  summary = "one node's clock is 95 s ahead (seconds=N, node=NAME): tokens between pods are rejected",
  install = function(sim, p)
    local nodes = compute_nodes(sim)
    local node = p.node or nodes[math.min(2, #nodes)]
    sim.node_clock_skew = sim.node_clock_skew or {}
    sim.node_clock_skew[node] = p.seconds or 95
    info(sim).skewed_node = node
  end,
}

S["admin-key-expired"] = {
  summary = "the system admin key is older than 48 h: the clock moves 49 h on once vantiq-0 printed it (hours=N)",
  install = function(sim)
    info(sim).admin_key_printed_event = vq.event()
  end,
  started = function(sim, p)
    sim:spawn(function()
      -- without a kubelet nothing prints it: move on after a while
      if not info(sim).admin_key then info(sim).admin_key_printed_event:wait(p.wait or 120) end
      sim.clock:advance((p.hours or 49) * 3600)
      -- the key still shows in vantiq-0's log, but no longer works
      if (p.hours or 49) >= 48 then info(sim).admin_key = nil end
      -- the backups went on meanwhile
      local world = require "sim.world"
      local last = world.last_daily(sim.clock:now())
      world.set_backup_status(sim, info(sim).namespace or "vantiq", last, last + 95)
      info(sim).clock_advanced = (p.hours or 49) * 3600
    end)
  end,
}

S["admin-key-lost"] = {
  summary = "vantiq-0 restarted after printing the system admin key: the key died with the container",
}

S["backup-failed"] = {
  summary = "mongobackup fails (S3 access denied): the CronJob's last run failed, new backup Jobs fail",
  install = function(sim)
    local wi, world = info(sim), require "sim.world"
    local ns = wi.namespace or "vantiq"
    local last = world.last_daily(sim.clock:now())
    local backups = wi.backups or {}
    for i = #backups, 1, -1 do
      if backups[i].time > last - 2 * DAY then table.remove(backups, i) end
    end
    world.set_backup_status(sim, ns, last, backups[#backups] and backups[#backups].time)
    M.failed_backup_job(sim, ns, last)
  end,
}

S["migration-failed"] = {
  summary = "load-model's schema migration to a newer minor version fails (always=true: at every start)",
}

S["dns-not-propagated"] = {
  summary = "the installation's domain does not resolve to the LoadBalancer yet (sim.dns_hold; seconds=N to release)",
  install = function(sim) sim.dns_hold = true end,
  started = function(sim, p)
    if p.seconds then
      sim:spawn(function()
        sim:delay(p.seconds)
        sim.dns_hold = false
      end)
    end
  end,
}

S["node-not-ready"] = {
  summary = "a compute node stops posting status: NotReady, its pods unreachable (node=NAME)",
  started = function(sim, p)
    local nodes = compute_nodes(sim)
    local node = p.node or nodes[#nodes]
    info(sim).not_ready_node = node
    if sim.set_node_ready then sim.set_node_ready(node, false) else set_node_condition(sim, node, false) end
  end,
}

S["pvc-pending"] = {
  summary = "the userdb StatefulSet's claim stays Pending: no PersistentVolume and no provisioner",
  install = function(sim)
    M.userdb(sim, info(sim).namespace or "vantiq")
  end,
}

-- ---- transport faults ----

local function fault(kind, summary, defaults)
  return {
    summary = summary,
    install = function(sim, p)
      local f = { kind = kind }
      for k, v in pairs(defaults) do f[k] = v end
      for k, v in pairs(p) do f[k] = v end
      f.name = nil
      sim.faults:add(f)
    end,
  }
end

S["fault-drop-stream"] = fault("drop", "watch and log streams are cut after 5 lines, 3 times (after=, count=, path=)",
  { streams = true, after = 5, count = 3 })
S["fault-429"] = fault("status", "the next 5 API requests get 429 with Retry-After: 1 (count=, retry_after=, path=)",
  { code = 429, count = 5, retry_after = 1 })
S["fault-500"] = fault("status", "the next 3 API requests get 500 with Retry-After: 1 (count=, path=)",
  { code = 500, count = 3, retry_after = 1 })
S["fault-503"] = fault("status", "the next 5 API requests get 503 with Retry-After: 1 (count=, retry_after=, path=)",
  { code = 503, count = 5, retry_after = 1 })
S["fault-slow"] = fault("slow", "API requests answer 2 s late (delay=, count=, path=)", { delay = 2 })
S["fault-watch-410"] = fault("watch-410", "the next watch gets an ERROR event with a 410 Expired Status (count=)", { count = 1 })
S["fault-token-expired"] = fault("token-expired", "the kubeconfig's token is refused (401) after 60 s (after_seconds=, after_requests=)",
  { after_seconds = 60 })
S["fault-log-rotation"] = fault("log-rotation", "container logs rotate every 20 lines, cutting follows (every=)", { every = 20 })

M.SCENARIOS = S

-- ---- objects some scenarios add ----

--- A Job of the CronJob mongobackup that failed at `scheduled`.
function M.failed_backup_job(sim, ns, scheduled)
  local cj = sim:get("cronjobs.batch", ns, "mongobackup")
  if not cj then return end
  local name = ("mongobackup-%d"):format(math.floor(scheduled / 60))
  local job = util.copy(cj.spec.jobTemplate)
  job.metadata = { name = name, namespace = ns, labels = { app = "mongobackup" },
    annotations = { ["batch.kubernetes.io/cronjob-scheduled-timestamp"] = util.rfc3339(scheduled) },
    ownerReferences = setmetatable({ { apiVersion = "batch/v1", kind = "CronJob", name = "mongobackup", uid = cj.metadata.uid,
      controller = true, blockOwnerDeletion = true } }, require("json").array_mt) }
  job.spec.suspend = false
  local stored = sim:create("jobs.batch", job)
  if not stored then return end
  local copy = util.copy(require("sim.world").backdate(sim, "jobs.batch", stored, sim.clock:now() - scheduled))
  copy.status = { failed = (job.spec.backoffLimit or 6) + 1, startTime = util.rfc3339(scheduled + 1),
    conditions = setmetatable({ { type = "Failed", status = "True", reason = "BackoffLimitExceeded",
      message = "Job has reached the specified backoff limit", lastProbeTime = util.rfc3339(scheduled + 300),
      lastTransitionTime = util.rfc3339(scheduled + 300) } }, require("json").array_mt) }
  return sim:update_status("jobs.batch", copy)
end

--- The userdb StatefulSet and its claim, which no volume can satisfy.
function M.userdb(sim, ns)
  local world = require "sim.world"
  local sts = util.copy(sim:get("statefulsets.apps", ns, "mongodb"))
  if not sts then return end
  local obj = { metadata = { name = "userdb", namespace = ns, labels = { app = "userdb" } }, spec = sts.spec }
  obj.spec.replicas, obj.spec.serviceName = 1, "userdb"
  obj.spec.selector = { matchLabels = { app = "userdb" } }
  obj.spec.template.metadata.labels = { app = "userdb" }
  obj.spec.volumeClaimTemplates[1].spec.storageClassName = ""
  world.seed(sim, {
    { "persistentvolumeclaims", { metadata = { name = "datadir-userdb-0", namespace = ns, labels = { app = "userdb" } },
      spec = { accessModes = setmetatable({ "ReadWriteOnce" }, require("json").array_mt), storageClassName = "",
               resources = { requests = { storage = "50Gi" } } } } },
    { "statefulsets.apps", obj },
  })
end

-- ---- selecting scenarios ----

local function value(v)
  if v == "true" then return true end
  if v == "false" then return false end
  return tonumber(v) or v
end

--- name, params from "name:key=value,key=value" or {name =, key = value}.
function M.parse(spec)
  if type(spec) == "table" then
    local p = {}
    for k, v in pairs(spec) do if k ~= "name" and k ~= 1 then p[k] = v end end
    return spec.name or spec[1], p
  end
  local name, rest = tostring(spec):match("^([^:]+):?(.*)$")
  local p = {}
  for pair in rest:gmatch("[^,]+") do
    local k, v = pair:match("^%s*([%w_]+)%s*=%s*(.-)%s*$")
    if not k then error(("scenario %s: parameter %q is not key=value"):format(name, pair), 0) end
    p[k] = value(v)
  end
  return name, p
end

function M.catalogue()
  local out = {}
  for name, s in pairs(S) do out[#out + 1] = { name = name, summary = s.summary } end
  table.sort(out, function(a, b) return a.name < b.name end)
  return out
end

local function check(name)
  if S[name] then return S[name] end
  local names = {}
  for _, s in ipairs(M.catalogue()) do names[#names + 1] = s.name end
  error(("unknown scenario %q; the scenarios are: %s"):format(tostring(name), table.concat(names, ", ")), 0)
end

--- Make a scenario active: its install step now, its started step now too when the
--- server already runs.
function M.activate(sim, spec, running)
  local name, p = M.parse(spec)
  local s = check(name)
  sim.scenarios = sim.scenarios or {}
  sim.scenarios[name] = p
  if s.install then s.install(sim, p) end
  if running and s.started then s.started(sim, p) end
  return p
end

function M.install(sim, opts)
  faults.install(sim)
  sim.start_scenario = function(spec) return M.activate(sim, spec, true) end
  local list = opts and opts.scenarios or {}
  if type(list) == "string" then list = { list } end
  for _, spec in ipairs(list) do check((M.parse(spec))) end
  for _, spec in ipairs(list) do M.activate(sim, spec, false) end
end

function M.started(sim)
  for name, p in pairs(sim.scenarios or {}) do
    local s = S[name]
    if s and s.started then s.started(sim, p) end
  end
end

return M
