-- Container logs: one container's lines across reconnects (k:logs), and many containers
-- followed at once as pods come and go (k:follow, what stern does).
local vq = require "vq"
local http = require "vq.http"
local time = require "vq.time"

local function err(code, message, details) return vq.error(code, message, details) end

-- A followed stream mostly idles between lines: a 4 KB receive buffer instead of curl's 16 KB
-- keeps a thousand of them small, and measured no slower on a server that outpaces us.
local FOLLOW_BUFFER = 4096

local COLOURS = { "\27[36m", "\27[33m", "\27[32m", "\27[35m", "\27[34m", "\27[91m", "\27[92m", "\27[93m" }

local function log_query(opts, since_time)
  return {
    container = opts.container, follow = opts.follow and "true" or nil, previous = opts.previous and "true" or nil,
    sinceSeconds = (not since_time) and opts.since or nil, sinceTime = since_time or opts.since_time,
    tailLines = (not since_time) and opts.tail or nil, timestamps = "true", limitBytes = opts.limit_bytes,
  }
end

-- ---- one container: the reader ----

-- Lines carry the kubelet's timestamps; after a reopen with sinceTime = the last one seen,
-- the lines up to it (as many at that very time as were given) are dropped.
local Reader = {}
Reader.__index = Reader

-- Where the first stream's window began, on the server's clock (its Date), for a reopen
-- before any line: a relative since would move, a tail would count again. nil: the
-- request as given says it (since_time, or the whole log).
local function window_start(o, date)
  local at = time.parse_http_date(date)
  if not at or o.since_time then return nil end
  if o.since then return time.format(at - o.since) end
  if o.tail then return time.format(at) end
end

-- The stream starts where the last one stopped: the last timestamp given, else (nothing
-- given yet) where the first stream's window began.
function Reader:open()
  local o = self.opts
  local head, e = self.client:request { path = self.path, query = log_query(o, self.last_ts or self.window),
    stream = true, verb = "get", resource = "pods/log", name = self.pod, namespace = self.ns, timeout = 0,
    buffer_size = o.buffer_size or (o.follow and FOLLOW_BUFFER or nil) }
  if not head then return nil, e end
  if not self.opened then
    self.opened, self.window = true, window_start(o, head.headers and head.headers.date)
  end
  self.stream, self.lines = head.stream, http.lines(head.stream)
  self.skipping_ts, self.skip_count = self.last_ts, self.seen_at_last
  return true
end

function Reader:container_running()
  local p = self.client:get("pods", self.pod, { namespace = self.ns })
  for _, c in ipairs(p and (p.status or {}).containerStatuses or {}) do
    if (not self.opts.container or c.name == self.opts.container) and c.state and c.state.running then return true end
  end
  return false
end

-- After a stream ended: whether to open another. Reopen at once after a stream that
-- delivered lines (a rotation cut it: lines written meanwhile go to the new file, which a
-- second rotation would take out of reach); back off only while reopening yields nothing.
function Reader:reopens()
  self.stream:close()
  self.stream = nil
  if not self.opts.follow or not self:container_running() then return false end
  local st = self.state
  st.reconnects = st.reconnects + 1
  -- no point to resume from: a window relative to the server's now, and no Date to fix it
  if not self.last_ts and not self.window and (self.opts.since or self.opts.tail) and not self.opts.since_time then
    st.gap, st.gaps = true, (st.gaps or 0) + 1
  end
  if self.last_ts == st.last_reopen_ts then
    st.idle_reopens = (st.idle_reopens or 0) + 1
    if st.idle_reopens > (self.opts.max_reconnects or 100) then
      st.err = err("log_stream", "the log stream keeps ending while the container runs")
      return false
    end
    vq.sleep(math.min(0.05 * st.idle_reopens, 2))
  else
    st.idle_reopens = 0
  end
  st.last_reopen_ts = self.last_ts
  return true
end

-- The line as the caller gets it (text, timestamp), or nil for one given before a reopen.
function Reader:accept(line)
  local ts, text = line:match("^(%S+) (.*)$")
  if not ts then ts, text = line:match("^(%S+)$"), "" end
  if not ts then return line end
  if self.skipping_ts then
    if ts < self.skipping_ts or (ts == self.skipping_ts and self.skip_count > 0) then
      if ts == self.skipping_ts then self.skip_count = self.skip_count - 1 end
      return nil
    end
    self.skipping_ts = nil
  end
  if ts == self.last_ts then self.seen_at_last = self.seen_at_last + 1 else self.last_ts, self.seen_at_last = ts, 1 end
  if self.opts.timestamps then return ts .. " " .. text, ts end
  return text, ts
end

function Reader:next()
  while not self.state.closed do
    if not self.stream then
      local ok, e = self:open()
      if not ok then self.state.err = e return nil end
    end
    local line = self.lines()
    if line then
      local out, ts = self:accept(line)
      if out then return out, ts end
    elseif not self:reopens() then
      return nil
    end
  end
end

-- ---- many containers: the follower ----

local Follower = {}
Follower.__index = Follower

function Follower:wanted(pod)
  if self.opts.pattern and not pod.metadata.name:find(self.opts.pattern) then return false end
  return not pod.metadata.deletionTimestamp
end

