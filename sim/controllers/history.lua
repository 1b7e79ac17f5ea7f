-- ControllerRevisions: the template history of StatefulSets and DaemonSets, named
-- <owner>-<hash> as the controller history names them, a template seen before reused
-- (a rollback) with its revision number raised.
local util = require "sim.util"
local R = require "sim.controllers.runtime"

local M = {}

local KEY = "controllerrevisions.apps"
local HASH_LABEL = "controller.kubernetes.io/hash"

--- The data a revision keeps: the pod template as a replacing patch.
function M.patch_of(owner)
  local template = util.copy(owner.spec.template)
  template["$patch"] = "replace"
  return { spec = { template = template } }
end

function M.template_of(revision)
  local t = util.copy(revision.data.spec.template)
  t["$patch"] = nil
  return t
end

local function sorted(list)
  table.sort(list, function(a, b)
    if (a.revision or 0) ~= (b.revision or 0) then return (a.revision or 0) < (b.revision or 0) end
    return a.metadata.name < b.metadata.name
  end)
  return list
end

function M.list(rt, owner)
  return sorted(rt:owned(KEY, owner))
end

--- The owner's revisions: the one of its current template (created or reused) and the
--- one its status names current. Returns update, current, all (sorted by revision).
function M.sync(sim, rt, owner, current_name)
  local revisions = M.list(rt, owner)
  local data = M.patch_of(owner)
  local collisions = (owner.status or {}).collisionCount or 0
  local hash = R.safe_hash(R.canonical(data), collisions)
  local last = revisions[#revisions]
  local next_number = (last and last.revision or 0) + 1
  local update
  for _, rev in ipairs(revisions) do
    if R.same_semantics(rev.data, data) then update = rev end
  end
  if update and update ~= last then
    local copy = util.copy(update)
    copy.revision = next_number
    update = sim:update(KEY, copy)
    revisions = M.list(rt, owner)
  elseif not update then
    local labels = util.copy(owner.spec.template.metadata and owner.spec.template.metadata.labels or {})
    labels[HASH_LABEL] = hash
    update = sim:create(KEY, {
      metadata = { name = owner.metadata.name .. "-" .. hash, namespace = owner.metadata.namespace, labels = labels,
                   ownerReferences = R.array { R.owner_ref(owner) } },
      data = data, revision = next_number,
    })
    if not update then
      -- a revision of that name with other data: the hash collided
      return nil, "collision"
    end
    revisions = M.list(rt, owner)
  end
  local current
  for _, rev in ipairs(revisions) do
    if rev.metadata.name == current_name then current = rev end
  end
  return update, current or update, revisions
end

--- Delete the oldest revisions no pod and no status refers to, beyond the history limit.
function M.truncate(sim, revisions, live, limit)
  local old = {}
  for _, rev in ipairs(revisions) do
    if not live[rev.metadata.name] then old[#old + 1] = rev end
  end
  for i = 1, #old - (limit or 10) do sim:delete(KEY, old[i]) end
end

function M.hash_of(revision)
  return (revision.metadata.labels or {})[HASH_LABEL]
end

return M
