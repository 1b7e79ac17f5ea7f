-- What the deployment tool's Helm charts put in a cluster, rendered by sim/world.lua in a
-- private simulator (no controllers, nothing connects to it): the simulator's world and
-- its stand-in tool share one description of a Vantiq installation.
local util = require "sim.util"

local M = {}

-- The kinds a chart holds; Secrets come from secrets.yaml, claims from the StatefulSets.
M.KEYS = { "serviceaccounts", "configmaps", "services", "statefulsets.apps", "deployments.apps", "daemonsets.apps",
           "cronjobs.batch", "ingresses.networking.k8s.io" }

-- What a manifest says, without what the apiserver and controllers added.
local function manifest(sim, key, obj)
  local t = sim:type(key)
  local m = obj.metadata
  local out = util.copy(obj)
  out.apiVersion, out.kind, out.status = t.api_version, t.kind, nil
  out.metadata = { name = m.name, namespace = m.namespace, labels = util.copy(m.labels),
                   annotations = util.copy(m.annotations) }
  if key == "services" and out.spec.clusterIP ~= "None" then
    out.spec.clusterIP, out.spec.clusterIPs = nil, nil
  end
  return out
end

--- Render the charts: opts = {namespace, tag, installation, deployment, provider, domain}.
--- Returns release name -> list of manifests, in creation order.
function M.render(opts)
  local provider = (opts.provider == "azure") and "azure" or "aws"
  local sim = require("sim").start {
    modules = { "sim.auth", "sim.core", "sim.world" }, world = opts.deployment, namespace = opts.namespace,
    vantiq_tag = opts.tag, installation = opts.installation, domain = opts.domain, provider = provider,
  }
  local releases = {}
  local ok, err = pcall(function()
    for _, key in ipairs(M.KEYS) do
      for _, obj in ipairs(sim:list(key)) do
        local release = (obj.metadata.annotations or {})["meta.helm.sh/release-name"]
        if release then
          releases[release] = releases[release] or {}
          table.insert(releases[release], manifest(sim, key, obj))
        end
      end
    end
  end)
  sim:stop()
  if not ok then error(err, 0) end
  return releases
end

return M
