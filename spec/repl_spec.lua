-- The REPL: its pretty printer and completion directly, then the real binary through a
-- pseudo-terminal (tmux, on a private server) and through pipes.
local vq = require "vq"
local uv = require "luv"
local repl = require "vq.repl"
local run = require "spec.support.run"

local VQLUA = os.getenv("VQLUA") or "build/vqlua"
local WAIT = 15 -- seconds for the terminal to show what a test waits for (ASan is slow)

local function sh_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function shell(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok, code
end

describe("the pretty printer", function()
  local f = repl.format

  it("prints scalars as Lua would read them back", function()
    assert.are.equal("1", f(1))
    assert.are.equal("1.5", f(1.5))
    assert.are.equal("nil", f(nil))
    assert.are.equal("true", f(true))
    assert.are.equal([["a\nb\"c\\"]], f('a\nb"c\\'))
    assert.are.equal([["\x00\x01\t"]], f("\0\1\t"))
    assert.are.equal([["héllo"]], f("héllo"))
  end)

  it("prints the sequence first, then the other keys sorted", function()
    assert.are.equal("{}", f({}))
    assert.are.equal('{"x", [3] = true, a = 2, b = 1}', f({ b = 1, a = 2, [3] = true, [1] = "x" }))
    assert.are.equal('{["a b"] = 1, ["end"] = 2, z = {1, 2}}', f({ ["a b"] = 1, ["end"] = 2, z = { 1, 2 } }))
  end)

  it("marks cycles but prints a table shared without one twice", function()
    local t = {}
    t.me = t
    assert.are.equal("{me = <cycle>}", f(t))
    local shared = { 1 }
    assert.are.equal("{{1}, {1}}", f({ shared, shared }))
  end)

  it("bounds depth, item count and the length of nested strings", function()
    assert.are.equal("{a = {b = {...}}}", f({ a = { b = { c = { 1 } } } }, { depth = 2 }))
    assert.are.equal("{1, 2, 3, ... (+2 more)}", f({ 1, 2, 3, 4, 5 }, { items = 3 }))
    local s = f({ ("x"):rep(500) }, { string = 400, width = 1000 })
    assert.matches('^{"x+"%.%.%.%(%+100 bytes%)}$', s)
    assert.are.equal(502, #f(("x"):rep(500)), "a top-level string is printed whole")
  end)

  it("breaks a table that does not fit the width over indented lines", function()
    assert.are.equal("{\n  alpha = 1,\n  beta = {1, 2}\n}", f({ alpha = 1, beta = { 1, 2 } }, { width = 10 }))
    assert.are.equal("{\n  {\n    1,\n    2\n  }\n}", f({ { 1, 2 } }, { width = 5 }))
  end)

  it("shows error tables by code and message, task objects and functions readably", function()
    local err = vq.error("not_found", "pods \"x\" not found", { status = 404 })
    err.traceback = "stack traceback:\n\t..."
    assert.are.equal('error{code = "not_found", message = "pods \\"x\\" not found", status = 404}', f(err))
    local t = vq.spawn(function() end)
    assert.matches("^<task %d+ %(.-%)>$", f(t))
    t:wait()
    assert.matches("^<function .-repl_spec%.lua:%d+>$", f(function() end))
    assert.matches("^<function: ", f(print))
  end)

  it("shows a Secret's data as lengths only, alone, in a list and in a watch event", function()
    local base64 = require "vq.base64"
    local secret = { apiVersion = "v1", kind = "Secret", metadata = { name = "mongodb-credentials" },
      data = { ["mongodb-password"] = base64.encode("pHWdv6sGp5RRzcGgjAk9") }, stringData = { token = "t0ken-plain" } }
    for _, shown in ipairs { secret, { secret }, { type = "MODIFIED", object = secret } } do
      local text = repl.format(shown)
      assert.not_matches(secret.data["mongodb-password"], text, 1, true)
      assert.not_matches("t0ken-plain", text, 1, true)
      assert.matches('["mongodb-password"] = <redacted: 20 bytes>', text, 1, true)
      assert.matches("token = <redacted: 11 bytes>", text, 1, true)
      assert.matches('name = "mongodb-credentials"', text, 1, true)
    end
    assert.are.equal(base64.encode("pHWdv6sGp5RRzcGgjAk9"), secret.data["mongodb-password"]) -- untouched
  end)

  it("formats results tab-separated and failures with their traceback", function()
    assert.are.equal("", repl.show())
    assert.are.equal('1\tnil\t"a"\n', repl.show(1, nil, "a"))
    assert.are.equal("interrupted\n", repl.describe(vq.error("interrupted", "task 3 was interrupted")))
    assert.are.equal("boom\n", repl.describe("boom"))
    local err = vq.error("error", "stdin:1: boom")
    err.traceback = "stack traceback:\n\tstdin:1: in main chunk"
    assert.are.equal("stdin:1: boom\nstack traceback:\n\tstdin:1: in main chunk\n", repl.describe(err))
    assert.are.equal('timed out (timeout) {after = 3}\n',
      repl.describe(vq.error("timeout", "timed out", { after = 3 })))
  end)
end)

describe("completion", function()
  it("completes globals and keywords", function()
    local c = repl.complete("pri")
    assert.are.same({ "print" }, c)
    assert.are.same({ "while" }, repl.complete("whi", {}))
  end)

  it("completes fields after . and methods after :", function()
    assert.are.same({ "vq.sleep" }, repl.complete("vq.sl", { vq = vq }))
    assert.are.same({ "string.find", "string.format" }, repl.complete("string.f"))
    assert.are.same({ "s:upper" }, repl.complete("s:up", { s = "text" }))
    assert.are.same({}, repl.complete("nothing.here"))
    assert.are.same({}, repl.complete("vq:opt", { vq = vq }), "after : only functions")
  end)

  it("follows __index tables, as the task object's methods are reached", function()
    local t = vq.spawn(function() end)
    assert.are.same({ "t:wait" }, repl.complete("t:wa", { t = t }))
    t:wait()
    local obj = setmetatable({}, { __index = setmetatable({ hello = 1 }, { __index = { help = 2 } }) })
    assert.are.same({ "o.hello", "o.help" }, repl.complete("o.hel", { o = obj }))
    local calls = 0
    local lazy = setmetatable({}, { __index = function() calls = calls + 1 end })
    assert.are.same({}, repl.complete("l.x", { l = lazy }))
    assert.are.equal(0, calls, "an __index function is never called")
  end)
end)

describe("the REPL without a terminal", function()
  local input = table.concat({
    "print(1 + 1)",
    "local t = {a = 1}",
    "function g()",
    "  return 7",
    "end",
    "g()",
    '{b = 2, a = "x", 10, 20}',
    'error("boom")',
    "vq.sleep(0.05)",
    "=3",
    "nil, vq.error('timeout', 'too slow')",
  }, "\n") .. "\n"
  local expected = '2\n7\n{10, 20, a = "x", b = 2}\ntrue\n3\nnil\terror{code = "timeout", message = "too slow"}\n'

  it("runs lines from a pipe like lua does, with no prompts", function()
    local r = run.vq { "-i", stdin = input .. "x = \n", env = { NO_COLOR = "1" } }
    assert.are.equal(0, r.status)
    assert.are.equal(expected, r.stdout)
    assert.matches("stdin:1: boom\nstack traceback:", r.stderr, 1, true)
    assert.matches("unexpected symbol near <eof>", r.stderr, 1, true)
  end)

  it("reads a file as standard input, and a last line without a newline", function()
    local path = os.tmpname()
    local fh = assert(io.open(path, "w"))
    fh:write(input, "'last'")
    fh:close()
    local out, ok = shell(sh_quote(VQLUA) .. " -i < " .. sh_quote(path) .. " 2>/dev/null")
    os.remove(path)
    assert.is_true(ok)
    assert.are.equal(expected .. '"last"\n', out)
  end)

  it("takes its input from a shell pipe", function()
    local out, ok = shell("printf 'print(1+1)\\n' | " .. sh_quote(VQLUA) .. " -i")
    assert.is_true(ok)
    assert.are.equal("2\n", out)
  end)
end)

---- through a terminal ----

local have_tmux = select(2, shell("command -v tmux >/dev/null")) == true
local pid = ("%d"):format(uv.os_getpid())
local server = "vqtest-" .. pid
local sessions = 0

local function tmux(args)
  return shell("tmux -L " .. server .. " -f /dev/null " .. args .. " 2>&1")
end

local function lines_of(screen)
  local lines = {}
  for line in (screen .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line:gsub("%s+$", "") end
  while #lines > 0 and lines[#lines] == "" do lines[#lines] = nil end
  return lines
end

local Term = {}
Term.__index = Term

function Term:screen() return (tmux("capture-pane -p -t " .. self.name)) end
function Term:lines() return lines_of(self:screen()) end
function Term:type(text) tmux(("send-keys -t %s -l %s"):format(self.name, sh_quote(text))) end
function Term:key(key) tmux(("send-keys -t %s %s"):format(self.name, key)) end
function Term:close()
  tmux("kill-session -t " .. self.name)
  if self.own_history then os.remove(self.history) end
end

--- Poll the pane until check(lines) holds; fails with the screen after WAIT seconds.
function Term:wait(what, check)
  local deadline = vq.now() + WAIT
  repeat
    local lines = self:lines()
    if check(lines) then return lines end
    vq.sleep(0.05)
  until vq.now() > deadline
  error(("timed out waiting for %s; the screen:\n%s"):format(what, self:screen()), 2)
end

local function index_of(lines, wanted, from)
  for i = from or 1, #lines do
    if lines[i] == wanted then return i end
  end
end

--- The line `wanted` appears after the last line that is `after`, if given.
function Term:wait_line(wanted, after)
  return self:wait(("the line %q"):format(wanted), function(lines)
    local from = 1
    if after then
      for i = #lines, 1, -1 do
        if lines[i] == after then from = i + 1 break end
      end
    end
    return index_of(lines, wanted, from) ~= nil
  end)
end

--- The prompt is the last line, empty or with what was typed.
function Term:wait_prompt(typed)
  local want = typed and ("> " .. typed) or ">"
  return self:wait(("the prompt %q"):format(want), function(lines)
    return lines[#lines] == want
  end)
end

--- Type a line and wait for the lines it prints, then for the prompt.
function Term:enter(text, ...)
  self:type(text)
  self:key("Enter")
  for _, wanted in ipairs({ ... }) do self:wait_line(wanted, "> " .. text) end
  return self:wait_prompt()
end

local function start(history)
  sessions = sessions + 1
  local t = setmetatable({ name = "s" .. sessions }, Term)
  t.history = history or os.tmpname()
  t.own_history = history == nil
  local cmd = ("env VQ_HISTORY=%s NO_COLOR=1 %s -i; echo \"[exit $?]\"; sleep 600")
    :format(sh_quote(t.history), sh_quote(VQLUA))
  local out, ok = tmux(("new-session -d -x 120 -y 30 -s %s %s"):format(t.name, sh_quote(cmd)))
  assert(ok, out)
  t:wait_prompt()
  return t
end

local describe_tty = have_tmux and describe or pending

describe_tty("the REPL on a terminal", function()
  teardown(function()
    tmux("kill-server")
    local dir = (os.getenv("TMUX_TMPDIR") or "/tmp") .. ("/tmux-%d/"):format(uv.os_get_passwd().uid)
    os.remove(dir .. server)
  end)

  it("prints expressions and runs a function defined over several lines", function()
    local t = start()
    finally(function() t:close() end)
    t:enter("1 + 2", "3")
    t:type("function twice(x)")
    t:key("Enter")
    t:wait_line(">>")
    t:type("return x * 2")
    t:key("Enter")
    t:type("end")
    t:key("Enter")
    t:wait_prompt()
    t:enter("twice(21)", "42")
    t:enter('{b = 2, a = "x", 10, 20, nested = {list = {1, 2}}}', '{10, 20, a = "x", b = 2, nested = {list = {1, 2}}}')
    t:enter('error("boom")', "stdin:1: boom", "stack traceback:")
  end)

  it("completes globals' fields and an object's methods with Tab", function()
    local t = start()
    finally(function() t:close() end)
    t:type("vq.sl")
    t:key("Tab")
    t:wait_prompt("vq.sleep")
    t:enter("(0)", "true")
    t:type("string.f")
    t:key("Tab")
    t:key("Tab")
    t:wait("string.find and string.format listed", function(lines)
      for _, line in ipairs(lines) do
        if line:find("string.find", 1, true) and line:find("string.format", 1, true) then return true end
      end
    end)
    t:key("C-c")
    t:wait_prompt()
    t:enter("task = vq.spawn(function() return 5 end)")
    t:type("task:wa")
    t:key("Tab")
    t:wait_prompt("task:wait")
    t:enter("()", "5")
  end)

  it("keeps its history in a file of mode 0600 across sessions", function()
    local history = os.tmpname()
    os.remove(history)
    local marker = "marker_" .. pid
    local first = start(history)
    finally(function() first:close() end)
    first:enter(marker .. " = 42")
    first:key("C-d")
    first:wait_line("[exit 0]")
    local mode = shell("stat -c %a " .. sh_quote(history))
    assert.are.equal("600\n", mode)
    local fh = assert(io.open(history))
    assert.matches(marker, fh:read("a"), 1, true)
    fh:close()

    local second = start(history)
    finally(function()
      second:close()
      os.remove(history)
    end)
    second:key("Up")
    second:wait_prompt(marker .. " = 42")
    second:key("Enter")
    second:wait_prompt()
    second:enter(marker, "42")
  end)

  local function has_third_tick(lines)
    for _, line in ipairs(lines) do
      if line:match("^tick%s+3$") then return true end
    end
  end

  it("lets a spawned task print while a line is half-typed, and keeps the line", function()
    local t = start()
    finally(function() t:close() end)
    t:enter('vq.spawn(function() for i = 1, 3 do vq.sleep(0.4) print("tick", i) end end)')
    t:type("answer = 6 *")
    local at_typing = t:wait_prompt("answer = 6 *")
    assert.is_nil(has_third_tick(at_typing), "the line was typed before the ticks ended")
    t:wait("three ticks", has_third_tick)
    local lines = t:wait_prompt("answer = 6 *")
    local ticks = 0
    for _, line in ipairs(lines) do
      if line:find("^tick") then
        assert.matches("^tick%s+%d$", line)
        ticks = ticks + 1
      end
    end
    assert.are.equal(3, ticks)
    t:type(" 7")
    t:key("Enter")
    t:wait_prompt()
    t:enter("answer", "42")
  end)

  it("leaves the rows above alone when output comes at a fresh prompt", function()
    local t = start()
    finally(function() t:close() end)
    local long = 'vq.spawn(function() vq.sleep(0.3) print("late") end) filler = "' .. ("f"):rep(150) .. '"'
    t:type(long)
    t:key("Enter")
    t:wait_line("late")
    local lines = t:wait_prompt()
    local echoed = "> " .. long
    assert.truthy(index_of(lines, echoed:sub(1, 120)), "the first row of the long line")
    assert.truthy(index_of(lines, echoed:sub(121, 240)), "its second row")
  end)

  it("hides the keys typed while a statement runs and runs them after it", function()
    local t = start()
    finally(function() t:close() end)
    t:type("vq.sleep(1)")
    t:key("Enter")
    t:type("1 + 41")
    t:key("Enter")
    vq.sleep(0.3)
    local lines = t:lines()
    assert.are.equal("> vq.sleep(1)", lines[#lines], "no prompt and no echo while it runs")
    t:wait_line("true", "> vq.sleep(1)")
    t:wait_line("42", "> 1 + 41")
    t:wait_prompt()
  end)

  it("interrupts a waiting or busy statement with Ctrl-C and goes on", function()
    local t = start()
    finally(function() t:close() end)
    for _, statement in ipairs({ "vq.sleep(100)", "while true do end" }) do
      t:type(statement)
      t:key("Enter")
      t:wait(statement .. " running", function(lines) return lines[#lines] == "> " .. statement end)
      vq.sleep(0.3)
      t:key("C-c")
      t:wait_line("interrupted", "> " .. statement)
      t:wait_prompt()
    end
    t:enter("1 + 1", "2")
  end)

  it("drops the half-typed line on Ctrl-C at the prompt", function()
    local t = start()
    finally(function() t:close() end)
    t:type("this is not lua")
    t:wait_prompt("this is not lua")
    t:key("C-c")
    t:wait_prompt()
    local lines = t:enter("2 + 2", "4")
    for _, line in ipairs(lines) do assert.is_nil(line:find("unexpected", 1, true)) end
  end)

  it("ends with status 0 on Ctrl-D and with os.exit's status", function()
    local t = start()
    finally(function() t:close() end)
    t:key("C-d")
    t:wait_line("[exit 0]")
    local u = start()
    finally(function() u:close() end)
    u:type("os.exit(3)")
    u:key("Enter")
    u:wait_line("[exit 3]")
  end)
end)
