-- Each troubleshooting case of the guide as the simulator stages it (the symptom an
-- operator finds with kubectl, and the fix curing it where the cluster holds the fix), and
-- the transport faults the client's tests lean on, through our HTTP client and kubectl.
local vq = require "vq"
local json = require "json"
local http = require "vq.http"
local util = require "sim.util"
local sim_mod = require "sim"
local scenarios = require "sim.scenarios"
local programs = require "sim.programs"
local run = require "spec.support.run"

local SPEED = 0.02
local HAS_CONTROLLERS = package.searchpath("sim.controllers", package.path) ~= nil

-- ---- helpers ----




local cluster = require "spec.support.cluster"
local finish, kubectl, eventually, ready = cluster.finish, cluster.kubectl, cluster.eventually, cluster.ready

local function start(opts)
  opts.speed = opts.speed or SPEED
  opts.world = opts.world or "development"
  return cluster.start(opts)
end

local function with_sim(opts, fn)
  local s = start(opts)
  local ok, err = pcall(fn, s)
  finish(s)
  if not ok then error(err, 0) end
end




local function waiting_reason(p, init)
  local list = p and p.status and p.status[init and "initContainerStatuses" or "containerStatuses"] or {}
  for _, c in ipairs(list) do
    local w = c.state and c.state.waiting
    if w then return w.reason end
  end
end

local function has(list, x)
  for _, v in ipairs(list or {}) do if v == x then return true end end
  return false
end

local function chain_of(s, ns, name)
  local tls = require "vq.core.tls"
  return assert(tls.load_certs(util.unbase64(s:get("secrets", ns, name).data["tls.crt"]), name))
end

local function log_has(s, args, text)
  return (kubectl(s, args, { may_fail = true })):find(text, 1, true) ~= nil
end

-- the guide's manifest, as the doctor applies it
local TELEGRAF_MANIFEST = assert(io.open("scripts/doctor/telegraf-rbac.yaml")):read("a")

