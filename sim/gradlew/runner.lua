-- The stand-in's Gradle: the command line (-Pkey=value, tasks), the configuration checks
-- the real build makes before any task (credentials, -Pcluster, the cluster's branch),
-- tasks run in dependency order with Gradle's console output, and injected failures.
--
--   runner.run{dir =, args = {...}, write = function(text, stream), template =} -> exit code
--
-- A failure is injected with VQ_GRADLEW_FAIL=<task>[:message], or a file in the tools dir
-- .gradle/fail-<task> (its text is the message) or .gradle/fail-once-<task> (removed when
-- it fires): the task fails before doing anything.
local uv = require "luv"
local vq = require "vq"
local kube = require "vq.kube"
local files = require "sim.gradlew.files"
local config = require "sim.gradlew.config"
local cluster = require "sim.gradlew.cluster"
local tasks = require "sim.gradlew.tasks"

local M = {}

M.PROJECT = "k8sdeploy_tools"

local IGNORED = { "--stacktrace", "-s", "--full-stacktrace", "-S", "--info", "-i", "--debug", "-d", "-q", "--quiet",
                  "--no-daemon", "--daemon", "--offline", "--scan", "--no-scan", "--parallel", "--build-cache",
                  "--no-build-cache", "-w", "--warn" }
local IGNORED_SET = {}
for _, o in ipairs(IGNORED) do IGNORED_SET[o] = true end

-- ---- the command line ----

local function parse(args)
  local c = { props = {}, tasks = {} }
  local i = 1
  while i <= #args do
    local a = args[i]
    local kv = a:match("^%-P(.+)$") or a:match("^%-%-project%-prop=(.+)$")
    if (a == "-P" or a == "--project-prop") and args[i + 1] then
      i = i + 1
      kv = args[i]
    end
    if kv then
      local k, v = kv:match("^([^=]+)=(.*)$")
      c.props[k or kv] = v or ""
    elseif a == "-p" or a == "--project-dir" then
      i = i + 1
      c.dir = args[i]
    elseif a:match("^%-D") or a:match("^%-%-console=") or a:match("^%-%-warning%-mode=") or IGNORED_SET[a] then
      -- options that change nothing the stand-in does
    elseif a:match("^%-") then
      c.bad_option = a
    else
      c.tasks[#c.tasks + 1] = a
    end
    i = i + 1
  end
  return c
end

-- ---- credentials, as Gradle finds project properties ----

local function read_props(path)
  local text = files.read(path)
  if not text then return {} end
  return require("vq.properties").parse(text) or {}
end

local function credentials(dir, props)
  local user_home = os.getenv("GRADLE_USER_HOME")
  if not user_home or user_home == "" then user_home = (os.getenv("HOME") or "") .. "/.gradle" end
  -- the guide keeps them in the tools dir's .gradle/gradle.properties: accepted too
  local sources = { props, { username = os.getenv("ORG_GRADLE_PROJECT_username"), password = os.getenv("ORG_GRADLE_PROJECT_password") },
                    read_props(user_home .. "/gradle.properties"), read_props(dir .. "/gradle.properties"),
                    read_props(dir .. "/.gradle/gradle.properties") }
  for _, s in ipairs(sources) do
    if (s.username or "") ~= "" and (s.password or "") ~= "" then return { username = s.username } end
  end
end

-- ---- the context a task runs with ----

local Ctx = {}
Ctx.__index = Ctx

function Ctx:say(line) self.lines[#self.lines + 1] = line end

function Ctx:client()
  if self.kube then return self.kube end
  local path = self.target .. "/kubeconfig"
  if not files.exists(path) then
    return nil, "targetCluster/kubeconfig not found: copy ~/.kube/config there as kubeconfig"
  end
  local k, err = kube.connect { kubeconfig = path }
  if not k then return nil, "targetCluster/kubeconfig: " .. err.message end
  self.kube = k
  return k
end

function Ctx:cluster_properties()
  if not self.cluster_props then
    local props, err = config.cluster_properties(self.target)
    if not props then return nil, err end
    self.cluster_props = props
  end
  return self.cluster_props
end

function Ctx:deploy_yaml() return config.deploy_yaml(self.target) end

function Ctx:vantiq_namespace()
  if not self.namespace then
    self.namespace = cluster.vantiq_namespace(assert(self:client()), self:cluster_properties() or {}, config.DEFAULT_NAMESPACE)
  end
  return self.namespace
end

-- The installation's host name, as its ingresses serve it.
local function domain(k)
  local ing = k:get("ingresses", "keycloak", { namespace = config.SHARED_NAMESPACE })
  local rule = ing and ing.spec and ing.spec.rules and ing.spec.rules[1]
  return rule and rule.host
end

--- The charts rendered for this cluster's settings (once per run).
function Ctx:chart()
  if self.rendered then return self.rendered end
  local props = self:cluster_properties() or {}
  local deploy = self:deploy_yaml() or {}
  local installation = props["vantiq.installation"]
  self.rendered = require("sim.gradlew.chart").render {
    namespace = self:vantiq_namespace(), tag = config.image_tag(deploy) or nil,
    installation = installation ~= "" and installation or nil, deployment = config.deployment(props) or "production",
    provider = props.provider, domain = domain(assert(self:client())),
  }
  return self.rendered
end

-- ---- output ----

local function duration(seconds)
  if seconds < 1 then return ("%dms"):format(math.floor(seconds * 1000)) end
  if seconds < 60 then return ("%ds"):format(math.floor(seconds)) end
  return ("%dm %ds"):format(math.floor(seconds / 60), math.floor(seconds % 60))
end

local function failure_text(what, message, try)
  local lines = { "", "FAILURE: Build failed with an exception.", "", "* What went wrong:", what }
  local first = true
  for line in ((message or "") .. "\n"):gmatch("([^\n]*)\n") do
    if message then lines[#lines + 1] = (first and "> " or "  ") .. line end
    first = false
  end
  lines[#lines + 1] = ""
  lines[#lines + 1] = "* Try:"
  if try then lines[#lines + 1] = "> " .. try end
  for _, l in ipairs { "> Run with --stacktrace option to get the stack trace.",
                       "> Run with --info or --debug option to get more log output.", "> Run with --scan to get full insights.",
                       "", "* Get more help at https://help.gradle.org", "" } do
    lines[#lines + 1] = l
  end
  return table.concat(lines, "\n")
end

-- ---- failures ----

local function injected(dir, task)
  local spec = os.getenv("VQ_GRADLEW_FAIL")
  if spec and spec ~= "" then
    local name, message = spec:match("^([^:]+):?(.*)$")
    if name == task then return message ~= "" and message or "injected failure (VQ_GRADLEW_FAIL)" end
  end
  for _, file in ipairs { "fail-" .. task, "fail-once-" .. task } do
    local path = dir .. "/.gradle/" .. file
    local text = files.read(path)
    if text then
      if file:match("^fail%-once") then os.remove(path) end
      text = text:gsub("^%s+", ""):gsub("%s+$", "")
      return text ~= "" and text or ("injected failure (.gradle/" .. file .. ")")
    end
  end
end

-- What the build's configuration refuses before any task runs, or nil.
local function configuration_error(c, dir, plan)
  if c.bad_option then return ("Unknown command-line option '%s'."):format(c.bad_option) end
  local evaluating = ("A problem occurred evaluating root project '%s'."):format(M.PROJECT)
  local function unknown(prop)
    return ("Could not get unknown property '%s' for root project '%s' of type org.gradle.api.Project."):format(prop, M.PROJECT)
  end
  if not credentials(dir, c.props) then return evaluating, unknown("username") end
  local needs_cluster = false
  for _, t in ipairs(plan) do needs_cluster = needs_cluster or t.cluster end
  if not needs_cluster then return nil end
  if not c.props.cluster or c.props.cluster == "" then return evaluating, unknown("cluster") end
  local target = dir .. "/targetCluster"
  if not files.is_dir(target) then return evaluating, "targetCluster does not exist: run configureVantiqSystem first" end
  local branch = files.is_repo(target) and files.branch(target)
  if branch and branch ~= c.props.cluster then
    return evaluating, ("targetCluster is on branch '%s', not on the branch of cluster '%s' (git checkout %s)")
      :format(branch, c.props.cluster, c.props.cluster)
  end
end

-- ---- running ----

local function run_task(ctx, t)
  ctx.lines = {}
  local message = injected(ctx.dir, t.name)
  if not message then
    local ok, r, err = pcall(t.run, ctx)
    if not ok then message = tostring(r)
    elseif not r then message = err or "failed" end
  end
  return message == nil, message
end

--- Run the command line in the tools dir; returns the exit code (0, or 1 for a failed build).
function M.run(opts)
  local started = vq.now()
  local write = opts.write or function(text, stream) (stream == "stderr" and io.stderr or io.stdout):write(text) end
  local function out(line) write(line .. "\n", "stdout") end
  local function failed(what, message, try)
    write(failure_text(what, message, try) .. "\nBUILD FAILED in " .. duration(vq.now() - started) .. "\n", "stderr")
    return 1
  end
  local c = parse(opts.args or {})
  local dir = c.dir or opts.dir or uv.cwd()
  if #c.tasks == 0 then c.tasks = { "tasks" } end
  local plan, unknown = tasks.plan(c.tasks)
  if not plan then
    return failed(("Task '%s' not found in root project '%s'."):format(unknown, M.PROJECT), nil,
      "Run gradlew tasks to get a list of available tasks.")
  end
  local what, message = configuration_error(c, dir, plan)
  if what then return failed(what, message) end
  local ctx = setmetatable({ dir = dir, target = dir .. "/targetCluster", props = c.props, cluster = c.props.cluster,
                             template = opts.template, credentials = credentials(dir, c.props) }, Ctx)
  for _, t in ipairs(plan) do
    local ok, msg = run_task(ctx, t)
    out("") out("> Task :" .. t.name .. (ok and "" or " FAILED"))
    for _, l in ipairs(ctx.lines) do out(l) end
    if not ok then return failed(("Execution failed for task ':%s'."):format(t.name), msg) end
  end
  out("")
  out("BUILD SUCCESSFUL in " .. duration(vq.now() - started))
  out(("%d actionable task%s: %d executed"):format(#plan, #plan == 1 and "" or "s", #plan))
  return 0
end

return M
