-- Aggregated discovery (apidiscovery.k8s.io): real kubectl takes every group's resources
-- from one answer to /api and one to /apis, and sees exactly what the classic endpoints
-- (one request per group version) show it.
local cluster = require "spec.support.cluster"
local sim_mod = require "sim"

-- The discovery requests in kubectl -v=6's log (1.33 logs them as verb="GET" url="...").
local function discovery_gets(stderr)
  local n = 0
  for line in stderr:gmatch("[^\n]+") do
    local path = line:find("GET", 1, true) and line:match("https?://[^/%s\"]+(/[^%s?\"]*)")
    if path and (path == "/api" or path == "/apis" or path:match("^/apis?/[^/]+/?[^/]*$")) then n = n + 1 end
  end
  return n
end

for _, version in ipairs { sim_mod.DEFAULT_VERSION, "v1.27.16", "v1.33.1" } do
  describe("discovery of a " .. version .. " simulator", function()
    local aggregated, classic
    setup(function()
      aggregated = cluster.start { version = version, speed = 0.02, modules = { "sim.auth", "sim.core" } }
      classic = cluster.start { version = version, speed = 0.02, modules = { "sim.auth", "sim.core" }, aggregated_discovery = false }
    end)
    teardown(function()
      cluster.finish(aggregated)
      cluster.finish(classic)
    end)

    it("takes two requests from kubectl instead of one per group", function()
      local _, r = cluster.kubectl(aggregated, { "get", "deployments", "-A", "-v=6" })
      assert.are.equal(2, discovery_gets(r.stderr), r.stderr)
      local _, c = cluster.kubectl(classic, { "get", "deployments", "-A", "-v=6" })
      assert.is_true(discovery_gets(c.stderr) > 10, c.stderr)
    end)

    it("shows kubectl the same resources as the classic endpoints", function()
      local a = cluster.kubectl(aggregated, { "api-resources", "-o", "wide", "--sort-by=name" })
      local c = cluster.kubectl(classic, { "api-resources", "-o", "wide", "--sort-by=name" })
      assert.are.equal(c, a)
      assert.matches("\ndeployments%s+deploy%s+apps/v1%s+true%s+Deployment", a)
    end)
  end)
end
