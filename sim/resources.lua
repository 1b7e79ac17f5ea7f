-- The resource types the simulator serves: what discovery lists and what routes,
-- stores and prints each. One entry per type, as the real apiserver registers them.
local M = {}

M.list = require("vq.kube.types").list

M.by_key, M.by_gv = {}, {}
for _, t in ipairs(M.list) do
  M.by_key[t.key] = t
  local gv = t.api_version
  M.by_gv[gv] = M.by_gv[gv] or {}
  M.by_gv[gv][t.plural] = t
end

--- Groups in the order the real apiserver lists them (preferred version first).
function M.groups()
  local seen, out = {}, {}
  for _, t in ipairs(M.list) do
    if t.group ~= "" and not seen[t.group] then
      seen[t.group] = true
      out[#out + 1] = { name = t.group, version = t.version }
    end
  end
  return out
end

--- The type served at group/version/plural, or nil.
function M.lookup(group, version, plural)
  local gv = group == "" and version or (group .. "/" .. version)
  return M.by_gv[gv] and M.by_gv[gv][plural]
end

--- The type for an object's apiVersion and kind.
function M.for_object(obj)
  for _, t in ipairs(M.list) do
    if t.api_version == obj.apiVersion and t.kind == obj.kind then return t end
  end
end

--- Storage key: core and events.k8s.io events are one store, as in the real apiserver.
function M.store_key(t) return t.shared_with or t.key end

return M
