-- The service account controller: every active namespace has its "default"
-- ServiceAccount, made again if someone deletes it, as on a real cluster.
local M = {}

local function ensure(sim, ns_name)
  local ns = sim:get("namespaces", nil, ns_name)
  if not ns or ns.metadata.deletionTimestamp or (ns.status or {}).phase == "Terminating" then return end
  if not sim:get("serviceaccounts", ns_name, "default") then
    sim:create("serviceaccounts", { metadata = { name = "default", namespace = ns_name } })
  end
end

function M.install(sim, rt)
  local ctl = rt:controller("serviceaccount", function(_, name) ensure(sim, name) end)
  rt:watch("namespaces", function(ev)
    if ev.type ~= "DELETED" then ctl:enqueue(nil, ev.object.metadata.name) end
  end)
  rt:watch("serviceaccounts", function(ev)
    if ev.type == "DELETED" and ev.object.metadata.name == "default" then ctl:enqueue(nil, ev.object.metadata.namespace) end
  end)
  rt.serviceaccounts = ctl
end

function M.started(sim, rt)
  for _, ns in ipairs(sim:list("namespaces", nil)) do rt.serviceaccounts:enqueue(nil, ns.metadata.name) end
end

return M
