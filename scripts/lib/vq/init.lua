-- vq: tasks on the host's loop. The mechanism (spawn, sleep, park/wake) is C; what is
-- built from it (timeouts, all, race, events, queues) is here.
local core = require "vq.core.sched"

local vq = {
  spawn = core.spawn,
  sleep = core.sleep,
  now = core.now,
  current = core.current,
  stats = core.stats,
  yield = coroutine.yield,
}

--- An error table as every primitive returns it: {code =, message =, ...details}.
local err = core.error
vq.error = err

--- Run fn(...) in the current task; a wait still running after `seconds` returns
--- nil, {code = "timeout"}. Returns fn's results, or nil, err when the time ran out.
function vq.timeout(seconds, fn, ...)
  local me = assert(core.current(), "vq.timeout must run in a task")
  local uv = require "luv"
  local fired = false
  local timer = uv.new_timer()
  timer:start(math.floor(seconds * 1000 + 0.5), 0, function()
    fired = true
    core.interrupt(me, "timeout")
  end)
  local results = table.pack(pcall(fn, ...))
  timer:close()
  if fired then core.clear_interrupt(me) end
  if fired then return nil, err("timeout", ("timed out after %gs"):format(seconds)) end
  if not results[1] then error(results[2], 0) end
  return table.unpack(results, 2, results.n)
end

local function as_task(x)
  if type(x) == "function" then return core.spawn(x) end
  return x
end

--- Wait for every task (or function, spawned) of the list. Returns a list of packed
--- results in order, or nil, err as soon as one fails (the others are cancelled).
function vq.all(list)
  local tasks = {}
  for i, x in ipairs(list) do tasks[i] = as_task(x) end
  local results = {}
  for i, t in ipairs(tasks) do
    local r = table.pack(t:wait())
    if r[1] == nil and r.n == 2 and type(r[2]) == "table" and r[2].code then
      for j = i + 1, #tasks do tasks[j]:cancel() end
      r[2].index = i
      return nil, r[2]
    end
    results[i] = r
  end
  return results
end

--- The first of the tasks (or functions) to finish wins: returns its index and results,
--- or nil, err if it failed. The others are cancelled.
function vq.race(list)
  local me = assert(core.current(), "vq.race must run in a task")
  local tasks, watchers, outcome = {}, {}, nil
  for i, x in ipairs(list) do tasks[i] = as_task(x) end
  for i, t in ipairs(tasks) do
    watchers[i] = core.spawn(function()
      local r = table.pack(t:wait())
      if not outcome then
        outcome = {i = i, r = r}
        core.wake(me)
      end
    end)
  end
  if #tasks == 0 then return nil, err("empty", "vq.race of nothing") end
  while not outcome do core.park() end
  for i, t in ipairs(tasks) do
    if i ~= outcome.i then t:cancel() end
    watchers[i]:cancel()
  end
  local r = outcome.r
  if r[1] == nil and r.n == 2 and type(r[2]) == "table" and r[2].code then
    r[2].index = outcome.i
    return nil, r[2]
  end
  return outcome.i, table.unpack(r, 1, r.n)
end

-- Park the current task on a wait list until woken. Returns true, or nil, err when a
-- timeout ended the wait; re-raises a cancellation. Either way it leaves the list.
local function park_on(list, what)
  local me = core.current()
  if not me then error(what .. " waits, so it must run in a task", 3) end
  list[#list + 1] = me
  local ok, r, e = pcall(core.park)
  if not ok or r == nil then
    for i, t in ipairs(list) do
      if t == me then table.remove(list, i) break end
    end
    if not ok then error(r, 0) end
    return nil, e
  end
  return true
end

--- An event: tasks wait until it is set.
function vq.event()
  local waiting, is_set = {}, false
  local ev = {}
  function ev:set()
    is_set = true
    local list = waiting
    waiting = {}
    for _, t in ipairs(list) do core.wake(t) end
  end
  function ev:clear() is_set = false end
  function ev:is_set() return is_set end
  local function wait_set()
    while not is_set do
      local ok, e = park_on(waiting, "event:wait")
      if not ok then return nil, e end
    end
    return true
  end
  function ev:wait(seconds)
    if is_set then return true end
    if seconds then return vq.timeout(seconds, wait_set) end
    return wait_set()
  end
  return ev
end

--- A bounded FIFO queue between tasks: put waits while it is full, get while it is empty
--- (both return nil, err if a vq.timeout around them ends the wait). close() wakes
--- everyone: get returns nil, {code = "closed"} once the queue is drained.
function vq.queue(capacity)
  capacity = capacity or math.huge
  local items, head, tail = {}, 1, 0
  local getters, putters = {}, {}
  local closed = false
  local q = {}

  local function wake_one(list)
    local t = table.remove(list, 1)
    if t then core.wake(t) end
  end

  function q:size() return tail - head + 1 end
  function q:put(item)
    assert(item ~= nil, "queue:put(nil)")
    while not closed and tail - head + 1 >= capacity do
      local ok, e = park_on(putters, "queue:put")
      if not ok then return nil, e end
    end
    if closed then return nil, err("closed", "the queue is closed") end
    tail = tail + 1
    items[tail] = item
    wake_one(getters)
    return true
  end
  function q:get()
    while tail < head and not closed do
      local ok, e = park_on(getters, "queue:get")
      if not ok then return nil, e end
    end
    if tail < head then return nil, err("closed", "the queue is closed") end
    local item = items[head]
    items[head] = nil
    head = head + 1
    wake_one(putters)
    return item
  end
  function q:close()
    closed = true
    for _, t in ipairs(getters) do core.wake(t) end
    for _, t in ipairs(putters) do core.wake(t) end
    getters, putters = {}, {}
  end
  return q
end

-- task:wait([timeout]): the join is C; the bound is vq.timeout around it.
do
  local task_methods = debug.getregistry()["vq.task"].__index
  local join = task_methods.wait
  function task_methods.wait(task, seconds)
    if seconds then return vq.timeout(seconds, join, task) end
    return join(task)
  end
end

--- The command line's switches: dry_run, rehearse.
vq.options = core.options()

return vq
