local vq = require "vq"
local run = require "spec.support.run"

describe("tasks", function()
  it("return their results to wait", function()
    local t = vq.spawn(function(a, b)
      vq.sleep(0.01)
      return a + b, "two", nil
    end, 1, 2)
    local r = table.pack(t:wait())
    assert.are.same({ 3, "two", nil, n = 3 }, r)
    assert.are.equal("done", t:status())
  end)

  it("give a failed task's error as nil, err with a traceback", function()
    local t = vq.spawn(function() error("boom") end)
    local ok, err = t:wait()
    assert.is_nil(ok)
    assert.are.equal("error", err.code)
    assert.matches("boom", err.message)
    assert.matches("traceback", err.traceback)
    assert.are.equal("failed", t:status())
  end)

  it("pass error tables through unchanged", function()
    local t = vq.spawn(function() error(vq.error("conflict", "409 from the server", { status = 409 })) end)
    local _, err = t:wait()
    assert.are.equal("conflict", err.code)
    assert.are.equal(409, err.status)
    assert.are.equal("409 from the server (conflict)", tostring(err))
  end)

  it("can be waited for by several tasks and after they ended", function()
    local t = vq.spawn(function() vq.sleep(0.02) return "x" end)
    local a = vq.spawn(function() return t:wait() end)
    local b = vq.spawn(function() return t:wait() end)
    assert.are.equal("x", a:wait())
    assert.are.equal("x", b:wait())
    assert.are.equal("x", t:wait())
  end)

  it("run in spawn order, and a bare coroutine.yield lets the others run", function()
    local order = {}
    local t1 = vq.spawn(function() order[#order + 1] = 1; coroutine.yield(); order[#order + 1] = 3 end)
    local t2 = vq.spawn(function() order[#order + 1] = 2 end)
    t1:wait(); t2:wait()
    assert.are.same({ 1, 2, 3 }, order)
  end)

  it("can be waited for with a timeout", function()
    local t = vq.spawn(vq.sleep, 5)
    local ok, err = t:wait(0.02)
    assert.is_nil(ok)
    assert.are.equal("timeout", err.code)
    t:cancel()
    local quick = vq.spawn(function() return "soon" end)
    assert.are.equal("soon", quick:wait(1))
  end)

  it("refuse to wait for themselves", function()
    local me = vq.current()
    assert.has_error(function() me:wait() end, "task " .. me:id() .. " cannot wait for itself")
  end)

  it("wait inside pcall", function()
    local ok, v = pcall(function() vq.sleep(0.001) return "after" end)
    assert.is_true(ok)
    assert.are.equal("after", v)
  end)
end)

describe("cancellation", function()
  it("raises in a waiting task and closes its to-be-closed variables", function()
    local closed = false
    local t = vq.spawn(function()
      local guard <close> = setmetatable({}, { __close = function() closed = true end })
      vq.sleep(10)
      return "not reached"
    end)
    vq.sleep(0.01)
    assert.are.equal("waiting", t:status())
    t:cancel()
    local ok, err = t:wait()
    assert.is_nil(ok)
    assert.are.equal("cancelled", err.code)
    assert.is_true(closed)
    assert.are.equal("cancelled", t:status())
  end)

  it("lets a task clean up with waits after it caught the cancellation", function()
    local cleaned = false
    local t = vq.spawn(function()
      local ok = pcall(vq.sleep, 10)
      assert(not ok)
      vq.sleep(0.001) -- clean-up may wait (e.g. remove a taint)
      cleaned = true
      return "cleaned"
    end)
    vq.sleep(0.01)
    t:cancel()
    assert.are.equal("cleaned", t:wait())
    assert.is_true(cleaned)
  end)

  it("of a task that has not started means it never runs", function()
    local ran = false
    local t = vq.spawn(function() ran = true end)
    t:cancel()
    local ok, err = t:wait()
    assert.is_nil(ok)
    assert.are.equal("cancelled", err.code)
    assert.is_false(ran)
  end)

  it("reaches a task that is busy when it next waits", function()
    local t = vq.spawn(function()
      local x = 0
      for i = 1, 1e5 do x = x + i end
      vq.sleep(10)
    end)
    t:cancel()
    local _, err = t:wait()
    assert.are.equal("cancelled", err.code)
  end)
end)

describe("vq.timeout", function()
  it("returns nil, timeout when the wait outlasts it", function()
    local t0 = vq.now()
    local ok, err = vq.timeout(0.05, vq.sleep, 5)
    assert.is_nil(ok)
    assert.are.equal("timeout", err.code)
    assert.is_true(vq.now() - t0 < 1)
  end)

  it("returns the function's results when it finishes in time", function()
    assert.are.same({ 1, 2 }, { vq.timeout(1, function() vq.sleep(0.001) return 1, 2 end) })
  end)

  it("re-raises the function's error", function()
    assert.has_error(function() vq.timeout(1, error, "inner") end, "inner")
  end)

  it("bounds task:wait", function()
    local t = vq.spawn(vq.sleep, 5)
    local ok, err = vq.timeout(0.02, t.wait, t)
    assert.is_nil(ok)
    assert.are.equal("timeout", err.code)
    t:cancel()
  end)

  it("does not leak into later waits once it is over", function()
    assert.is_true(vq.timeout(1, vq.sleep, 0.001))
    assert.is_true(vq.sleep(0.02))
  end)
end)

describe("vq.all and vq.race", function()
  it("all gives every result in order", function()
    local r = vq.all {
      function() vq.sleep(0.02) return "a" end,
      function() return "b", "c" end,
    }
    assert.are.same({ { "a", n = 1 }, { "b", "c", n = 2 } }, r)
  end)

  it("all fails fast and cancels the rest", function()
    local slow = vq.spawn(vq.sleep, 5)
    local ok, err = vq.all { function() error("first") end, slow }
    assert.is_nil(ok)
    assert.matches("first", err.message)
    assert.are.equal(1, err.index)
    vq.sleep(0)
    assert.are.equal("cancelled", slow:status())
  end)

  it("race returns the winner and cancels the losers", function()
    local slow = vq.spawn(function() vq.sleep(5) return "slow" end)
    local i, v = vq.race { slow, function() vq.sleep(0.01) return "fast" end }
    assert.are.equal(2, i)
    assert.are.equal("fast", v)
    vq.sleep(0)
    assert.are.equal("cancelled", slow:status())
  end)
end)

describe("events and queues", function()
  it("an event wakes every waiter", function()
    local ev = vq.event()
    local woke = 0
    local ts = {}
    for i = 1, 3 do ts[i] = vq.spawn(function() ev:wait() woke = woke + 1 end) end
    vq.sleep(0.01)
    assert.are.equal(0, woke)
    ev:set()
    for _, t in ipairs(ts) do t:wait() end
    assert.are.equal(3, woke)
  end)

  it("event:wait times out", function()
    local ok, err = vq.event():wait(0.01)
    assert.is_nil(ok)
    assert.are.equal("timeout", err.code)
  end)

  it("a bounded queue makes the producer wait for the consumer", function()
    local q = vq.queue(2)
    local produced = 0
    local producer = vq.spawn(function()
      for i = 1, 10 do q:put(i) produced = i end
      q:close()
    end)
    vq.sleep(0.01)
    assert.are.equal(2, produced) -- back-pressure: blocked on the third put
    local got = {}
    while true do
      local x, err = q:get()
      if not x then assert.are.equal("closed", err.code) break end
      got[#got + 1] = x
    end
    producer:wait()
    assert.are.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 }, got)
  end)
end)

describe("many tasks", function()
  it("10,000 sleeping tasks finish close to the longest sleep", function()
    local t0 = vq.now()
    local tasks = {}
    for i = 1, 10000 do
      tasks[i] = vq.spawn(function() vq.sleep((i % 11) / 1000) return i end)
    end
    local sum = 0
    for i = 1, #tasks do sum = sum + tasks[i]:wait() end
    assert.are.equal(10000 * 10001 // 2, sum)
    -- generous: a sanitizer build is slow; the benchmark measures the real figure
    assert.is_true(vq.now() - t0 < 5)
    assert.are.equal(1, vq.stats().live) -- only this spec's own task
  end)
end)

describe("waiting outside a task", function()
  it("is a clear error in a plain coroutine", function()
    local co = coroutine.wrap(function() return pcall(vq.sleep, 0) end)
    local ok, msg = co()
    assert.is_false(ok)
    assert.matches("must run in a task, not in a plain coroutine", msg)
  end)

  it("is a clear error in a luv callback, pointing at vq.spawn", function()
    local uv = require "luv"
    local msg
    local ev = vq.event()
    local timer = uv.new_timer()
    timer:start(1, 0, function()
      local _, m = pcall(vq.sleep, 0)
      msg = m
      timer:close()
      ev:set()
    end)
    ev:wait(1)
    assert.matches("wrap the work in vq.spawn", msg)
  end)

  it("is a clear error where a C function cannot yield", function()
    local ok, msg = pcall(table.sort, { 3, 2, 1 }, function(a, b) vq.sleep(0) return a < b end)
    assert.is_false(ok)
    assert.matches("cannot yield", msg)
  end)
end)

describe("luv", function()
  it("is the host's loop under both names", function()
    assert.are.equal(require "uv", require "luv")
  end)

  it("refuses uv.run while the host runs the loop", function()
    local ok, msg = pcall((require "uv").run)
    assert.is_false(ok)
    assert.matches("the host runs the loop", msg)
  end)

  it("timers fire on the same loop as tasks", function()
    local uv = require "uv"
    local ev = vq.event()
    local t = uv.new_timer()
    t:start(5, 0, function() t:close() ev:set() end)
    assert.is_true(ev:wait(1))
  end)
end)

describe("the vqlua program", function()
  it("runs a script with arg and ... as lua does", function()
    local r = run.vq { "-e", "x = 1", "spec/fixtures/args.lua", "a", "b" }
    assert.are.equal(0, r.status)
    assert.are.equal("spec/fixtures/args.lua\ta\tb\t2\t1\ta\tb\n", r.stdout)
  end)

  it("prints a traceback and exits 1 on an uncaught error", function()
    local r = run.vq { "-e", "local function f() error('kaput') end f()" }
    assert.are.equal(1, r.status)
    assert.matches("kaput", r.stderr)
    assert.matches("stack traceback", r.stderr)
  end)

  it("reports a failed task nobody waited for and exits 1", function()
    local r = run.vq { "-e", "require('vq').spawn(function() error('lost') end)" }
    assert.are.equal(1, r.status)
    assert.matches("task %d+ failed and nobody waited for it: .*lost", r.stderr)
  end)

  it("waits for spawned tasks before it exits", function()
    local r = run.vq { "-e", "local vq = require 'vq' vq.spawn(function() vq.sleep(0.05) print('late') end)" }
    assert.are.equal(0, r.status)
    assert.are.equal("late\n", r.stdout)
  end)

  it("says so and exits 1 when tasks wait on nothing", function()
    local r = run.vq { "-e", "require('vq.core.sched').park()" }
    assert.are.equal(1, r.status)
    assert.matches("wait on nothing that can wake them", r.stderr)
  end)

  it("ends cleanly on Ctrl-C: to-be-closed variables closed, exit 130", function()
    local script = [[
      local vq = require 'vq'
      local g <close> = setmetatable({}, {__close = function() io.stdout:write('closed\n') io.stdout:flush() end})
      io.stdout:write('ready\n') io.stdout:flush()
      vq.sleep(30)
    ]]
    local sent = false
    local r = run.vq { "-e", script, on_stdout = function(out, proc)
      if not sent and out:find("ready") then sent = true proc.kill("sigint") end
    end }
    assert.are.equal(130, r.status)
    assert.are.equal("ready\nclosed\n", r.stdout)
    assert.matches("interrupted", r.stderr)
  end)

  it("interrupts busy Lua code on Ctrl-C", function()
    local sent = false
    local r = run.vq { "-e", "io.stdout:write('ready\\n') io.stdout:flush() while true do end", on_stdout = function(out, proc)
      if not sent and out:find("ready") then sent = true proc.kill("sigint") end
    end }
    assert.are.equal(130, r.status)
  end)

  it("prints the versions of what it runs with", function()
    local r = run.vq { "-v" }
    assert.are.equal(0, r.status)
    for _, lib in ipairs { "vqlua", "Lua 5.4", "libuv", "libcurl", "libyaml", "cJSON", "OpenSSL" } do
      assert.matches(lib, r.stdout, 1, true)
    end
  end)

  it("loads a module with -l", function()
    local r = run.vq { "-l", "vq", "-e", "print(type(vq.spawn))" }
    assert.are.equal("function\n", r.stdout)
  end)

  it("finds modules in VQ_PATH before its own library", function()
    local dir = run.tmpdir()
    os.execute("mkdir -p " .. dir .. "/site")
    local f = assert(io.open(dir .. "/site/runbook_helpers.lua", "w"))
    f:write("return { answer = 42 }\n")
    f:close()
    local r = run.vq { "-e", "print(require('site.runbook_helpers').answer)", env = { VQ_PATH = "/nonexistent:" .. dir } }
    os.execute("rm -rf " .. dir)
    assert.are.equal("42\n", r.stdout)
  end)

  it("runs standard input", function()
    local r = run.vq { "-", stdin = "print(6 * 7)" }
    assert.are.equal("42\n", r.stdout)
  end)

  it("rejects an unknown option with the usage", function()
    local r = run.vq { "--bogus" }
    assert.are.equal(2, r.status)
    assert.matches("usage: vqlua", r.stderr)
  end)
end)