function Follower:colour(name)
  if not self.colour_of[name] then
    self.ncolours = self.ncolours + 1
    self.colour_of[name] = COLOURS[(self.ncolours - 1) % #COLOURS + 1]
  end
  return self.colour_of[name]
end

local GAP = "--- lines may be missing here: the stream was reopened with nothing to resume from ---"

function Follower:emit(name, c, colour, text, gap)
  if self.opts.on_line then self.opts.on_line(text, name, c, gap)
  else self.out:put { pod = name, container = c, text = text, colour = colour, gap = gap } end
end

-- One container's stream, after a slot is free. Its task keeps only the names it needs,
-- not the watched Pod object. A gap the reader could not close is said in line, before
-- the first line after it.
function Follower:stream(name, c)
  local opts, grep, colour = self.opts, self.opts.grep, self:colour(name)
  self.slots:get()
  local iter, st, _, closer = self.client:logs(name, { namespace = self.ns, container = c, follow = true,
    since = opts.since, buffer_size = opts.buffer_size })
  local stream <close> = closer
  local gaps = 0
  for text in iter do
    if (st.gaps or 0) > gaps then
      gaps = st.gaps
      self:emit(name, c, colour, GAP, true)
    end
    if not grep or text:find(grep) then self:emit(name, c, colour, text) end
    if self.stopped then st.close() break end
  end
  self.slots:put(true)
end

function Follower:follow_container(name, c)
  local key = name .. "/" .. c
  if self.followed[key] then return end
  self.followed[key] = vq.spawn(function()
    self:stream(name, c)
    self.followed[key] = nil
  end)
end

-- Follow the pod's running (or finished) containers that are not followed yet.
function Follower:consider(pod)
  if not self:wanted(pod) then return end
  local started = {}
  for _, cs in ipairs((pod.status or {}).containerStatuses or {}) do
    if cs.state and (cs.state.running or cs.state.terminated) then started[cs.name] = true end
  end
  for _, c in ipairs((pod.spec or {}).containers or {}) do
    if (not self.opts.container or c.name == self.opts.container) and started[c.name] then
      self:follow_container(pod.metadata.name, c.name)
    end
  end
end

function Follower:watch_pods()
  local events, st, _, closer = self.client:watch("pods", { namespace = self.ns, labels = self.opts.selector })
  local watch <close> = closer
  self.watch_state = st
  for ev in events do
    if self.stopped then break end
    if ev.type ~= "DELETED" then self:consider(ev.object) end
  end
end

function Follower:stop()
  self.stopped = true
  if self.watch_state then self.watch_state.close() end
  self.watcher:cancel()
  for _, t in pairs(self.followed) do t:cancel() end
  self.out:close()
end

--- Lines as they come; each {pod, container, text, colour}.
function Follower:lines()
  return function()
    local item = self.out:get()
    return item
  end
end

--- "[pod/container] text", coloured per pod when the console has colour.
function Follower.format(item, colour)
  local prefix = ("[%s/%s]"):format(item.pod, item.container)
  if colour then prefix = item.colour .. prefix .. "\27[0m" end
  return prefix .. " " .. item.text
end

return function(kube, Client)
  --- Lines of a container's log: for line, ts in k:logs(pod, {container=, follow=, since=,
  --- since_time=, tail=, previous=, timestamps=}). A follow that ends while the container
  --- still runs (rotation, an idle cut, an apiserver restart) reopens with sinceTime and
  --- drops the lines already seen. state.err holds an error that ended the iteration;
  --- state.gap is set (state.gaps counts) where lines may have been lost between two
  --- streams: one that ended before its first line, on a server that gave no Date.
  function Client:logs(pod, opts)
    opts = opts or {}
    local ns = opts.namespace or self.namespace
    local r = setmetatable({ client = self, pod = pod, ns = ns, opts = opts, state = { reconnects = 0 },
      path = ("/api/v1/namespaces/%s/pods/%s/log"):format(ns, pod), seen_at_last = 0, skip_count = 0 }, Reader)
    function r.state.close()
      r.state.closed = true
      if r.stream then r.stream:close() r.stream = nil end
    end
    return function() return r:next() end, r.state, nil, kube.closing(r.state)
  end

  --- Follow many containers (what stern does): k:follow{namespace=, selector= or pattern=,
  --- container=, grep=, since=, concurrency=, on_line=function(line, pod, container, gap)}.
  --- Pods that appear later are picked up from the watch; a stream that ends while its
  --- container runs is reopened without losing or repeating lines (k:logs). Returns a
  --- follower with :lines() (iterator of {pod, container, text, gap}), :stop(); an item with
  --- gap = true says that container's lines may be missing there.
  function Client:follow(opts)
    opts = opts or {}
    local concurrency = opts.concurrency or 1000
    local f = setmetatable({ client = self, opts = opts, ns = opts.namespace or self.namespace,
      out = vq.queue(opts.buffer or 10000), slots = vq.queue(concurrency), stopped = false,
      followed = {}, colour_of = {}, ncolours = 0 }, Follower) -- followed: "pod/container" -> task
    for _ = 1, concurrency do f.slots:put(true) end
    f.watcher = vq.spawn(function() f:watch_pods() end)
    return f
  end
end
