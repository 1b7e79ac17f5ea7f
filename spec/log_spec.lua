local run = require "spec.support.run"
local json_ok, _ = pcall(require, "cjson")

local function tmpname()
  local p = os.tmpname()
  os.remove(p)
  return p
end

local function mode_of(path)
  local f = io.popen("stat -c %a " .. path)
  local m = f:read("l")
  f:close()
  return m
end

describe("log", function()
  it("masks a registered secret in print, log lines and error messages", function()
    local r = run.vq { "-e", [[
      local log = require 'log'
      log.secret('hunter2')
      print('the password is hunter2')
      log.info('logging %s', 'hunter2')
      error('failed with hunter2')
    ]] }
    assert.are.equal(1, r.status)
    assert.are.equal("the password is ***\n", r.stdout)
    assert.not_matches("hunter2", r.stderr)
    assert.matches("logging %*%*%*", r.stderr)
    assert.matches("failed with %*%*%*", r.stderr)
  end)

  it("masks the base64 form Kubernetes Secrets carry", function()
    local r = run.vq { "-e", [[
      require('log').secret('hunter2')
      print('data: aHVudGVyMg==')
    ]] }
    assert.are.equal("data: ***\n", r.stdout)
  end)

  it("redact() gives the masked text to Lua", function()
    local log = require "log"
    log.secret("spec-only-secret-value")
    assert.are.equal("x *** y", log.redact("x spec-only-secret-value y"))
  end)

  it("filters by level", function()
    local r = run.vq { "--log-level", "warn", "-e", [[
      local log = require 'log'
      log.debug('d') log.info('i') log.warn('w') log.error('e')
    ]] }
    assert.not_matches(" d\n", r.stderr)
    assert.not_matches(" i\n", r.stderr)
    assert.matches("warn w\n", r.stderr)
    assert.matches("error e\n", r.stderr)
  end)

  it("prints plain, aligned step markers without a terminal", function()
    local r = run.vq { "-e", [[
      local log = require 'log'
      log.step('Scale vantiq to 0', 3, 9)
      log.step_done('Scale vantiq to 0', 'ok', 1.25)
      log.step_done('Back up MongoDB', 'failed')
      log.step_done('Announce downtime', 'skipped')
    ]] }
    assert.are.equal(table.concat {
      "==> [3/9] Scale vantiq to 0\n",
      "[  ok  ] Scale vantiq to 0 (1.2s)\n",
      "[ FAIL ] Back up MongoDB\n",
      "[ skip ] Announce downtime\n",
    }, r.stderr)
  end)

  it("uses colour only when asked or on a terminal", function()
    local plain = run.vq { "-e", "require('log').warn('x')" }
    assert.not_matches("\27%[", plain.stderr)
    local coloured = run.vq { "--color", "-e", "require('log').warn('x')" }
    assert.matches("\27%[33mwarn", coloured.stderr)
  end)

  it("writes a JSON-lines audit log, mode 0600, redacted", function()
    local path = tmpname()
    local r = run.vq { "--audit", path, "-e", [[
      local log = require 'log'
      log.secret('tok-123456')
      log.info('connected with tok-123456')
      log.audit('kube.scale', {object = 'sts/vantiq', replicas = 0, token = 'tok-123456'})
      log.step('Back up', 1, 2)
    ]] }
    assert.are.equal(0, r.status)
    assert.are.equal("600", mode_of(path))
    local lines = {}
    for line in io.lines(path) do lines[#lines + 1] = line end
    os.remove(path)
    assert.are.equal(3, #lines)
    local text = table.concat(lines, "\n")
    assert.not_matches("tok%-123456", text)
    assert.matches('"event":"log"', lines[1])
    assert.matches('"msg":"connected with %*%*%*"', lines[1])
    assert.matches('"event":"kube.scale"', lines[2])
    assert.matches('"replicas":0', lines[2])
    assert.matches('"run":"%d+T%d+Z%-%d+"', lines[2])
    assert.matches('"event":"step.begin"', lines[3])
    if json_ok then
      local cjson = require "cjson"
      for _, l in ipairs(lines) do assert.is_table(cjson.decode(l)) end
    end
  end)

  it("tightens an existing audit file to 0600", function()
    local path = tmpname()
    local f = assert(io.open(path, "w"))
    f:close()
    os.execute("chmod 644 " .. path)
    run.vq { "--audit", path, "-e", "require('log').info('x')" }
    assert.are.equal("600", mode_of(path))
    os.remove(path)
  end)

  it("reports an audit file it cannot open as nil, err", function()
    local log = require "log"
    local ok, err = log.open_audit("/nonexistent-dir/audit.jsonl")
    assert.is_nil(ok)
    assert.are.equal("io", err.code)
    assert.matches("/nonexistent%-dir/audit.jsonl", err.message)
  end)
end)
