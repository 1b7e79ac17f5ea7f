-- The object store: one global, monotonically increasing resourceVersion, a window of
-- recent changes for watches to resume from, and watchers fed through bounded queues.
-- Stored objects are never changed in place: every write stores a new table, so the
-- history can keep references instead of copies.
local vq = require "vq"

local Store = {}
Store.__index = Store

local M = {}

local WATCH_QUEUE = 20000

function M.new(opts)
  opts = opts or {}
  return setmetatable({
    rv = opts.first_rv or 1000,
    objects = {},          -- objects[type key]["ns/name"] = object
    history = {},          -- ring of {rv, key, type, object, old}
    first = 1,
    last = 0,
    window = opts.window or 10000,
    watchers = {},
    hooks = {},            -- in-process observers (controllers): fn(event)
    owned = {},            -- owned[owner uid]["key|ns/name"] = {key, ns, name}: garbage collection
  }, Store)
end

local function id(ns, name) return (ns or "") .. "/" .. name end

function Store:bump()
  self.rv = self.rv + 1
  return self.rv
end

function Store:get(key, ns, name)
  local bucket = self.objects[key]
  return bucket and bucket[id(ns, name)]
end

--- Objects of a type (in a namespace, or all), sorted as etcd keys are, filtered by fn.
function Store:list(key, ns, fn)
  local out = {}
  for k, obj in pairs(self.objects[key] or {}) do
    if (not ns or obj.metadata.namespace == ns) and (not fn or fn(obj)) then out[#out + 1] = { k, obj } end
  end
  table.sort(out, function(a, b) return a[1] < b[1] end)
  for i, pair in ipairs(out) do out[i] = pair[2] end
  return out
end

function Store:count(key)
  local n = 0
  for _ in pairs(self.objects[key] or {}) do n = n + 1 end
  return n
end

--- The oldest resourceVersion a watch can still resume from.
function Store:oldest_rv()
  local ev = self.history[self.first]
  return ev and (ev.rv - 1) or self.rv
end

function Store:record(ev)
  self.last = self.last + 1
  self.history[self.last] = ev
  while self.last - self.first + 1 > self.window do
    self.history[self.first] = nil
    self.first = self.first + 1
  end
  for _, hook in ipairs(self.hooks) do hook(ev) end
  for w in pairs(self.watchers) do w:offer(ev) end
end

local function owner_refs(obj)
  local refs = obj and obj.metadata.ownerReferences
  return type(refs) == "table" and refs or {}
end

-- Keep owned[] in step with a write: old's references out, new's in.
local function index_owners(self, key, k, old, new)
  for _, ref in ipairs(owner_refs(old)) do
    local set = self.owned[ref.uid]
    if set then
      set[key .. "|" .. k] = nil
      if next(set) == nil then self.owned[ref.uid] = nil end
    end
  end
  for _, ref in ipairs(owner_refs(new)) do
    if ref.uid then
      local set = self.owned[ref.uid] or {}
      self.owned[ref.uid] = set
      set[key .. "|" .. k] = { key, new.metadata.namespace, new.metadata.name }
    end
  end
end

--- The objects whose ownerReferences name uid, as {key, object} pairs in key order.
function Store:owned_by(uid)
  local out = {}
  for at, where in pairs(self.owned[uid] or {}) do
    local obj = self:get(where[1], where[2], where[3])
    if obj then out[#out + 1] = { where[1], obj, at } end
  end
  table.sort(out, function(a, b) return a[3] < b[3] end)
  return out
end

--- Store obj (a new table) under key; sets its resourceVersion. Returns it.
function Store:put(key, obj, event_type)
  local meta = obj.metadata
  local k = id(meta.namespace, meta.name)
  self.objects[key] = self.objects[key] or {}
  local old = self.objects[key][k]
  meta.resourceVersion = tostring(self:bump())
  self.objects[key][k] = obj
  index_owners(self, key, k, old, obj)
  self:record { rv = self.rv, key = key, type = event_type or (old and "MODIFIED" or "ADDED"), object = obj, old = old }
  return obj
end

function Store:remove(key, obj)
  local meta = obj.metadata
  local k = id(meta.namespace, meta.name)
  local old = self.objects[key] and self.objects[key][k]
  if not old then return nil end
  self.objects[key][k] = nil
  index_owners(self, key, k, old, nil)
  -- A deleted object's last version carries the deletion's resourceVersion.
  local final = {}
  for f, v in pairs(obj) do final[f] = v end
  final.metadata = {}
  for f, v in pairs(obj.metadata) do final.metadata[f] = v end
  final.metadata.resourceVersion = tostring(self:bump())
  self:record { rv = self.rv, key = key, type = "DELETED", object = final, old = old }
  return final
end

-- ---- watchers ----

local Watcher = {}
Watcher.__index = Watcher

-- Deliver an event as the watcher sees it: an object moving out of its selection is
-- DELETED for it, one moving in is ADDED.
function Watcher:offer(ev)
  if self.closed or ev.key ~= self.key then return end
  if self.ns and ev.object.metadata.namespace ~= self.ns then return end
  local now_in = not self.filter or self.filter(ev.object)
  local was_in = ev.old and (not self.filter or self.filter(ev.old))
  local t = ev.type
  if t == "MODIFIED" then
    if now_in and not was_in then t = "ADDED"
    elseif was_in and not now_in then t = "DELETED"
    elseif not now_in then return end
  elseif not now_in then
    return
  end
  if self.queue:size() >= WATCH_QUEUE then
    -- A watcher that cannot keep up is closed, as the apiserver does; the client re-lists.
    self:close()
    return
  end
  self.queue:put { type = t, object = ev.object, rv = ev.rv }
end

function Watcher:close()
  if self.closed then return end
  self.closed = true
  self.store.watchers[self] = nil
  self.queue:close()
end

--- Watch a type from a resourceVersion: nil for "now", or a number. Returns a watcher
--- whose queue yields {type, object}, or nil, "expired" when from_rv is older than the
--- window. Events after from_rv are replayed first.
function Store:watch(key, ns, from_rv, filter)
  if from_rv and from_rv < self:oldest_rv() then return nil, "expired" end
  local w = setmetatable({ store = self, key = key, ns = ns, filter = filter, queue = vq.queue() }, Watcher)
  if from_rv then
    for i = self.first, self.last do
      local ev = self.history[i]
      if ev.rv > from_rv then w:offer(ev) end
    end
  end
  self.watchers[w] = true
  return w
end

--- End the watches of a type (a custom resource whose CRD is gone): their clients re-list.
function Store:close_watchers(key)
  for w in pairs(self.watchers) do
    if w.key == key then w:close() end
  end
end

--- Observe every change in-process (controllers).
function Store:on_change(fn)
  self.hooks[#self.hooks + 1] = fn
end

return M
