-- vq.gradle: the deployment tool's ./gradlew tasks, as the operators' guide runs them:
-- in the tools dir, with the repository credentials of a gradle.properties, on Java 8.
--
--   gradle.task(dir, task, {cluster=, props=, java_home=, on_line=, timeout=, quiet=})
--     -> {ok=, code=, duration=, tasks={":x", ...}, failure=, output=, credentials=,
--         java_home=} | nil, err
--   gradle.java8{java_home=, jvm_root=} -> {home=, java=, version=, source=} | nil, err
--   gradle.credentials(dir) -> {path=, ...} | nil, err
--
-- A build that fails is a result (ok = false, failure = Gradle's "What went wrong"); what
-- keeps the build from starting (no tools dir, no gradlew, no credentials, no Java 8) is
-- nil, err with a code: tools_dir, gradlew_missing, gradlew_not_executable, credentials,
-- java8.
local proc = require "vq.proc"
local vq = require "vq"
local log = require "log"
local uv = require "luv"

local M = {}

M.DEFAULT_MAX_OUTPUT = 1024 * 1024

local function fail(code, message, details) return nil, vq.error(code, message, details) end

local function file_type(path)
  local st = uv.fs_stat(path)
  return st and st.type
end

local function is_executable(path) return uv.fs_access(path, "X") == true end

local function dirname(path) return path:match("^(.*)/[^/]*$") or "." end

-- ---- gradle.properties ----

local escapes = { t = "\t", n = "\n", r = "\r", f = "\f" }

local function unescape(s)
  if not s:find("\\", 1, true) then return s end
  local out, i = {}, 1
  while i <= #s do
    local c = s:sub(i, i)
    if c ~= "\\" then
      out[#out + 1] = c
      i = i + 1
    else
      local e = s:sub(i + 1, i + 1)
      local hex = e == "u" and s:match("^%x%x%x%x", i + 2)
      if hex then
        out[#out + 1] = utf8.char(tonumber(hex, 16))
        i = i + 6
      else
        out[#out + 1] = escapes[e] or e
        i = i + 2
      end
    end
  end
  return table.concat(out)
end

-- Logical lines of a .properties file: comments dropped, continuations (a line ending in
-- an odd number of backslashes) joined.
local function logical_lines(text)
  local lines, pending = {}, nil
  for raw in (text .. "\n"):gmatch("([^\n]*)\n") do
    local line = raw:gsub("\r$", ""):gsub("^%s+", "")
    if pending then
      line = pending .. line
    elseif line == "" or line:match("^[#!]") then
      line = nil
    end
    pending = nil
    if line and #line:match("\\*$") % 2 == 1 then
      pending = line:sub(1, -2)
    elseif line then
      lines[#lines + 1] = line
    end
  end
  if pending then lines[#lines + 1] = pending end
  return lines
end

-- key = value, key: value or key value; the key ends at the first unescaped separator.
local function split_property(line)
  local i = 1
  while i <= #line do
    local c = line:sub(i, i)
    if c == "\\" then
      i = i + 2
    elseif c:match("[=:%s]") then
      break
    else
      i = i + 1
    end
  end
  local rest = line:sub(i):gsub("^%s*", "", 1):gsub("^[=:]", "", 1):gsub("^%s*", "", 1)
  return unescape(line:sub(1, i - 1)), unescape(rest)
end

-- The properties of a Java .properties file, or nil when it cannot be read. Enough for
-- gradle.properties (cluster.properties has a parser of its own).
local function read_properties(path)
  local f = io.open(path, "r")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  local props = {}
  for _, line in ipairs(logical_lines(text)) do
    local key, value = split_property(line)
    props[key] = value
  end
  return props
end


local function home_dir() return os.getenv("HOME") or uv.os_homedir() end

-- Where the credentials may be, in Gradle's order of precedence. `gradle_reads` says
-- whether Gradle reads that file by itself; the tools dir's .gradle/gradle.properties
-- (where the operators' guide puts them) it does not, so its values are handed to
-- Gradle as ORG_GRADLE_PROJECT_* environment variables.
local function credential_files(dir)
  local user_home = os.getenv("GRADLE_USER_HOME")
  if not user_home or user_home == "" then user_home = home_dir() .. "/.gradle" end
  return {
    { path = user_home .. "/gradle.properties", gradle_reads = true },
    { path = dir .. "/.gradle/gradle.properties", gradle_reads = false },
    { path = dir .. "/gradle.properties", gradle_reads = true },
  }
end

--- The gradle.properties holding the repository credentials (username and password),
--- their values registered with log.secret. Returns {path=, env=} (env: what to add to
--- gradlew's environment), or nil, err "credentials" naming where it looked.
function M.credentials(dir)
  local searched, incomplete = {}, {}
  for _, c in ipairs(credential_files(dir)) do
    searched[#searched + 1] = c.path
    local props = read_properties(c.path)
    if props and (props.username or props.password) then
      if (props.username or "") ~= "" and (props.password or "") ~= "" then
        log.secret(props.username)
        log.secret(props.password)
        local env
        if not c.gradle_reads then
          env = { ORG_GRADLE_PROJECT_username = props.username,
                  ORG_GRADLE_PROJECT_password = props.password }
        end
        return { path = c.path, env = env }
      end
      incomplete[#incomplete + 1] = c.path
    end
  end
  local message = "no gradle.properties holds the repository credentials (username and " ..
    "password): looked in " .. table.concat(searched, ", ")
  if #incomplete > 0 then
    message = message .. "; incomplete in " .. table.concat(incomplete, ", ")
  end
  return fail("credentials", message, { searched = searched, incomplete = incomplete })
end

-- ---- Java 8 ----

--- The version `java -version` prints ("1.8.0_392", "17.0.2"), and its whole text.
function M.java_version(java)
  local r, err = proc.run { java, "-version", timeout = 60 }
  if not r then return nil, err end
  local text = r.stderr .. r.stdout
  return text:match('version "([^"]+)"'), text
end

local function is_java8(version)
  return version ~= nil and version:match("^1%.8%f[^%d]") ~= nil
end

local function jvm_dirs(root)
  local list = {}
  local req = uv.fs_scandir(root)
  while req do
    local name, kind = uv.fs_scandir_next(req)
    if not name then break end
    local path = root .. "/" .. name
    if kind == "directory" or (kind == "link" and file_type(path) == "directory") then
      list[#list + 1] = path
    end
  end
  table.sort(list)
  return list
end

-- JDK homes to try, first the chosen one: the option, JAVA_HOME, the java in PATH, then
-- every JDK installed under jvm_root.
local function java_candidates(opts)
  local list = {}
  local function add(home, source)
    if home and home ~= "" then list[#list + 1] = { home = home:gsub("/+$", ""), source = source } end
  end
  add(opts.java_home, "java_home")
  add(os.getenv("JAVA_HOME"), "JAVA_HOME")
  local java = proc.which("java")
  local real = java and uv.fs_realpath(java)
  if real then add(dirname(dirname(real)), "PATH") end
  for _, dir in ipairs(jvm_dirs(opts.jvm_root or "/usr/lib/jvm")) do add(dir, "jvm_root") end
  return list
end

--- A Java 8 JDK (or JRE) to run gradlew with. Returns {home=, java=, version=, source=}
--- or nil, err "java8" listing what was found instead.
function M.java8(opts)
  opts = opts or {}
  local seen, found = {}, {}
  for _, c in ipairs(java_candidates(opts)) do
    local java = c.home .. "/bin/java"
    local key = uv.fs_realpath(c.home) or c.home
    if not seen[key] and is_executable(java) then
      seen[key] = true
      local version = M.java_version(java)
      if is_java8(version) then
        return { home = c.home, java = java, version = version, source = c.source }
      end
      found[#found + 1] = ("%s (%s): %s"):format(c.home, c.source, version or "no version")
    end
  end
  local message = "the deployment tool needs Java 8 and none was found"
  if #found > 0 then message = message .. "; found " .. table.concat(found, ", ") end
  return fail("java8", message .. ": install a JDK 8 and set JAVA_HOME to it", { found = found })
end

local function check_java_home(home)
  local java = home .. "/bin/java"
  local version = is_executable(java) and M.java_version(java)
  if is_java8(version) then return { home = home, java = java, version = version, source = "java_home" } end
  return fail("java8", ("java_home %s is not a Java 8 (%s)"):format(home, version or "no java in it"),
    { java_home = home, version = version or nil })
end

-- ---- running a task ----

local function check_tools_dir(dir)
  if file_type(dir) ~= "directory" then
    return fail("tools_dir", ("the tools dir %s does not exist"):format(dir), { dir = dir })
  end
  local gradlew = dir .. "/gradlew"
  if not file_type(gradlew) then
    return fail("gradlew_missing", ("%s has no gradlew: is it the deployment tool's checkout?"):format(dir),
      { dir = dir })
  end
  if not is_executable(gradlew) then
    return fail("gradlew_not_executable", ("%s is not executable (chmod +x gradlew)"):format(gradlew),
      { dir = dir })
  end
  return true
end

local function task_argv(task, opts)
  local argv = { "./gradlew" }
  if opts.cluster then argv[#argv + 1] = "-Pcluster=" .. opts.cluster end
  local names = {}
  for k in pairs(opts.props or {}) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do argv[#argv + 1] = ("-P%s=%s"):format(k, tostring(opts.props[k])) end
  if type(task) == "table" then
    for _, t in ipairs(task) do argv[#argv + 1] = t end
  else
    argv[#argv + 1] = task
  end
  return argv
end

-- Reads Gradle's output as it comes: the tasks run and the "What went wrong" blocks.
local function output_parser()
  local parser = { tasks = {}, blocks = {} }
  local block
  function parser.line(line)
    local task = line:match("^> Task (:%S+)")
    if task then parser.tasks[#parser.tasks + 1] = task end
    if line:match("^%* What went wrong:") then
      block = {}
      parser.blocks[#parser.blocks + 1] = block
    elseif block and (line:match("^%* %u") or line:match("^BUILD FAILED") or line:match("^%-%-%-%-%-")) then
      block = nil
    elseif block then
      block[#block + 1] = line
    end
  end
  function parser.failure()
    local texts = {}
    for _, b in ipairs(parser.blocks) do
      local text = table.concat(b, "\n"):gsub("^%s+", ""):gsub("%s+$", "")
      if text ~= "" then texts[#texts + 1] = text end
    end
    if #texts > 0 then return table.concat(texts, "\n\n") end
  end
  return parser
end

local function describe(task, opts)
  local name = type(task) == "table" and table.concat(task, " ") or task
  return opts.title or ("gradle %s%s"):format(name, opts.cluster and (" (cluster " .. opts.cluster .. ")") or "")
end

local function prerequisites(dir, opts)
  local ok, err = check_tools_dir(dir)
  if not ok then return nil, err end
  local creds
  creds, err = M.credentials(dir)
  if not creds then return nil, err end
  local java
  if opts.java_home then java, err = check_java_home(opts.java_home) else java, err = M.java8(opts) end
  if not java then return nil, err end
  return creds, java
end

--- Run ./gradlew [-Pcluster=<cluster>] [-P<prop>=<value>...] <task> in the tools dir, its
--- output streamed under a step heading (and to on_line(line, stream)).
function M.task(dir, task, opts)
  opts = opts or {}
  assert(type(dir) == "string", "gradle.task: the tools dir must be a path")
  assert(type(task) == "string" or type(task) == "table", "gradle.task: task must be a name or a list")
  local creds, java = prerequisites(dir, opts)
  if not creds then return nil, java end
  local title = describe(task, opts)
  log.step(title)
  log.info("credentials from %s; Java %s at %s", creds.path, java.version, java.home)
  local env = { JAVA_HOME = java.home }
  for k, v in pairs(creds.env or {}) do env[k] = v end
  local parser, output = output_parser(), proc.collector(opts.max_output or M.DEFAULT_MAX_OUTPUT)
  local r, err = proc.run {
    argv = task_argv(task, opts), cwd = dir, env = env, timeout = opts.timeout, grace = opts.grace,
    max_output = opts.max_output,
    on_line = function(line, stream)
      output:add(line .. "\n")
      parser.line(line)
      if not opts.quiet then log.info("  %s", line) end
      if opts.on_line then opts.on_line(line, stream) end
    end,
  }
  if not r then
    log.step_done(title, "failed", err.duration)
    err.tasks, err.output = parser.tasks, output:text()
    return nil, err
  end
  local ok = r.code == 0
  log.step_done(title, ok and "ok" or "failed", r.duration)
  local failure
  if not ok then
    failure = parser.failure() or ("gradlew ended with %s"):format(r.signal and ("signal " .. r.signal) or ("exit code " .. r.code))
  end
  return {
    ok = ok, code = r.code, signal = r.signal, duration = r.duration, tasks = parser.tasks,
    failure = failure, output = output:text(), credentials = creds.path, java_home = java.home,
  }
end

return M
