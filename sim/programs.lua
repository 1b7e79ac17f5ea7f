-- What the Vantiq installation's containers do in the simulator: the log lines a real
-- install writes (the guide's admin key banner, keycloak's database error, telegraf's
-- 403s), readiness, and the exits a troubleshooting case needs. Each program reads the
-- world's state (sim.world_info, the Secrets, RBAC) when it runs, so fixing the cause in
-- the cluster and restarting the pod cures the symptom, as on a real cluster.
local util = require "sim.util"
local rbac = require "sim.world.rbac"

local M = {}

local FOREVER = 3600

-- ---- shared pieces ----

local function ms_stamp(sim)
  local t = sim.clock:now()
  return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) .. (".%03d"):format(math.floor((t % 1) * 1000))
end

local function java(ctx, thread, level, logger, msg)
  ctx:log(("%s [%s] %-5s %s - %s"):format(ms_stamp(ctx.sim), thread, level, logger, msg))
end

local function jboss_stamp(sim)
  local t = sim.clock:now()
  return os.date("!%H:%M:%S", math.floor(t)) .. (",%03d"):format(math.floor((t % 1) * 1000))
end

local function jboss(ctx, level, category, thread, msg)
  ctx:log(("%s %-5s [%s] (%s) %s"):format(jboss_stamp(ctx.sim), level, category, thread, msg))
end

local function iso(sim) return util.rfc3339(sim.clock:now()) end

local function tag_of(image)
  return (image or ""):match(":([^:/@]+)$") or "latest"
end

local function minor_of(version)
  local major, minor = tostring(version):match("^(%d+)%.(%d+)")
  return major and (tonumber(major) * 1000 + tonumber(minor)) or 0
end

--- The parameters of an active scenario (sim.scenarios[name]), or nil.
local function scenario(sim, name)
  return sim.scenarios and sim.scenarios[name]
end
M.scenario = scenario

local function info(sim)
  sim.world_info = sim.world_info or {}
  return sim.world_info
end

--- Idle until the container is stopped, doing `tick` every `every` simulated seconds.
local function idle(ctx, every, tick)
  while true do
    ctx:sleep(every or FOREVER)
    if tick then tick() end
  end
end

-- ---- DNS inside the cluster ----

--- The Service a host name means from namespace ns (svc, svc.ns, svc.ns.svc[.cluster.local],
--- pod.svc for a headless service), or nil and resolv's error text.
function M.lookup_service(sim, host, ns)
  local name, rest = host:match("^([^.]+)%.?(.*)$")
  local svc_ns = rest:match("^([^.]+)") or ns
  local svc = name and sim:get("services", svc_ns, name)
  if not svc and rest ~= "" then
    -- pod-0.headless[.ns...]
    local svc_name, more = rest:match("^([^.]+)%.?(.*)$")
    svc = sim:get("services", more:match("^([^.]+)") or ns, svc_name)
  end
  if svc then return svc end
  return nil, ("dial tcp: lookup %s on 10.96.0.10:53: no such host"):format(host)
end

-- ---- TLS as vantiq sees keycloak through the ingress ----

local PKIX = "javax.net.ssl.SSLHandshakeException: PKIX path building failed: " ..
  "sun.security.provider.certpath.SunCertPathBuilderException: unable to find valid certification path to requested target"
local EXPIRED = "javax.net.ssl.SSLHandshakeException: PKIX path validation failed: " ..
  "java.security.cert.CertPathValidatorException: validity check failed"

local function served_chain(sim)
  local wi = info(sim)
  local s = sim:get("secrets", wi.shared_namespace or "shared", wi.tls_secret or "default-ssl-cert")
  local crt = s and s.data and s.data["tls.crt"]
  return crt and util.unbase64(crt)
end

