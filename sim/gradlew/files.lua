-- Files and git for the deployment tool's stand-in and its scratch copies: small blocking
-- reads and writes (a tools dir holds a few small files), programs through vq.proc.
local uv = require "luv"
local proc = require "vq.proc"

local M = {}

function M.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read("a")
  f:close()
  return text
end

function M.kind(path)
  local st = uv.fs_lstat(path)
  return st and st.type
end

function M.exists(path) return uv.fs_stat(path) ~= nil end

function M.is_dir(path)
  local st = uv.fs_stat(path)
  return st ~= nil and st.type == "directory"
end

function M.dirname(path) return path:match("^(.*)/[^/]*$") or "." end

function M.mkdir_p(path)
  if M.is_dir(path) then return true end
  local parent = M.dirname(path)
  if parent ~= path and parent ~= "" then M.mkdir_p(parent) end
  local ok, err = uv.fs_mkdir(path, tonumber("755", 8))
  if not ok and not M.is_dir(path) then error(("cannot create %s: %s"):format(path, err), 0) end
  return true
end

-- A symlink is replaced, never written through: a link may lead out of a scratch copy.
function M.write(path, text, mode)
  M.mkdir_p(M.dirname(path))
  if M.kind(path) == "link" then os.remove(path) end
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  if mode then assert(uv.fs_chmod(path, mode)) end
end

--- The names in a folder, sorted.
function M.list(dir)
  local names, req = {}, uv.fs_scandir(dir)
  while req do
    local name = uv.fs_scandir_next(req)
    if not name then break end
    names[#names + 1] = name
  end
  table.sort(names)
  return names
end

--- Absolute path (symlinks resolved) of an existing path, or nil.
function M.real(path) return uv.fs_realpath(path) end

local function check(r, err, what)
  if not r then return nil, ("%s: %s"):format(what, err.message or tostring(err)) end
  if r.code ~= 0 then return nil, ("%s: %s"):format(what, (r.stderr ~= "" and r.stderr or r.stdout):gsub("%s+$", "")) end
  return r.stdout
end

--- Run a program; its stdout, or nil, message.
function M.run(argv, opts)
  opts = opts or {}
  local r, err = proc.run { argv = argv, cwd = opts.cwd, env = opts.env, timeout = opts.timeout or 120 }
  return check(r, err, table.concat(argv, " "))
end

--- Copy a folder's content (modes, times, symlinks as they are) into another.
function M.copy_tree(from, to)
  M.mkdir_p(to)
  return M.run({ "cp", "-a", from .. "/.", to }, { timeout = 1800 })
end

-- git without the operator's identity or a prompt: the stand-in's commits name the tool.
local GIT_ENV = { GIT_TERMINAL_PROMPT = "0", GIT_AUTHOR_NAME = "k8sdeploy_tools", GIT_AUTHOR_EMAIL = "k8sdeploy_tools@vqsim.invalid",
                  GIT_COMMITTER_NAME = "k8sdeploy_tools", GIT_COMMITTER_EMAIL = "k8sdeploy_tools@vqsim.invalid" }

-- Hooks never run: a copied repository's hooks may reach outside the copy.
function M.git(dir, args)
  local argv = { "git", "-C", dir, "-c", "core.hooksPath=/dev/null" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return M.run(argv, { env = GIT_ENV })
end

function M.is_repo(dir) return M.exists(dir .. "/.git") end

--- The checked-out branch of a repository, or nil.
function M.branch(dir)
  local out = M.git(dir, { "symbolic-ref", "--short", "-q", "HEAD" })
  return out and out:match("^%s*(.-)%s*$") or nil
end

return M
