-- The deployment tool's stand-in (sim/gradlew): ./gradlew run as a real process, as the
-- runbooks run it (vq.gradle.task, with credentials in a gradle.properties and a Java 8),
-- against a simulator in this process; and a rehearsal's scratch copy of a tools dir.
local uv = require "luv"
local proc = require "vq.proc"
local yaml = require "vq.yaml"
local kube = require "vq.kube"
local base64 = require "vq.base64"
local files = require "sim.gradlew.files"
local gradle = require "vq.gradle"
local sim_mod = require "sim"
local tools = require "sim.gradlew.tools"
local run = require "spec.support.run"

local SPEED = 0.02
local EXEC = tonumber("755", 8)

-- ---- helpers ----

local write_file = files.write
local function read_file(path) return assert(files.read(path)) end

local function sh(argv, cwd)
  local r = assert(proc.run { argv = argv, cwd = cwd, timeout = 60 })
  assert(r.code == 0, table.concat(argv, " ") .. ": " .. r.stderr)
  return r.stdout
end

local function mkdir_p(path) sh { "mkdir", "-p", path } end

-- A stand-in for java that prints what `java -version` prints, on stderr.
local function fake_jdk(home, version)
  mkdir_p(home .. "/bin")
  write_file(home .. "/bin/java", ("#!/bin/sh\necho 'openjdk version \"%s\" 2023-10-17' >&2\n"):format(version), EXEC)
  return home
end

-- A kubectl that only knows its client version.
local function fake_kubectl(path, version)
  write_file(path, ([[#!/bin/sh
echo '{"clientVersion": {"major": "1", "gitVersion": "%s", "platform": "linux/amd64"}}'
]]):format(version), EXEC)
  return path
end

local function edit(path, key, value)
  write_file(path, assert(yaml.edit(read_file(path), key, value)))
end

local function image_of(pod) return pod.spec.containers[1].image end

