-- vqlua --rehearse as an operator runs it: the status runbook against the simulated
-- production installation, healthy and with one of the guide's failures.
local run = require "spec.support.run"

local function rehearse(args)
  local cmd = { "--rehearse" }
  for _, a in ipairs(args) do cmd[#cmd + 1] = a end
  cmd.timeout = 120
  return run.vq(cmd)
end

describe("vqlua --rehearse", function()
  it("runs the status runbook against a settled production world", function()
    local r = rehearse { "scripts/status.lua" }
    assert.are.equal(0, r.status, r.stderr)
    assert.matches("rehearsal: simulator v1%.30", r.stderr)
    local oks = 0
    for _ in r.stderr:gmatch("%[  ok  %]") do oks = oks + 1 end
    assert.are.equal(6, oks, r.stderr)
    assert.not_matches("did not settle", r.stderr)
  end)

  it("shows a scenario's symptom: keycloak crashing, with its last log lines", function()
    local r = rehearse { "--scenario", "keycloak-db-password", "scripts/status.lua" }
    assert.are.equal(0, r.status, r.stderr)
    assert.matches("warn shared/keycloak%-0 %S+ 0/1 restarts=%d", r.stderr)
    assert.matches("    | .*Server boot has failed", r.stderr)
    assert.matches("%[ warn %] Pods that are not ready", r.stderr)
  end)

  it("refuses an unknown scenario, naming the known ones", function()
    local r = rehearse { "--scenario", "no-such-thing", "scripts/status.lua" }
    assert.are_not.equal(0, r.status)
    assert.matches("no%-such%-thing", r.stderr)
    assert.matches("telegraf%-rbac", r.stderr)
  end)

  it("passes the runbook its arguments and never touches the real kubeconfig", function()
    local r = run.vq { "--rehearse", "spec/fixtures/args.lua", "a", "b", env = { KUBECONFIG = "/nonexistent/kubeconfig" }, timeout = 120 }
    assert.are.equal(0, r.status, r.stderr)
    assert.matches("^spec/fixtures/args.lua\ta\tb\t2", r.stdout)
  end)
end)
