-- The world the simulator starts with, seen as an operator sees it: real kubectl listing
-- the Vantiq installation, the pods coming up, the admin key banner in vantiq-0's log,
-- certificates that verify, and RBAC aggregation taking the guide's telegraf manifest in.
local vq = require "vq"
local json = require "json"
local util = require "sim.util"
local sim_mod = require "sim"
local run = require "spec.support.run"

local SPEED = 0.02
local HAS_CONTROLLERS = package.searchpath("sim.controllers", package.path) ~= nil

-- the guide's manifest, as the doctor applies it
local TELEGRAF_MANIFEST = assert(io.open("scripts/doctor/telegraf-rbac.yaml")):read("a")

-- ---- helpers ----

local tmpdir = require("spec.support.run").tmpdir
local function rmdir(p) os.execute("rm -rf '" .. p .. "'") end



local cluster = require "spec.support.cluster"
local finish, eventually, ready = cluster.finish, cluster.eventually, cluster.ready

-- kubectl here must succeed: stdout only
local function kubectl(s, args, opts) return (cluster.kubectl(s, args, opts)) end

local function start(opts)
  opts.speed = opts.speed or SPEED
  return cluster.start(opts)
end




-- Every pod Running and Ready (Job pods Succeeded), and as many as the workloads want.
local function all_ready(s)
  local pods = s:list("pods", nil)
  if #pods == 0 then return false end
  for _, p in ipairs(pods) do
    local phase = p.status and p.status.phase
    if not (phase == "Succeeded" or (phase == "Running" and ready(p))) then return false end
  end
  for _, key in ipairs { "statefulsets.apps", "deployments.apps" } do
    for _, w in ipairs(s:list(key, nil)) do
      if (w.status and w.status.readyReplicas or 0) ~= w.spec.replicas then return false end
    end
  end
  return pods
end

local function lines_of(text)
  local out = {}
  for l in text:gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

local function secret_text(s, ns, name, key)
  local obj = s:get("secrets", ns, name)
  return util.unbase64(obj.data[key])
end

-- The key between the two rows of asterisks, as the guide reads it.
local function banner_key(log)
  local ls = lines_of(log)
  for i = 2, #ls - 1 do
    if ls[i - 1]:find("%*%*%*%*%*%*$") and ls[i + 1]:find("%*%*%*%*%*%*$") then
      return ls[i]:match("%*%s+(%S+=)%s+%*$")
    end
  end
end

-- ---- the production world ----