-- Every file under the folders (symlinks as their target's text) with its checksum.
local function checksums(paths)
  local list = {}
  for _, p in ipairs(paths) do
    for f in sh({ "find", p, "(", "-type", "f", "-o", "-type", "l", ")" }):gmatch("[^\n]+") do list[#list + 1] = f end
  end
  table.sort(list)
  local argv = { "sha256sum" }
  for _, f in ipairs(list) do argv[#argv + 1] = f end
  return sh(argv), #list
end

-- ---- the fixture: a simulator, a scratch tools dir made from the template ----

local root, saved

local function setenv(name, value)
  if saved[name] == nil then saved[name] = os.getenv(name) or false end
  if value then uv.os_setenv(name, value) else uv.os_unsetenv(name) end
end

local function environment()
  saved = {}
  root = assert(uv.fs_mkdtemp("/tmp/vq-gradlew-XXXXXX"))
  mkdir_p(root .. "/gradle-home")
  write_file(root .. "/gradle-home/gradle.properties", "username=operator\npassword=ghp_spec_token\n")
  setenv("GRADLE_USER_HOME", root .. "/gradle-home")
  setenv("JAVA_HOME", fake_jdk(root .. "/jdk8", "1.8.0_392"))
  setenv("VQ_GRADLEW_FAIL", nil)
  setenv("VQ_GRADLEW_KUBECTL", fake_kubectl(root .. "/kubectl", "v1.30.2"))
end

local function restore()
  for name, value in pairs(saved) do
    if value then uv.os_setenv(name, value) else uv.os_unsetenv(name) end
  end
  proc.run { "rm", "-rf", root }
end

local function task(copy, name, opts)
  opts = opts or {}
  return gradle.task(copy.dir, name, { cluster = opts.cluster or copy.cluster, quiet = true, timeout = 120 })
end

describe("the deployment tool's stand-in", function()
  local s, k, copy

  before_each(function()
    environment()
    s = sim_mod.start { speed = SPEED }
    assert(s:settle(60), "the simulator did not settle")
    local kc = s:write_kubeconfig(root .. "/kubeconfig")
    k = assert(kube.connect { kubeconfig = kc })
    copy = assert(tools.scratch_copy { dir = root, kubeconfig = kc })
  end)

  after_each(function()
    if s then s:stop() end
    restore()
  end)

  it("is a tools dir after setupCluster: a cluster branch, a clean repository, the simulator's kubeconfig", function()
    assert.equals("vqsim", copy.cluster)
    assert.equals("", sh({ "git", "status", "--porcelain" }, copy.dir .. "/targetCluster"))
    assert.equals("", sh({ "git", "status", "--porcelain" }, copy.dir))
    assert.matches("server: " .. s.url, read_file(copy.dir .. "/targetCluster/kubeconfig"), 1, true)
    local props = read_file(copy.dir .. "/targetCluster/cluster.properties")
    assert.matches("\nrequiredRemote=false\n", props, 1, true)
    assert.matches("\ndeployment=production\n", props, 1, true)
    -- the files secrets.yaml names hold what the cluster's Secrets hold
    local secret = assert(k:get("secrets", "vantiq-ssl-cert", { namespace = "vantiq" }))
    assert.equals(base64.decode(secret.data["tls.crt"]), read_file(copy.dir .. "/targetCluster/deploy/sensitive/cert.pem"))
  end)

  it("rolls the vantiq StatefulSet to deploy.yaml's tag and resets the replica counts to 3/1/2", function()
    for _, name in ipairs { "vantiq", "metrics-collector", "vision-analytics" } do
      assert(k:scale("sts/" .. name, 0, { namespace = "vantiq", wait = true, timeout = 60 }))
    end
    edit(copy.dir .. "/targetCluster/deploy.yaml", "vantiq.image.tag", "1.38.0")
    local r = assert(task(copy, "deployVantiq"))
    assert.is_true(r.ok, r.failure)
    assert.same({ ":deployVantiq" }, r.tasks)
    assert.matches("BUILD SUCCESSFUL", r.output)
    assert(k:rollout_status("sts/vantiq", { namespace = "vantiq", timeout = 120, on_progress = function() end }))
    local pods = assert(k:list("pods", { namespace = "vantiq", labels = "app=vantiq" }))
    assert.equals(3, #pods)
    for _, pod in ipairs(pods) do assert.equals("quay.io/vantiq/vantiq-server:1.38.0", image_of(pod)) end
    for name, want in pairs { vantiq = 3, ["metrics-collector"] = 1, ["vision-analytics"] = 2 } do
      assert.equals(want, (assert(k:get("sts", name, { namespace = "vantiq" })).spec.replicas))
    end
  end)

  it("undeployVantiq removes the vantiq StatefulSets, Services and Secrets but not MongoDB's claims", function()
    local r = assert(task(copy, "undeployVantiq"))
    assert.is_true(r.ok, r.failure)
    for _, ref in ipairs { "sts/vantiq", "sts/metrics-collector", "sts/vision-analytics", "svc/vantiq", "secret/vantiq-ssl-cert" } do
      local obj, err = k:get(ref, nil, { namespace = "vantiq" })
      assert.is_nil(obj, ref)
      assert.equals(404, err.code)
    end
    assert(k:get("pvc", "datadir-mongodb-0", { namespace = "vantiq" }))
    -- and deployVantiq brings the release back
    r = assert(task(copy, "deployVantiq"))
    assert.is_true(r.ok, r.failure)
    assert.equals(3, (assert(k:get("sts", "vantiq", { namespace = "vantiq" })).spec.replicas))
    assert(k:get("secret", "vantiq-ssl-cert", { namespace = "vantiq" }))
  end)

  it("generateSecrets updates vantiq-ssl-cert from new files in deploy/sensitive", function()
    local pki = require("spec.support.pki").new()
    pki:ca("root")
    pki:cert("leaf", { by = "root", cn = "vqsim.vantiq.example.com", san = "DNS:vqsim.vantiq.example.com" })
    local sensitive = copy.dir .. "/targetCluster/deploy/sensitive/"
    write_file(sensitive .. "cert.pem", pki:read("leaf.crt"))
    write_file(sensitive .. "key.pem", pki:read("leaf.key"))
    local r = assert(task(copy, "generateSecrets"))
    assert.is_true(r.ok, r.failure)
    assert.matches("secret/vantiq-ssl-cert (vantiq) configured", r.output, 1, true)
    local secret = assert(k:get("secrets", "vantiq-ssl-cert", { namespace = "vantiq" }))
    assert.equals(pki:read("leaf.crt"), base64.decode(secret.data["tls.crt"]))
    assert.equals(pki:read("leaf.key"), base64.decode(secret.data["tls.key"]))
    -- nginx's certificate is deployNginx's business
    local nginx = assert(k:get("secrets", "default-ssl-cert", { namespace = "shared" }))
    assert.are_not.equals(pki:read("leaf.crt"), base64.decode(nginx.data["tls.crt"]))
    pki:remove()
  end)

  it("fails a task on demand: BUILD FAILED with the message, and the result carries it", function()
    setenv("VQ_GRADLEW_FAIL", "deployVantiq:Could not pull quay.io/vantiq/vantiq-server:1.38.0")
    edit(copy.dir .. "/targetCluster/deploy.yaml", "vantiq.image.tag", "1.38.0")
    local r = assert(task(copy, "deploy"))
    assert.is_false(r.ok)
    assert.equals(1, r.code)
    assert.matches("BUILD FAILED in", r.output, 1, true)
    assert.matches("Execution failed for task ':deployVantiq'.", r.failure, 1, true)
    assert.matches("Could not pull quay.io/vantiq/vantiq-server:1.38.0", r.failure, 1, true)
    assert.same({ ":deployNginx", ":deployShared", ":deployVantiq" }, r.tasks)
    local sts = assert(k:get("sts", "vantiq", { namespace = "vantiq" }))
    assert.equals("quay.io/vantiq/vantiq-server:1.37.2", sts.spec.template.spec.containers[1].image)
    -- a file in the tools dir fails a task once
    setenv("VQ_GRADLEW_FAIL", nil)
    write_file(copy.dir .. "/.gradle/fail-once-deployShared", "keycloak: timed out waiting for the condition\n")
    r = assert(task(copy, "deploy"))
    assert.is_false(r.ok)
    assert.matches("keycloak: timed out waiting for the condition", r.failure, 1, true)
    r = assert(task(copy, "deploy"))
    assert.is_true(r.ok, r.failure)
  end)

  it("clusterInfo prints the client and server versions, and fails on a skew or a broken kubeconfig", function()
    local r = assert(task(copy, "clusterInfo"))
    assert.is_true(r.ok, r.failure)
    assert.matches("Client Version: v1.30.2", r.output, 1, true)
    assert.matches("Server Version: " .. s.version, r.output, 1, true)
    setenv("VQ_GRADLEW_KUBECTL", fake_kubectl(root .. "/kubectl-new", "v1.33.1"))
    r = assert(task(copy, "clusterInfo"))
    assert.is_false(r.ok)
    assert.matches("more than one minor version apart", r.failure, 1, true)
    os.remove(copy.dir .. "/targetCluster/kubeconfig")
    r = assert(task(copy, "clusterInfo"))
    assert.is_false(r.ok)
    assert.matches("targetCluster/kubeconfig not found", r.failure, 1, true)
  end)

  it("refuses a cluster that is not targetCluster's branch, as a configuration error", function()
    local r = assert(task(copy, "deployVantiq", { cluster = "other" }))
    assert.is_false(r.ok)
    assert.matches("targetCluster is on branch 'vqsim'", r.failure, 1, true)
    assert.same({}, r.tasks)
  end)
end)

describe("configureClient and configureVantiqSystem", function()
  local dir

  before_each(function()
    environment()
    dir = root .. "/k8sdeploy_tools"
    mkdir_p(dir)
    tools.install_gradlew(dir)
  end)

  after_each(restore)

  it("create targetCluster with only cluster.properties and deploy.yaml, and vantiqSystem", function()
    local r = assert(gradle.task(dir, { "configureClient", "configureVantiqSystem" }, { quiet = true }))
    assert.is_true(r.ok, r.failure)
    assert.same({ ":configureClient", ":configureVantiqSystem" }, r.tasks)
    assert.is_truthy(uv.fs_stat(dir .. "/.gradle/helm/repositories.yaml"))
    local names = sh { "ls", "-A", dir .. "/targetCluster" }
    assert.equals(".git\ncluster.properties\ndeploy.yaml\n", names)
    assert.equals("directory", uv.fs_stat(dir .. "/vantiqSystem").type)
    local props = read_file(dir .. "/targetCluster/cluster.properties")
    assert.matches("\n#requiredRemote=false\n", props, 1, true)
    assert.matches("トリプルクラスタ構成", props, 1, true)
    assert.equals("1.37.2", yaml.get(read_file(dir .. "/targetCluster/deploy.yaml"), "vantiq.image.tag"))
    -- the guide checks they do not exist beforehand: a second run fails
    r = assert(gradle.task(dir, "configureVantiqSystem", { quiet = true }))
    assert.is_false(r.ok)
    assert.matches("targetCluster already exists", r.failure, 1, true)
  end)

  it("fail without the repository credentials, like the real build", function()
    local r = run.run { dir .. "/gradlew", "configureClient", env = { GRADLE_USER_HOME = root .. "/empty", HOME = root } }
    assert.equals(1, r.status)
    assert.matches("Could not get unknown property 'username'", r.stderr, 1, true)
    assert.matches("BUILD FAILED", r.stderr, 1, true)
    assert.is_nil(uv.fs_stat(dir .. "/.gradle"))
  end)
end)

describe("a rehearsal's scratch copy", function()
  before_each(environment)
  after_each(restore)

  -- The operator's tools dir: a copy made from the template, with its own "remote" and a
  -- symlink to a file outside it.
  local function operators_tools_dir()
    local s = sim_mod.start { speed = SPEED, modules = { "sim.auth", "sim.core", "sim.world" } }
    local kc = s:write_kubeconfig(root .. "/op-kubeconfig")
    mkdir_p(root .. "/operator")
    local original = assert(tools.scratch_copy { dir = root .. "/operator", kubeconfig = kc })
    s:stop()
    write_file(root .. "/outside.txt", "the operator's own file\n")
    assert(uv.fs_symlink(root .. "/outside.txt", original.dir .. "/targetCluster/notes.txt"))
    return original
  end

  it("leaves the original tools dir untouched by a rehearsal that runs deployVantiq", function()
    local original = operators_tools_dir()
    local before, n = checksums { root .. "/operator", root .. "/outside.txt" }
    assert.is_true(n > 20)
    local script = root .. "/runbook.lua"
    write_file(script, [[
local gradle = require "vq.gradle"
local yaml = require "vq.yaml"
local proc = require "vq.proc"
local dir = arg[2]
assert(dir == os.getenv("VQ_TOOLS_DIR"), "the argument and VQ_TOOLS_DIR name the copy")
local target = dir .. "/targetCluster"
local function git(...) local r = proc.run { "git", "-C", target, ... } assert(r.code == 0, r.stderr) return r.stdout end
local f = io.open(target .. "/deploy.yaml") local text = f:read("a") f:close()
f = io.open(target .. "/deploy.yaml", "w") f:write(assert(yaml.edit(text, "vantiq.image.tag", "1.38.0"))) f:close()
f = io.open(target .. "/notes.txt", "w") f:write("changed in the rehearsal\n") f:close()
git("commit", "-qam", "vantiq 1.38.0")
git("push", "-q")
local r = assert(gradle.task(dir, "deployVantiq", { cluster = "vqsim", quiet = true }))
assert(r.ok, r.failure)
print("COPY " .. dir)
]])
    local r = run.vq { "--rehearse", script, "--tools", original.dir, timeout = 120,
      env = { GRADLE_USER_HOME = root .. "/gradle-home", JAVA_HOME = root .. "/jdk8", VQ_SIM_SPEED = tostring(SPEED),
              TMPDIR = root, VQLUA = os.getenv("VQLUA") or "" } }
    assert.equals(0, r.status, r.stdout .. r.stderr)
    local copy_dir = r.stdout:match("COPY (%S+)")
    assert.is_truthy(copy_dir)
    assert.are_not.equals(original.dir, copy_dir)
    assert.equals("1.38.0", yaml.get(read_file(copy_dir .. "/targetCluster/deploy.yaml"), "vantiq.image.tag"))
    assert.matches("scratch copy of " .. original.dir, r.stderr, 1, true)
    assert.equals(before, (checksums { root .. "/operator", root .. "/outside.txt" }))
  end)
end)
