-- vq.git: the git a runbook does in the operator's repositories (the tools dir, the
-- cluster repo), through vq.proc: argv only, never a prompt (no terminal: the child runs
-- in a session of its own, and GIT_TERMINAL_PROMPT=0).
--
--   local repo = assert(git.open(dir, {env=, timeout=}))
--   repo:pull() -> {updated=, before=, after=}
--   repo:current_branch() -> name | nil, err "detached"
--   repo:checkout_new(branch) -> true | nil, err
--   repo:is_clean() -> boolean, entries
--   repo:status(paths) -> {{path=, status="XY", from=}, ...}
--   repo:diff(paths) -> {files = status entries, text = unified diff against HEAD}
--   repo:commit(message, {run_id=, paths=}) -> {committed=, sha=, files=} | nil, err
--   repo:push(required) -> {pushed=, remote=, branch=} | nil, err
--
-- Files registered with git-secret (.gitsecret/paths/mapping.cfg) are encrypted with
-- `git secret hide -m` before a commit, and a commit that would include one of them in
-- plaintext is refused.
local proc = require "vq.proc"
local vq = require "vq"
local log = require "log"
local uv = require "luv"

local M = {}
local Repo = {}
Repo.__index = Repo

M.DEFAULT_TIMEOUT = 600
local EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"

local function list_of(paths)
  if paths == nil then return {} end
  if type(paths) == "string" then return { paths } end
  return paths
end