describe("the production world", function()
  local s

  setup(function() s = start { world = "production" } end)
  teardown(function() if s then finish(s) end end)

  it("describes itself in sim.world_info", function()
    local wi = s.world_info
    assert.equal("vantiq", wi.namespace)
    assert.equal("shared", wi.shared_namespace)
    assert.equal("production", wi.deployment)
    assert.equal("1.37.2", wi.vantiq_tag)
    assert.truthy(wi.domain:find("%.", 1))
    assert.truthy(wi.lb_hostname:match("^a%x+%-%d+%.[%w-]+%.elb%.amazonaws%.com$"))
    assert.truthy(wi.ca_pem:find("BEGIN CERTIFICATE", 1, true))
    assert.is_not_nil(wi.keycloak.db_password)
  end)

  it("has worker nodes with zones, instance types, a tainted MongoDB pool and the server's kubelet version", function()
    local out = kubectl(s, { "get", "nodes", "-L", "topology.kubernetes.io/zone,node.kubernetes.io/instance-type" })
    assert.equal(7, #lines_of(out))
    assert.truthy(out:find("worker", 1, true))
    assert.truthy(out:find(s.version, 1, true))
    assert.truthy(out:find("ap-northeast-1a", 1, true))
    assert.truthy(out:find("m5.2xlarge", 1, true))
    local tainted = 0
    for _, n in ipairs(s:list("nodes", nil)) do
      assert.is_not_nil(n.status.allocatable.cpu)
      assert.is_not_nil(n.status.nodeInfo.kubeletVersion)
      for _, t in ipairs(n.spec.taints or {}) do
        if t.key == "vantiq.com/mongodb" and t.effect == "NoSchedule" then tainted = tainted + 1 end
      end
    end
    assert.equal(3, tainted)
  end)

  it("lists the installation's objects through kubectl", function()
    local out = kubectl(s, { "get", "sts,cronjob,svc,secret,pv,pvc,nodes", "-A" })
    for _, want in ipairs { "statefulset.apps/vantiq ", "statefulset.apps/metrics-collector", "statefulset.apps/vision-analytics",
                            "statefulset.apps/mongodb", "statefulset.apps/keycloak", "statefulset.apps/influxdb",
                            "cronjob.batch/mongobackup", "cronjob.batch/mongorestore", "cronjob.batch/userdbrestore",
                            "service/influxdb ", "service/nginx-ingress-controller", "secret/vantiq-ssl-cert",
                            "secret/default-ssl-cert", "secret/vantiq-license", "persistentvolumeclaim/datadir-mongodb-0" } do
      assert.truthy(out:find(want, 1, true), want)
    end
    assert.falsy(out:find("influxdb-influxdb", 1, true))
    assert.truthy(out:find("8086/TCP", 1, true))
    assert.truthy(out:find(s.world_info.lb_hostname, 1, true))
    local sts = s:get("statefulsets.apps", "vantiq", "vantiq")
    assert.equal(3, sts.spec.replicas)
    assert.equal("OrderedReady", sts.spec.podManagementPolicy)
    assert.equal("quay.io/vantiq/vantiq-server:1.37.2", sts.spec.template.spec.containers[1].image)
    assert.equal("load-model", sts.spec.template.spec.initContainers[1].name)
    assert.equal(1, s:get("statefulsets.apps", "vantiq", "metrics-collector").spec.replicas)
    assert.equal(2, s:get("statefulsets.apps", "vantiq", "vision-analytics").spec.replicas)
    assert.equal(3, s:get("statefulsets.apps", "shared", "keycloak").spec.replicas)
    for _, sa in ipairs { "telegraf-ds", "telegraf-prom" } do assert.is_not_nil(s:get("serviceaccounts", "shared", sa)) end
  end)

  it("keeps a recent successful backup and the restore CronJobs suspended", function()
    local cj = s:get("cronjobs.batch", "vantiq", "mongobackup")
    assert.equal("0 3 * * *", cj.spec.schedule)
    local last = util.parse_time(cj.status.lastScheduleTime)
    assert.truthy(s.clock:now() - last < 86400)
    assert.truthy(util.parse_time(cj.status.lastSuccessfulTime) >= last)
    assert.is_true(s:get("cronjobs.batch", "vantiq", "mongorestore").spec.suspend)
    assert.is_true(s:get("cronjobs.batch", "vantiq", "userdbrestore").spec.suspend)
  end)

  it("serves a full chain for the domain that verifies against the world's CA", function()
    local tls = require "vq.core.tls"
    for _, where in ipairs { { "vantiq", "vantiq-ssl-cert" }, { "shared", "default-ssl-cert" } } do
      assert.equal("kubernetes.io/tls", s:get("secrets", where[1], where[2]).type)
      local certs = assert(tls.load_certs(secret_text(s, where[1], where[2], "tls.crt"), where[2]))
      assert.equal(2, #certs)
      assert.is_true(tls.verify(certs, { ca_file = s.world_info.ca_file }).ok)
      assert.equal(s.world_info.domain, tls.check_host(certs[1], s.world_info.domain))
      local key = assert(tls.load_key(secret_text(s, where[1], where[2], "tls.key"), "tls.key"))
      assert.is_true(key:matches(certs[1]))
    end
    assert.truthy(secret_text(s, "vantiq", "vantiq-license", "public.pem"):find("BEGIN PUBLIC KEY", 1, true))
    assert.is_nil(s.vantiq_auth_error)
  end)

  it("aggregates the built-in roles: view holds what system:aggregate-to-view grants", function()
    local view = eventually(function()
      local v = s:get("clusterroles.rbac.authorization.k8s.io", nil, "view")
      return #(v.rules or {}) > 0 and v
    end, 10, "view's rules")
    local agg = s:get("clusterroles.rbac.authorization.k8s.io", nil, "system:aggregate-to-view")
    assert.same(json.decode(json.encode(agg.rules)), json.decode(json.encode(view.rules)))
    local out = kubectl(s, { "get", "clusterroles" })
    for _, name in ipairs { "view", "edit", "admin", "cluster-admin", "system:aggregate-to-view", "influx:telegraf" } do
      assert.truthy(out:find(name, 1, true), name)
    end
    -- a new labelled role joins the aggregate; removing it takes its rules out again
    kubectl(s, { "apply", "--server-side", "-f", "-" }, { stdin = [[
kind: ClusterRole
apiVersion: rbac.authorization.k8s.io/v1
metadata:
  name: crontab-reader
  labels:
    rbac.authorization.k8s.io/aggregate-to-view: "true"
rules:
- apiGroups: ["stable.example.com"]
  resources: ["crontabs"]
  verbs: ["get", "list", "watch"]
]] })
    local function has_crontabs()
      for _, r in ipairs(s:get("clusterroles.rbac.authorization.k8s.io", nil, "view").rules or {}) do
        if r.resources[1] == "crontabs" then return true end
      end
      return false
    end
    eventually(has_crontabs, 10, "crontabs in view")
    kubectl(s, { "delete", "clusterrole", "crontab-reader" })
    eventually(function() return not has_crontabs() end, 10, "crontabs out of view")
  end)

  it("runs every pod Running and Ready", function()
    if not HAS_CONTROLLERS then return pending("sim.controllers is not there yet") end
    eventually(function() return all_ready(s) end, 40, "every pod Ready")
    local out = kubectl(s, { "get", "pods", "-A", "-o", "wide" })
    for _, name in ipairs { "vantiq-0", "vantiq-1", "vantiq-2", "metrics-collector-0", "vision-analytics-1", "mongodb-2",
                            "keycloak-2", "influxdb-0", "grafana-", "nginx-ingress-controller-", "telegraf-ds-", "telegraf-prom-" } do
      assert.truthy(out:find(name, 1, true), name)
    end
    for _, l in ipairs(lines_of(out)) do
      if not l:find("^NAMESPACE") then assert.truthy(l:find("Running", 1, true), l) end
    end
    -- MongoDB runs on its own tainted pool, nothing else of Vantiq's does
    for _, p in ipairs(s:list("pods", "vantiq")) do
      local node = s:get("nodes", nil, p.spec.nodeName)
      local pool = node.metadata.labels["vantiq.com/workload-preference"]
      assert.equal(p.metadata.name:find("^mongodb") and "database" or "compute", pool, p.metadata.name)
    end
  end)

  it("prints the system admin key in vantiq-0's vantiq log, as the guide shows", function()
    if not HAS_CONTROLLERS then return pending("sim.controllers is not there yet") end
    local key = eventually(function() return s.world_info.admin_key end, 30, "the admin key")
    local log = kubectl(s, { "logs", "vantiq-0", "-c", "vantiq", "-n", "vantiq" })
    assert.equal(key, banner_key(log))
    assert.truthy(key:match("^[%w+/]+=$"))
    assert.truthy(log:find("INFO  io.vantiq.startup - " .. ("*"):rep(66), 1, true))
    assert.equal("***", require("log").redact(key))
    local migration = kubectl(s, { "logs", "vantiq-0", "-c", "load-model", "-n", "vantiq" })
    assert.truthy(migration:find("Migrating schema", 1, true))
    assert.truthy(migration:find("Migration complete", 1, true))
  end)

  it("takes the guide's telegraf manifest in as a real cluster does", function()
    for _, name in ipairs { "influx:telegraf:viewer", "influx:telegraf", "influx:cluster:viewer" } do
      local key = name:find("viewer$") and name:find(":telegraf:") and "clusterrolebindings.rbac.authorization.k8s.io"
        or "clusterroles.rbac.authorization.k8s.io"
      s:delete(key, s:get(key, nil, name))
    end
    local out = kubectl(s, { "apply", "--server-side", "-f", "-" }, { stdin = TELEGRAF_MANIFEST })
    assert.truthy(out:find("influx:telegraf serverside-applied", 1, true))
    local function rules(name) return s:get("clusterroles.rbac.authorization.k8s.io", nil, name).rules or {} end
    eventually(function() return #rules("influx:telegraf") > 1 end, 10, "influx:telegraf's rules")
    local seen = {}
    for _, r in ipairs(rules("influx:telegraf")) do seen[json.encode(r, { sort_keys = true })] = true end
    for _, role in ipairs { "influx:cluster:viewer", "system:aggregate-to-view" } do
      for _, r in ipairs(rules(role)) do assert.is_true(seen[json.encode(r, { sort_keys = true })], role) end
    end
    local yaml = kubectl(s, { "get", "clusterrole", "influx:telegraf", "-o", "yaml" })
    assert.truthy(yaml:find("persistentvolumes", 1, true))
    assert.is_nil(require("sim.programs").telegraf_denied(s, "shared", "telegraf-prom"))
  end)

  it("invalidates the admin key when vantiq-0 restarts", function()
    if not HAS_CONTROLLERS then return pending("sim.controllers is not there yet") end
    eventually(function() return s.world_info.admin_key end, 30, "the admin key")
    local old = s:get("pods", "vantiq", "vantiq-0").metadata.uid
    kubectl(s, { "delete", "pod", "vantiq-0", "-n", "vantiq", "--wait=false" })
    eventually(function()
      local p = s:get("pods", "vantiq", "vantiq-0")
      return p and p.metadata.uid ~= old and ready(p)
    end, 30, "a new vantiq-0")
    assert.is_nil(s.world_info.admin_key)
    local log = kubectl(s, { "logs", "vantiq-0", "-c", "vantiq", "-n", "vantiq" })
    assert.is_nil(banner_key(log))
    assert.truthy(log:find("no new system admin key", 1, true))
  end)

  it("maps the installation's images to their programs", function()
    local p = s.program_for_image
    assert.equal("vantiq-server", p("quay.io/vantiq/vantiq-server:1.38.0", nil, { name = "vantiq" }))
    assert.equal("load-model", p("quay.io/vantiq/vantiq-server:1.38.0", nil, { name = "load-model" }))
    assert.equal("keycloak", p("jboss/keycloak:12.0.4", nil, { name = "kc" }))
    assert.equal("telegraf", p("telegraf:1.17.3", nil, { name = "t" }))
    assert.equal("mongodb", p("mongo:4.4.29", nil, { name = "m" }))
    assert.is_nil(p("busybox:1.36", nil, { name = "x" }))
  end)
end)

-- ---- the development world ----

describe("the development world", function()
  local s

  setup(function() s = start { world = "development", namespace = "vantiq-dev", vantiq_tag = "1.36.5" } end)
  teardown(function() if s then finish(s) end end)

  it("is the single configuration: one node, one of each", function()
    assert.equal(1, #s:list("nodes", nil))
    assert.equal("development", s.world_info.deployment)
    for _, name in ipairs { "vantiq", "metrics-collector", "vision-analytics", "mongodb" } do
      assert.equal(1, s:get("statefulsets.apps", "vantiq-dev", name).spec.replicas, name)
    end
    assert.equal(1, s:get("statefulsets.apps", "shared", "keycloak").spec.replicas)
    assert.equal("quay.io/vantiq/vantiq-server:1.36.5",
      s:get("statefulsets.apps", "vantiq-dev", "vantiq").spec.template.spec.containers[1].image)
    local out = kubectl(s, { "get", "sts,svc,pvc", "-n", "vantiq-dev" })
    assert.truthy(out:find("datadir-mongodb-0", 1, true))
  end)

  it("comes up and prints the admin key", function()
    if not HAS_CONTROLLERS then return pending("sim.controllers is not there yet") end
    eventually(function() return all_ready(s) end, 30, "every pod Ready")
    local key = eventually(function() return s.world_info.admin_key end, 10, "the admin key")
    assert.equal(key, banner_key(kubectl(s, { "logs", "vantiq-0", "-c", "vantiq", "-n", "vantiq-dev" })))
  end)
end)

-- ---- world files ----

describe("a world file", function()
  it("starts from a snapshot (a List as kubectl prints it) or a Lua list of objects", function()
    local src = start { world = "development", modules = { "sim.auth", "sim.core", "sim.world" } }
    local list = kubectl(src, { "get", "ns,nodes,sts,deploy,cronjob,svc,secret,cm,pv,pvc,ing,sa", "-A", "-o", "json" })
    local domain, lb = src.world_info.domain, src.world_info.lb_hostname
    local db_password = src.world_info.keycloak.db_password
    finish(src)
    local dir = tmpdir()
    local path = dir .. "/world.json"
    local f = assert(io.open(path, "w"))
    f:write(list)
    f:close()
    local s = start { world = path, modules = { "sim.auth", "sim.core", "sim.world" } }
    assert.equal("vantiq", s.world_info.namespace)
    assert.equal(domain, s.world_info.domain)
    assert.equal(lb, s.world_info.lb_hostname)
    assert.equal("development", s.world_info.deployment)
    assert.equal("1.37.2", s.world_info.vantiq_tag)
    assert.equal(db_password, s.world_info.keycloak.db_password)
    assert.is_not_nil(s:get("statefulsets.apps", "vantiq", "vantiq"))
    assert.is_not_nil(s:get("secrets", "shared", "default-ssl-cert"))
    assert.is_not_nil(s:get("clusterroles.rbac.authorization.k8s.io", nil, "view"))
    local age = s.clock:now() - util.parse_time(s:get("nodes", nil, s.world_info.nodes[1]).metadata.creationTimestamp)
    assert.truthy(age > 80 * 86400)
    finish(s)

    local lua_path = dir .. "/world.lua"
    f = assert(io.open(lua_path, "w"))
    f:write([[return {
      { apiVersion = "v1", kind = "Namespace", metadata = { name = "site-a" } },
      { apiVersion = "apps/v1", kind = "StatefulSet", metadata = { name = "vantiq", namespace = "site-a" },
        spec = { replicas = 1, selector = { matchLabels = { app = "vantiq" } },
                 template = { metadata = { labels = { app = "vantiq" } },
                              spec = { containers = { { name = "vantiq", image = "quay.io/vantiq/vantiq-server:1.40.1" } } } } } },
    }]])
    f:close()
    s = start { world = lua_path, modules = { "sim.auth", "sim.core", "sim.world" } }
    assert.equal("site-a", s.world_info.namespace)
    assert.equal("1.40.1", s.world_info.vantiq_tag)
    finish(s)
    rmdir(dir)
  end)

  it("holds custom resources, their CRDs loaded first whatever the file's order", function()
    local dir = tmpdir()
    local lua_path = dir .. "/world.lua"
    local f = assert(io.open(lua_path, "w"))
    f:write([[return {
      { apiVersion = "example.com/v1", kind = "Certificate", metadata = { name = "ingress", namespace = "site-b" },
        spec = { secretName = "default-ssl-cert" } },
      { apiVersion = "apps/v1", kind = "StatefulSet", metadata = { name = "vantiq", namespace = "site-b" },
        spec = { replicas = 1, selector = { matchLabels = { app = "vantiq" } },
                 template = { metadata = { labels = { app = "vantiq" } },
                              spec = { containers = { { name = "vantiq", image = "quay.io/vantiq/vantiq-server:1.40.1" } } } } } },
      { apiVersion = "apiextensions.k8s.io/v1", kind = "CustomResourceDefinition", metadata = { name = "certificates.example.com" },
        spec = { group = "example.com", scope = "Namespaced",
                 names = { plural = "certificates", singular = "certificate", kind = "Certificate" },
                 versions = { { name = "v1", served = true, storage = true,
                   schema = { openAPIV3Schema = { type = "object", ["x-kubernetes-preserve-unknown-fields"] = true } } } } } },
      { apiVersion = "v1", kind = "Namespace", metadata = { name = "site-b" } },
    }]])
    f:close()
    local s = start { world = lua_path, modules = { "sim.auth", "sim.core", "sim.world" } }
    local cert = s:get("certificates.example.com", "site-b", "ingress")
    assert.is_not_nil(cert)
    assert.equal("default-ssl-cert", cert.spec.secretName)
    finish(s)
    rmdir(dir)
  end)

  it("is refused with a clear message when it is neither a world name nor a file", function()
    local ok, err = pcall(sim_mod.start, { world = "staging", modules = { "sim.auth", "sim.core", "sim.world" } })
    assert.is_false(ok)
    assert.truthy(tostring(err):find("development, production", 1, true))
  end)
end)
