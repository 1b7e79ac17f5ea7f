-- The simulator's services/proxy and pods/proxy and the in-cluster services behind them
-- (InfluxDB, Grafana, Keycloak, Vantiq), through our HTTP client and through real kubectl.
local json = require "json"
local http = require "vq.http"
local base64 = require "vq.base64"
local proxy = require "sim.proxy"
local cluster = require "spec.support.cluster"

local sim
local VANTIQ_NS = "vantiq-prod"

-- A stand-in for the world: only what these specs rely on.
local world = {
  install = function(s) s.world_info = { namespace = VANTIQ_NS, domain = "vantiq.example.com", realm = "vantiq" } end,
}

local function create(key, obj) return assert(sim:create(key, obj)) end

local function namespace(name) create("namespaces", { metadata = { name = name } }) end

local function service(ns, name, port, opts)
  opts = opts or {}
  return create("services", { metadata = { name = name, namespace = ns },
    spec = { selector = opts.selector == nil and { app = name } or opts.selector or nil,
             ports = { { name = opts.port_name or "http", port = port } } } })
end

local function pod(ns, name, labels, ready, image)
  return create("pods", { metadata = { name = name, namespace = ns, labels = labels },
    spec = { containers = { { name = labels.app, image = image or ("img/" .. labels.app .. ":1") } } },
    status = ready and { phase = "Running", podIP = "10.244.0.9", conditions = { { type = "Ready", status = "True" } } }
      or { phase = "Pending" } })
end

local function secret(ns, name, data)
  local enc = {}
  for k, v in pairs(data) do enc[k] = base64.encode(v) end
  create("secrets", { metadata = { name = name, namespace = ns }, data = enc })
end

local function svc_url(ns, target, path)
  return ("%s/api/v1/namespaces/%s/services/%s/proxy%s"):format(sim.url, ns, target, path)
end

local function basic(user, pass) return "Basic " .. base64.encode(user .. ":" .. pass) end

setup(function()
  sim = cluster.start { modules = { "sim.auth", "sim.core", "sim.proxy", world } }
  namespace("shared")
  namespace(VANTIQ_NS)
  for _, s in ipairs { { "influxdb", 8086 }, { "grafana", 80 }, { "keycloak", 8080 } } do
    service("shared", s[1], s[2])
    pod("shared", s[1] .. "-0", { app = s[1] }, true)
  end
  secret("shared", "keycloak", { password = "kc-secret" })
  secret("shared", "grafana", { ["admin-user"] = "admin", ["admin-password"] = "gf-secret" })
  service(VANTIQ_NS, "vantiq", 8080)
  create("statefulsets.apps", { metadata = { name = "vantiq", namespace = VANTIQ_NS },
    spec = { replicas = 1, selector = { matchLabels = { app = "vantiq" } },
             template = { metadata = { labels = { app = "vantiq" } },
                          spec = { containers = { { name = "vantiq", image = "vantiq/vantiq-server:1.37.4" } } } } } })
  pod(VANTIQ_NS, "vantiq-0", { app = "vantiq" }, true, "vantiq/vantiq-server:1.37.4")
end)

teardown(function() cluster.finish(sim) end)

