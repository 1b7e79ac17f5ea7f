-- The kube client over TLS: a real nginx terminates TLS with a test CA, requires a client
-- certificate and proxies to the simulator. Certificates come from the openssl command.
local kube = require "vq.kube"
local nginx = require "spec.support.nginx"
local base64 = require "vq.base64"

local pki, sim, edge, expired_edge

local function path(name) return pki:path(name) end
local function read(name) return pki:read(name) end
local function write(name, text) pki:write(name, text) end

local function kubeconfig(name, o)
  local lines = { "apiVersion: v1", "kind: Config", "clusters:", "- name: c", "  cluster:",
    "    server: https://127.0.0.1:" .. o.port }
  if o.ca then lines[#lines + 1] = "    certificate-authority-data: " .. base64.encode(read(o.ca)) end
  if o.ca_file then lines[#lines + 1] = "    certificate-authority: " .. o.ca_file end
  if o.server_name then lines[#lines + 1] = "    tls-server-name: " .. o.server_name end
  if o.insecure then lines[#lines + 1] = "    insecure-skip-tls-verify: true" end
  for _, l in ipairs { "contexts:", "- name: c", "  context: {cluster: c, user: u, namespace: default}",
                       "current-context: c", "users:", "- name: u", "  user:" } do lines[#lines + 1] = l end
  if o.client then
    lines[#lines + 1] = "    client-certificate: " .. o.client .. ".crt"   -- relative to the kubeconfig's folder
    lines[#lines + 1] = "    client-key-data: " .. base64.encode(read(o.client .. ".key"))
  else
    lines[#lines + 1] = "    token: none"
  end
  write(name, table.concat(lines, "\n") .. "\n")
  return path(name)
end

setup(function()
  pki = require("spec.support.pki").new()
  pki:ca("ca")
  pki:ca("other-ca")
  local san = "DNS:kube.vqlua.test,IP:127.0.0.1"
  pki:cert("server", { by = "ca", cn = "kube.vqlua.test", san = san })
  pki:cert("expired", { by = "ca", cn = "kube.vqlua.test", san = san, from = -30 * 86400, to = -86400 })
  pki:cert("client", { by = "ca", cn = "vqlua-admin", usage = "client" })
  pki:cert("stranger", { by = "other-ca", cn = "stranger", usage = "client" })
  sim = require("sim").start { modules = { "sim.auth", "sim.core" } }
  local proxy = ("ssl_client_certificate %s; ssl_verify_client on; "):format(path("ca.crt")) ..
    ("location ~ ^/(api|apis|version) { proxy_pass http://127.0.0.1:%d; }"):format(sim.port)
  edge = nginx.start { servers = { { server_name = "kube.vqlua.test", cert = path("server.crt"), key = path("server.key"), extra = proxy } } }
  expired_edge = nginx.start { servers = { { server_name = "kube.vqlua.test", cert = path("expired.crt"), key = path("expired.key"), extra = proxy } } }
end)

teardown(function()
  if edge then edge:stop() end
  if expired_edge then expired_edge:stop() end
  if sim then sim:stop() end
  if pki then pki:remove() end
end)

describe("kube over TLS with a client certificate", function()
  it("verifies the server against the kubeconfig's CA and presents the client certificate", function()
    local k = assert(kube.connect { kubeconfig = kubeconfig("good.kc", { port = edge.port, ca = "ca.crt", client = "client" }) })
    assert.are.equal(sim.version, assert(k:version()).gitVersion)
    assert(k:create { apiVersion = "v1", kind = "ConfigMap", metadata = { name = "over-tls", namespace = "default" } })
    assert(k:get("cm", "over-tls"))
  end)

  it("accepts a CA file relative to the kubeconfig and a tls-server-name", function()
    local k = assert(kube.connect { kubeconfig = kubeconfig("named.kc",
      { port = edge.port, ca_file = "ca.crt", client = "client", server_name = "kube.vqlua.test" }) })
    assert(k:get("ns", "default"))
  end)

  it("fails verification against a wrong CA", function()
    local k = assert(kube.connect { kubeconfig = kubeconfig("wrong-ca.kc", { port = edge.port, ca = "other-ca.crt", client = "client" }) })
    local v, e = k:version()
    assert.is_nil(v)
    assert.are.equal("tls", e.code)
  end)

  it("fails on an expired server certificate", function()
    local k = assert(kube.connect { kubeconfig = kubeconfig("expired.kc", { port = expired_edge.port, ca = "ca.crt", client = "client" }) })
    local v, e = k:version()
    assert.is_nil(v)
    assert.are.equal("tls", e.code)
    assert.matches("expired", e.message)
  end)

  it("is refused without a client certificate the server trusts", function()
    local k = assert(kube.connect { kubeconfig = kubeconfig("stranger.kc", { port = edge.port, ca = "ca.crt", client = "stranger" }) })
    local v, e = k:version()
    assert.is_nil(v)
    assert.are.equal(400, e.code) -- nginx: "The SSL certificate error"
  end)

  it("skips verification only when the kubeconfig says so", function()
    local k = assert(kube.connect { kubeconfig = kubeconfig("insecure.kc", { port = expired_edge.port, insecure = true, client = "client" }) })
    assert(k:version())
  end)

  it("never puts the client key in an error or the client's text", function()
    local key = read("client.key")
    local k = assert(kube.connect { kubeconfig = kubeconfig("redact.kc", { port = edge.port, ca = "other-ca.crt", client = "client" }) })
    local _, e = k:version()
    assert.not_matches(key, tostring(e.message), 1, true)
    assert.not_matches(key, tostring(k), 1, true)
    assert.are.equal("***", require("log").redact(key))
  end)
end)
