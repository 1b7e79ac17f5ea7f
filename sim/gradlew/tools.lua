-- Tools dirs for rehearsals and specs: the deployment tool's stand-in installed as a tools
-- dir's ./gradlew, and the scratch copy a rehearsal works in, so that it changes nothing
-- outside the copy.
--
--   tools.scratch_copy{from = <tools dir, or nil for the template>, dir = <scratch folder>,
--                      kubeconfig = <the simulator's>, cluster = <branch, for the template>}
--     -> {dir =, from =, cluster =, remotes =, links = {...}} | nil, err
--   tools.rehearsal_copy(arg, dir, kubeconfig) -> copy | nil (no tools dir asked for) | nil, err
--   tools.install_gradlew(dir)
local uv = require "luv"
local vq = require "vq"
local kube = require "vq.kube"
local yaml = require "vq.yaml"
local properties = require "vq.properties"
local base64 = require "vq.base64"
local files = require "sim.gradlew.files"
local config = require "sim.gradlew.config"
local runner = require "sim.gradlew.runner"

local M = {}

local source = debug.getinfo(1, "S").source:gsub("^@", "")
M.HOME = (files.real(source) or source):match("^(.*)/[^/]*$")
M.TEMPLATE = M.HOME .. "/template"

local EXEC = tonumber("755", 8)

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

--- Make dir/gradlew the stand-in, with the absolute paths it needs from anywhere.
function M.install_gradlew(dir)
  local text = assert(files.read(M.HOME .. "/gradlew"))
  text = text:gsub('VQ_GRADLEW_VQLUA=""', function() return "VQ_GRADLEW_VQLUA=" .. shell_quote(uv.exepath()) end, 1)
  text = text:gsub('VQ_GRADLEW_LUA=""', function() return "VQ_GRADLEW_LUA=" .. shell_quote(M.HOME .. "/gradlew.lua") end, 1)
  files.write(dir .. "/gradlew", text, EXEC)
end

-- ---- the template, filled in as an operator would for the simulated cluster ----

local function gradle(tools, args)
  local out = {}
  local code = runner.run { dir = tools, args = args, template = M.TEMPLATE, write = function(t) out[#out + 1] = t end }
  if code ~= 0 then error("the template's " .. table.concat(args, " ") .. " failed:\n" .. table.concat(out), 0) end
end

local function env_of(sts, name)
  for _, c in ipairs(sts and sts.spec.template.spec.containers or {}) do
    for _, e in ipairs(c.env or {}) do
      if e.name == name then return e.value end
    end
  end
end

local function provider_of(k)
  local nodes = k:list("nodes") or {}
  local labels = nodes[1] and nodes[1].metadata.labels or {}
  if labels["eks.amazonaws.com/nodegroup"] then return "aws" end
  if labels["kubernetes.azure.com/agentpool"] then return "azure" end
  return "kubeadm"
end

-- What the live cluster says about the installation.
local function survey(k)
  local ns = require("sim.gradlew.cluster").vantiq_namespace(k, {}, config.DEFAULT_NAMESPACE)
  local vantiq = k:get("statefulsets", "vantiq", { namespace = ns })
  local mongodb = k:get("statefulsets", "mongodb", { namespace = ns })
  local keycloak = k:get("statefulsets", "keycloak", { namespace = config.SHARED_NAMESPACE })
  local backup = k:get("cronjobs", "mongobackup", { namespace = ns })
  local size = (mongodb or vantiq or { spec = {} }).spec.replicas or 1
  local image = vantiq and vantiq.spec.template.spec.containers[1].image
  return {
    namespace = ns, installation = env_of(vantiq, "VANTIQ_INSTALLATION") or "vqsim",
    deployment = size >= 3 and "production" or "development", provider = provider_of(k),
    tag = image and image:match(":([^:/]+)$"),
    bucket = backup and env_of({ spec = { template = backup.spec.jobTemplate.spec.template } }, "BUCKET"),
    db_host = env_of(keycloak, "DB_ADDR"), db_user = env_of(keycloak, "DB_USER"),
  }
end

local function edit_file(path, fn)
  local text = assert(files.read(path))
  files.write(path, assert(fn(text)))
end

local function fill_cluster_properties(target, s)
  edit_file(target .. "/cluster.properties", function(text)
    text = assert(properties.uncomment(text, "requiredRemote"))
    for key, value in pairs { provider = s.provider, deployment = s.deployment, ["vantiq.installation"] = s.installation } do
      text = assert(properties.set(text, key, value))
    end
    if s.namespace ~= config.DEFAULT_NAMESPACE then text = assert(properties.set(text, "vantiq.namespace", s.namespace)) end
    return text
  end)
end

local function fill_deploy_yaml(target, s)
  edit_file(target .. "/deploy.yaml", function(text)
    for path, value in pairs { ["vantiq.image.tag"] = s.tag, ["vantiq.mongodb.backup.bucket"] = s.bucket,
                               ["keycloak.keycloak.persistence.dbHost"] = s.db_host,
                               ["keycloak.keycloak.persistence.dbUser"] = s.db_user } do
      if value then text = assert(yaml.edit(text, path, value)) end
    end
    return text
  end)
end

-- secrets.yaml's values and deploy/sensitive's files: what the cluster's Secrets hold.
local function fill_secrets(k, target, ns)
  local path = target .. "/secrets.yaml"
  local text = assert(files.read(path))
  local doc = assert(config.secrets_yaml(target))
  for group, entries in pairs(doc) do
    for name, entry in pairs(type(entries) == "table" and entries or {}) do
      local secret = k:get("secrets", name, { namespace = config.namespace_of(group, ns) })
      local data = secret and secret.data or {}
      for key in pairs(type(entry.data) == "table" and entry.data or {}) do
        if data[key] then text = assert(yaml.edit(text, { group, name, "data", key }, base64.decode(data[key]))) end
      end
      for key, rel in pairs(type(entry.files) == "table" and entry.files or {}) do
        if data[key] then files.write(target .. "/" .. tostring(rel), base64.decode(data[key]), tonumber("600", 8)) end
      end
    end
  end
  files.write(path, text)
end

local function from_template(tools, kubeconfig, cluster)
  assert(files.copy_tree(M.TEMPLATE, tools))
  assert(files.run { "rm", "-rf", tools .. "/targetCluster", tools .. "/vantiqSystem" })
  assert(os.rename(tools .. "/gitignore", tools .. "/.gitignore"))
  gradle(tools, { "configureClient", "configureVantiqSystem" })
  local k = assert(kube.connect { kubeconfig = kubeconfig })
  local s = survey(k)
  local target = tools .. "/targetCluster"
  cluster = cluster or s.installation
  fill_cluster_properties(target, s)
  fill_deploy_yaml(target, s)
  assert(files.git(target, { "checkout", "-q", "-b", cluster }))
  gradle(tools, { "-Pcluster=" .. cluster, "setupCluster" })
  fill_secrets(k, target, s.namespace)
  assert(files.git(target, { "add", "-A" }))
  assert(files.git(target, { "commit", "-q", "-m", "Cluster " .. cluster }))
end

-- ---- the copy ----

-- A symlink leading out of the copy becomes a copy of what it points to: writing through
-- it would change the operator's files.
local function detach_links(tools)
  local root = files.real(tools)
  local out = assert(files.run { "find", tools, "-type", "l" })
  local detached = {}
  for link in out:gmatch("[^\n]+") do
    local real = files.real(link)
    if real and real ~= root and real:sub(1, #root + 1) ~= root .. "/" then
      os.remove(link)
      assert(files.run { "cp", "-RL", real, link })
      detached[#detached + 1] = link:sub(#tools + 2) .. " -> " .. real
    end
  end
  return detached
end

-- The rehearsal's own change to a repository (gradlew, kubeconfig) is not the runbook's:
-- git status stays as the operator left it.
local function hide_change(repo, rel)
  if files.git(repo, { "ls-files", "--error-unmatch", rel }) then
    assert(files.git(repo, { "update-index", "--skip-worktree", rel }))
  else
    local exclude = repo .. "/.git/info/exclude"
    files.write(exclude, (files.read(exclude) or "") .. "/" .. rel .. "\n")
  end
end

local function lines(text)
  local out = {}
  for l in (text or ""):gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end

local function trim(s) return (s or ""):match("^%s*(.-)%s*$") end

-- A repository whose git dir is elsewhere (a worktree, an absorbed submodule) would be
-- changed through the copy.
local function check_inside(repo, root)
  local git_dir = trim(files.git(repo, { "rev-parse", "--absolute-git-dir" }))
  local real = files.real(git_dir) or git_dir
  if real:sub(1, #root + 1) ~= root .. "/" then
    error(("%s keeps its repository at %s, outside the tools dir: a rehearsal cannot copy it"):format(repo, git_dir), 0)
  end
end

-- The bare stand-in for a remote starts as the copy last saw the real one (its
-- remote-tracking branches), plus the local branches it lacks: "behind by 2" stays true.
local function seed_bare(repo, name, bare)
  assert(files.run { "git", "init", "-q", "--bare", bare })
  for ref in files.git(repo, { "for-each-ref", "--format=%(refname)", "refs/remotes/" .. name .. "/" }):gmatch("[^\n]+") do
    local branch = ref:sub(#("refs/remotes/" .. name .. "/") + 1)
    if branch ~= "HEAD" then files.git(repo, { "push", "-q", "--no-verify", bare, ref .. ":refs/heads/" .. branch }) end
  end
  for ref in files.git(repo, { "for-each-ref", "--format=%(refname)", "refs/heads/" }):gmatch("[^\n]+") do
    -- refused when the remote's branch has moved on: the remote's state wins, as it should
    files.git(repo, { "push", "-q", "--no-verify", bare, ref .. ":" .. ref })
  end
end

-- Every remote of the copy becomes a bare repository in the scratch folder: pushes and
-- pulls stay inside.
local function isolate_remotes(repo, base)
  local remotes = lines(files.git(repo, { "remote" }))
  if #remotes == 0 then remotes = { "origin" } end
  for _, name in ipairs(remotes) do
    local bare = ("%s-%s.git"):format(base, name)
    seed_bare(repo, name, bare)
    if not files.git(repo, { "remote", "set-url", name, bare }) then assert(files.git(repo, { "remote", "add", name, bare })) end
    assert(files.git(repo, { "remote", "set-url", "--push", name, bare }))
    assert(files.git(repo, { "fetch", "-q", "--prune", name }))
  end
  local branch = files.branch(repo)
  if branch and not files.git(repo, { "config", "branch." .. branch .. ".remote" })
     and files.git(repo, { "rev-parse", "-q", "--verify", "refs/remotes/" .. remotes[1] .. "/" .. branch }) then
    assert(files.git(repo, { "branch", "-q", "--set-upstream-to=" .. remotes[1] .. "/" .. branch, branch }))
  end
end

local function ensure_repo(repo, branch)
  if files.is_repo(repo) then return end
  assert(files.git(repo, { "init", "-q" }))
  assert(files.git(repo, { "symbolic-ref", "HEAD", "refs/heads/" .. branch }))
  assert(files.git(repo, { "add", "-A" }))
  assert(files.git(repo, { "commit", "-q", "--allow-empty", "-m", "Rehearsal copy" }))
end

local function cluster_name(target, given)
  if given then return given end
  local props = config.cluster_properties(target) or {}
  local installation = props["vantiq.installation"]
  return installation ~= nil and installation ~= "" and installation or "vqsim"
end

local function make_copy(opts)
  local tools = opts.dir .. "/tools"
  if files.exists(tools) then error(tools .. " already exists", 0) end
  local copy = { dir = tools, remotes = opts.dir .. "/remotes", links = {} }
  if opts.from then
    copy.from = files.real(opts.from)
    if not copy.from or not files.is_dir(copy.from) then error("no tools dir at " .. opts.from, 0) end
    assert(files.copy_tree(copy.from, tools))
    copy.links = detach_links(tools)
  else
    from_template(tools, opts.kubeconfig, opts.cluster)
  end
  local target = tools .. "/targetCluster"
  M.install_gradlew(tools)
  ensure_repo(tools, "master")
  local root = files.real(tools)
  check_inside(tools, root)
  hide_change(tools, "gradlew")
  isolate_remotes(tools, copy.remotes .. "/tools")
  if files.is_dir(target) then
    ensure_repo(target, cluster_name(target, opts.cluster))
    check_inside(target, root)
    files.write(target .. "/kubeconfig", assert(files.read(opts.kubeconfig)), tonumber("600", 8))
    hide_change(target, "kubeconfig")
    isolate_remotes(target, copy.remotes .. "/targetCluster")
    copy.cluster = files.branch(target)
  end
  return copy
end

function M.scratch_copy(opts)
  assert(opts and opts.dir and opts.kubeconfig, "scratch_copy needs dir and kubeconfig")
  local ok, copy = pcall(make_copy, opts)
  if not ok then return nil, vq.error("scratch_copy", "cannot make the tools dir's scratch copy: " .. tostring(copy)) end
  return copy
end

-- ---- rehearsals ----

-- --tools DIR or --tools=DIR among the runbook's arguments: value, index, prefix.
local function tools_arg(arg)
  for i = 1, #arg do
    if arg[i] == "--tools" and arg[i + 1] then return arg[i + 1], i + 1, "" end
    local v = arg[i]:match("^%-%-tools=(.*)$")
    if v then return v, i, "--tools=" end
  end
end

--- The tools dir a rehearsal's runbook is given (VQ_TOOLS_DIR or --tools; "template" or
--- empty: the template) becomes a scratch copy in dir: VQ_TOOLS_DIR and the argument then
--- name the copy. nil when no tools dir was asked for.
function M.rehearsal_copy(arg, dir, kubeconfig)
  local given, index, prefix = tools_arg(arg)
  given = given or os.getenv("VQ_TOOLS_DIR")
  if not given then return nil end
  local from = given
  if given == "" or (given == "template" and not files.is_dir(given)) then from = nil end
  local copy, err = M.scratch_copy { from = from, dir = dir, kubeconfig = kubeconfig }
  if not copy then return nil, err end
  uv.os_setenv("VQ_TOOLS_DIR", copy.dir)
  if index then arg[index] = prefix .. copy.dir end
  return copy
end

return M
