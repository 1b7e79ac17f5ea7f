local config = require "vq.kube.config"
local FIX = "spec/fixtures/kubeconfig/"

-- Run fn with KUBECONFIG set (os.getenv is what the loader reads: swap it for the test).
local function with_env(vars, fn)
  local real = os.getenv
  os.getenv = function(k) if vars[k] ~= nil then return vars[k] or nil end return real(k) end
  local ok, e = pcall(fn)
  os.getenv = real
  if not ok then error(e, 0) end
end

describe("kubeconfig", function()
  it("reads an EKS exec plugin config", function()
    local s = assert(config.resolve { kubeconfig = FIX .. "eks.yaml" })
    assert.are.equal("https://ABCDEF0123456789.gr7.ap-northeast-1.eks.amazonaws.com", s.server)
    assert.are.equal("aws", s.exec.command)
    assert.are.same({ "--region", "ap-northeast-1", "eks", "get-token", "--cluster-name", "vantiq-prod" }, { table.unpack(s.exec.args) })
    assert.are.equal("AWS_PROFILE", s.exec.env[1].name)
    assert.are.equal("client.authentication.k8s.io/v1beta1", s.exec.api_version)
    assert.matches("^%-%-%-%-%-BEGIN CERTIFICATE", s.ca_data)
    assert.are.equal("default", s.namespace)
  end)

  it("reads an AKS kubelogin config with its namespace and install hint", function()
    local s = assert(config.resolve { kubeconfig = FIX .. "aks.yaml" })
    assert.are.equal("kubelogin", s.exec.command)
    assert.are.equal("vantiq", s.namespace)
    assert.matches("kubelogin is not installed", s.exec.install_hint)
  end)

  it("reads a GKE config that asks for cluster info", function()
    local s = assert(config.resolve { kubeconfig = FIX .. "gke.yaml" })
    assert.are.equal("gke-gcloud-auth-plugin", s.exec.command)
    assert.is_true(s.exec.provide_cluster_info)
  end)

  it("resolves relative paths against the file's folder, keeps absolute ones", function()
    local s = assert(config.resolve { kubeconfig = FIX .. "certs.yaml" })
    assert.are.equal(FIX .. "pki/ca.crt", s.ca_file)
    assert.are.equal(FIX .. "pki/admin.crt", s.cert_file)
    assert.are.equal("/abs/admin.key", s.key_file)
    assert.are.equal("kubernetes.default", s.tls_server_name)
    assert.are.equal("vantiq", s.namespace)
  end)

  it("refuses basic authentication with the reason", function()
    local s, e = config.resolve { kubeconfig = FIX .. "basic.yaml" }
    assert.is_nil(s)
    assert.are.equal("kubeconfig", e.code)
    assert.matches("removed in 1.19", e.message)
  end)

  it("merges $KUBECONFIG files: the first to define a name or the current context wins", function()
    with_env({ KUBECONFIG = FIX .. "first.yaml:" .. FIX .. "missing.yaml:" .. FIX .. "second.yaml" }, function()
      local s = assert(config.resolve {})
      assert.are.equal("b", s.context)                       -- only second.yaml sets it
      assert.are.equal("https://only-second.example", s.server)
      assert.are.equal("shared", s.namespace)
      local a = assert(config.resolve { context = "a" })     -- first.yaml's context a wins
      assert.are.equal("https://first.example", a.server)
      assert.are.equal("first-token", a.token)
    end)
  end)

  it("names the file, line and column of a broken kubeconfig", function()
    local s, e = config.resolve { kubeconfig = FIX .. "broken.yaml" }
    assert.is_nil(s)
    assert.are.equal("kubeconfig", e.code)
    assert.matches("broken%.yaml", e.message)
    assert.are.equal(7, e.line)
  end)

  it("says which context is missing", function()
    local s, e = config.resolve { kubeconfig = FIX .. "eks.yaml", context = "nope" }
    assert.is_nil(s)
    assert.matches('context "nope" not found', e.message)
  end)

  it("registers tokens as secrets", function()
    with_env({ KUBECONFIG = FIX .. "first.yaml" }, function()
      assert(config.resolve { context = "a" })
    end)
    assert.are.equal("token: ***", require("log").redact("token: first-token"))
  end)

  it("falls back to the in-cluster service account only when no kubeconfig exists", function()
    with_env({ KUBECONFIG = "/nonexistent/kubeconfig", KUBERNETES_SERVICE_HOST = false }, function()
      local s, e = config.resolve {}
      assert.is_nil(s)
      assert.matches("no kubeconfig found", e.message)
    end)
  end)
end)

describe("exec credential plugins", function()
  local has_proc = pcall(require, "vq.proc")

  local function plugin(dir, body)
    local path = dir .. "/plugin.sh"
    local f = assert(io.open(path, "w"))
    f:write("#!/bin/sh\n" .. body)
    f:close()
    os.execute("chmod +x " .. path)
    return path
  end

  it("runs the plugin with KUBERNETES_EXEC_INFO and caches the token", function()
    if not has_proc then pending("vq.proc not built yet") return end
    local dir = require("spec.support.run").tmpdir()
    local cmd = plugin(dir, [[
echo "$KUBERNETES_EXEC_INFO" > ]] .. dir .. [[/info.json
echo run >> ]] .. dir .. [[/runs
cat <<'JSON'
{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","status":{"token":"plugin-token-123","expirationTimestamp":"2099-01-01T00:00:00Z"}}
JSON
]])
    local cred = assert(config.run_exec { server = "https://x", exec = { command = cmd, args = {}, env = { { name = "A", value = "b" } },
      api_version = "client.authentication.k8s.io/v1", interactive_mode = "Never", provide_cluster_info = true } })
    assert.are.equal("plugin-token-123", cred.token)
    assert.is_true(cred.expires > os.time())
    local f = assert(io.open(dir .. "/info.json"))
    local info = require("json").decode(f:read("a"))
    f:close()
    assert.are.equal("ExecCredential", info.kind)
    assert.are.equal("https://x", info.spec.cluster.server)
    assert.are.equal("***", require("log").redact("plugin-token-123"))
    os.execute("rm -rf " .. dir)
  end)

  it("says what failed when the plugin fails, with its install hint", function()
    if not has_proc then pending("vq.proc not built yet") return end
    local _, e = config.run_exec { exec = { command = "/nonexistent/kubelogin", args = {}, env = {}, install_hint = "install kubelogin" } }
    assert.are.equal("exec_plugin", e.code)
    assert.matches("install kubelogin", e.message)
  end)

  it("refuses a plugin that must be interactive", function()
    local _, e = config.run_exec { exec = { command = "x", args = {}, env = {}, interactive_mode = "Always" } }
    assert.are.equal("exec_plugin", e.code)
    assert.matches("interactive", e.message)
  end)
end)
