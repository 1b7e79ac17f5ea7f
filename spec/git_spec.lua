local uv = require "luv"
local log = require "log"
local proc = require "vq.proc"
local git = require "vq.git"
local files = require "sim.gradlew.files"

local EXEC = tonumber("755", 8)

local write_file, read_file = files.write, files.read

-- A stand-in for git-secret (not installed here): records its arguments, and `hide`
-- "encrypts" each registered file that exists into <file>.secret. FAIL_HIDE makes it fail.
local GIT_SECRET = [[#!/bin/sh
echo "$*" >> "$GIT_SECRET_LOG"
if [ "$1" = hide ]; then
  [ -n "$FAIL_HIDE" ] && { echo "gpg: no public key" >&2; exit 1; }
  while IFS= read -r line; do
    path=${line%%:*}
    [ -f "$path" ] && printf 'ENC[%s]' "$(cat "$path")" > "$path.secret"
  done < .gitsecret/paths/mapping.cfg
fi
exit 0
]]

describe("vq.git", function()
  local root, work, remote, env

  -- git for the test's own set-up, with the same isolated configuration.
  local function sh(dir, ...)
    local r = assert(proc.run { argv = { "git", ... }, cwd = dir, env = env })
    assert(r.code == 0, table.concat({ ... }, " ") .. ": " .. r.stderr)
    return (r.stdout:gsub("%s+$", ""))
  end

  local function init_work(dir)
    sh(root, "init", "-q", "-b", "main", dir)
    sh(dir, "config", "user.name", "Operator")
    sh(dir, "config", "user.email", "op@example.com")
  end

  before_each(function()
    root = assert(uv.fs_mkdtemp("/tmp/vq-git-XXXXXX"))
    assert(uv.fs_mkdir(root .. "/bin", EXEC))
    write_file(root .. "/bin/git-secret", GIT_SECRET, EXEC)
    write_file(root .. "/gitconfig", "")
    env = {
      PATH = root .. "/bin:" .. os.getenv("PATH"),
      GIT_SECRET_LOG = root .. "/git-secret.log",
      GIT_CONFIG_GLOBAL = root .. "/gitconfig",
      GIT_CONFIG_NOSYSTEM = "1",
    }
    remote = root .. "/remote.git"
    work = root .. "/work"
    sh(root, "init", "-q", "--bare", "-b", "main", remote)
    init_work(work)
    write_file(work .. "/README", "tools\n")
    sh(work, "add", "README")
    sh(work, "commit", "-q", "-m", "initial")
    sh(work, "remote", "add", "origin", remote)
    sh(work, "push", "-q", "-u", "origin", "main")
  end)

  after_each(function() proc.run { "rm", "-rf", root } end)

  local function open(dir) return assert(git.open(dir or work, { env = env })) end

  local function secret_calls() return read_file(env.GIT_SECRET_LOG) or "" end

  it("opens a work tree from any folder in it, and refuses what is not one", function()
    assert(uv.fs_mkdir(work .. "/sub", EXEC))
    local repo = open(work .. "/sub")
    assert.are.equal(uv.fs_realpath(work), repo.root)
    local r, err = git.open(root .. "/bin", { env = env })
    assert.is_nil(r)
    assert.are.equal("not_a_repo", err.code)
    r, err = git.open(root .. "/missing")
    assert.is_nil(r)
    assert.are.equal("not_a_repo", err.code)
  end)

  it("knows the branch, and creates a new one", function()
    local repo = open()
    assert.are.equal("main", repo:current_branch())
    assert.is_true(repo:checkout_new("upgrade/r1.36;rm-rf"))
    assert.are.equal("upgrade/r1.36;rm-rf", repo:current_branch())
    local ok, err = repo:checkout_new("upgrade/r1.36;rm-rf")
    assert.is_nil(ok)
    assert.are.equal("branch_exists", err.code)
    for _, bad in ipairs { "-f", "--orphan=x", "a..b", "x~1", "with space", "" } do
      ok, err = repo:checkout_new(bad)
      assert.is_nil(ok)
      assert.are.equal("bad_branch", err.code)
    end
    sh(work, "checkout", "-q", "--detach")
    ok, err = repo:current_branch()
    assert.is_nil(ok)
    assert.are.equal("detached", err.code)
  end)

  it("tells a clean tree from a changed one, and what a step changed", function()
    local repo = open()
    assert.is_true((repo:is_clean()))
    write_file(work .. "/README", "tools\nchanged by the step\n")
    write_file(work .. "/new file.yaml", "a: 1\n")
    local clean, entries = repo:is_clean()
    assert.is_false(clean)
    assert.are.equal(2, #entries)
    local d = assert(repo:diff { "README" })
    assert.are.same({ { status = " M", path = "README" } }, d.files)
    assert.matches("+changed by the step", d.text, 1, true)
    d = assert(repo:diff())
    assert.are.equal(2, #d.files)
    local statuses = {}
    for _, f in ipairs(d.files) do statuses[f.path] = f.status end
    assert.are.same({ README = " M", ["new file.yaml"] = "??" }, statuses)
  end)

  it("commits with the run's id in the message", function()
    local repo = open()
    write_file(work .. "/cluster.properties", "requiredRemote=true\n")
    local c = assert(repo:commit("Configure the cluster\n", { run_id = "run-42" }))
    assert.is_true(c.committed)
    assert.are.same({ "cluster.properties" }, c.files)
    assert.are.equal(sh(work, "rev-parse", "HEAD"), c.sha)
    assert.are.equal("Configure the cluster\n\nRun-Id: run-42", sh(work, "log", "-1", "--format=%B"))
    assert.is_true((repo:is_clean()))
    write_file(work .. "/other", "x\n")
    c = assert(repo:commit("Default id"))
    assert.matches("Run-Id: " .. log.run_id(), sh(work, "log", "-1", "--format=%B"), 1, true)
    c = assert(repo:commit("Nothing"))
    assert.is_false(c.committed)
  end)

  it("commits only the paths given", function()
    local repo = open()
    write_file(work .. "/a", "a\n")
    write_file(work .. "/b", "b\n")
    local c = assert(repo:commit("only a", { paths = { "a" } }))
    assert.are.same({ "a" }, c.files)
    assert.are.equal("?? b", sh(work, "status", "--porcelain"))
  end)

  it("pulls what others pushed, fast-forward only", function()
    local other = root .. "/other"
    sh(root, "clone", "-q", remote, other)
    sh(other, "config", "user.name", "Other")
    sh(other, "config", "user.email", "other@example.com")
    write_file(other .. "/from-other", "x\n")
    sh(other, "add", "from-other")
    sh(other, "commit", "-q", "-m", "other")
    sh(other, "push", "-q")
    local repo = open()
    local r = assert(repo:pull())
    assert.is_true(r.updated)
    assert.are.equal(sh(other, "rev-parse", "HEAD"), r.after)
    assert.are.equal("x\n", read_file(work .. "/from-other"))
    r = assert(repo:pull())
    assert.is_false(r.updated)
    assert(repo:checkout_new("local-only"))
    local ok, err = repo:pull()
    assert.is_nil(ok)
    assert.are.equal("no_upstream", err.code)
  end)

  it("pushes a new branch, setting its upstream", function()
    local repo = open()
    assert(repo:checkout_new("upgrade-1"))
    write_file(work .. "/step", "done\n")
    assert(repo:commit("step"))
    local p = assert(repo:push(true))
    assert.is_true(p.pushed)
    assert.are.equal("origin", p.remote)
    assert.are.equal(sh(work, "rev-parse", "HEAD"), sh(remote, "rev-parse", "refs/heads/upgrade-1"))
    assert.are.equal("origin/upgrade-1", repo:upstream())
    write_file(work .. "/step", "again\n")
    assert(repo:commit("again"))
    assert.is_true(assert(repo:push { required = true }).pushed)
    assert.are.equal(sh(work, "rev-parse", "HEAD"), sh(remote, "rev-parse", "refs/heads/upgrade-1"))
  end)

  it("lets requiredRemote decide whether a push may be missing or fail", function()
    local lonely = root .. "/lonely"
    init_work(lonely)
    write_file(lonely .. "/f", "x\n")
    local repo = open(lonely)
    assert(repo:commit("first"))
    local ok, err = repo:push(true)
    assert.is_nil(ok)
    assert.are.equal("no_remote", err.code)
    local p = assert(repo:push(false))
    assert.is_false(p.pushed)
    sh(lonely, "remote", "add", "origin", root .. "/no-such-remote.git")
    ok, err = repo:push(true)
    assert.is_nil(ok)
    assert.are.equal("push", err.code)
    p = assert(repo:push(false))
    assert.is_false(p.pushed)
    assert.are.equal("push", p.error.code)
    assert.has_error(function() repo:push("yes") end)
  end)

  describe("with git-secret", function()
    local function register(paths)
      assert(uv.fs_mkdir(work .. "/.gitsecret", EXEC))
      assert(uv.fs_mkdir(work .. "/.gitsecret/paths", EXEC))
      local lines = {}
      for _, p in ipairs(paths) do lines[#lines + 1] = p .. ":0123abcd" end
      write_file(work .. "/.gitsecret/paths/mapping.cfg", table.concat(lines, "\n") .. "\n")
    end

    it("hides the registered files before committing, and commits only their .secret", function()
      register { "secrets/license.key" }
      write_file(work .. "/.gitignore", "secrets/license.key\n")
      assert(uv.fs_mkdir(work .. "/secrets", EXEC))
      write_file(work .. "/secrets/license.key", "PLAINTEXT-KEY")
      write_file(work .. "/deploy.yaml", "replicas: 3\n")
      local c = assert(open():commit("rotate the license"))
      assert.is_true(c.committed)
      assert.are.equal("hide -m\n", secret_calls())
      local tree = sh(work, "ls-tree", "-r", "--name-only", "HEAD")
      assert.matches("secrets/license.key.secret", tree, 1, true)
      assert.is_nil(tree:find("secrets/license.key\n", 1, true))
      assert.is_nil(tree:match("secrets/license.key$"))
      assert.are.equal("ENC[PLAINTEXT-KEY]", sh(work, "show", "HEAD:secrets/license.key.secret"))
    end)

    it("refuses to commit a registered file in plaintext, and unstages it", function()
      register { "./credentials.txt" }
      write_file(work .. "/credentials.txt", "password=hunter2\n")
      write_file(work .. "/other.txt", "x\n")
      local head = sh(work, "rev-parse", "HEAD")
      local c, err = open():commit("oops")
      assert.is_nil(c)
      assert.are.equal("plaintext_staged", err.code)
      assert.are.same({ "credentials.txt" }, err.files)
      assert.are.equal(head, sh(work, "rev-parse", "HEAD"))
      local staged = "\n" .. sh(work, "diff", "--cached", "--name-only") .. "\n"
      assert.is_nil(staged:find("\ncredentials.txt\n", 1, true))
      assert.is_truthy(staged:find("\nother.txt\n", 1, true))
    end)

    it("refuses a plaintext the operator staged by hand", function()
      register { "k.pem" }
      write_file(work .. "/.gitignore", "k.pem\n")
      write_file(work .. "/k.pem", "KEY\n")
      sh(work, "add", "-f", "k.pem")
      local c, err = open():commit("by hand", { paths = { ".gitignore" } })
      assert.is_nil(c)
      assert.are.equal("plaintext_staged", err.code)
    end)

    it("commits nothing when git secret hide fails", function()
      register { "k.pem" }
      write_file(work .. "/.gitignore", "k.pem\n")
      write_file(work .. "/k.pem", "KEY\n")
      local head = sh(work, "rev-parse", "HEAD")
      env.FAIL_HIDE = "1"
      local c, err = open():commit("rotate")
      assert.is_nil(c)
      assert.are.equal("git_secret", err.code)
      assert.matches("no public key", err.message, 1, true)
      assert.are.equal(head, sh(work, "rev-parse", "HEAD"))
    end)

    it("does not call git-secret when no registered plaintext is here", function()
      register { "k.pem" }
      write_file(work .. "/notes", "n\n")
      assert(open():commit("notes"))
      assert.are.equal("", secret_calls())
    end)
  end)
end)
