-- What every controller of the simulator shares: the tasks they run (all cancelled with
-- the simulator), work queues woken by store changes, and small helpers on objects
-- (owners, conditions, hashes, quantities, scaled time).
local vq = require "vq"
local json = require "json"
local util = require "sim.util"
local log = require "log"

local M = {}
local Runtime = {}
Runtime.__index = Runtime

local function array(t) return setmetatable(t or {}, json.array_mt) end
M.array = array

-- ---- tasks ----

--- Run fn(...) as a task that ends with the simulator. Errors are logged, not raised:
--- a controller must not take the loop down with it.
function Runtime:spawn(what, fn, ...)
  local args = table.pack(...)
  local task
  task = vq.spawn(function()
    local ok, err = xpcall(fn, debug.traceback, table.unpack(args, 1, args.n))
    self.tasks[task] = nil
    if not ok and not M.cancelled(err) then log.warn("sim %s: %s", what, tostring(err)) end
  end)
  self.tasks[task] = true
  return task
end

function Runtime:cancel(task)
  if task then
    self.tasks[task] = nil
    task:cancel()
  end
end

function Runtime:cancel_all()
  local list = {}
  for t in pairs(self.tasks) do list[#list + 1] = t end
  self.tasks = {}
  for _, t in ipairs(list) do t:cancel() end
end

--- True for the error a cancelled wait raises.
function M.cancelled(err)
  return type(err) == "table" and err.code == "cancelled"
end

--- Sleep a simulated duration (scaled by the simulator's speed).
function Runtime:delay(seconds)
  if seconds > 0 then vq.sleep(seconds * self.sim.speed) else coroutine.yield() end
end

--- Simulated seconds elapsed since a vq.now() reading.
function Runtime:elapsed(since)
  return (vq.now() - since) / self.sim.speed
end

-- ---- work queues ----

local Controller = {}
Controller.__index = Controller

--- A controller: keys (namespace, name) marked dirty by store changes, reconciled one at
--- a time by one task, as a real controller's work queue does.
function Runtime:controller(name, reconcile)
  local c = setmetatable({ name = name, reconcile = reconcile, dirty = {}, order = {}, wake = vq.event(), rt = self }, Controller)
  self.controllers[name] = c
  self:spawn(name, function() c:run() end)
  return c
end

function Controller:enqueue(ns, name)
  local key = (ns or "") .. "/" .. name
  if not self.dirty[key] then
    self.dirty[key] = { ns, name }
    self.order[#self.order + 1] = key
  end
  self.wake:set()
end

--- Reconcile a key again after a simulated delay (back-offs, deadlines, minReadySeconds),
--- or after real seconds when unscaled (the clock's own time, as cron schedules use).
function Controller:after(seconds, ns, name, unscaled)
  local key = self.name .. ":" .. (ns or "") .. "/" .. name
  local pending = self.rt.timers[key]
  local wait = unscaled and seconds or seconds * self.rt.sim.speed
  local due = vq.now() + wait
  if pending and pending.due <= due + 1e-6 then return end
  if pending then self.rt:cancel(pending.task) end
  local entry = { due = due }
  entry.task = self.rt:spawn(self.name .. " timer", function()
    vq.sleep(math.max(wait, 0))
    if self.rt.timers[key] == entry then self.rt.timers[key] = nil end
    self:enqueue(ns, name)
  end)
  self.rt.timers[key] = entry
end

function Controller:run()
  while true do
    self.wake:wait()
    self.wake:clear()
    local dirty, order = self.dirty, self.order
    self.dirty, self.order = {}, {}
    for _, key in ipairs(order) do
      local item = dirty[key]
      local ok, err = xpcall(self.reconcile, debug.traceback, item[1], item[2])
      if not ok then
        if M.cancelled(err) then error(err, 0) end
        log.warn("sim %s %s: %s", self.name, key, tostring(err))
        self:after(1, item[1], item[2])
      end
    end
    -- let the writers whose changes woke us run before the next round
    coroutine.yield()
  end
end

--- Call fn(event) for every store change of a type ("pods", "statefulsets.apps").
function Runtime:watch(key, fn)
  local list = self.watchers[key]
  if not list then
    list = {}
    self.watchers[key] = list
  end
  list[#list + 1] = fn
end

-- Watchers run inside the store's write: a controller's bug must not fail the request
-- that wrote.
function Runtime:dispatch(ev)
  for _, fn in ipairs(self.watchers[ev.key] or {}) do
    local ok, err = xpcall(fn, debug.traceback, ev)
    if not ok then log.warn("sim watch %s: %s", ev.key, tostring(err)) end
  end
end

-- ---- objects ----

function M.controller_of(obj)
  for _, ref in ipairs(obj and obj.metadata.ownerReferences or {}) do
    if ref.controller then return ref end
  end
end

function M.owner_ref(owner, kind, api_version)
  return { apiVersion = api_version or owner.apiVersion, kind = kind or owner.kind, name = owner.metadata.name,
           uid = owner.metadata.uid, controller = true, blockOwnerDeletion = true }
end

--- Objects of a type in a namespace whose controller is owner.
function Runtime:owned(key, owner)
  local uid = owner.metadata.uid
  return self.sim:list(key, owner.metadata.namespace, function(o)
    local ref = M.controller_of(o)
    return ref ~= nil and ref.uid == uid
  end)
end

function M.condition(status, typ)
  for _, c in ipairs(status and status.conditions or {}) do
    if c.type == typ then return c end
  end
end

--- Set a condition in a status table; the transition time moves only when the status does.
function M.set_condition(status, cond, now)
  status.conditions = status.conditions or array()
  local old = M.condition(status, cond.type)
  if old and old.status == cond.status then
    cond.lastTransitionTime = old.lastTransitionTime or now
    if cond.reason == old.reason and cond.message == old.message then
      cond.lastUpdateTime = old.lastUpdateTime and cond.lastUpdateTime and old.lastUpdateTime or cond.lastUpdateTime
    end
  else
    cond.lastTransitionTime = now
  end
  for i, c in ipairs(status.conditions) do
    if c.type == cond.type then
      status.conditions[i] = cond
      return
    end
  end
  status.conditions[#status.conditions + 1] = cond
end

--- A copy without nulls and empty maps or lists: what Go's semantic equality cannot tell
--- apart (kubectl sends a template back with creationTimestamp: null, for one).
function M.canonical(v)
  if type(v) ~= "table" then
    if v == json.null then return nil end
    return v
  end
  local out = {}
  for k, x in pairs(v) do
    local c = M.canonical(x)
    if c ~= nil then out[k] = c end
  end
  if next(out) == nil then return nil end
  return setmetatable(out, getmetatable(v))
end

function M.same_semantics(a, b) return M.same(M.canonical(a) or {}, M.canonical(b) or {}) end

function M.same(a, b)
  return json.encode(a, { sort_keys = true }) == json.encode(b, { sort_keys = true })
end

--- Write a status when it changed; obj is the stored object, status the new one.
function Runtime:write_status(key, obj, status)
  if M.same(obj.status or {}, status) then return obj end
  local copy = util.copy(obj)
  copy.status = status
  return self.sim:update_status(key, copy) or obj
end

function M.is_terminating(obj) return obj.metadata.deletionTimestamp ~= nil end

function M.now(sim) return util.rfc3339(sim.clock:now()) end

-- ---- pods ----

function M.pod_ready(pod)
  local c = M.condition(pod.status, "Ready")
  return c ~= nil and c.status == "True"
end

function M.running_and_ready(pod)
  return (pod.status or {}).phase == "Running" and M.pod_ready(pod)
end

function M.pod_terminal(pod)
  local phase = (pod.status or {}).phase
  return phase == "Succeeded" or phase == "Failed"
end

--- Active as controllers count pods: neither finished nor being deleted.
function M.pod_active(pod)
  return not M.pod_terminal(pod) and not M.is_terminating(pod)
end

--- Ready for at least min_ready simulated seconds (the kubelet notes when it got ready).
function Runtime:pod_available(pod, min_ready)
  if not M.running_and_ready(pod) then return false end
  if (min_ready or 0) <= 0 then return true end
  local since = self.ready_since[pod.metadata.uid]
  if since then return self:elapsed(since) >= min_ready end
  local t = util.parse_time(M.condition(pod.status, "Ready").lastTransitionTime)
  return t ~= nil and self.sim.clock:now() - t >= min_ready
end

--- Simulated seconds until a ready pod becomes available, or nil.
function Runtime:until_available(pod, min_ready)
  local since = self.ready_since[pod.metadata.uid]
  if not since or not M.running_and_ready(pod) then return nil end
  return math.max(0, min_ready - self:elapsed(since))
end

-- ---- hashes, as the controllers name revisions and ReplicaSets ----

local SAFE = "bcdfghjklmnpqrstvwxz2456789"

function M.fnv32a(s)
  local h = 0x811c9dc5
  for i = 1, #s do
    h = h ~ s:byte(i)
    h = (h * 0x01000193) & 0xffffffff
  end
  return h
end

--- rand.SafeEncodeString(fmt.Sprint(hash)): the decimal digits mapped to safe characters.
function M.safe_hash(value, collisions)
  local text = type(value) == "string" and value or json.encode(value, { sort_keys = true })
  if collisions and collisions > 0 then text = text .. tostring(collisions) end
  local digits = tostring(M.fnv32a(text))
  return (digits:gsub(".", function(c)
    local n = c:byte() % #SAFE + 1
    return SAFE:sub(n, n)
  end))
end

--- A 64-hex-digit identifier (container IDs, image digests).
function M.hex64(seed)
  local parts = {}
  for i = 1, 8 do parts[i] = ("%08x"):format(M.fnv32a(seed .. "#" .. i)) end
  return table.concat(parts)
end

--- A duration as Go's time.Duration prints it: 10s, 1m20s, 5m0s.
function M.go_duration(seconds)
  seconds = math.floor(seconds + 0.5)
  local h, m, s = seconds // 3600, (seconds % 3600) // 60, seconds % 60
  if h > 0 then return ("%dh%dm%ds"):format(h, m, s) end
  if m > 0 then return ("%dm%ds"):format(m, s) end
  return ("%ds"):format(s)
end

-- ---- quantities ----

local SUFFIX = {
  Ki = 2 ^ 10, Mi = 2 ^ 20, Gi = 2 ^ 30, Ti = 2 ^ 40, Pi = 2 ^ 50, Ei = 2 ^ 60,
  n = 1e-9, u = 1e-6, m = 1e-3, k = 1e3, K = 1e3, M = 1e6, G = 1e9, T = 1e12, P = 1e15, E = 1e18,
}

--- A resource quantity ("500m", "2Gi", "1.5") as a number, or nil.
function M.quantity(q)
  if q == nil then return nil end
  if type(q) == "number" then return q end
  local num, suffix = tostring(q):match("^%s*([%d%.eE+-]-)%s*(%a*)%s*$")
  local n = tonumber(num)
  if not n then return nil end
  if suffix == "" then return n end
  local mult = SUFFIX[suffix]
  return mult and n * mult or nil
end

--- maxSurge / maxUnavailable: an int or a percentage of total, rounded up or down.
function M.int_or_percent(v, total, round_up)
  if v == nil then return nil end
  if type(v) == "number" then return math.floor(v) end
  local pct = tostring(v):match("^(%d+)%%$")
  if not pct then return tonumber(v) end
  local x = tonumber(pct) * total / 100
  return round_up and math.ceil(x) or math.floor(x)
end

function M.new(sim, opts)
  local rt = setmetatable({
    sim = sim, opts = opts or {}, tasks = {}, controllers = {}, timers = {}, watchers = {},
    ready_since = {},      -- pod uid -> vq.now() when its Ready condition turned True
  }, Runtime)
  sim.store:on_change(function(ev) rt:dispatch(ev) end)
  -- The simulator's stop cancels what it spawned; this makes it cancel ours too.
  sim.tasks[#sim.tasks + 1] = { cancel = function() rt:cancel_all() end }
  return rt
end

return M