describe("InfluxDB through services/proxy", function()
  local function query(q, db, extra)
    local url = svc_url("shared", "influxdb:8086", "/query?q=" .. q:gsub(" ", "%%20") .. (db and ("&db=" .. db) or "") .. (extra or ""))
    return assert(http.get(url))
  end

  it("answers SHOW MEASUREMENTS in InfluxDB's JSON shape", function()
    local r = query("SHOW MEASUREMENTS", "kubernetes")
    assert.are.equal(200, r.status)
    assert.are.equal("1.8.1", r.headers["x-influxdb-version"])
    local res = r.json.results[1]
    assert.are.equal(0, res.statement_id)
    assert.are.equal("measurements", res.series[1].name)
    assert.are.same({ "name" }, res.series[1].columns)
    local names = {}
    for _, v in ipairs(res.series[1].values) do names[v[1]] = true end
    assert.is_true(names.nginx_ingress_controller_requests)
    assert.is_true(names.kubernetes_pod_container)
  end)

  it("reads sim.influx_measurements on every query", function()
    sim.influx_measurements = { "cpu", "mem" }
    local r = query("SHOW MEASUREMENTS", "kubernetes")
    sim.influx_measurements = nil
    assert.are.same({ { "cpu" }, { "mem" } }, r.json.results[1].series[1].values)
  end)

  it("answers SHOW DATABASES, SELECT with LIMIT, statement errors and parse errors", function()
    local dbs = {}
    for _, v in ipairs(query("SHOW DATABASES").json.results[1].series[1].values) do dbs[v[1]] = true end
    assert.is_true(dbs.kubernetes and dbs.systemDB and dbs.vantiqServer and dbs._internal)
    local sel = query('SELECT mean("value") FROM "nginx_ingress_controller_requests" LIMIT 2', "kubernetes", "&epoch=s")
    local s = sel.json.results[1].series[1]
    assert.are.same({ "time", "mean" }, s.columns)
    assert.are.equal(2, #s.values)
    assert.is_number(s.values[1][1])
    assert.are.same({ statement_id = 0 }, query("SELECT * FROM nosuch LIMIT 1", "kubernetes").json.results[1])
    assert.are.equal("database name required", query("SHOW MEASUREMENTS").json.results[1].error)
    assert.are.equal("database not found: nope", query("SHOW MEASUREMENTS", "nope").json.results[1].error)
    local bad = query("SHOWW THINGS", "kubernetes")
    assert.are.equal(400, bad.status)
    assert.matches("error parsing query", bad.json.error)
  end)

  it("answers /ping with 204 and takes a port name or none", function()
    assert.are.equal(204, assert(http.get(svc_url("shared", "influxdb:http", "/ping"))).status)
    assert.are.equal(204, assert(http.get(svc_url("shared", "http:influxdb:8086", "/ping"))).status)
  end)

  it("is reached by real kubectl get --raw", function()
    if not os.execute("command -v kubectl >/dev/null 2>&1") then return pending("kubectl not installed") end
    local r = cluster.run_kubectl(sim, { "get", "--raw",
      "/api/v1/namespaces/shared/services/influxdb:8086/proxy/query?q=SHOW%20MEASUREMENTS&db=kubernetes" })
    assert.are.equal(0, r.status, r.stderr)
    local body = json.decode(r.stdout)
    assert.are.equal("measurements", body.results[1].series[1].name)
    assert.matches("nginx_ingress_controller_requests", r.stdout, 1, true)
  end)
end)

describe("the proxy's errors", function()
  it("404s a missing Service, as the apiserver words it", function()
    local r = assert(http.get(svc_url("shared", "influxdb-influxdb:8086", "/ping")))
    assert.are.equal(404, r.status)
    assert.are.equal("Status", r.json.kind)
    assert.are.equal('services "influxdb-influxdb" not found', r.json.message)
  end)

  it("503s a port the Service does not declare", function()
    local r = assert(http.get(svc_url("shared", "influxdb:9999", "/ping")))
    assert.are.equal(503, r.status)
    assert.are.equal('no service port 9999 found for service "influxdb"', r.json.message)
  end)

  it("503s a Service whose pods are not ready, and recovers when one is", function()
    service("shared", "telegraf", 8125)
    pod("shared", "telegraf-0", { app = "telegraf" }, false)
    local r = assert(http.get(svc_url("shared", "telegraf:8125", "/")))
    assert.are.equal(503, r.status)
    assert.are.equal('no endpoints available for service "telegraf"', r.json.message)
    assert.are.equal("ServiceUnavailable", r.json.reason)
    -- nothing listens in the simulation: connection refused
    pod("shared", "telegraf-1", { app = "telegraf" }, true)
    r = assert(http.get(svc_url("shared", "telegraf:8125", "/")))
    assert.are.equal(503, r.status)
    assert.matches("connection refused", r.json.message)
    sim.services["shared/telegraf"] = function(_, res, path) res:send(200, "telegraf " .. path) end
    r = assert(http.get(svc_url("shared", "telegraf:8125", "/metrics")))
    assert.are.equal("telegraf /metrics", r.body)
  end)

  it("trusts an Endpoints object over the pods", function()
    service("shared", "mongodb", 27017)
    pod("shared", "mongodb-0", { app = "mongodb" }, true)
    sim.services["shared/mongodb"] = function(_, res) res:send(200, "ok") end
    create("endpoints", { metadata = { name = "mongodb", namespace = "shared" },
                          subsets = { { notReadyAddresses = { { ip = "10.244.0.3" } } } } })
    assert.are.equal(503, assert(http.get(svc_url("shared", "mongodb:27017", "/"))).status)
  end)

  it("serves pods/proxy as the Service that selects the pod", function()
    local r = assert(http.get(("%s/api/v1/namespaces/shared/pods/influxdb-0:8086/proxy/ping"):format(sim.url)))
    assert.are.equal(204, r.status)
    r = assert(http.get(("%s/api/v1/namespaces/shared/pods/nope-0/proxy/ping"):format(sim.url)))
    assert.are.equal(404, r.status)
  end)

  it("drops the apiserver's own bearer token before the service sees the request", function()
    local seen
    sim.services["shared/telegraf"] = function(req, res) seen = req.headers.authorization res:send(200, "") end
    http.get(svc_url("shared", "telegraf:8125", "/"), { headers = { Authorization = "Bearer " .. sim.token } })
    assert.is_nil(seen)
    http.get(svc_url("shared", "telegraf:8125", "/"), { headers = { Authorization = basic("a", "b") } })
    assert.are.equal(basic("a", "b"), seen)
  end)

  it("lets a simulated pod call another by its cluster DNS name", function()
    local r = assert(proxy.call(sim, "shared", { url = "http://influxdb:8086/ping" }))
    assert.are.equal(204, r.status)
    r = assert(proxy.call(sim, VANTIQ_NS, { url = "http://influxdb.shared.svc.cluster.local:8086/ping" }))
    assert.are.equal(204, r.status)
    local none, err = proxy.call(sim, "shared", { url = "http://influxdb-influxdb:8086/ping" })
    assert.is_nil(none)
    assert.are.equal("dial tcp: lookup influxdb-influxdb on 10.96.0.10:53: no such host", err.message)
  end)
end)

describe("Grafana", function()
  local auth = { Authorization = basic("admin", "gf-secret") }
  local function gf(method, path, body)
    return assert(http.request { method = method, url = svc_url("shared", "grafana:80", path), headers = auth,
                                 json = body })
  end

  it("answers /api/health without credentials and refuses the API without them", function()
    local h = assert(http.get(svc_url("shared", "grafana:80", "/api/health")))
    assert.are.equal("ok", h.json.database)
    assert.are.equal(401, assert(http.get(svc_url("shared", "grafana:80", "/api/datasources"))).status)
    local wrong = assert(http.get(svc_url("shared", "grafana:80", "/api/datasources"), { headers = { Authorization = basic("admin", "admin") } }))
    assert.are.equal(401, wrong.status)
  end)

  it("lists the default InfluxDB datasources the guide names", function()
    local r = gf("GET", "/api/datasources")
    assert.are.equal(200, r.status)
    local names = {}
    for _, ds in ipairs(r.json) do
      names[ds.name] = ds
      assert.are.equal("http://influxdb:8086", ds.url)
      assert.are.equal("influxdb", ds.type)
    end
    assert.truthy(names.internals and names.kubernetes and names.systemDB and names.vantiqServer)
    assert.are.equal("kubernetes", gf("GET", "/api/datasources/name/kubernetes").json.database)
  end)

  it("creates, refuses a duplicate, checks health through cluster DNS, updates and deletes", function()
    local c = gf("POST", "/api/datasources", { name = "broken", type = "influxdb", access = "proxy",
                                               url = "http://influxdb-influxdb:8086", database = "kubernetes" })
    assert.are.equal(200, c.status)
    assert.are.equal("Datasource added", c.json.message)
    local id = c.json.id
    assert.are.equal(409, gf("POST", "/api/datasources", { name = "broken", type = "influxdb" }).status)
    local bad = gf("GET", "/api/datasources/" .. id .. "/health")
    assert.are.equal(400, bad.status)
    assert.matches("no such host", bad.json.message)
    assert.are.equal(502, gf("GET", ("/api/datasources/proxy/%d/query?q=SHOW%%20DATABASES"):format(id)).status)
    local put = gf("PUT", "/api/datasources/" .. id, { name = "broken", type = "influxdb", access = "proxy",
                                                       url = "http://influxdb:8086", database = "kubernetes" })
    assert.are.equal(200, put.status)
    local good = gf("GET", "/api/datasources/" .. id .. "/health")
    assert.are.equal(200, good.status)
    assert.matches("datasource is working", good.json.message)
    local via = gf("GET", ("/api/datasources/proxy/%d/query?q=SHOW%%20DATABASES"):format(id))
    assert.are.equal("databases", via.json.results[1].series[1].name)
    assert.are.equal(200, gf("DELETE", "/api/datasources/" .. id).status)
    assert.are.equal(404, gf("GET", "/api/datasources/" .. id).status)
  end)

  it("serves a scenario's datasources from sim.grafana_datasources", function()
    local saved = sim.grafana_datasources
    sim.grafana_datasources = { { name = "kubernetes", url = "http://influxdb-influxdb:8086", database = "kubernetes" } }
    local r = gf("GET", "/api/datasources")
    sim.grafana_datasources = saved
    assert.are.equal(1, #r.json)
    assert.are.equal("http://influxdb-influxdb:8086", r.json[1].url)
    assert.is_number(r.json[1].id)
  end)

  it("imports a dashboard with its datasource inputs, and overwrites only when asked", function()
    local dash = { title = "Vantiq Resources", panels = { { datasource = "${DS_KUBERNETES}" } } }
    local body = { dashboard = dash, overwrite = false,
                   inputs = { { name = "DS_KUBERNETES", type = "datasource", pluginId = "influxdb", value = "kubernetes" } } }
    local r = gf("POST", "/api/dashboards/import", body)
    assert.are.equal(200, r.status)
    assert.is_true(r.json.imported)
    local got = gf("GET", "/api/dashboards/uid/" .. r.json.uid)
    assert.are.equal("kubernetes", got.json.dashboard.panels[1].datasource)
    assert.are.equal(412, gf("POST", "/api/dashboards/db", { dashboard = { title = "Vantiq Resources" } }).status)
    local again = gf("POST", "/api/dashboards/db", { dashboard = { title = "Vantiq Resources" }, overwrite = true })
    assert.are.equal(200, again.status)
    assert.are.equal(2, again.json.version)
    local found = gf("GET", "/api/search?query=vantiq")
    assert.are.equal(1, #found.json)
    assert.are.equal("dash-db", found.json[1].type)
  end)
end)

-- A bearer token other than the apiserver's is refused by the apiserver (401), as on a real
-- one: Keycloak's admin API and Vantiq's are called as from a pod (proxy.call) here, and
-- through the TLS edge in sim_edge_spec.
local function in_cluster(ns, method, url, tok, body)
  local r = assert(proxy.call(sim, ns, { method = method, url = url, body = body and json.encode(body),
    headers = { Authorization = tok and ("Bearer " .. tok), ["Content-Type"] = "application/json" } }))
  if (r.headers["content-type"] or ""):find("json") and #r.body > 0 then r.json = json.decode(r.body) end
  return r
end

describe("Keycloak", function()
  local base = function() return svc_url("shared", "keycloak:8080", "/auth") end
  local function token(user, pass, realm)
    return assert(http.post(base() .. "/realms/" .. (realm or "master") .. "/protocol/openid-connect/token", {
      headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
      body = ("grant_type=password&client_id=admin-cli&username=%s&password=%s"):format(user, pass) }))
  end
  local function admin(method, path, tok, body)
    return in_cluster("shared", method, "http://keycloak:8080/auth/admin/realms" .. path, tok, body)
  end

  it("is refused a foreign bearer token by the apiserver, as a real one refuses it", function()
    local r = assert(http.get(base() .. "/admin/realms", { headers = { Authorization = "Bearer not-the-apiserver-token" } }))
    assert.are.equal(401, r.status)
    assert.are.equal("Status", r.json.kind)
  end)

  it("logs the keycloak admin in with the Secret's password, and refuses a wrong one", function()
    local bad = token("keycloak", "nope")
    assert.are.equal(401, bad.status)
    assert.are.equal("invalid_grant", bad.json.error)
    local ok = token("keycloak", "kc-secret")
    assert.are.equal(200, ok.status)
    assert.are.equal("Bearer", ok.json.token_type)
    local parts = {}
    for p in ok.json.access_token:gmatch("[^.]+") do parts[#parts + 1] = p end
    assert.are.equal(3, #parts)
    local payload = json.decode(base64.decode(parts[2]:gsub("-", "+"):gsub("_", "/")))
    assert.are.equal("keycloak", payload.preferred_username)
    assert.matches("/auth/realms/master$", payload.iss)
  end)

  it("creates the system admin in the Vantiq realm with every realm-management role", function()
    local tok = token("keycloak", "kc-secret").json.access_token
    assert.are.equal(401, admin("GET", "/vantiq/users", "garbage").status)
    local created = admin("POST", "/vantiq/users", tok, { username = "SysAdmin", enabled = true, emailVerified = true,
      credentials = { { type = "password", value = "temp", temporary = true } } })
    assert.are.equal(201, created.status)
    local id = created.headers.location:match("/users/([^/]+)$")
    assert.truthy(id)
    local dup = admin("POST", "/vantiq/users", tok, { username = "sysadmin", enabled = true })
    assert.are.equal(409, dup.status)
    assert.are.equal("User exists with same username", dup.json.errorMessage)
    local found = admin("GET", "/vantiq/users?username=sysadmin&exact=true", tok)
    assert.are.equal(1, #found.json)
    assert.are.equal(id, found.json[1].id)
    assert.are.same({ "UPDATE_PASSWORD" }, found.json[1].requiredActions)
    assert.are.equal(400, token("sysadmin", "temp", "vantiq").status, "a temporary password is not a login")
    assert.are.equal(204, admin("PUT", "/vantiq/users/" .. id .. "/reset-password", tok,
                                { type = "password", value = "s3cret!", temporary = false }).status)
    local clients = admin("GET", "/vantiq/clients?clientId=realm-management", tok)
    assert.are.equal(1, #clients.json)
    local cid = clients.json[1].id
    local roles = admin("GET", "/vantiq/clients/" .. cid .. "/roles", tok)
    assert.are.equal(19, #roles.json)
    assert.are.equal(204, admin("POST", "/vantiq/users/" .. id .. "/role-mappings/clients/" .. cid, tok, roles.json).status)
    local maps = admin("GET", "/vantiq/users/" .. id .. "/role-mappings", tok)
    assert.are.equal(19, #maps.json.clientMappings["realm-management"].mappings)
    assert.are.equal(0, #admin("GET", "/vantiq/users/" .. id .. "/role-mappings/clients/" .. cid .. "/available", tok).json)
    assert.are.equal(404, admin("POST", "/vantiq/users/" .. id .. "/role-mappings/clients/" .. cid, tok,
                                { { name = "no-such-role" } }).status)
    assert.are.equal(200, token("sysadmin", "s3cret!", "vantiq").status)
    assert.are.equal(404, admin("GET", "/nosuchrealm/users", tok).status)
  end)
end)

describe("Vantiq", function()
  local function url(path) return svc_url(VANTIQ_NS, "vantiq:8080", path) end
  local function get_version(tok)
    return in_cluster(VANTIQ_NS, "GET", "http://vantiq:8080/api/v1/system/version", tok)
  end

  it("reports health and the version of its image, which an upgrade changes", function()
    local kc = sim.keycloak
    local user = kc:add_user(kc:realm("vantiq"), { username = "operator", enabled = true })
    user.password = "op-pass"
    assert.are.equal("UP", assert(http.get(url("/healthz"))).json.status)
    assert.are.equal(401, assert(http.get(url("/authenticate"), { headers = { Authorization = basic("operator", "bad") } })).status)
    local auth = assert(http.get(url("/authenticate"), { headers = { Authorization = basic("operator", "op-pass") } }))
    assert.are.equal(200, auth.status)
    local tok = auth.json.accessToken
    assert.are.equal(401, get_version(nil).status)
    local v = get_version(tok)
    assert.are.equal("1.37.4", v.json.version)
    -- the upgrade: the pod is replaced by one of the new image
    local old = sim:get("pods", VANTIQ_NS, "vantiq-0")
    sim:delete("pods", old, { grace = 0 })
    pod(VANTIQ_NS, "vantiq-0", { app = "vantiq" }, true, "vantiq/vantiq-server:1.38.0")
    v = get_version(tok)
    assert.are.equal("1.38.0", v.json.version)
  end)
end)