--- The Java exception vantiq meets calling keycloak at https://<domain>/auth, or nil:
--- the chain nginx serves (shared/default-ssl-cert) must lead to a trusted root (the
--- world's CA), unless the install declared a self-signed certificate.
function M.keycloak_tls_error(sim)
  local wi = info(sim)
  local pem = served_chain(sim)
  if not pem then return PKIX end
  local ok, tls = pcall(require, "vq.core.tls")
  if not ok or not wi.ca_file then
    return (wi.intermediate_pem and not pem:find(wi.intermediate_pem, 1, true)) and PKIX or nil
  end
  local certs = tls.load_certs(pem, "default-ssl-cert")
  if not certs then return PKIX end
  local r = tls.verify(certs, { ca_file = wi.ca_file, at = math.floor(sim.clock:now()) })
  if r and r.ok then return nil end
  for _, e in ipairs(r and r.errors or {}) do
    if (e.reason or ""):find("expired") or (e.reason or ""):find("not yet valid") then return EXPIRED end
  end
  if certs[1].self_signed and wi.trust_self_signed then return nil end
  return PKIX
end

-- Tokens keycloak issues on one node are checked on another: past this skew (seconds)
-- they are not yet valid, or already expired.
local TOKEN_LEEWAY = 30

-- The skew of this pod's node against the most skewed other node, in seconds.
local function node_skew(ctx)
  local skews = ctx.sim.node_clock_skew or {}
  local node = ctx.pod.spec and ctx.pod.spec.nodeName
  local mine, other = skews[node] or 0, 0
  for n, s in pairs(skews) do if n ~= node and math.abs(s) > math.abs(other) then other = s end end
  return mine - other
end

-- ---- vantiq-server ----

local function random_key()
  local bytes = {}
  for i = 1, 32 do bytes[i] = string.char(math.random(0, 255)) end
  return util.base64(table.concat(bytes))
end

-- The data the key belongs to: the MongoDB volume (a new PVC is an empty database).
local function database_id(sim)
  local wi = info(sim)
  local pvc = sim:get("persistentvolumeclaims", wi.namespace or "vantiq", wi.mongodb_claim or "datadir-mongodb-0")
  return pvc and pvc.metadata.uid or "none"
end

local function banner(ctx, key)
  local stars = ("*"):rep(66)
  local pad = math.max(1, (64 - #key) // 2)
  local line = "*" .. (" "):rep(pad) .. key .. (" "):rep(64 - #key - pad) .. "*"
  for _, l in ipairs { stars, line, stars } do java(ctx, "vert.x-eventloop-thread-0", "INFO", "io.vantiq.startup", l) end
end

-- Only the first start on an empty database prints a key; any later start of vantiq-0
-- invalidates it (the guide: the key dies with the pod, and only a redeploy on fresh
-- MongoDB volumes prints a new one).
local function admin_key(ctx)
  local sim, wi = ctx.sim, info(ctx.sim)
  -- a redeploy may start vantiq before MongoDB's claim exists: the server waits for it
  for _ = 1, 30 do
    if database_id(sim) ~= "none" then break end
    ctx:sleep(2)
  end
  local db = database_id(sim)
  if wi.admin_key_db == db then
    wi.admin_key, wi.admin_key_expires = nil, nil
    java(ctx, "vert.x-eventloop-thread-0", "INFO", "io.vantiq.startup", "System already initialized; no new system admin key")
    return
  end
  local key = random_key()
  pcall(function() require("log").secret(key) end)
  wi.admin_key, wi.admin_key_printed, wi.admin_key_db = key, key, db
  wi.admin_key_time = sim.clock:now()
  wi.admin_key_expires = wi.admin_key_time + 48 * 3600
  banner(ctx, key)
  if wi.admin_key_printed_event then wi.admin_key_printed_event:set() end
end

local function vantiq_startup(ctx, role)
  local sim, wi = ctx.sim, info(ctx.sim)
  local version = tag_of(ctx.container.image)
  ctx:log("Picked up JAVA_TOOL_OPTIONS: -XX:+UseContainerSupport -XX:MaxRAMPercentage=75.0")
  java(ctx, "main", "INFO", "io.vantiq.startup", ("Vantiq %s version %s starting on %s"):format(role, version, ctx.name))
  java(ctx, "main", "INFO", "org.mongodb.driver.cluster", ("Cluster created with settings {hosts=[mongodb-0.mongodb.%s.svc.cluster.local:27017], mode=MULTIPLE, requiredClusterType=REPLICA_SET}")
    :format(wi.namespace or ctx.namespace))
  ctx:sleep(3)
  java(ctx, "vert.x-eventloop-thread-1", "INFO", "io.vantiq.auth.OAuthConfig", ("Using OAuth server https://%s/auth/realms/vantiq"):format(wi.domain or "localhost"))
  for i = 1, 3 do
    java(ctx, "vert.x-eventloop-thread-" .. (i + 4), "INFO", "i.v.c.i.l.c.VertxIsolatedDeployer", "Succeeded in deploying verticle")
  end
end

local AUTH_FLOW = "Failed to complete authentication code flow. Please contact your Vantiq administrator and have them " ..
  "confirm the health/configuration of the OAuth server. Request failed due to exception: "

--- What a login through the IDE meets now (sim.vantiq_auth_error, read by the Vantiq
--- service): the TLS problem, else a clock skew that makes keycloak's tokens invalid.
function M.update_auth_error(sim)
  local err = M.keycloak_tls_error(sim)
  local msg = err and (AUTH_FLOW .. "javax.net.ssl.SSLHandshakeException: Failed to create SSL connection")
  if not msg then
    for _, s in pairs(sim.node_clock_skew or {}) do
      if math.abs(s) >= TOKEN_LEEWAY then
        msg = AUTH_FLOW .. "io.vantiq.auth.TokenValidationException: Token is not active (issued in the future or expired)"
      end
    end
  end
  -- leave alone an error someone else set
  if sim.vantiq_auth_error == nil or sim.vantiq_auth_error == sim.world_auth_error then
    sim.vantiq_auth_error = msg
    sim.world_auth_error = msg
  end
end

local function vantiq_checks(ctx)
  M.update_auth_error(ctx.sim)
  local err = M.keycloak_tls_error(ctx.sim)
  if err then
    java(ctx, "vert.x-eventloop-thread-3", "ERROR", "io.vantiq.auth.OAuthAuthenticator",
      "Failed to complete authentication code flow. Request failed due to exception: " .. err)
  end
  local skew = node_skew(ctx)
  if math.abs(skew) >= TOKEN_LEEWAY then
    java(ctx, "vert.x-eventloop-thread-2", "WARN", "io.vantiq.auth.TokenValidator",
      ("Rejected access token: token issued at a time %d seconds %s the server clock (iat/exp check failed)")
        :format(math.abs(skew), skew > 0 and "before" or "after"))
  end
end

--- The Vantiq server (vantiq, metrics-collector): startup, the admin key on vantiq-0,
--- ready, then the periodic complaints of a misconfigured installation.
function M.vantiq_server(ctx)
  local role = ctx.name:match("^metrics%-collector") and "metrics collector" or "server"
  vantiq_startup(ctx, role)
  if ctx.name == "vantiq-0" then admin_key(ctx) end
  ctx:sleep(2)
  java(ctx, "vert.x-eventloop-thread-0", "INFO", "io.vantiq.startup", ("Vantiq %s started in %.1f seconds"):format(role, 41.2))
  ctx:ready(true)
  vantiq_checks(ctx)
  if scenario(ctx.sim, "admin-key-lost") and ctx.name == "vantiq-0" and ctx.restart_count == 0 then
    ctx:sleep(5)
    java(ctx, "main", "ERROR", "io.vantiq.startup", "java.lang.OutOfMemoryError: Java heap space")
    ctx:exit(137, "OOMKilled")
  end
  idle(ctx, 30, function() vantiq_checks(ctx) end)
end

-- ---- load-model: the schema migration before the server starts ----

local MIGRATIONS = { "ArsType indexes", "system.nodes", "collaboration types", "audit records" }

--- The init container: migrates the schema to the image's version, or fails loudly
--- (scenario migration-failed: a migration to a newer minor version fails).
function M.load_model(ctx)
  local sim, wi = ctx.sim, info(ctx.sim)
  local target = tag_of(ctx.container.image)
  local from = wi.schema_version or target
  local log = function(level, msg) java(ctx, "main", level, "io.vantiq.loadmodel", msg) end
  log("INFO", ("Connecting to mongodb://mongodb-0.mongodb.%s.svc.cluster.local:27017/ars02"):format(wi.namespace or ctx.namespace))
  log("INFO", ("Migrating schema from version %s to %s ..."):format(from, target))
  local failing = scenario(sim, "migration-failed")
  local newer = minor_of(target) > minor_of(from)
  local steps = (newer or (failing and failing.always)) and MIGRATIONS or {}
  for i, step in ipairs(steps) do
    ctx:sleep(2)
    log("INFO", ("Migrating schema ... step %d/%d: %s"):format(i, #steps, step))
    if failing and i == 2 then
      log("ERROR", "Migration failed: com.mongodb.MongoCommandException: Command failed with error 11000 (DuplicateKey): " ..
        "'E11000 duplicate key error collection: ars02.system.nodes index: name_1 dup key: { name: \"self\" }'")
      log("ERROR", ("Schema is at an intermediate state between %s and %s; restore the backup before retrying"):format(from, target))
      ctx:exit(1)
    end
  end
  ctx:sleep(1)
  if minor_of(target) >= minor_of(from) then wi.schema_version = target end
  log("INFO", ("Migration complete: schema version %s (%d changes)"):format(target, #steps))
end

-- ---- the databases ----

local function mongo_line(sim, c, id, msg, attr)
  return ('{"t":{"$date":"%s"},"s":"I","c":"%s","id":%d,"ctx":"initandlisten","msg":"%s"%s}')
    :format(util.rfc3339_micro and util.rfc3339_micro(sim.clock:now()) or iso(sim), c, id, msg, attr and (',"attr":' .. attr) or "")
end

function M.mongodb(ctx)
  local sim = ctx.sim
  ctx:log(mongo_line(sim, "CONTROL", 23285, "Automatically disabling TLS 1.0, to force-enable TLS 1.0 specify --sslDisabledProtocols 'none'"))
  ctx:log(mongo_line(sim, "CONTROL", 4615611, "MongoDB starting", ('{"pid":1,"port":27017,"dbPath":"/data/db","architecture":"64-bit","host":"%s"}'):format(ctx.name)))
  ctx:log(mongo_line(sim, "STORAGE", 22315, "Opening WiredTiger", '{"config":"create,cache_size=1536M"}'))
  ctx:sleep(3)
  ctx:log(mongo_line(sim, "REPL", 21392, "New replica set config in use", '{"config":{"_id":"rs0","version":3}}'))
  ctx:log(mongo_line(sim, "NETWORK", 23016, "Waiting for connections", '{"port":27017,"ssl":"off"}'))
  ctx:ready(true)
  idle(ctx, 60, function()
    ctx:log(mongo_line(sim, "NETWORK", 22943, "Connection accepted", '{"remote":"10.244.1.12:51234","connectionCount":24}'))
  end)
end

function M.influxdb(ctx)
  local sim = ctx.sim
  local function l(msg) ctx:log(('ts=%s lvl=info msg="%s" log_id=0Xq1vqsim000'):format(iso(sim), msg)) end
  l("InfluxDB starting version=1.8.10 branch=1.8 commit=688e697c51")
  l("Opened shard service=store trace_id=0Xq1vqsim000 op_name=tsdb_open db_shard_id=1 db_rp=autogen db_instance=kubernetes")
  ctx:sleep(2)
  l("Listening on HTTP service=httpd addr=[::]:8086 https=false")
  ctx:ready(true)
  idle(ctx, 10, function()
    ctx:log(('[httpd] 10.244.2.9 - telegraf [%s] "POST /write?db=kubernetes HTTP/1.1" 204 0 "-" "Telegraf/1.17.3" %s 8123')
      :format(os.date("!%d/%b/%Y:%H:%M:%S +0000", math.floor(sim.clock:now())), util.uuid()))
  end)
end

-- ---- keycloak ----

local KEYCLOAK_HEAD = {
  "Picked up JAVA_TOOL_OPTIONS: -XX:+UseContainerSupport -XX:MaxRAMPercentage=50.0",
  "Added 'keycloak' to '/opt/jboss/keycloak/standalone/configuration/keycloak-add-user.json', restart server to load user",
  "=========================================================================",
  "",
  "  Using PostgreSQL database",
  "",
  "=========================================================================",
  "",
  "Picked up JAVA_TOOL_OPTIONS: -XX:+UseContainerSupport -XX:MaxRAMPercentage=50.0",
}

local function keycloak_db_failure(ctx)
  jboss(ctx, "WARN", "org.jboss.jca.core.connectionmanager.pool.strategy.OnePool", "ServerService Thread Pool -- 65",
    "IJ000604: Throwable while attempting to get a new connection: null: javax.resource.ResourceException: IJ031084: Unable to create connection")
  ctx:log("\tat org.jboss.ironjacamar.jdbcadapters@1.4.20.Final//org.jboss.jca.adapters.jdbc.local.LocalManagedConnectionFactory.createLocalManagedConnection(LocalManagedConnectionFactory.java:345)")
  ctx:log(("Caused by: org.postgresql.util.PSQLException: FATAL: password authentication failed for user \"%s\""):format(ctx.env.DB_USER or "keycloak"))
  ctx:log("\tat org.postgresql.jdbc@42.2.5//org.postgresql.core.v3.ConnectionFactoryImpl.doAuthentication(ConnectionFactoryImpl.java:514)")
  ctx:log("\tat org.postgresql.jdbc@42.2.5//org.postgresql.core.v3.ConnectionFactoryImpl.tryConnect(ConnectionFactoryImpl.java:141)")
  ctx:log("\tat org.postgresql.jdbc@42.2.5//org.postgresql.core.v3.ConnectionFactoryImpl.openConnectionImpl(ConnectionFactoryImpl.java:192)")
  jboss(ctx, "ERROR", "org.jboss.as.controller.management-operation", "ServerService Thread Pool -- 65",
    'WFLYCTL0013: Operation ("add") failed - address: ([("subsystem" => "datasources"),("data-source" => "KeycloakDS")])')
  jboss(ctx, "FATAL", "org.jboss.as.server", "Controller Boot Thread", "WFLYSRV0056: Server boot has failed in an unrecoverable manner; exiting. See previous messages for details.")
end

-- The password keycloak presents is the one in its Secret (env DB_PASSWORD); PostgreSQL
-- accepts the one the installation was created with (what secrets.yaml holds).
local function keycloak_password_ok(ctx)
  local want = (info(ctx.sim).keycloak or {}).db_password
  local have = ctx.env.DB_PASSWORD
  if have == nil then
    local ns = info(ctx.sim).shared_namespace or ctx.namespace
    local s = ctx.sim:get("secrets", ns, "keycloak")
    have = s and s.data and s.data["db-password"] and util.unbase64(s.data["db-password"])
  end
  return want == nil or have == want
end

function M.keycloak(ctx)
  for _, l in ipairs(KEYCLOAK_HEAD) do ctx:log(l) end
  jboss(ctx, "INFO", "org.jboss.modules", "CLI command executor", "JBoss Modules version 1.10.0.Final")
  ctx:sleep(4)
  jboss(ctx, "INFO", "org.jboss.as", "MSC service thread 1-2", "WFLYSRV0049: Keycloak 12.0.4 (WildFly Core 13.0.3.Final) starting")
  ctx:sleep(4)
  if not keycloak_password_ok(ctx) then
    keycloak_db_failure(ctx)
    ctx:exit(1)
  end
  jboss(ctx, "INFO", "org.keycloak.connections.jpa.updater.liquibase.LiquibaseJpaUpdaterProvider", "ServerService Thread Pool -- 64",
    "Initializing database schema. Using changelog META-INF/jpa-changelog-master.xml")
  jboss(ctx, "INFO", "org.jboss.as", "Controller Boot Thread",
    "WFLYSRV0025: Keycloak 12.0.4 (WildFly Core 13.0.3.Final) started in 35012ms - Started 690 of 995 services (708 services are lazy, passive or on-demand)")
  jboss(ctx, "INFO", "org.jboss.as", "Controller Boot Thread", "WFLYSRV0060: Http management interface listening on http://127.0.0.1:9990/management")
  ctx:ready(true)
  idle(ctx)
end

-- ---- grafana ----

local function grafana_log(ctx, level, logger, msg, extra)
  ctx:log(('t=%s lvl=%s msg="%s" logger=%s%s'):format(iso(ctx.sim), level, msg, logger, extra or ""))
end

local function grafana_queries(ctx)
  local ns = info(ctx.sim).shared_namespace or ctx.namespace
  for _, ds in ipairs(ctx.sim.grafana_datasources or {}) do
    local host = (ds.url or ""):match("^%a+://([^:/]+)")
    local _, err = M.lookup_service(ctx.sim, host or "", ns)
    if err then
      grafana_log(ctx, "eror", "tsdb.influxdb", "Query data error",
        (' datasource=%q error="Post \\"%s/query?db=%s&epoch=ms\\": %s"'):format(ds.name or "", ds.url, ds.database or "", err))
    end
  end
end

function M.grafana(ctx)
  grafana_log(ctx, "info", "settings", "Starting Grafana", ' version=7.5.17 commit=7d1b9d6a1f branch=HEAD')
  grafana_log(ctx, "info", "sqlstore", "Connecting to DB", " dbtype=sqlite3")
  ctx:sleep(2)
  grafana_log(ctx, "info", "http.server", "HTTP Server Listen", " address=[::]:3000 protocol=http subUrl=/grafana socket=")
  ctx:ready(true)
  idle(ctx, 30, function() grafana_queries(ctx) end)
end

-- ---- telegraf ----

local function telegraf_log(ctx, level, msg)
  ctx:log(("%s %s! %s"):format(util.rfc3339(ctx.sim.clock:now()), level, msg))
end

-- What each telegraf needs from the API at the cluster scope, in the order it asks.
local NEEDS = {
  ["telegraf-ds"] = { plugin = "inputs.kube_inventory", prefix = "Error in plugin: kubernetes api: Failure 403",
                      perms = { { "watch", "", "pods" }, { "list", "", "nodes" }, { "list", "", "persistentvolumes" } },
                      measurements = { "kubernetes_node", "kubernetes_pod_container", "kubernetes_persistentvolume",
                                       "kubernetes_statefulset", "kubernetes_deployment", "kubernetes_daemonset" } },
  ["telegraf-prom"] = { plugin = "inputs.prometheus", prefix = "Unable to watch resources: kubernetes api: Failure 403",
                        perms = { { "watch", "", "pods" } },
                        measurements = { "nginx_ingress_controller_requests", "nginx_ingress_controller_request_duration_seconds",
                                         "nginx_ingress_controller_nginx_process_connections", "go_gc_duration_seconds",
                                         "mongodb_mongod_op_latencies_latency_total" } },
}

--- The first permission the service account lacks, as the apiserver words it, or nil.
function M.telegraf_denied(sim, ns, sa)
  local need = NEEDS[sa]
  for _, p in ipairs(need and need.perms or {}) do
    local ok, why = rbac.allows(sim, ns, sa, p[1], p[2], p[3])
    if not ok then return why end
  end
end

--- Measurements appear in InfluxDB once telegraf scrapes them.
function M.add_measurements(sim, sa)
  local db = sim.influx_measurements and sim.influx_measurements.kubernetes
  if not db then return end
  local have = {}
  for _, m in ipairs(db) do have[m] = true end
  for _, m in ipairs(NEEDS[sa] and NEEDS[sa].measurements or {}) do
    if not have[m] then db[#db + 1] = m end
  end
  table.sort(db)
end

local function telegraf_scrape(ctx, sa)
  local denied = M.telegraf_denied(ctx.sim, ctx.namespace, sa)
  if denied then
    telegraf_log(ctx, "E", ("[%s] %s %s"):format(NEEDS[sa].plugin, NEEDS[sa].prefix, denied))
  else
    M.add_measurements(ctx.sim, sa)
  end
end

function M.telegraf(ctx)
  local sa = ctx.pod.spec and ctx.pod.spec.serviceAccountName or "telegraf-ds"
  local need = NEEDS[sa] or NEEDS["telegraf-ds"]
  telegraf_log(ctx, "I", "Starting Telegraf 1.17.3")
  telegraf_log(ctx, "I", "Loaded inputs: " .. (need.plugin:gsub("^inputs%.", "")) .. (sa == "telegraf-ds" and " cpu disk diskio docker kernel mem net system" or ""))
  telegraf_log(ctx, "I", "Loaded outputs: influxdb")
  telegraf_log(ctx, "I", ('[agent] Config: Interval:10s, Quiet:false, Hostname:"%s", Flush Interval:10s'):format(ctx.name))
  ctx:ready(true)
  -- prometheus retries its watch every second, as the guide's stern output shows
  idle(ctx, sa == "telegraf-prom" and 1 or 10, function() telegraf_scrape(ctx, sa) end)
end

-- ---- the ingress controller ----

function M.nginx_ingress(ctx)
  local l = function(m) ctx:log(m) end
  l("-------------------------------------------------------------------------------")
  l("NGINX Ingress controller")
  l("  Release:       v0.44.0")
  l("  Build:         f802554ccfadf828f7eb6d3f9a9333686706d613")
  l("  Repository:    https://github.com/kubernetes/ingress-nginx")
  l("  nginx version: nginx/1.19.6")
  l("-------------------------------------------------------------------------------")
  ctx:sleep(2)
  l(('I%s       7 store.go:539] "Found valid default SSL certificate" secret="%s/default-ssl-cert"')
    :format(os.date("!%m%d %H:%M:%S", math.floor(ctx.sim.clock:now())), info(ctx.sim).shared_namespace or ctx.namespace))
  l(('I%s       7 controller.go:146] "Configuration changes detected, backend reload required"'):format(os.date("!%m%d %H:%M:%S", math.floor(ctx.sim.clock:now()))))
  ctx:ready(true)
  idle(ctx)
end

function M.vision_analytics(ctx)
  java(ctx, "main", "INFO", "io.vantiq.vision.startup", ("Vision analytics %s starting"):format(tag_of(ctx.container.image)))
  ctx:sleep(3)
  java(ctx, "main", "INFO", "io.vantiq.vision.startup", "Connected to the Vantiq server at http://vantiq:8080")
  ctx:ready(true)
  idle(ctx)
end

-- ---- the backup jobs ----

local COLLECTIONS = { { "ars02.ars_types", 312 }, { "ars02.ars_namespaces", 48 }, { "ars02.system.nodes", 3 },
                      { "ars02.ars_audit", 120453 } }

local function backup_log(ctx, msg) ctx:log(("%s\t%s"):format(util.rfc3339(ctx.sim.clock:now()), msg)) end

function M.mongobackup(ctx)
  local sim, wi = ctx.sim, info(ctx.sim)
  local name = "mongodump-" .. os.date("!%Y%m%dT%H%M%SZ", math.floor(sim.clock:now())) .. ".gz"
  backup_log(ctx, ("Starting backup of mongodb://mongodb-0.mongodb.%s.svc.cluster.local:27017/ars02"):format(wi.namespace or ctx.namespace))
  for _, c in ipairs(COLLECTIONS) do
    ctx:sleep(1)
    backup_log(ctx, ("writing %s to archive '/tmp/%s'"):format(c[1], name))
    backup_log(ctx, ("done dumping %s (%d documents)"):format(c[1], c[2]))
  end
  local target = (wi.backup_bucket and ("s3://" .. wi.backup_bucket .. "/")) or "s3://vantiq-backup/"
  backup_log(ctx, ("Uploading %s to %s"):format(name, target))
  if scenario(sim, "backup-failed") then
    backup_log(ctx, "upload failed: An error occurred (AccessDenied) when calling the PutObject operation: Access Denied")
    ctx:log("Backup FAILED")
    ctx:exit(1)
  end
  ctx:sleep(2)
  wi.backups = wi.backups or {}
  table.insert(wi.backups, { name = name, time = sim.clock:now() })
  ctx:log("Backup completed: " .. name)
end

local function restore(ctx, db)
  local sim, wi = ctx.sim, info(ctx.sim)
  local backups = wi.backups or {}
  local name = ctx.env.BACKUP_NAME or (backups[#backups] or {}).name
  if not name then
    backup_log(ctx, "no backup found to restore")
    ctx:exit(1)
  end
  backup_log(ctx, ("Downloading %s"):format(name))
  ctx:sleep(2)
  backup_log(ctx, ("preparing collections to restore from archive '/tmp/%s' into %s"):format(name, db))
  local total = 0
  for _, c in ipairs(COLLECTIONS) do
    ctx:sleep(1)
    backup_log(ctx, ("restoring %s from archive '/tmp/%s'"):format(c[1]:gsub("^ars02", db), name))
    total = total + c[2]
  end
  backup_log(ctx, ("%d document(s) restored successfully. 0 document(s) failed to restore."):format(total))
  ctx:log("Restore completed: " .. name)
end

function M.mongorestore(ctx) return restore(ctx, "ars02") end
function M.userdbrestore(ctx) return restore(ctx, "userdb") end

-- ---- the influx shell in the influxdb pod (the guide's diagnosis) ----

local INFLUX_VERSION = "1.8.1"

local function influx_measurements(sim, db)
  local m = sim.influx_measurements
  if type(m) == "table" and m[1] ~= nil then return db == "kubernetes" and m or nil end
  return m and m[db]
end

-- One InfluxQL statement as the CLI prints its answer; state.db is the `use`d database.
local function influx_statement(sim, state, line, out)
  local q = line:lower():gsub("^%s+", ""):gsub("%s*;?%s*$", "")
  local db = q:match("^use%s+(%S+)$")
  if db then
    if not influx_measurements(sim, db) then return out(("ERR: Database %s doesn't exist. Run SHOW DATABASES for a list of existing databases.\n"):format(db)) end
    state.db = line:match("^%s*%S+%s+(%S+)")
    return out("Using database " .. state.db .. "\n")
  end
  if q == "show databases" then
    local names = {}
    for name in pairs(type(sim.influx_measurements) == "table" and sim.influx_measurements or {}) do
      if type(name) == "string" then names[#names + 1] = name end
    end
    table.sort(names)
    return out("name: databases\nname\n----\n" .. table.concat(names, "\n") .. "\n")
  end
  if q == "show measurements" then
    if not state.db then return out("ERR: database name required\nWarning: It is possible this error is due to not setting a database.\nPlease set a database with the command \"use <database>\".\n") end
    return out("name: measurements\nname\n----\n" .. table.concat(influx_measurements(sim, state.db:lower() == "kubernetes" and "kubernetes" or state.db) or {}, "\n") .. "\n")
  end
  if q == "" then return end
  out(("ERR: error parsing query: found %s, expected SELECT, DELETE, SHOW, CREATE, DROP, EXPLAIN, GRANT, REVOKE, ALTER, SET, KILL at line 1, char 1\n")
    :format((line:match("^%s*(%S+)") or ""):upper()))
end

local function influx_flag(argv, name)
  for i, a in ipairs(argv) do
    if a == name or a == "-" .. name then return argv[i + 1] end
  end
end

--- `influx` in the influxdb pod: -execute 'stmt' [-database db], or the interactive shell.
function M.influx_shell(sim)
  return {
    match = function(argv, ctx)
      local image = ctx and ctx.container_spec and ctx.container_spec.image or ""
      return (argv[1] or ""):match("([^/]*)$") == "influx" and image:find("influxdb", 1, true) ~= nil
    end,
    run = function(argv, io)
      local state = { db = influx_flag(argv, "-database") }
      local out = function(s) io:stdout(s) end
      local exec = influx_flag(argv, "-execute")
      if exec then
        influx_statement(sim, state, exec, out)
        return 0
      end
      out(("Connected to http://localhost:8086 version %s\nInfluxDB shell version: %s\n> "):format(INFLUX_VERSION, INFLUX_VERSION))
      local pending = ""
      for data in io.read, io do
        pending = pending .. data:gsub("\r", "\n")
        for line in pending:gmatch("([^\n]*)\n") do
          if line:match("^%s*exit%s*$") or line:match("^%s*quit%s*$") then return 0 end
          influx_statement(sim, state, line, out)
          out("> ")
        end
        pending = pending:match("([^\n]*)$")
      end
      return 0
    end,
  }
end

-- ---- registration ----

M.programs = {
  ["vantiq-server"] = M.vantiq_server, ["load-model"] = M.load_model, mongodb = M.mongodb,
  keycloak = M.keycloak, influxdb = M.influxdb, grafana = M.grafana, telegraf = M.telegraf,
  ["nginx-ingress"] = M.nginx_ingress, ["vision-analytics"] = M.vision_analytics,
  mongobackup = M.mongobackup, mongorestore = M.mongorestore, userdbrestore = M.userdbrestore,
}

-- Image repositories (the part before the tag) and the program they run.
M.IMAGES = {
  { "/vantiq%-server$", "vantiq-server" }, { "/vision%-analytics", "vision-analytics" },
  { "^mongo$", "mongodb" }, { "/mongodb$", "mongodb" }, { "/mongo%-backup$", "mongobackup" },
  { "keycloak$", "keycloak" }, { "influxdb$", "influxdb" }, { "grafana$", "grafana" },
  { "telegraf$", "telegraf" }, { "ingress%-nginx/controller$", "nginx-ingress" },
  { "nginx%-ingress%-controller$", "nginx-ingress" },
}

--- The program of an image (and container: the init container load-model shares the
--- server's image), or nil for the kubelet's default.
function M.program_for_image(image, _, container)
  if container and M.programs[container.name] then return container.name end
  local repo = (image or ""):gsub("@.*$", ""):gsub(":[^:/]+$", "")
  for _, m in ipairs(M.IMAGES) do
    if repo:find(m[1]) then return m[2] end
  end
end

--- Add the programs to sim.programs and map images to them (idempotent).
function M.register(sim)
  sim.programs = sim.programs or {}
  for name, fn in pairs(M.programs) do sim.programs[name] = fn end
  local previous = sim.program_for_image
  if previous ~= M.program_for_image and not sim.program_for_image_chained then
    sim.program_for_image = function(image, pod, container)
      return M.program_for_image(image, pod, container) or (previous and previous(image, pod, container))
    end
    sim.program_for_image_chained = true
  end
  if sim.exec_handlers and not sim.influx_shell_registered then
    table.insert(sim.exec_handlers, 1, M.influx_shell(sim))
    sim.influx_shell_registered = true
  end
  sim.lookup_service = function(host, ns) return M.lookup_service(sim, host, ns) end
  sim.keycloak_tls_error = function() return M.keycloak_tls_error(sim) end
end

M.idle = idle
M.tag_of = tag_of
return M