-- A container context without a kubelet: the program's log lines and its exit.
local function run_program(s, name, fields)
  local ctx = { sim = s, log_lines = {}, env = {}, args = {}, restart_count = 0, namespace = "vantiq", name = "x-0",
                pod = { metadata = { name = "x-0" }, spec = {} }, container = { name = name, image = "img:1" } }
  for k, v in pairs(fields or {}) do ctx[k] = v end
  function ctx.log(self, line) self.log_lines[#self.log_lines + 1] = line end
  function ctx.ready(self, flag) self.is_ready = flag end
  function ctx.sleep() end
  function ctx.exit(_, code) error({ exit = code }, 0) end
  local ok, err = pcall(s.programs[name], ctx)
  ctx.exit_code = ok and 0 or (type(err) == "table" and err.exit or 1)
  ctx.text = table.concat(ctx.log_lines, "\n")
  return ctx
end

-- ---- the catalogue ----

describe("the scenario catalogue", function()
  local REQUIRED = { "keycloak-db-password", "telegraf-rbac", "grafana-datasource-url", "vantiq-self-signed",
    "node-clock-skew", "admin-key-expired", "backup-failed", "migration-failed", "missing-intermediate", "cert-expiring",
    "dns-not-propagated", "node-not-ready", "pvc-pending", "fault-drop-stream", "fault-429", "fault-503", "fault-slow",
    "fault-watch-410", "fault-token-expired", "fault-log-rotation" }

  it("names every troubleshooting case and fault, each with a summary", function()
    local names = {}
    for _, c in ipairs(scenarios.catalogue()) do
      assert.truthy(#c.summary > 10, c.name)
      names[#names + 1] = c.name
    end
    for _, n in ipairs(REQUIRED) do assert.is_true(has(names, n), n) end
    local r = run.vq { "sim/serve.lua", "--list-scenarios" }
    assert.equal(0, r.status)
    assert.truthy(r.stdout:find("keycloak-db-password", 1, true))
  end)

  it("refuses an unknown name, listing the known ones, and leaves nothing running", function()
    local ok, err = pcall(sim_mod.start, { speed = SPEED, scenarios = { "keycloak-password" } })
    assert.is_false(ok)
    assert.truthy(err:find('unknown scenario "keycloak-password"', 1, true))
    assert.truthy(err:find("keycloak-db-password", 1, true))
  end)

  it("reads parameters after a colon", function()
    local name, p = scenarios.parse("fault-429:count=5,path=^/api/v1/pods,retry_after=0")
    assert.equal("fault-429", name)
    assert.same({ count = 5, path = "^/api/v1/pods", retry_after = 0 }, p)
    name, p = scenarios.parse { name = "migration-failed", always = true }
    assert.equal("migration-failed", name)
    assert.same({ always = true }, p)
  end)
end)

-- ---- the troubleshooting cases ----

describe("scenario", function()
  it("keycloak-db-password: keycloak crash-loops on the database login until the Secret is right", function()
    with_sim({ scenarios = { "keycloak-db-password" } }, function(s)
      local right = s.world_info.keycloak.db_password
      assert.are_not.equal(right, util.unbase64(s:get("secrets", "shared", "keycloak").data["db-password"]))
      if not HAS_CONTROLLERS then return end
      eventually(function() return waiting_reason(s:get("pods", "shared", "keycloak-0")) == "CrashLoopBackOff" end, 20, "CrashLoopBackOff")
      eventually(function() return kubectl(s, { "get", "pods", "-n", "shared" }):find("CrashLoopBackOff", 1, true) end, 20,
        "CrashLoopBackOff in kubectl's list")
      eventually(function()
        return log_has(s, { "logs", "keycloak-0", "-n", "shared" }, 'FATAL: password authentication failed for user "keycloak"')
          or log_has(s, { "logs", "keycloak-0", "-n", "shared", "--previous" }, 'FATAL: password authentication failed for user "keycloak"')
      end, 20, "the FATAL line")
      -- the fix: the Secret from secrets.yaml, then the pods restarted
      kubectl(s, { "patch", "secret", "keycloak", "-n", "shared", "-p",
        json.encode { data = { ["db-password"] = util.base64(right) } } })
      kubectl(s, { "delete", "pod", "keycloak-0", "-n", "shared", "--wait=false" })
      eventually(function() return ready(s:get("pods", "shared", "keycloak-0")) end, 30, "keycloak-0 Ready")
    end)
  end)

  it("telegraf-rbac: 403s and no nginx measurement until the guide's manifest is applied", function()
    with_sim({ scenarios = { "telegraf-rbac" } }, function(s)
      assert.is_nil(s:get("clusterrolebindings.rbac.authorization.k8s.io", nil, "influx:telegraf:viewer"))
      assert.is_false(has(s.influx_measurements.kubernetes, "nginx_ingress_controller_requests"))
      assert.truthy(programs.telegraf_denied(s, "shared", "telegraf-prom"):find('cannot watch resource "pods"', 1, true))
      if HAS_CONTROLLERS then
        eventually(function()
          return log_has(s, { "logs", "deploy/telegraf-prom", "-n", "shared" }, "E! [inputs.prometheus] Unable to watch resources: kubernetes api: Failure 403 pods is forbidden")
        end, 20, "telegraf-prom's 403")
        eventually(function()
          return log_has(s, { "logs", "ds/telegraf-ds", "-n", "shared" }, "E! [inputs.kube_inventory] Error in plugin: kubernetes api: Failure 403")
        end, 20, "telegraf-ds's 403")
      end
      local show = { "exec", "influxdb-0", "-n", "shared", "--", "influx", "-execute", "show measurements", "-database", "kubernetes" }
      if HAS_CONTROLLERS and s.exec_handlers then
        local out = eventually(function() return kubectl(s, show, { may_fail = true }):find("----", 1, true) and kubectl(s, show) end, 20, "influx")
        assert.falsy(out:find("nginx_ingress_controller_requests", 1, true))
      end
      kubectl(s, { "apply", "--server-side", "-f", "-" }, { stdin = TELEGRAF_MANIFEST })
      eventually(function() return has(s.influx_measurements.kubernetes, "nginx_ingress_controller_requests") end, 20,
        "nginx_ingress_controller_requests")
      if HAS_CONTROLLERS and s.exec_handlers then
        assert.truthy(kubectl(s, show):find("nginx_ingress_controller_requests", 1, true))
      end
      assert.is_nil(programs.telegraf_denied(s, "shared", "telegraf-ds"))
    end)
  end)

  it("grafana-datasource-url: the datasources point at a service that does not exist", function()
    with_sim({ scenarios = { "grafana-datasource-url" } }, function(s)
      for _, ds in ipairs(s.grafana_datasources) do assert.equal("http://influxdb-influxdb:8086", ds.url) end
      local cm = s:get("configmaps", "shared", "grafana-datasources")
      assert.truthy(cm.data["datasources.yaml"]:find("url: http://influxdb-influxdb:8086", 1, true))
      assert.is_nil((s.lookup_service("influxdb-influxdb", "shared")))
      assert.is_not_nil(s.lookup_service("influxdb", "shared"))
      assert.is_not_nil(s.lookup_service("influxdb.shared.svc.cluster.local", "vantiq"))
      if HAS_CONTROLLERS then
        eventually(function()
          return log_has(s, { "logs", "deploy/grafana", "-n", "shared" }, "lookup influxdb-influxdb on 10.96.0.10:53: no such host")
        end, 20, "grafana's lookup error")
      end
    end)
  end)

  it("vantiq-self-signed: nginx serves a self-signed certificate and vantiq's logins fail", function()
    with_sim({ scenarios = { "vantiq-self-signed" } }, function(s)
      local certs = chain_of(s, "shared", "default-ssl-cert")
      assert.equal(1, #certs)
      assert.is_true(certs[1].self_signed)
      assert.truthy(s.keycloak_tls_error():find("PKIX path building failed", 1, true))
      assert.truthy(s.vantiq_auth_error:find("SSLHandshakeException", 1, true))
      if HAS_CONTROLLERS then
        eventually(function()
          return log_has(s, { "logs", "vantiq-0", "-c", "vantiq", "-n", "vantiq" }, "javax.net.ssl.SSLHandshakeException: PKIX path building failed")
        end, 20, "vantiq's PKIX error")
      end
    end)
  end)

  it("missing-intermediate: the leaf alone does not lead to the root", function()
    with_sim({ scenarios = { "missing-intermediate" } }, function(s)
      local certs = chain_of(s, "shared", "default-ssl-cert")
      assert.equal(1, #certs)
      assert.is_false(certs[1].self_signed)
      assert.is_false(require("vq.core.tls").verify(certs, { ca_file = s.world_info.ca_file }).ok)
      assert.equal(1, #chain_of(s, "vantiq", "vantiq-ssl-cert"))
      assert.truthy(s.vantiq_auth_error:find("SSLHandshakeException", 1, true))
      -- the full chain back in the Secret cures the login
      local set = require("sim.world").certificates(s)
      kubectl(s, { "patch", "secret", "default-ssl-cert", "-n", "shared", "-p",
        json.encode { data = { ["tls.crt"] = util.base64(set.fullchain) } } })
      eventually(function() return s.vantiq_auth_error == nil end, 5, "the login error gone")
    end)
  end)

  it("cert-expiring: the served leaf has five days left", function()
    with_sim({ scenarios = { "cert-expiring" } }, function(s)
      local certs = chain_of(s, "shared", "default-ssl-cert")
      assert.equal(2, #certs)
      local left = (certs[1].not_after - s.clock:now()) / 86400
      assert.truthy(left > 4 and left <= 5.01, tostring(left))
      assert.is_true(require("vq.core.tls").verify(certs, { ca_file = s.world_info.ca_file }).ok)
    end)
  end)

  it("node-clock-skew: one compute node is 95 s ahead", function()
    with_sim({ world = "production", scenarios = { "node-clock-skew" } }, function(s)
      local node = s.world_info.skewed_node
      assert.equal(95, s.node_clock_skew[node])
      assert.equal("compute", s:get("nodes", nil, node).metadata.labels["vantiq.com/workload-preference"])
      assert.truthy(s.vantiq_auth_error:find("Token is not active", 1, true))
    end)
  end)

  it("admin-key-expired: the key in vantiq-0's log is older than 48 h and no longer works", function()
    if not HAS_CONTROLLERS then return pending("sim.controllers is not there yet") end
    with_sim({ scenarios = { "admin-key-expired" } }, function(s)
      eventually(function() return s.world_info.clock_advanced end, 30, "the clock moved")
      local wi = s.world_info
      assert.is_nil(wi.admin_key)
      assert.truthy(s.clock:now() - wi.admin_key_time > 48 * 3600)
      assert.truthy(log_has(s, { "logs", "vantiq-0", "-c", "vantiq", "-n", "vantiq" }, wi.admin_key_printed))
      local cj = s:get("cronjobs.batch", "vantiq", "mongobackup")
      assert.truthy(s.clock:now() - util.parse_time(cj.status.lastScheduleTime) < 86400)
    end)
  end)

  it("admin-key-lost: vantiq-0 restarted after the banner, the key died with it", function()
    if not HAS_CONTROLLERS then return pending("sim.controllers is not there yet") end
    with_sim({ scenarios = { "admin-key-lost" } }, function(s)
      eventually(function()
        local p = s:get("pods", "vantiq", "vantiq-0")
        local cs = p and p.status and p.status.containerStatuses or {}
        return cs[1] and cs[1].restartCount >= 1 and ready(p)
      end, 30, "vantiq-0 restarted")
      assert.is_nil(s.world_info.admin_key)
      assert.truthy(log_has(s, { "logs", "vantiq-0", "-c", "vantiq", "-n", "vantiq", "--previous" }, s.world_info.admin_key_printed))
      assert.is_false(log_has(s, { "logs", "vantiq-0", "-c", "vantiq", "-n", "vantiq" }, s.world_info.admin_key_printed))
    end)
  end)

  it("backup-failed: the last run failed and a new backup Job fails", function()
    with_sim({ scenarios = { "backup-failed" } }, function(s)
      local cj = s:get("cronjobs.batch", "vantiq", "mongobackup")
      assert.truthy(util.parse_time(cj.status.lastSuccessfulTime) < util.parse_time(cj.status.lastScheduleTime))
      local failed = s:list("jobs.batch", "vantiq", function(j) return j.metadata.name:find("^mongobackup%-") ~= nil end)
      assert.equal(1, #failed)
      assert.equal("Failed", failed[1].status.conditions[1].type)
      local ctx = run_program(s, "mongobackup", { container = { name = "mongobackup", image = "quay.io/vantiq/mongo-backup:1.4.0" } })
      assert.equal(1, ctx.exit_code)
      assert.truthy(ctx.text:find("Access Denied", 1, true))
      if not HAS_CONTROLLERS then return end
      kubectl(s, { "create", "job", "-n", "vantiq", "backup-now", "--from=cronjob/mongobackup" })
      eventually(function()
        local j = s:get("jobs.batch", "vantiq", "backup-now")
        for _, c in ipairs(j and j.status and j.status.conditions or {}) do
          if c.type == "Failed" and c.status == "True" then return true end
        end
      end, 40, "the backup Job failed")
    end)
  end)

  it("migration-failed: load-model fails a minor upgrade's migration", function()
    with_sim({ scenarios = { "migration-failed" } }, function(s)
      local same = run_program(s, "load-model", { container = { name = "load-model", image = "quay.io/vantiq/vantiq-server:1.37.2" } })
      assert.equal(0, same.exit_code)
      assert.truthy(same.text:find("Migration complete", 1, true))
      local up = run_program(s, "load-model", { container = { name = "load-model", image = "quay.io/vantiq/vantiq-server:1.38.0" } })
      assert.equal(1, up.exit_code)
      assert.truthy(up.text:find("ERROR io.vantiq.loadmodel - Migration failed", 1, true))
      assert.equal("1.37.2", s.world_info.schema_version)
      if not HAS_CONTROLLERS then return end
      eventually(function() return ready(s:get("pods", "vantiq", "vantiq-0")) end, 30, "vantiq-0 Ready")
      kubectl(s, { "set", "image", "sts/vantiq", "-n", "vantiq", "vantiq=quay.io/vantiq/vantiq-server:1.38.0",
                   "load-model=quay.io/vantiq/vantiq-server:1.38.0" })
      eventually(function()
        return log_has(s, { "logs", "vantiq-0", "-c", "load-model", "-n", "vantiq" }, "Migration failed")
          or log_has(s, { "logs", "vantiq-0", "-c", "load-model", "-n", "vantiq", "--previous" }, "Migration failed")
      end, 30, "load-model's ERROR")
      assert.truthy(kubectl(s, { "get", "pod", "vantiq-0", "-n", "vantiq" }):find("Init:", 1, true))
    end)
  end)

  it("dns-not-propagated: the domain is held back", function()
    with_sim({ scenarios = { "dns-not-propagated:seconds=50" } }, function(s)
      assert.is_true(s.dns_hold)
      eventually(function() return s.dns_hold == false end, 5, "the release")
    end)
  end)

  it("node-not-ready: a compute node goes NotReady", function()
    with_sim({ world = "production", scenarios = { "node-not-ready" } }, function(s)
      local node = s.world_info.not_ready_node
      eventually(function()
        return kubectl(s, { "get", "node", node }):find("NotReady", 1, true)
      end, 20, "NotReady")
    end)
  end)

  it("pvc-pending: the userdb claim has no volume and no provisioner", function()
    with_sim({ scenarios = { "pvc-pending" } }, function(s)
      local out = kubectl(s, { "get", "pvc", "-n", "vantiq" })
      assert.truthy(out:match("datadir%-userdb%-0%s+Pending"))
      if not HAS_CONTROLLERS then return end
      vq.sleep(0.5)
      assert.equal("Pending", s:get("persistentvolumeclaims", "vantiq", "datadir-userdb-0").status.phase)
      eventually(function()
        return kubectl(s, { "describe", "pod", "userdb-0", "-n", "vantiq" }, { may_fail = true }):find("unbound immediate PersistentVolumeClaims", 1, true)
      end, 20, "the scheduler's reason")
    end)
  end)

  it("can be started at run time", function()
    with_sim({}, function(s)
      s.start_scenario("dns-not-propagated")
      assert.is_true(s.dns_hold)
      assert.is_not_nil(s.scenarios["dns-not-propagated"])
    end)
  end)
end)

-- ---- transport faults ----

describe("fault", function()
  local s

  local function get(path, opts)
    local o = { url = s.url .. path, headers = { Authorization = "Bearer " .. s.token }, retries = 0 }
    for k, v in pairs(opts or {}) do o[k] = v end
    return assert(http.request(o))
  end

  before_each(function()
    s = start { modules = { "sim.auth", "sim.core", "sim.logs", "sim.scenarios" } }
  end)
  after_each(function() finish(s) end)

  it("fault-429: a burst of 429 with Retry-After, then the client's retries get through", function()
    s.start_scenario("fault-429:count=3,retry_after=0,path=^/api/v1/namespaces")
    local r = get("/api/v1/namespaces")
    assert.equal(429, r.status)
    assert.equal("0", r.headers["retry-after"])
    assert.equal("TooManyRequests", r.json.reason)
    local retries = 0
    r = get("/api/v1/namespaces", { retries = 5, on_retry = function() retries = retries + 1 end })
    assert.equal(200, r.status)
    assert.equal(2, retries)
  end)

  it("fault-503: kubectl rides out the burst", function()
    s.start_scenario { name = "fault-503", count = 2, retry_after = 0 }
    local out = kubectl(s, { "get", "ns" })
    assert.truthy(out:find("kube-system", 1, true))
    assert.equal(0, #s.faults.list)
  end)

  it("fault-slow: answers late", function()
    s.faults:add { kind = "slow", delay = 0.3, count = 1 }
    local t0 = vq.now()
    assert.equal(200, get("/api/v1/namespaces").status)
    assert.truthy(vq.now() - t0 >= 0.3)
    t0 = vq.now()
    get("/api/v1/namespaces")
    assert.truthy(vq.now() - t0 < 0.3)
  end)

  it("fault-watch-410: the next watch gets an ERROR event with a 410 Status", function()
    -- only this watch: a watch left open by an earlier test must not take the fault
    s.faults:add { kind = "watch-410", count = 1, path = "^/api/v1/namespaces$" }
    local head = assert(http.stream { url = s.url .. "/api/v1/namespaces?watch=1&resourceVersion=1001",
      headers = { Authorization = "Bearer " .. s.token } })
    assert.equal(200, head.status)
    local lines = {}
    -- bounded: a fault that did not apply would leave the watch open forever
    local _, err = vq.timeout(15, function() for l in http.lines(head.stream) do lines[#lines + 1] = l end end)
    head.stream:close()
    assert.is_nil(err)
    assert.equal(1, #lines)
    local ev = json.decode(lines[1])
    assert.equal("ERROR", ev.type)
    assert.equal(410, ev.object.code)
    assert.equal("Expired", ev.object.reason)
  end)

  it("fault-drop-stream: a watch is cut mid-stream after n events", function()
    s.faults:add { kind = "drop", after = 2, count = 1, streams = true, path = "^/api/v1/namespaces$" }
    local head = assert(http.stream { url = s.url .. "/api/v1/namespaces?watch=1",
      headers = { Authorization = "Bearer " .. s.token } })
    local lines = {}
    local iter, state = http.lines(head.stream)
    local _, err = vq.timeout(15, function() for l in iter do lines[#lines + 1] = l end end)
    head.stream:close()
    assert.is_nil(err)
    assert.equal(2, #lines)
    assert.is_not_nil(state.err)
    -- a plain request under a drop fault loses its connection
    s.faults:add { kind = "drop", count = 1, path = "^/api/v1/nodes" }
    local r, err = http.request { url = s.url .. "/api/v1/nodes", method = "POST", body = "{}", retries = 0 }
    assert.is_nil(r)
    assert.is_not_nil(err)
  end)

  it("fault-token-expired: the kubeconfig's token is refused with 401 after a point", function()
    local f = s.faults:add { kind = "token-expired", after_requests = 1 }
    assert.equal(200, get("/api/v1/namespaces").status)
    local r = get("/api/v1/namespaces")
    assert.equal(401, r.status)
    assert.equal("Unauthorized", r.json.reason)
    s.faults:remove(f)
    assert.is_nil(s.token_expired)
    assert.equal(200, get("/api/v1/namespaces").status)
  end)

  it("fault-log-rotation: sets the kubelet's rotation", function()
    s.start_scenario("fault-log-rotation:every=7")
    assert.equal(7, s.logs.rotate_every)
    s.faults:clear()
    assert.is_nil(s.logs.rotate_every)
  end)
end)
