local vq = require "vq"
local uv = require "luv"
local proc = require "vq.proc"
local run = require "spec.support.run"
local files = require "sim.gradlew.files"

local MY_PID = uv.os_getpid()

-- /proc/<pid>/stat: state, parent, process group (the command may hold spaces: skip it).
local function stat(pid)
  local f = io.open(("/proc/%d/stat"):format(pid))
  if not f then return nil end
  local text = f:read("a")
  f:close()
  local state, ppid, pgrp = text:match("%) (%S) (%d+) (%d+)")
  return { state = state, ppid = tonumber(ppid), pgrp = tonumber(pgrp) }
end

-- Gone, or a zombie some other parent has to reap (an orphaned grandchild).
local function dead(pid)
  local s = stat(pid)
  return s == nil or (s.state == "Z" and s.ppid ~= MY_PID)
end

local function wait_until(seconds, predicate)
  local deadline = vq.now() + seconds
  while vq.now() < deadline do
    if predicate() then return true end
    vq.sleep(0.02)
  end
  return predicate()
end

local function my_zombies()
  local req = uv.fs_scandir("/proc")
  local found = {}
  while true do
    local name = uv.fs_scandir_next(req)
    if not name then break end
    local pid = tonumber(name)
    local s = pid and stat(pid)
    if s and s.ppid == MY_PID and s.state == "Z" then found[#found + 1] = pid end
  end
  return found
end

local function fd_count()
  local req = uv.fs_scandir("/proc/self/fd")
  local n = 0
  while uv.fs_scandir_next(req) do n = n + 1 end
  return n
end

local tmpdir = run.tmpdir

local write_file = files.write

describe("proc.run", function()
  it("returns the exit code and the output", function()
    local r = assert(proc.run { "sh", "-c", "echo out; echo err >&2; exit 3" })
    assert.are.equal(3, r.code)
    assert.is_nil(r.signal)
    assert.are.equal("out\n", r.stdout)
    assert.are.equal("err\n", r.stderr)
    assert.is_true(r.duration >= 0 and r.duration < 5)
    r = assert(proc.run { argv = { "true" } })
    assert.are.equal(0, r.code)
  end)

  it("keeps the output byte for byte, a last line without newline included", function()
    local r = assert(proc.run { "printf", "a\n\nb\r\nc" })
    assert.are.equal("a\n\nb\r\nc", r.stdout)
  end)

  it("passes arguments literally, never through a shell", function()
    local dir = tmpdir()
    local marker = dir .. "/pwned"
    local args = { "a b", "it's \"quoted\"", ";rm -rf " .. dir, "$(touch " .. marker .. ")",
      "`touch " .. marker .. "`", "*", "--version", "" }
    local lines = {}
    local argv = { "printf", "[%s]\\n" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local r = assert(proc.run { argv = argv, cwd = dir, on_stdout = function(l) lines[#lines + 1] = l end })
    assert.are.equal(0, r.code)
    for i, a in ipairs(args) do assert.are.equal("[" .. a .. "]", lines[i]) end
    assert.is_nil(uv.fs_stat(marker))
    assert.is_truthy(uv.fs_stat(dir))
    proc.run { "rm", "-rf", dir }
  end)

  it("says spawn for a program that does not exist or cannot run", function()
    local r, err = proc.run { "no-such-program-vq" }
    assert.is_nil(r)
    assert.are.equal("spawn", err.code)
    assert.are.equal("ENOENT", err.errno)
    assert.matches("no%-such%-program%-vq", err.message)
    local dir = tmpdir()
    write_file(dir .. "/script", "#!/bin/sh\necho hi\n", tonumber("644", 8))
    r, err = proc.run { dir .. "/script" }
    assert.is_nil(r)
    assert.are.equal("spawn", err.code)
    assert.are.equal("EACCES", err.errno)
    proc.run { "rm", "-rf", dir }
  end)

  it("says cwd for a working directory that does not exist", function()
    local r, err = proc.run { "true", cwd = "/nonexistent/vq" }
    assert.is_nil(r)
    assert.are.equal("cwd", err.code)
  end)

  it("raises for programming errors", function()
    assert.has_error(function() proc.run {} end)
    assert.has_error(function() proc.run { "echo", {} } end)
    assert.has_error(function() proc.run { "echo", env = { ["A=B"] = "x" } } end)
  end)

  it("runs in a directory, inherits or replaces the environment", function()
    local dir = tmpdir()
    local real = uv.fs_realpath(dir)
    assert.are.equal(real .. "\n", assert(proc.run { "pwd", "-P", cwd = dir }).stdout)
    local r = assert(proc.run { "sh", "-c", 'echo "$HOME|$VQ_A|$VQ_B"', env = { VQ_A = "1 2", VQ_B = "$x;y" } })
    assert.are.equal(os.getenv("HOME") .. "|1 2|$x;y\n", r.stdout)
    r = assert(proc.run { "/usr/bin/env", env_clear = true, env = { ONLY = "yes" } })
    assert.are.equal("ONLY=yes\n", r.stdout)
    r = assert(proc.run { "sh", "-c", 'echo "[$HOME]"', env = { HOME = false } })
    assert.are.equal("[]\n", r.stdout)
    proc.run { "rm", "-rf", dir }
  end)

  it("feeds stdin", function()
    local r = assert(proc.run { "cat", stdin = "hello\nworld" })
    assert.are.equal("hello\nworld", r.stdout)
    local big = ("0123456789abcdef\n"):rep(100000)
    r = assert(proc.run { "wc", "-c", stdin = big })
    assert.are.equal(#big, tonumber(r.stdout:match("%d+")))
    r = assert(proc.run { "cat", stdin = "" })
    assert.are.equal("", r.stdout)
  end)

  it("streams lines to the callbacks as they come, by stream and in order", function()
    local seen, first_at = {}, nil
    local t0 = vq.now()
    local script = "echo o1; sleep 0.05; echo e1 >&2; sleep 0.05; echo o2; sleep 0.05; " ..
      "echo e2 >&2; sleep 0.4; echo late"
    local r = assert(proc.run {
      "sh", "-c", script,
      on_stdout = function(l) seen[#seen + 1] = "out:" .. l; first_at = first_at or vq.now() end,
      on_stderr = function(l) seen[#seen + 1] = "err:" .. l end,
    })
    assert.are.same({ "out:o1", "err:e1", "out:o2", "err:e2", "out:late" }, seen)
    assert.is_true(first_at - t0 < r.duration - 0.3, "the first line came only at the end")
    assert.are.equal("o1\no2\nlate\n", r.stdout)
    assert.are.equal("e1\ne2\n", r.stderr)
  end)

  it("keeps every line whole when both streams write fast", function()
    local script = "i=0; while [ $i -lt 2000 ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); done"
    local outs, errs = {}, {}
    local r = assert(proc.run { "sh", "-c", script, on_line = function(l, s)
      if s == "stdout" then outs[#outs + 1] = l else errs[#errs + 1] = l end
    end })
    assert.are.equal(0, r.code)
    assert.are.equal(2000, #outs)
    assert.are.equal(2000, #errs)
    for i = 1, 2000 do
      assert.are.equal("out-" .. (i - 1), outs[i])
      assert.are.equal("err-" .. (i - 1), errs[i])
    end
  end)

  it("strips a carriage return from the lines handed to callbacks", function()
    local got
    proc.run { "printf", "x\r\n", on_stdout = function(l) got = l end }
    assert.are.equal("x", got)
  end)

  it("keeps only the last max_output bytes", function()
    local r = assert(proc.run { "sh", "-c", "seq 1 100000", max_output = 1000 })
    assert.is_true(#r.stdout <= 1000)
    assert.is_true(r.truncated)
    assert.matches("100000\n$", r.stdout)
  end)

  it("reports a signal", function()
    local r = assert(proc.run { "sh", "-c", "kill -USR1 $$" })
    assert.are.equal("USR1", r.signal)
    assert.is_nil(r.code)
  end)

  it("times out: SIGTERM to the group", function()
    local t0 = vq.now()
    local r, err = proc.run { "sleep", "10", timeout = 0.2 }
    assert.is_nil(r)
    assert.are.equal("timeout", err.code)
    assert.are.equal("TERM", err.signal)
    assert.is_true(vq.now() - t0 < 2)
    assert.is_true(dead(err.pid))
  end)

  it("kills with SIGKILL what ignores SIGTERM, after the grace period", function()
    local t0 = vq.now()
    local r, err = proc.run {
      "sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done",
      timeout = 0.2, grace = 0.4,
    }
    local elapsed = vq.now() - t0
    assert.is_nil(r)
    assert.are.equal("timeout", err.code)
    assert.are.equal("KILL", err.signal)
    assert.are.equal("ready\n", err.stdout)
    assert.is_true(elapsed >= 0.55, "killed before the grace period: " .. elapsed)
    assert.is_true(elapsed < 3, "took " .. elapsed)
  end)

  it("runs the child in a process group of its own, and kills its grandchildren", function()
    local pids = {}
    local r, err = proc.run {
      "sh", "-c", "echo $$; sh -c 'trap \"\" TERM; echo $$; exec sleep 30' & wait",
      timeout = 0.3, grace = 0.3,
      on_stdout = function(l) pids[#pids + 1] = tonumber(l) end,
    }
    assert.is_nil(r)
    assert.are.equal("timeout", err.code)
    assert.are.equal(2, #pids)
    local leader, grandchild = pids[1], pids[2]
    assert.are.equal(err.pid, leader)
    assert.is_true(wait_until(2, function() return dead(grandchild) end), "the grandchild survived")
    -- a fresh one, to look at its group while it runs
    local p <close> = assert(proc.spawn { "sh", "-c", "sleep 5 & echo $!; wait" })
    local gc = tonumber((p:read()))
    local s = stat(gc)
    assert.are.equal(p:pid(), s.pgrp)
    assert.are.equal(p:pid(), stat(p:pid()).pgrp)
  end)

  it("is bounded by vq.timeout around it, which ends the process", function()
    local pid
    local r, err = vq.timeout(0.2, proc.run, { "sh", "-c", "echo $$; exec sleep 30",
      on_stdout = function(l) pid = tonumber(l) end })
    assert.is_nil(r)
    assert.are.equal("timeout", err.code)
    assert.is_true(wait_until(2, function() return dead(pid) end))
  end)

  it("ends the process when its task is cancelled", function()
    local pid
    local t = vq.spawn(function()
      return proc.run { "sh", "-c", "echo $$; exec sleep 30", on_stdout = function(l) pid = tonumber(l) end }
    end)
    assert.is_true(wait_until(2, function() return pid ~= nil end))
    t:cancel()
    local ok, err = t:wait()
    assert.is_nil(ok)
    assert.are.equal("cancelled", err.code)
    assert.is_true(wait_until(2, function() return dead(pid) end), "the process survived its task")
  end)

  it("does not wait forever for pipes a daemonised grandchild keeps open", function()
    local t0 = vq.now()
    local r = assert(proc.run { "sh", "-c", "sleep 3 & echo $!", linger = 0.2 })
    assert.is_true(vq.now() - t0 < 2)
    assert.are.equal(0, r.code)
    uv.kill(tonumber(r.stdout), "sigkill")
  end)

  it("runs many at once", function()
    local t0 = vq.now()
    local tasks = {}
    for i = 1, 10 do tasks[i] = vq.spawn(function() return proc.run { "sleep", "0.3" } end) end
    for i = 1, 10 do assert.are.equal(0, tasks[i]:wait().code) end
    assert.is_true(vq.now() - t0 < 2)
  end)
end)

describe("proc.spawn", function()
  it("reads tagged lines and waits for the exit", function()
    local p <close> = assert(proc.spawn { "sh", "-c", "echo a; echo b >&2; echo c; exit 4" })
    local got = {}
    for line, stream in p:lines() do got[#got + 1] = stream .. ":" .. line end
    table.sort(got)
    assert.are.same({ "stderr:b", "stdout:a", "stdout:c" }, got)
    assert.are.equal(4, p:wait().code)
    assert.is_nil(p:read())
  end)

  it("writes to stdin and closes it", function()
    local p <close> = assert(proc.spawn { "cat", stdin = true })
    assert.is_true(p:write("one\ntwo\n"))
    assert.are.equal("one", p:read())
    assert.are.equal("two", p:read())
    p:close_stdin()
    assert.is_nil(p:read())
    assert.are.equal(0, p:wait().code)
    local ok, err = p:write("more")
    assert.is_nil(ok)
    assert.are.equal("closed", err.code)
  end)

  it("kills by signal name, the whole group", function()
    local p <close> = assert(proc.spawn { "sleep", "30" })
    assert.is_true(p:kill("TERM"))
    local r = p:wait()
    assert.are.equal("TERM", r.signal)
    local ok, err = p:kill()
    assert.is_nil(ok)
    assert.are.equal("exited", err.code)
    assert.has_error(function() p:kill("NOPE") end)
  end)

  it("terminates an unfinished process when its variable goes out of scope", function()
    local pid
    do
      local p <close> = assert(proc.spawn { "sleep", "30" })
      pid = p:pid()
      assert.is_truthy(stat(pid))
    end
    assert.is_true(wait_until(2, function() return dead(pid) end))
  end)

  it("terminates an unfinished process the collector finds", function()
    local p = assert(proc.spawn { "sleep", "30" })
    local pid = p:pid()
    p = nil
    collectgarbage()
    collectgarbage()
    assert.is_true(wait_until(2, function() return dead(pid) end))
  end)

  it("holds memory flat for a huge output read slowly (back-pressure)", function()
    local limit = 256 * 1024
    local line = ("x"):rep(99)
    local p <close> = assert(proc.spawn { "sh", "-c", 'yes "$1" | head -n 200000', "sh", line, buffer = limit })
    local n, max_buffered, paused_seen = 0, 0, false
    local mem0 = collectgarbage("count")
    for l in p:lines() do
      n = n + 1
      assert(l == line, l)
      if n % 5000 == 0 then
        vq.sleep(0.01) -- a slow reader: the child fills the buffer meanwhile
        local s = p:stats()
        if s.buffered > max_buffered then max_buffered = s.buffered end
        paused_seen = paused_seen or s.paused
      end
      if n % 20000 == 0 then
        collectgarbage()
        assert.is_true(collectgarbage("count") - mem0 < 4096, "the Lua heap grows")
      end
    end
    assert.are.equal(200000, n)
    local s = p:stats()
    assert.is_true(paused_seen, "reading never paused")
    assert.is_true(s.high_water <= limit + 65536 + 4096, "buffered up to " .. s.high_water)
    assert.is_true(max_buffered >= limit / 2, "the reader never fell behind")
    assert.are.equal(0, s.dropped)
    assert.are.equal(0, p:wait().code)
  end)

  it("does not block a process whose output nobody reads while a task waits", function()
    local p <close> = assert(proc.spawn { "sh", "-c", "seq 1 300000; echo done", buffer = 64 * 1024 })
    local r = p:wait()
    assert.are.equal(0, r.code)
    assert.is_true(r.dropped > 0)
    local last
    for l in p:lines() do last = l end
    assert.are.equal("done", last)
  end)

  it("splits an endless line into bounded pieces", function()
    local p <close> = assert(proc.spawn { "sh", "-c", "head -c 300000 /dev/zero | tr '\\0' y", max_line = 1000 })
    local total, longest = 0, 0
    for l, _, terminated in p:lines() do
      total = total + #l
      if #l > longest then longest = #l end
      assert.is_false(terminated)
    end
    assert.are.equal(300000, total)
    assert.is_true(longest <= 1000)
  end)

  it("refuses a second reader and a second waiter", function()
    local p <close> = assert(proc.spawn { "sleep", "0.3" })
    local t = vq.spawn(function() return p:read() end)
    vq.sleep(0.05)
    assert.has_error(function() p:read() end)
    assert.is_nil(t:wait())
    local r = p:wait()
    assert.are.equal(0, r.code)
  end)

  it("wakes a task waiting on an object another task closes", function()
    local p = assert(proc.spawn { "sleep", "30" })
    local t = vq.spawn(function() return p:wait() end)
    vq.sleep(0.05)
    p:close()
    local r, err = t:wait()
    assert.is_nil(r)
    assert.are.equal("closed", err.code)
    assert.is_true(wait_until(2, function() return dead(p:pid()) end))
  end)
end)

describe("proc hygiene", function()
  it("writes the lines to the log when asked, through redaction", function()
    local res = run.vq { "-e", [[
      local proc = require "vq.proc"
      require("log").secret("hunter2")
      assert(proc.run { "sh", "-c", "echo pw=hunter2; echo warning >&2", log = true })
      assert(proc.run { "echo", "prefixed", log = "tool" })
    ]] }
    assert.are.equal(0, res.status, res.stderr)
    assert.matches("info  sh| pw=***\n", res.stderr, 1, true)
    assert.matches("info  sh| warning\n", res.stderr, 1, true)
    assert.matches("info  tool| prefixed\n", res.stderr, 1, true)
    assert.is_nil(res.stderr:find("hunter2", 1, true))
  end)

  it("ends the processes a program leaves running when it exits", function()
    local t0 = vq.now()
    local res = run.vq { "-e", [[
      local proc = require "vq.proc"
      P = proc.spawn { "sh", "-c", "echo $$; exec sleep 30" }
      Q = proc.spawn { "sh", "-c", "trap '' TERM; echo $$; while :; do sleep 0.05; done", grace = 0.3 }
      print(P:read(), Q:read())
    ]] }
    assert.are.equal(0, res.status, res.stderr)
    assert.is_true(vq.now() - t0 < 3)
    local p, q = res.stdout:match("(%d+)%s+(%d+)")
    assert.is_true(wait_until(1, function() return dead(tonumber(p)) and dead(tonumber(q)) end))
  end)


  it("leaves no zombie and no descriptor after 200 runs", function()
    assert(proc.run { "true" })
    collectgarbage()
    local before = fd_count()
    for i = 1, 200 do
      local kind = i % 4
      if kind == 0 then
        assert(proc.run { "sh", "-c", "echo x; echo y >&2", stdin = "data" })
      elseif kind == 1 then
        assert.is_nil(proc.run { "no-such-program-vq" })
      elseif kind == 2 then
        local p <close> = assert(proc.spawn { "cat", stdin = true })
        p:write("abc\n")
      else
        assert(proc.run { "sleep", "5", timeout = 0.01, grace = 0.1 } == nil)
      end
    end
    collectgarbage()
    collectgarbage()
    assert.is_true(wait_until(3, function() return #my_zombies() == 0 and fd_count() == before end),
      ("descriptors %d -> %d, zombies %d"):format(before, fd_count(), #my_zombies()))
  end)
end)