local function append(list, more)
  for _, v in ipairs(more) do list[#list + 1] = v end
  return list
end

local function first_line(text)
  return (text or ""):match("^%s*([^\n]*)") or ""
end

local function exists(path) return uv.fs_stat(path) ~= nil end

local function split_nul(text)
  local fields = {}
  for f in text:gmatch("([^\0]*)\0") do fields[#fields + 1] = f end
  return fields
end

-- ---- running git ----

--- Run git with the arguments; returns the result whatever the exit code, or nil, err
--- when git could not run or timed out.
function Repo:try(args, opts)
  opts = opts or {}
  log.debug("git %s", table.concat(args, " "))
  return proc.run {
    argv = append({ "git" }, args), cwd = self.root or self.dir, env = self.env,
    stdin = opts.stdin, timeout = self.timeout,
  }
end

--- Run git; its stdout, or nil, err "git" (with exit, stderr) when it fails.
function Repo:git(args, opts)
  local r, err = self:try(args, opts)
  if not r then return nil, err end
  if r.code ~= 0 then
    local why = first_line(r.stderr) ~= "" and first_line(r.stderr) or first_line(r.stdout)
    return nil, vq.error("git", ("git %s failed: %s"):format(args[1], why ~= "" and why or
      ("exit code " .. tostring(r.code or r.signal))),
      { args = args, exit = r.code, signal = r.signal, stderr = r.stderr, stdout = r.stdout })
  end
  return r.stdout
end

local function trimmed(text) return text and (text:gsub("%s+$", "")) end

--- A repository: dir or any folder inside its work tree.
function M.open(dir, opts)
  opts = opts or {}
  local env = { GIT_TERMINAL_PROMPT = "0" }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local repo = setmetatable({ dir = dir, env = env, timeout = opts.timeout or M.DEFAULT_TIMEOUT }, Repo)
  local st = uv.fs_stat(dir)
  if not st or st.type ~= "directory" then
    return nil, vq.error("not_a_repo", ("%s is not a directory"):format(dir), { dir = dir })
  end
  local top, err = repo:git { "rev-parse", "--show-toplevel" }
  if not top then
    if err.code ~= "git" then return nil, err end
    return nil, vq.error("not_a_repo", ("%s is not in a git work tree"):format(dir),
      { dir = dir, stderr = err.stderr })
  end
  repo.root = trimmed(top)
  return repo
end

-- ---- reading the state ----

--- The commit HEAD points to, or nil in a repository without commits.
function Repo:head()
  local r = self:try { "rev-parse", "-q", "--verify", "HEAD^{commit}" }
  if r and r.code == 0 then return trimmed(r.stdout) end
  return nil
end

function Repo:current_branch()
  local r, err = self:try { "symbolic-ref", "-q", "--short", "HEAD" }
  if not r then return nil, err end
  if r.code ~= 0 then
    return nil, vq.error("detached", ("%s is not on a branch (detached HEAD)"):format(self.root))
  end
  return trimmed(r.stdout)
end

--- The upstream of the current branch ("origin/main"), or nil.
function Repo:upstream()
  local r = self:try { "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}" }
  if r and r.code == 0 then return trimmed(r.stdout) end
  return nil
end

local function parse_status(out)
  local entries, fields = {}, split_nul(out)
  local i = 1
  while i <= #fields do
    local f = fields[i]
    local entry = { status = f:sub(1, 2), path = f:sub(4) }
    if entry.status:find("[RC]") then
      i = i + 1
      entry.from = fields[i]
    end
    entries[#entries + 1] = entry
    i = i + 1
  end
  return entries
end

--- What differs from HEAD, untracked files included (paths: a path or a list).
function Repo:status(paths)
  local out, err = self:git(append({ "status", "--porcelain=v1", "-z", "--untracked-files=all", "--" },
    list_of(paths)))
  if not out then return nil, err end
  return parse_status(out)
end

function Repo:is_clean()
  local entries, err = self:status()
  if not entries then return nil, err end
  return #entries == 0, entries
end

--- What a step changed: the files (status entries) and the diff of the tracked ones.
function Repo:diff(paths)
  local files, err = self:status(paths)
  if not files then return nil, err end
  local text
  text, err = self:git(append({ "diff", "--no-color", "--no-ext-diff", self:head() or EMPTY_TREE, "--" },
    list_of(paths)))
  if not text then return nil, err end
  return { files = files, text = text }
end

-- ---- changing it ----

function Repo:pull()
  if not self:upstream() then
    local branch = self:current_branch() or "HEAD"
    return nil, vq.error("no_upstream", ("%s has no upstream branch to pull from"):format(branch),
      { root = self.root })
  end
  local before = self:head()
  local _, err = self:git { "pull", "--ff-only", "--quiet" }
  if err then return nil, err end
  local after = self:head()
  return { updated = before ~= after, before = before, after = after }
end

function Repo:checkout_new(branch)
  assert(type(branch) == "string", "checkout_new: the branch name must be a string")
  local r = self:try { "check-ref-format", "--branch", branch }
  if branch:sub(1, 1) == "-" or not r or r.code ~= 0 then
    return nil, vq.error("bad_branch", ("%q is not a valid branch name"):format(branch), { branch = branch })
  end
  r = self:try { "show-ref", "--verify", "--quiet", "refs/heads/" .. branch }
  if r and r.code == 0 then
    return nil, vq.error("branch_exists", ("branch %s already exists"):format(branch), { branch = branch })
  end
  local _, err = self:git { "checkout", "-q", "-b", branch }
  if err then return nil, err end
  return true
end

-- ---- git-secret ----

local function normal_path(p) return (p:gsub("^%./", "")) end

--- The files registered with git-secret, relative to the repository's root.
function Repo:secret_paths()
  local f = io.open(self.root .. "/.gitsecret/paths/mapping.cfg", "r")
  if not f then return {} end
  local paths = {}
  for line in f:lines() do
    line = line:gsub("\r$", "")
    local path = line:match("^(.-):%x+$") or line
    if path:match("%S") then paths[#paths + 1] = normal_path(path) end
  end
  f:close()
  return paths
end

-- Encrypt the registered files whose plaintext is here (-m: only those that changed).
function Repo:hide_secrets(secrets)
  local present = false
  for _, p in ipairs(secrets) do present = present or exists(self.root .. "/" .. p) end
  if not present then return true end
  local _, err = self:git { "secret", "hide", "-m" }
  if err then
    err.code = "git_secret"
    err.message = "git secret hide failed, so nothing was committed: " .. err.message
    return nil, err
  end
  return true
end

function Repo:staged()
  local out, err = self:git { "diff", "--cached", "--name-only", "-z", "--no-renames" }
  if not out then return nil, err end
  return split_nul(out)
end

local function registered_among(files, secrets)
  local registered, found = {}, {}
  for _, p in ipairs(secrets) do registered[p] = true end
  for _, f in ipairs(files) do
    if registered[f] then found[#found + 1] = f end
  end
  return found
end

-- Take the plaintext back out of the index (the files stay as they are).
function Repo:unstage(paths)
  if self:head() then return self:git(append({ "reset", "-q", "--" }, paths)) end
  return self:git(append({ "rm", "-q", "--cached", "--" }, paths))
end

function Repo:stage(paths, secrets)
  local _, err = self:git(append({ "add", "-A", "--" }, #paths > 0 and paths or { "." }))
  if err then return nil, err end
  local encrypted = {}
  for _, p in ipairs(secrets) do
    if exists(self.root .. "/" .. p .. ".secret") then encrypted[#encrypted + 1] = p .. ".secret" end
  end
  if #encrypted == 0 then return true end
  return self:git(append({ "add", "--" }, encrypted))
end

--- Commit what changed (opts.paths, default everything) with the run's id in the
--- message. Returns {committed = false} when there is nothing to commit.
function Repo:commit(message, opts)
  assert(type(message) == "string" and message:match("%S"), "commit: a message is needed")
  opts = opts or {}
  local secrets = self:secret_paths()
  local ok, err = self:hide_secrets(secrets)
  if not ok then return nil, err end
  ok, err = self:stage(list_of(opts.paths), secrets)
  if not ok then return nil, err end
  local staged
  staged, err = self:staged()
  if not staged then return nil, err end
  local plaintext = registered_among(staged, secrets)
  if #plaintext > 0 then
    self:unstage(plaintext)
    return nil, vq.error("plaintext_staged",
      ("refusing to commit %s in plaintext: it is registered with git-secret (add it to " ..
       ".gitignore; git secret hide commits its .secret)"):format(table.concat(plaintext, ", ")),
      { files = plaintext })
  end
  if #staged == 0 then return { committed = false, files = {} } end
  local text = ("%s\n\nRun-Id: %s\n"):format(message:gsub("%s+$", ""), opts.run_id or log.run_id())
  local _, commit_err = self:git({ "commit", "-q", "-F", "-" }, { stdin = text })
  if commit_err then return nil, commit_err end
  return { committed = true, sha = self:head(), files = staged, message = text }
end

-- The remote to push the branch to: its configured one, else origin, else the only one.
function Repo:push_remote(branch)
  local r = self:try { "config", "--get", "branch." .. branch .. ".remote" }
  if r and r.code == 0 and trimmed(r.stdout) ~= "" then return trimmed(r.stdout) end
  local out = self:git { "remote" } or ""
  local remotes = {}
  for name in out:gmatch("%S+") do
    if name == "origin" then return name end
    remotes[#remotes + 1] = name
  end
  if #remotes == 1 then return remotes[1] end
  return nil
end

--- Push the current branch. `required` (the cluster repo's requiredRemote) decides what a
--- missing remote or a failed push is: an error, or a warning and {pushed = false}.
function Repo:push(required)
  if type(required) == "table" then required = required.required end
  assert(required == nil or type(required) == "boolean", "push: required must be a boolean")
  local branch, err = self:current_branch()
  if not branch then return nil, err end
  local remote = self:push_remote(branch)
  if not remote then
    if required then
      return nil, vq.error("no_remote", ("%s has no remote to push to, and one is required"):format(self.root))
    end
    log.info("%s has no remote: nothing pushed (no remote required)", self.root)
    return { pushed = false, reason = "no remote", branch = branch }
  end
  local upstream = self:upstream()
  local args = { "push", "--quiet" }
  if not upstream then args[#args + 1] = "-u" end
  local _, push_err = self:git(append(args, { remote, branch }))
  if push_err then
    push_err.code = "push"
    if required then return nil, push_err end
    log.warn("push of %s to %s failed (no remote required): %s", branch, remote, push_err.message)
    return { pushed = false, reason = "failed", error = push_err, remote = remote, branch = branch }
  end
  return { pushed = true, remote = remote, branch = branch }
end

return M
