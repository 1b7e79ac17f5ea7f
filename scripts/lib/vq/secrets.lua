-- vq.secrets: the tools dir's configuration and secrets, as the runbooks use them.
--
--   local secrets = require "vq.secrets"
--   local t = assert(secrets.open(tools_dir))              -- targetCluster/ of the tools dir
--   t:deploy("vantiq.image.tag")                           -- deploy.yaml, by dotted path
--   t:secret_value("shared.keycloak.data.password")        -- secrets.yaml: a secret value
--   t:set_deploy("vantiq.image.tag", "3.10.2")             -- edited in place, written atomically
--   t:set_property("requiredRemote", "false")              -- cluster.properties, likewise
--   t:validate()                                           -- {{level =, file =, line =, message =, fix =}}
--   t:backup("server.key"); t:replace("server.key", new_pem)
--   secrets.compare_secret(k, ns, name, {["tls.crt"] = path})
--
-- Secret values never show themselves: what secrets.yaml, a cluster Secret or
-- secrets.password gives is a secret object that prints as "<redacted: N bytes>" (tostring,
-- log lines, string.format, the REPL), refuses "..", and gives its text only to :reveal().
-- Its text is also registered with log.secret, so that any output that still carries it is
-- masked. Two secrets compare with secrets.same (or ==), which says only "same" or
-- "differs".
--
-- Every write goes to a temp file in the same folder (mode 0600 while it is written), is
-- fsynced, given its final mode (the old file's, 0600 for a new one) and renamed over the
-- target: a reader sees the old file or the new one, never half a key. Honours dry-run.
local vq = require "vq"
local uv = require "luv"
local log = require "log"
local yaml = require "vq.yaml"
local core_yaml = require "vq.core.yaml"
local properties = require "vq.properties"
local base64 = require "vq.base64"

local secrets = {}

local MODE_PRIVATE = 384 -- 0600
local MODE_BITS = 4095   -- 07777
-- Shorter values are not registered: masking every "abc" would garble all output.
local MIN_REDACT = 4
local MAX_FILE = 16 * 1024 * 1024

local function fail(code, message, details) return nil, vq.error(code, message, details) end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

-- ---- secret values ----

-- The plain text lives here, not in the object: a printer or encoder that walks the
-- object's fields finds nothing.
local plain = setmetatable({}, { __mode = "k" })

local Secret = { __name = "vq.secret", __metatable = "vq.secret" }
local methods = {}

local function text_of(s)
  local t = plain[s]
  if not t then error("not a secret value", 3) end
  return t
end

--- The plain text, for the one place that needs it (a file, a request body).
function methods:reveal() return text_of(self) end
--- Its length in bytes.
function methods:len() return #text_of(self) end

-- Constant time over the length: the comparison itself says nothing but the answer.
local function equal(a, b)
  if #a ~= #b then return false end
  local diff = 0
  for i = 1, #a do diff = diff | (a:byte(i) ~ b:byte(i)) end
  return diff == 0
end

Secret.__index = methods
Secret.__len = function(s) return #text_of(s) end
Secret.__tostring = function(s) return ("<redacted: %d bytes>"):format(#text_of(s)) end
Secret.__eq = function(a, b)
  local x, y = plain[a], plain[b]
  return x ~= nil and y ~= nil and equal(x, y)
end
Secret.__concat = function()
  error("a secret does not concatenate: use :reveal() where its text is meant", 2)
end
Secret.__newindex = function() error("a secret value is read-only", 2) end

local function register(text)
  if #text >= MIN_REDACT then log.secret(text) end
end

--- A secret object holding text (a string; a number is turned into one), registered
--- for redaction. A secret object is returned as it is.
function secrets.wrap(text)
  if plain[text] then return text end
  if math.type(text) then text = tostring(text) end
  assert(type(text) == "string", "secrets.wrap: a string")
  register(text)
  local s = setmetatable({}, Secret)
  plain[s] = text
  return s
end

function secrets.is_secret(v) return plain[v] ~= nil end

--- The text of a secret object, or v itself when it is a plain string.
function secrets.reveal(v)
  if plain[v] then return plain[v] end
  return v
end

--- "same" or "differs": two secrets (or strings) compared without showing either.
function secrets.same(a, b)
  a, b = secrets.reveal(a), secrets.reveal(b)
  assert(type(a) == "string" and type(b) == "string", "secrets.same: two secrets or strings")
  return equal(a, b) and "same" or "differs"
end

-- ---- files ----

local function dirname(path) return path:match("^(.*)/[^/]*$") or "." end
local function basename(path) return path:match("([^/]*)$") end

local function read_file(path)
  local f, why = io.open(path, "rb")
  if not f then return fail("not_found", ("cannot read %s"):format(why), { file = path }) end
  local text = f:read(MAX_FILE + 1)
  f:close()
  text = text or ""
  if #text > MAX_FILE then return fail("too_large", ("%s is larger than 16 MiB"):format(path), { file = path }) end
  return text
end

local function mode_text(mode) return ("%04o"):format(mode) end

local function write_all(fd, data)
  local off = 0
  while off < #data do
    local n, err = uv.fs_write(fd, data:sub(off + 1), off)
    if not n then return nil, err end
    off = off + n
  end
  return true
end

local temp_count = 0

-- A temp file next to path, created 0600 and exclusively (never someone else's file).
local function open_temp(path)
  local fd, err, name
  for _ = 1, 32 do
    temp_count = temp_count + 1
    local tmp = ("%s/.%s.%d-%d.tmp"):format(dirname(path), basename(path), uv.os_getpid(), temp_count)
    fd, err, name = uv.fs_open(tmp, "wx", MODE_PRIVATE)
    if fd then return fd, tmp end
    if name ~= "EEXIST" then break end
  end
  return nil, err
end

-- The rename is only durable once the folder's entry is on disk too.
local function sync_dir(dir)
  local fd = uv.fs_open(dir, "r", 0)
  if fd then
    uv.fs_fsync(fd)
    uv.fs_close(fd)
  end
end

-- Through a symbolic link to the file it names, so that the link stays a link.
local function real_target(path)
  local st = uv.fs_lstat(path)
  if st and st.type == "link" then return uv.fs_realpath(path) or path end
  return path
end

--- Write data to path atomically: temp file in the same folder (0600), fsync, chmod to
--- opts.mode (else the old file's mode, else 0600), rename, fsync the folder. Returns
--- true, mode or nil, err.
function secrets.write_atomic(path, data, opts)
  opts = opts or {}
  path = real_target(path)
  local old = uv.fs_stat(path)
  if old and old.type ~= "file" then return fail("io", ("%s is not a regular file"):format(path), { file = path }) end
  local mode = opts.mode or (old and old.mode & MODE_BITS) or MODE_PRIVATE
  local fd, tmp = open_temp(path)
  if not fd then
    return fail("io", ("cannot create a temp file next to %s: %s"):format(path, tmp), { file = path })
  end
  local ok, err = write_all(fd, data)
  if ok then ok, err = uv.fs_fsync(fd) end
  uv.fs_close(fd)
  if ok then ok, err = uv.fs_chmod(tmp, mode) end
  if ok then ok, err = uv.fs_rename(tmp, path) end
  if not ok then
    uv.fs_unlink(tmp)
    return fail("io", ("cannot write %s: %s"):format(path, err), { file = path })
  end
  sync_dir(dirname(path))
  return true, mode
end

local function is_dry_run(opts) return (opts and opts.dry_run) or vq.options.dry_run end

-- The first line where two texts differ.
local function first_changed_line(a, b)
  local line, i = 1, 1
  while i <= #a and i <= #b and a:byte(i) == b:byte(i) do
    if a:byte(i) == 10 then line = line + 1 end
    i = i + 1
  end
  return line
end

-- ---- the contents of secret files ----

local PUBLIC_PEM = { CERTIFICATE = true, ["TRUSTED CERTIFICATE"] = true, ["PUBLIC KEY"] = true,
                     ["X509 CRL"] = true, ["RSA PUBLIC KEY"] = true }

local function is_public_pem(text)
  local any = false
  for label in text:gmatch("%-%-%-%-%-BEGIN ([^%-\r\n]+)%-%-%-%-%-") do
    if not PUBLIC_PEM[label] then return false end
    any = true
  end
  return any
end

-- A secret file's text, and the parts of it a log line might carry on their own: each
-- long line (a PEM body line, a license line) and each NAME=value's value.
local function register_file(text)
  if is_public_pem(text) then return end
  register(text)
  for line in text:gmatch("[^\r\n]+") do
    local value = line:match("^%s*[%w_]+%s*=%s*[\"']?(.-)[\"']?%s*$")
        or line:match("^%s*export%s+[%w_]+%s*=%s*[\"']?(.-)[\"']?%s*$")
    if value then register(value) end
    if #line >= 16 and not line:find("^%-%-%-%-%-") then register(line) end
  end
end

-- ---- YAML helpers ----

-- Where each key sits: "a\0b\0c" → {line =, col =} of the key (first occurrence).
local function key_lines(text)
  local scan = core_yaml.scan(text, { max_depth = 64 })
  local index = {}
  local function walk(node, prefix, depth)
    if not node or node.kind ~= "mapping" or depth > 32 then return end
    for i, k in ipairs(node.keys) do
      if k.kind == "scalar" then
        local p = prefix and (prefix .. "\0" .. k.value) or k.value
        index[p] = index[p] or { line = k.line, col = k.col }
        walk(node.values[i], p, depth + 1)
      end
    end
  end
  local doc = scan and scan.docs[1]
  walk(doc and doc.root, nil, 0)
  return index
end

local function dig(v, keys)
  for _, k in ipairs(keys) do
    if type(v) ~= "table" then return nil end
    v = v[k]
  end
  return v
end

-- The text, decoded value and key lines of one of the YAML files; y.err when it is
-- missing or does not parse.
local function load_yaml(path)
  local y = { file = path }
  local text, err = read_file(path)
  if not text then y.err = err return y end
  y.text = text
  local doc
  doc, err = yaml.decode(text, { file = path })
  if doc == nil then y.err = err return y end
  y.doc = type(doc) == "table" and doc or {}
  y.lines = key_lines(text)
  return y
end

local function line_of(y, keys)
  local at = y.lines and y.lines[table.concat(keys, "\0")]
  return at and at.line, at and at.col
end

-- Leaves of secrets.yaml that are secret: not the paths under "files:", and not the
-- names that identify rather than protect (a user name masked everywhere would hide
-- every log line that mentions "keycloak").
local NOT_SECRET = { username = true, user = true, dbuser = true, host = true, hostname = true,
                     dbhost = true, port = true, dbport = true, email = true, from = true,
                     url = true, name = true, database = true }

local function register_values(v, in_files, key)
  if type(v) == "table" then
    for k, x in pairs(v) do register_values(x, in_files or k == "files", k) end
  elseif (type(v) == "string" or math.type(v)) and not in_files
      and not NOT_SECRET[tostring(key):lower()] then
    register(tostring(v))
  end
end

-- ---- the tools dir ----

local Tools = {}
Tools.__index = Tools

local function is_dir(path)
  local st = uv.fs_stat(path)
  return st and st.type == "directory"
end

-- The branch targetCluster's git checkout is on, when it is one.
local function current_branch(dir)
  local git = dir .. "/.git"
  local st = uv.fs_stat(git)
  if not st then return nil end
  if st.type == "file" then -- a worktree: "gitdir: <path>"
    local text = read_file(git)
    local gitdir = text and text:match("^gitdir:%s*(.-)%s*$")
    if not gitdir then return nil end
    git = gitdir:sub(1, 1) == "/" and gitdir or dir .. "/" .. gitdir
  end
  local head = read_file(git .. "/HEAD")
  return head and head:match("^ref: refs/heads/(.-)%s*$")
end

--- The configuration of the cluster in tools_dir/targetCluster: t.paths = {cluster_properties,
--- deploy, secrets, sensitive}. opts.cluster: the cluster's name; when targetCluster is a git
--- checkout on another branch, that is an error (the files are another cluster's).
--- opts.dir: the folder's name, when not targetCluster. secrets.yaml's values, and the
--- secret files it names, are registered for redaction here.
function secrets.open(tools_dir, opts)
  assert(type(tools_dir) == "string", "secrets.open: the tools dir")
  opts = opts or {}
  tools_dir = tools_dir:gsub("(.)/+$", "%1")
  local dir = tools_dir .. "/" .. (opts.dir or "targetCluster")
  if not is_dir(dir) then
    local message = ("%s does not exist: run ./gradlew configureVantiqSystem first"):format(dir)
    return fail("not_found", message, { file = dir })
  end
  local branch = current_branch(dir)
  if opts.cluster and branch and branch ~= opts.cluster then
    return fail("wrong_cluster", ("%s is on branch %s, not %s"):format(dir, branch, opts.cluster), { file = dir })
  end
  local t = setmetatable({
    tools_dir = tools_dir, dir = dir, cluster = opts.cluster or branch,
    paths = {
      cluster_properties = dir .. "/cluster.properties",
      deploy = dir .. "/deploy.yaml",
      secrets = dir .. "/secrets.yaml",
      sensitive = dir .. "/deploy/sensitive",
    },
  }, Tools)
  t:register_secrets()
  return t
end

function Tools:__tostring() return ("<tools dir %s>"):format(self.dir) end

-- secrets.yaml decoded, its values registered; nil, err when missing or broken.
function Tools:secrets_doc()
  local text, err = read_file(self.paths.secrets)
  if not text then return nil, err end
  local doc
  doc, err = yaml.decode(text, { file = self.paths.secrets })
  if doc == nil then return nil, err end
  register_values(doc, false)
  return doc, text
end

--- Register secrets.yaml's values and the private files it names (again: after an edit).
function Tools:register_secrets()
  if not self:secrets_doc() then return end
  for _, ref in ipairs(self:referenced_files()) do
    local text = ref.exists and read_file(ref.file)
    if text then register_file(text) end
  end
end

-- ---- reading ----

--- The value at a dotted path of deploy.yaml (a table for a mapping), or nil, err.
function Tools:deploy(path)
  local text, err = read_file(self.paths.deploy)
  if not text then return nil, err end
  return yaml.get(text, path, { file = self.paths.deploy })
end

local function wrap_all(v)
  if type(v) ~= "table" then return secrets.wrap(v) end
  local out = {}
  for k, x in pairs(v) do out[k] = wrap_all(x) end
  return out
end

--- The value at a dotted path of secrets.yaml as a secret object (a table of them for a
--- mapping), or nil, err. An empty value is nil, {code = "empty"}.
function Tools:secret_value(path)
  local doc, text = self:secrets_doc()
  if doc == nil then return nil, text end
  local v, err = yaml.get(text, path, { file = self.paths.secrets })
  if v == nil then return nil, err end
  if v == yaml.null or type(v) == "boolean" then
    return fail("empty", ("%s: %s has no secret value"):format(self.paths.secrets, tostring(path)))
  end
  return wrap_all(v)
end

--- cluster.properties: map, entries (see vq.properties.parse), or nil, err.
function Tools:properties()
  local text, err = read_file(self.paths.cluster_properties)
  if not text then return nil, err end
  return properties.parse(text, { file = self.paths.cluster_properties })
end

--- One property of cluster.properties, or nil, err.
function Tools:property(key)
  local text, err = read_file(self.paths.cluster_properties)
  if not text then return nil, err end
  return properties.get(text, key, { file = self.paths.cluster_properties })
end

-- ---- editing ----

-- Write new text over a file that held old, unless it is the same or a dry run.
local function commit(path, old, new, what, opts)
  local info = { file = path, changed = old ~= new }
  if not info.changed then return info end
  info.line = first_changed_line(old, new)
  if is_dry_run(opts) then
    info.dry_run = true
    log.info("dry-run: would change %s in %s (line %d)", what, path, info.line)
    return info
  end
  local ok, err = secrets.write_atomic(path, new)
  if not ok then return nil, err end
  log.audit("file.edit", { file = path, what = what, line = info.line })
  return info
end

-- "a.b.c" → parent path, last key (a list path splits the same way).
local function split_path(path)
  if type(path) == "table" then
    return table.move(path, 1, #path - 1, 1, {}), path[#path]
  end
  local parent, key = tostring(path):match("^(.*)%.([^.]*)$")
  if not parent then return "", path end
  return parent, key
end

local function edit_yaml(file, text, path, value, opts)
  local new, err = yaml.edit(text, path, value, { file = file })
  if new or err.code ~= "not_found" or not (opts and opts.create) then return new, err end
  local parent, key = split_path(path)
  return yaml.insert(text, parent, key, value, { file = file })
end

local function set_yaml(self, which, path, value, opts)
  local file = self.paths[which]
  local text, err = read_file(file)
  if not text then return nil, err end
  local new
  new, err = edit_yaml(file, text, path, value, opts)
  if not new then return nil, err end
  return commit(file, text, new, type(path) == "table" and table.concat(path, ".") or path, opts)
end

--- Set a value of deploy.yaml in place (comments, order, quoting kept; see yaml.edit).
--- opts.create inserts a missing last key into its (existing) parent. Returns
--- {file =, changed =, line =, dry_run =} or nil, err.
function Tools:set_deploy(path, value, opts)
  if secrets.is_secret(value) then error("set_deploy: deploy.yaml is not for secrets (set_secret)", 2) end
  return set_yaml(self, "deploy", path, value, opts)
end

--- Set a value of secrets.yaml in place (a secret object or a string); it is registered.
function Tools:set_secret(path, value, opts)
  value = secrets.reveal(value)
  if type(value) == "string" then register(value) end
  return set_yaml(self, "secrets", path, value, opts)
end

--- Set a key of cluster.properties in place (see vq.properties.set: a commented-out
--- "#key=..." comes back rather than a new line). Returns {file =, changed =, line =,
--- action =, dry_run =} or nil, err.
function Tools:set_property(key, value, opts)
  local file = self.paths.cluster_properties
  local text, err = read_file(file)
  if not text then return nil, err end
  local new, info = properties.set(text, key, value, { file = file })
  if not new then return nil, info end
  local result
  result, err = commit(file, text, new, key, opts)
  if not result then return nil, err end
  result.action = info.action
  return result
end

-- ---- deploy/sensitive ----

-- A name inside deploy/sensitive ("server.key", or "deploy/sensitive/server.key" as
-- secrets.yaml writes it) → its path; nothing outside the folder.
function Tools:sensitive_path(name)
  assert(type(name) == "string", "a file name in deploy/sensitive")
  name = name:gsub("^deploy/sensitive/", "")
  if name == "" or name:sub(1, 1) == "/" or ("/" .. name .. "/"):find("/%.%.?/") then
    return fail("invalid", ("%q is not a file name inside deploy/sensitive"):format(name))
  end
  return self.paths.sensitive .. "/" .. name
end

local function list_dir(root, rel, out)
  local req = uv.fs_scandir(rel == "" and root or (root .. "/" .. rel))
  if not req then return out end
  while true do
    local name, kind = uv.fs_scandir_next(req)
    if not name then break end
    local r = rel == "" and name or (rel .. "/" .. name)
    if name:sub(1, 1) == "." then -- temp files, .git, editors' leftovers
    elseif kind == "directory" then list_dir(root, r, out)
    else out[#out + 1] = r end
  end
  return out
end

--- The files of deploy/sensitive (subfolders included, dot files left out), sorted:
--- {name =, path =, size =, mode =, mode_text = "0600", mtime = epoch seconds}.
function Tools:sensitive_files()
  local names = list_dir(self.paths.sensitive, "", {})
  table.sort(names)
  local files = {}
  for _, name in ipairs(names) do
    local path = self.paths.sensitive .. "/" .. name
    local st = uv.fs_stat(path)
    if st and st.type == "file" then
      local mode = st.mode & MODE_BITS
      files[#files + 1] = { name = name, path = path, size = st.size, mode = mode,
                            mode_text = mode_text(mode), mtime = st.mtime.sec }
    end
  end
  return files
end

local function resolve(self, path)
  if path:sub(1, 1) == "/" then return path end
  return self.dir .. "/" .. path:gsub("^%./", "")
end

local function inside_sensitive(self, file)
  local prefix = self.paths.sensitive .. "/"
  if file:sub(1, #prefix) == prefix then return file:sub(#prefix + 1) end
end

-- Every "files:" mapping of secrets.yaml, at any depth.
local function collect_files(v, keys, out, depth)
  if type(v) ~= "table" or depth > 16 then return end
  for _, k in ipairs(sorted_keys(v)) do
    local x = v[k]
    keys[#keys + 1] = tostring(k)
    if k == "files" and type(x) == "table" then
      for _, fk in ipairs(sorted_keys(x)) do
        if type(x[fk]) == "string" then
          out[#out + 1] = { keys = table.move(keys, 1, #keys, 1, {}), key = tostring(fk), path = x[fk] }
        end
      end
    else
      collect_files(x, keys, out, depth + 1)
    end
    keys[#keys] = nil
  end
end

--- The files secrets.yaml names under its "files:" entries (the real names: the guide's
--- fullchain.crt / private.key are only the vendor's): {secret = "vantiq-ssl-cert",
--- section = "vantiq", key = "tls.crt", path = as written, file = full path, name = inside
--- deploy/sensitive (nil when outside), exists =, line =}, in file order.
function Tools:referenced_files()
  local text = read_file(self.paths.secrets)
  local doc = text and yaml.decode(text, { file = self.paths.secrets })
  if type(doc) ~= "table" then return {} end
  local found, lines, refs = {}, key_lines(text), {}
  collect_files(doc, {}, found, 0)
  for _, f in ipairs(found) do
    local file = resolve(self, f.path)
    local st = uv.fs_stat(file)
    local at = lines[table.concat(f.keys, "\0") .. "\0" .. f.key]
    refs[#refs + 1] = {
      secret = f.keys[#f.keys - 1], section = f.keys[1], key = f.key, path = f.path, file = file,
      name = inside_sensitive(self, file), exists = st ~= nil and st.type == "file",
      line = at and at.line,
    }
  end
  table.sort(refs, function(a, b) return (a.line or 0) < (b.line or 0) end)
  return refs
end

local function backup_name(path)
  local stamp = os.date("!%Y%m%dT%H%M%SZ")
  local candidate = ("%s.%s.bak"):format(path, stamp)
  local n = 1
  while uv.fs_stat(candidate) do
    n = n + 1
    candidate = ("%s.%s-%d.bak"):format(path, stamp, n)
  end
  return candidate
end

--- A timestamped copy of a file of deploy/sensitive, next to it and with its mode
--- ("server.key.20250101T120000Z.bak"). Returns the copy's path, or nil, err.
function Tools:backup(name, opts)
  local path, err = self:sensitive_path(name)
  if not path then return nil, err end
  local st = uv.fs_stat(path)
  if not st or st.type ~= "file" then return fail("not_found", ("%s is not a file"):format(path), { file = path }) end
  local text
  text, err = read_file(path)
  if not text then return nil, err end
  local dest = backup_name(path)
  if is_dry_run(opts) then return dest, { dry_run = true } end
  local ok
  ok, err = secrets.write_atomic(dest, text, { mode = st.mode & MODE_BITS })
  if not ok then return nil, err end
  log.audit("file.backup", { file = path, backup = dest })
  return dest
end

-- What replace writes: {content =}, {path =}, a secret object, or a string that names an
-- existing file (one line, no PEM) else is the content itself.
local function source_text(source)
  if secrets.is_secret(source) then return secrets.reveal(source) end
  if type(source) == "table" then
    if source.content then return secrets.reveal(source.content) end
    return read_file(assert(source.path, "replace: {content =} or {path =}"))
  end
  assert(type(source) == "string", "replace: the new content or the path of a file holding it")
  local st = #source < 4096 and not source:find("[\r\n]") and uv.fs_stat(source)
  if st and st.type == "file" then return read_file(source) end
  return source
end

--- Replace a file of deploy/sensitive atomically (see write_atomic): a new file is 0600,
--- an existing one keeps its mode. source: the new content, or a file holding it (see
--- source_text). Returns {file =, mode =, size =, created =, dry_run =} or nil, err.
function Tools:replace(name, source, opts)
  local path, err = self:sensitive_path(name)
  if not path then return nil, err end
  local text
  text, err = source_text(source)
  if not text then return nil, err end
  register_file(text)
  local st = uv.fs_stat(path)
  local info = { file = path, size = #text, created = st == nil,
                 mode = st and st.mode & MODE_BITS or MODE_PRIVATE }
  if is_dry_run(opts) then info.dry_run = true return info end
  if not is_dir(dirname(path)) then uv.fs_mkdir(dirname(path), 448) end -- 0700
  local ok
  ok, err = secrets.write_atomic(path, text, { mode = info.mode })
  if not ok then return nil, err end
  log.audit("file.replace", { file = path, size = #text })
  return info
end

-- ---- findings ----

local function add(list, check, level, file, line, message, fix)
  local f = { check = check, level = level, file = file, line = line, message = message, fix = fix }
  list[#list + 1] = f
  return f
end

-- A secret file others may read: said once, whichever check finds it.
local function mode_finding(list, check, file, mode)
  add(list, check, "warn", file, nil, ("mode %s lets others read it"):format(mode_text(mode)),
      "chmod 600 " .. file).kind = "mode"
end

-- Levenshtein distance, for keys one typo away from a known one.
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

local TOP_KEYS = {
  deploy = { "vantiq", "shared", "nginx", "keycloak", "grafana", "grafanadb", "influxdb",
             "telegraf", "telegraf-ds", "telegraf-prom", "mongodb", "metricsCollector" },
  secrets = { "vantiq", "shared", "nginx", "keycloak" },
}

-- The known key a top-level key misspells, or nil.
local function misspelling(key, known)
  local best
  for _, k in ipairs(known) do
    if k == key then return nil end
    if #key >= 4 and distance(key, k) <= (#k >= 8 and 2 or 1) then best = best or k end
  end
  return best
end

local function parse_finding(list, check, y, what)
  local err = y.err
  local line = type(err) == "table" and err.line
  if err.code == "not_found" then
    add(list, check, "error", y.file, nil, ("%s does not exist"):format(y.file),
        ("run ./gradlew -Pcluster=<cluster> setupCluster, which creates %s"):format(what))
  else
    add(list, check, "error", y.file, line, tostring(err.message),
        "fix the YAML at that line (a key pasted twice at the top level is a duplicate: merge the two blocks)")
  end
end

-- The mapping `name` under vantiq, or under another top-level key (a misspelt one): value,
-- the top-level key it is under.
local function find_section(doc, keys)
  local v = dig(doc, { "vantiq", table.unpack(keys) })
  if v ~= nil then return v, "vantiq" end
  for _, top in ipairs(sorted_keys(doc)) do
    local x = dig(doc[top], keys)
    if x ~= nil then return x, top end
  end
end

local function wrong_top(list, check, y, top, what)
  local line = line_of(y, { top })
  local message
  if misspelling(top, { "vantiq" }) then
    message = ("the top-level key `%s` is a misspelling of `vantiq` (the guide's snippet has it): " ..
               "%s under it is never read"):format(top, what)
  else
    message = ("%s is under `%s`, not under `vantiq`"):format(what, top)
  end
  local fix = ("rename `%s:` to `vantiq:`"):format(top)
  if y.doc.vantiq ~= nil then fix = ("move what is under `%s:` into the existing `vantiq:` block"):format(top) end
  add(list, check, "error", y.file, line, message, fix)
end

-- A commented-out "key:" line: its line number.
local function commented_line(text, key)
  local n = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    if line:find("^%s*#%s*" .. key:gsub("%-", "%%-") .. "%s*:") then return n end
  end
end

-- ---- the azure_backup check ----

local AZ_VARS = { "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY" }
local CREDS_SNIPPET = "export AZURE_STORAGE_ACCOUNT=<account>\nexport AZURE_STORAGE_KEY=<key>"

local function creds_vars(text)
  local vars, n = {}, 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    n = n + 1
    local body = line:match("^%s*export%s+(.*)$")
    local name, value = (body or line):match("^%s*([%a_][%w_]*)=(.*)$")
    if name then vars[name] = { line = n, exported = body ~= nil, value = value } end
  end
  return vars
end

local function unquote(v) return (v:gsub("\r$", ""):gsub("^%s*([\"']?)(.-)%1%s*$", "%2")) end

local function check_var(list, file, name, var)
  local C = "azure_backup"
  if not var then
    add(list, C, "error", file, nil, ("%s does not set %s"):format(file, name), "add the line: " .. CREDS_SNIPPET)
    return
  end
  local value = unquote(var.value)
  if not var.exported then
    add(list, C, "error", file, var.line, ("%s is set but not exported: the backup job never sees it"):format(name),
        ("write it as `export %s=...`"):format(name))
  elseif value == "" then
    add(list, C, "error", file, var.line, ("%s is empty"):format(name), "set it to the storage account's value")
  elseif value:find("^<.*>$") then
    add(list, C, "error", file, var.line, ("%s is still the guide's placeholder"):format(name),
        "put the storage account's real value there")
  elseif name == "AZURE_STORAGE_ACCOUNT" and not (value:find("^[a-z0-9]+$") and #value >= 3 and #value <= 24) then
    add(list, C, "warn", file, var.line,
        "AZURE_STORAGE_ACCOUNT is not a storage account name (3-24 lowercase letters and digits)",
        "use the account's name, not its URL or connection string")
  elseif name == "AZURE_STORAGE_KEY" and not value:find("^[%w+/]+=*$") then
    add(list, C, "warn", file, var.line, "AZURE_STORAGE_KEY does not look like an account key (base64)",
        "copy key1 or key2 from the storage account's Access keys")
  end
end

local function check_creds_file(self, list, file)
  local text = read_file(file)
  if not text then return end
  register_file(text)
  local vars = creds_vars(text)
  for _, name in ipairs(AZ_VARS) do check_var(list, file, name, vars[name]) end
  if text:find("\r\n") then
    add(list, "azure_backup", "error", file, nil,
        "the file has Windows line endings: each value would end in a carriage return",
        "convert it to LF line endings (dos2unix)")
  end
  local st = uv.fs_stat(file)
  if st and st.mode & 63 ~= 0 then mode_finding(list, "azure_backup", file, st.mode & MODE_BITS) end
end

-- Files of deploy/sensitive a wrong name probably meant, the closest first.
local function similar_files(self, name)
  local out, base, far = {}, basename(name), {}
  for _, f in ipairs(self:sensitive_files()) do
    local b = basename(f.name)
    far[f.name] = distance(b, base)
    if b ~= base and (far[f.name] <= 5 or (b:find("azure") and base:find("azure"))) then
      out[#out + 1] = f.name
    end
  end
  table.sort(out, function(a, b) return far[a] < far[b] or (far[a] == far[b] and a < b) end)
  return out
end

-- The guide writes the credentials file's name two ways.
local GUIDE_NAMES = { ["azure_storage_credentials.txt"] = "azure_store_credentials.txt",
                      ["azure_store_credentials.txt"] = "azure_storage_credentials.txt" }

local function check_creds_path(self, list, y, keys, path)
  local C, line = "azure_backup", line_of(y, keys)
  if type(path) ~= "string" or path == "" then
    add(list, C, "error", y.file, line, "dbbackup-creds.files.credentials names no file",
        "credentials: deploy/sensitive/<file with the AZURE_STORAGE_* exports>")
    return
  end
  local file = resolve(self, path)
  local st = uv.fs_stat(file)
  if not st or st.type ~= "file" then
    local near = similar_files(self, path)
    local message = ("credentials names %s, which does not exist"):format(path)
    local fix = ("create %s with:\n%s"):format(path, CREDS_SNIPPET)
    if #near > 0 then
      message = ("%s; deploy/sensitive has %s"):format(message, table.concat(near, ", "))
      if GUIDE_NAMES[basename(path)] == basename(near[1]) then
        message = message .. " (the guide names this file azure_storage_credentials.txt in secrets.yaml " ..
            "and azure_store_credentials.txt in the step that creates it)"
      end
      fix = ("rename deploy/sensitive/%s to %s, or make line %s name it")
          :format(near[1], basename(path), tostring(line))
    end
    add(list, C, "error", y.file, line, message, fix)
    return
  end
  if not inside_sensitive(self, file) then
    add(list, C, "warn", y.file, line, ("credentials names %s, outside deploy/sensitive"):format(path),
        "keep secret files in deploy/sensitive, where git-secret and .gitignore expect them")
  end
  check_creds_file(self, list, file)
end

local function azure_secrets(self, list)
  local C = "azure_backup"
  local y = load_yaml(self.paths.secrets)
  if y.err then return parse_finding(list, C, y, "secrets.yaml") end
  local creds, top = find_section(y.doc, { "dbbackup-creds" })
  if creds == nil then
    local commented = commented_line(y.text, "dbbackup-creds")
    if commented then
      add(list, C, "error", y.file, commented, "vantiq.dbbackup-creds is commented out",
          "uncomment it and its files.credentials line")
    else
      add(list, C, "error", y.file, line_of(y, { "vantiq" }), "secrets.yaml has no vantiq.dbbackup-creds",
          "under vantiq:\n  dbbackup-creds:\n    files:\n      credentials: deploy/sensitive/<file>")
    end
    return
  end
  if top ~= "vantiq" then wrong_top(list, C, y, top, "dbbackup-creds") end
  local path = dig(creds, { "files", "credentials" })
  if path == nil then
    add(list, C, "error", y.file, line_of(y, { top, "dbbackup-creds" }), "dbbackup-creds has no files.credentials",
        "files:\n  credentials: deploy/sensitive/<file>")
    return
  end
  check_creds_path(self, list, y, { top, "dbbackup-creds", "files", "credentials" }, path)
end

local BACKUP_KEYS = { "enabled", "provider", "schedule", "bucket" }
local CRON_MACROS = { ["@yearly"] = 1, ["@annually"] = 1, ["@monthly"] = 1, ["@weekly"] = 1,
                      ["@daily"] = 1, ["@midnight"] = 1, ["@hourly"] = 1 }

local function valid_schedule(s)
  s = s:gsub("^CRON_TZ=%S+%s+", ""):gsub("^TZ=%S+%s+", "")
  if CRON_MACROS[s] then return true end
  local n = 0
  for field in s:gmatch("%S+") do
    if not field:find("^[%w%*/,%-%?]+$") then return false end
    n = n + 1
  end
  return n == 5
end

-- Keys of backup written at the level of `backup:` (the guide's snippet does it).
local function misplaced_keys(mongo, backup)
  local out = {}
  for _, k in ipairs(BACKUP_KEYS) do
    if mongo[k] ~= nil and (type(backup) ~= "table" or backup[k] == nil) then out[#out + 1] = k end
  end
  return out
end

local function report_misplaced(list, y, top, misplaced)
  local lines = {}
  for i, k in ipairs(misplaced) do lines[i] = tostring(line_of(y, { top, "mongodb", k })) end
  local bline, bcol = line_of(y, { top, "mongodb", "backup" })
  local names = "`" .. table.concat(misplaced, "`, `") .. "`"
  local one = #misplaced == 1
  local message = ("%s (line%s %s) %s at the indentation of `backup:`%s, so YAML reads %s and backup does not get %s")
      :format(names, one and "" or "s", table.concat(lines, ", "), one and "is" or "are",
              bline and (" (line %d, column %d)"):format(bline, bcol) or "",
              one and ("it as %s.mongodb.%s"):format(top, misplaced[1]) or ("them as keys of %s.mongodb"):format(top),
              one and "it" or "them")
  add(list, "azure_backup", "error", y.file, line_of(y, { top, "mongodb", misplaced[1] }), message,
      ("indent %s two more spaces, under backup:"):format(names))
end

local BACKUP_SNIPPET = 'backup:\n  enabled: true\n  provider: azure\n  schedule: "@daily"\n  bucket: <container>'
local WANT = { enabled = "enabled: true", provider = "provider: azure", schedule = 'schedule: "@daily"',
               bucket = "bucket: <container name>" }

local function azure_container(v)
  return #v >= 3 and #v <= 63 and v:find("^[a-z0-9][a-z0-9%-]*$") and not v:find("%-%-") and not v:find("%-$")
end

-- What is wrong with backup's value of k: level, message, fix; nil when nothing.
local BACKUP_RULES = {
  enabled = function(v)
    if v == true then return nil end
    if type(v) == "string" then return "warn", "enabled is a quoted string, not the boolean true" end
    return "error", ("backup is disabled (enabled: %s)"):format(tostring(v))
  end,
  provider = function(v)
    if v ~= "azure" then return "error", ("provider is %s; the Azure backup needs azure"):format(tostring(v)) end
  end,
  schedule = function(v)
    if type(v) ~= "string" or not valid_schedule(v) then
      return "warn", "schedule is not a cron schedule (5 fields, or @daily and the like)"
    end
  end,
  bucket = function(v)
    if type(v) ~= "string" or v == "" or v:find("^<.*>$") then
      return "error", "bucket is empty or still the guide's placeholder"
    end
    if not azure_container(v) then
      return "warn", "bucket is not an Azure container name (3-63 lowercase letters, digits, single hyphens)",
          "bucket: vantiq-backup"
    end
  end,
}

local function check_backup_value(list, y, keys, k, v)
  if v == nil then
    add(list, "azure_backup", "error", y.file, line_of(y, { table.unpack(keys, 1, #keys - 1) }),
        ("vantiq.mongodb.backup has no %s"):format(k), "add under backup: " .. WANT[k])
    return
  end
  local level, message, fix = BACKUP_RULES[k](v)
  if level then add(list, "azure_backup", level, y.file, line_of(y, keys), message, fix or WANT[k]) end
end

local function azure_deploy(self, list)
  local C = "azure_backup"
  local y = load_yaml(self.paths.deploy)
  if y.err then return parse_finding(list, C, y, "deploy.yaml") end
  local mongo, top = find_section(y.doc, { "mongodb" })
  if type(mongo) ~= "table" then
    add(list, C, "error", y.file, line_of(y, { "vantiq" }), "deploy.yaml has no vantiq.mongodb",
        "under vantiq:\n  mongodb:\n" .. BACKUP_SNIPPET:gsub("[^\n]+", "    %0"))
    return
  end
  if top ~= "vantiq" then wrong_top(list, C, y, top, "mongodb") end
  local backup = mongo.backup
  local misplaced = misplaced_keys(mongo, backup)
  if #misplaced > 0 then report_misplaced(list, y, top, misplaced) end
  if type(backup) ~= "table" then
    if #misplaced == 0 then
      add(list, C, "error", y.file, line_of(y, { top, "mongodb" }), "vantiq.mongodb.backup is not set",
          BACKUP_SNIPPET)
    end
    return
  end
  local skip = {}
  for _, k in ipairs(misplaced) do skip[k] = true end
  for _, k in ipairs(BACKUP_KEYS) do
    if not skip[k] then check_backup_value(list, y, { top, "mongodb", "backup", k }, k, backup[k]) end
  end
end

--- The doctor's azure_backup check: secrets.yaml's vantiq.dbbackup-creds.files.credentials,
--- the file it names (AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY exported), deploy.yaml's
--- vantiq.mongodb.backup (enabled: true, provider: azure, schedule, bucket). Each mistake of
--- the guide's snippets is named where it is. Returns a list of findings.
function Tools:check_azure_backup()
  local list = {}
  azure_secrets(self, list)
  azure_deploy(self, list)
  return list
end

-- ---- the keycloak check ----

local function azure_server(host)
  return type(host) == "string" and host:match("^([%w%-]+)%.postgres%.database%.azure%.com%.?$")
end

local function missing_persistence(list, y)
  local C = "keycloak"
  if dig(y.doc, { "keycloak", "database", "hostname" }) ~= nil then return end -- newer charts: not the guide's keys
  if dig(y.doc, { "keycloak", "persistence", "dbHost" }) ~= nil then
    add(list, C, "error", y.file, line_of(y, { "keycloak", "persistence" }),
        "persistence is directly under keycloak:, so the chart never reads it",
        "indent it under keycloak.keycloak (keycloak:\n  keycloak:\n    persistence: ...)")
  elseif commented_line(y.text, "dbHost") then
    add(list, C, "error", y.file, commented_line(y.text, "dbHost"),
        "keycloak.keycloak.persistence.dbHost is commented out",
        "uncomment dbHost (and dbUser) under keycloak.keycloak.persistence")
  else
    add(list, C, "error", y.file, line_of(y, { "keycloak" }), "keycloak.keycloak.persistence.dbHost is not set",
        "keycloak:\n  keycloak:\n    persistence:\n" ..
        "      dbHost: <server>.postgres.database.azure.com\n      dbUser: keycloak")
  end
end

local function check_db_user(list, y, host, user)
  local C, server = "keycloak", azure_server(host)
  local line = line_of(y, { "keycloak", "keycloak", "persistence", "dbUser" })
  if user == nil then
    local at = line_of(y, { "keycloak", "keycloak", "persistence" })
    if server then
      add(list, C, "error", y.file, at, "dbUser is not set: Azure Database for PostgreSQL needs it",
          "dbUser: keycloak (Flexible Server) or keycloak@" .. server .. " (Single Server)")
    else
      add(list, C, "warn", y.file, at, "dbUser is not set: the chart assumes keycloak", "dbUser: <database user>")
    end
    return
  end
  local name, at_server = tostring(user):match("^([^@]+)@(.+)$")
  if not name then return end
  if server and at_server ~= server then
    add(list, C, "error", y.file, line, ("dbUser names the server %s, but dbHost is on %s"):format(at_server, server),
        ("dbUser: %s (Flexible Server) or %s@%s (Single Server)"):format(name, name, server))
  else
    add(list, C, "warn", y.file, line,
        "dbUser has the user@server form, Azure Single Server's convention; " ..
        "on Flexible Server the plain user is right and this one fails",
        ("on Flexible Server: dbUser: %s"):format(name))
  end
end

--- The doctor's keycloak check of deploy.yaml: keycloak.keycloak.persistence.dbHost and
--- dbUser, and the user@server form (Azure Single Server's; a warning: Flexible Server wants
--- the plain user). Returns a list of findings.
function Tools:check_keycloak()
  local list, C = {}, "keycloak"
  if self:property("excludeKeycloak") == "true" then return list end
  local y = load_yaml(self.paths.deploy)
  if y.err then parse_finding(list, C, y, "deploy.yaml") return list end
  local pers = dig(y.doc, { "keycloak", "keycloak", "persistence" })
  if type(pers) ~= "table" or pers.dbHost == nil then missing_persistence(list, y) return list end
  local host = pers.dbHost
  if type(host) ~= "string" or host == "" or host:find("^<.*>$") then
    add(list, C, "error", y.file, line_of(y, { "keycloak", "keycloak", "persistence", "dbHost" }),
        "dbHost is empty or a placeholder", "dbHost: <server>.postgres.database.azure.com")
    return list
  end
  check_db_user(list, y, host, pers.dbUser)
  return list
end

-- ---- layout ----

local function typo_findings(list, y, known)
  if not y.doc then return end
  for _, key in ipairs(sorted_keys(y.doc)) do
    local meant = misspelling(tostring(key), known)
    if meant then
      add(list, "layout", "error", y.file, line_of(y, { key }),
          ("the top-level key `%s` looks like a misspelling of `%s`: nothing under it is read"):format(key, meant),
          ("rename it to `%s` (merge it into the existing block if there is one)"):format(meant))
    end
  end
end

--- Top-level keys one typo from a known one, secret files (secrets.yaml included) others
--- may read, files secrets.yaml names that do not exist. Returns a list of findings.
function Tools:check_layout()
  local list = {}
  typo_findings(list, load_yaml(self.paths.deploy), TOP_KEYS.deploy)
  typo_findings(list, load_yaml(self.paths.secrets), TOP_KEYS.secrets)
  for _, ref in ipairs(self:referenced_files()) do
    if not ref.exists then
      add(list, "layout", "error", self.paths.secrets, ref.line,
          ("%s names %s, which does not exist"):format(ref.key, ref.path),
          "put the file there, or fix the path")
    end
  end
  for _, f in ipairs(self:sensitive_files()) do
    local text = f.mode & 63 ~= 0 and read_file(f.path)
    if text and not is_public_pem(text) then mode_finding(list, "layout", f.path, f.mode) end
  end
  local st = uv.fs_stat(self.paths.secrets)
  if st and st.mode & 63 ~= 0 then mode_finding(list, "layout", self.paths.secrets, st.mode & MODE_BITS) end
  return list
end

--- Every check: layout, keycloak, and azure_backup when cluster.properties says
--- provider=azure (or opts.azure). What two checks both find (the same file, line or
--- kind, and level) is kept once.
function Tools:validate(opts)
  opts = opts or {}
  local provider = self:property("provider")
  local all, seen = {}, {}
  local lists = { self:check_keycloak(), self:check_layout() }
  if opts.azure or provider == "azure" then table.insert(lists, 1, self:check_azure_backup()) end
  for _, list in ipairs(lists) do
    for _, f in ipairs(list) do
      local key = ("%s:%s:%s"):format(f.file, f.line or f.kind or f.message, f.level)
      if not seen[key] then all[#all + 1] = f end
      seen[key] = true
    end
  end
  return all
end

-- ---- cluster Secrets ----

--- The data of a Secret object (as k:get returns it) decoded: key → secret object, each
--- registered for redaction (stringData, on an object not yet applied, too).
function secrets.decode_secret(secret)
  assert(type(secret) == "table", "secrets.decode_secret: a Secret object")
  local out = {}
  for k, v in pairs(secret.data or {}) do out[k] = secrets.wrap(base64.decode(v)) end
  for k, v in pairs(secret.stringData or {}) do out[k] = secrets.wrap(v) end
  return out
end

local function normalized(s) return (s:gsub("\r\n", "\n"):gsub("%s+$", "")) end

local function local_value(src)
  if secrets.is_secret(src) then return secrets.reveal(src) end
  if type(src) == "table" then return src.content and secrets.reveal(src.content) or read_file(src.path) end
  return read_file(src)
end

--- Compare a cluster Secret's data with local files without showing either side:
--- local_files maps a data key to a file path (or {content =}, or a secret object).
--- Returns {same = {keys}, differs = {keys}, missing = {keys the Secret lacks},
--- extra = {keys only the Secret has}, whitespace = {keys that differ only in line endings
--- or trailing blanks}}, or nil, err (the Secret, or a local file, cannot be read).
function secrets.compare_secret(k, ns, name, local_files)
  local obj, err = k:get("secrets", name, { namespace = ns })
  if not obj then return nil, err end
  local data = secrets.decode_secret(obj)
  local result = { same = {}, differs = {}, missing = {}, extra = {}, whitespace = {} }
  for _, key in ipairs(sorted_keys(local_files)) do
    local mine
    mine, err = local_value(local_files[key])
    if not mine then return nil, err end
    register_file(mine)
    local theirs = data[key] and secrets.reveal(data[key])
    if theirs == nil then table.insert(result.missing, key)
    elseif equal(mine, theirs) then table.insert(result.same, key)
    else
      table.insert(result.differs, key)
      if equal(normalized(mine), normalized(theirs)) then table.insert(result.whitespace, key) end
    end
  end
  for _, key in ipairs(sorted_keys(data)) do
    if local_files[key] == nil then table.insert(result.extra, key) end
  end
  return result
end

-- ---- passwords ----

local ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
secrets.ALPHABETS = {
  alnum = ALNUM,
  hex = "0123456789abcdef",
  digits = "0123456789",
  -- no quotes, backslash, "$", "#" or blanks: safe in YAML, properties and shell lines
  symbols = ALNUM .. "-_.~+=^!%",
}

local function check_alphabet(alphabet)
  if type(alphabet) ~= "string" or #alphabet < 2 then return nil, "an alphabet of at least 2 characters" end
  local seen = {}
  for i = 1, #alphabet do
    local b = alphabet:byte(i)
    -- a repeated character would be drawn more often than the others
    if seen[b] then return nil, ("the alphabet repeats %q"):format(string.char(b)) end
    if b < 32 or b > 126 then return nil, "the alphabet is printable ASCII only" end
    seen[b] = true
  end
  return alphabet
end

--- A random password from OpenSSL's generator: opts.length (24) characters of
--- opts.alphabet (a string of distinct printable ASCII characters, or the name of one of
--- secrets.ALPHABETS; "alnum" by default). Every character is equally likely: bytes that
--- would favour the first characters (256 is rarely a multiple of the alphabet's size)
--- are drawn again. Returns a secret object.
function secrets.password(opts)
  opts = opts or {}
  local length = opts.length or 24
  assert(math.type(length) == "integer" and length >= 1 and length <= 4096, "password: length from 1 to 4096")
  local alphabet, why = check_alphabet(secrets.ALPHABETS[opts.alphabet] or opts.alphabet or ALNUM)
  if not alphabet then error("password: " .. why, 2) end
  local tls = require "vq.core.tls"
  local m = #alphabet
  local limit = 256 - 256 % m
  local out = {}
  while #out < length do
    local bytes = assert(tls.random_bytes(length - #out + 16))
    for i = 1, #bytes do
      local b = bytes:byte(i)
      if b < limit and #out < length then out[#out + 1] = alphabet:sub(b % m + 1, b % m + 1) end
    end
  end
  return secrets.wrap(table.concat(out))
end

return secrets
