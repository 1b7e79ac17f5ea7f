-- Container logs as the kubelet keeps and serves them: one log file per container
-- instance (the previous instance kept for --previous), rotation, and the pods/log
-- subresource with its real parameters (follow, previous, sinceSeconds, sinceTime,
-- tailLines, timestamps, limitBytes) and its real errors.
--
--   sim.logs:start(ns, pod, container, restart_count)   a container instance starts
--   sim.logs:write(ns, pod, container, line [, time])   append a line (time: sim.clock)
--   sim.logs:stop(ns, pod, container)                   the instance ended: followers end
--   sim.logs:rotate(ns, pod, container)                 the kubelet rotated the file
--   sim.logs:lines(ns, pod, container, {previous =})    -> lines, times (copies)
--   sim.logs:forget(ns, pod)                            the pod is gone (done on delete)
--   sim.logs.rotate_every = n                           rotate after every n lines
--   sim.logs.max_lines, sim.logs.max_bytes              kept per file: the newest lines,
--     at most 100000 of them and 10 MiB (the kubelet's default containerLogMaxSize);
--     opts log_max_lines, log_max_bytes
local vq = require "vq"
local api_mod = require "sim.api"
local util = require "sim.util"

local concat, floor = table.concat, math.floor

local M = {}
M.DEFAULT_MAX_LINES = 100000
M.DEFAULT_MAX_BYTES = 10 * 1024 * 1024

local CHUNK_BYTES = 512 * 1024
local FOLLOW_POLL = 1 -- seconds between checks that the pod and the client are still there

-- ---- one log file: a bounded window of lines, numbered from 1 for ever ----

local File = {}
File.__index = File

local function new_file()
  -- off: lines dropped before lines[1]; a line's number is off + its index
  -- written, bytes: ever (for the average line); held: the bytes of the lines kept
  return setmetatable({ lines = {}, times = {}, first = 1, last = 0, off = 0,
                        written = 0, bytes = 0, held = 0, wake = vq.event(), waiting = false }, File)
end

function File:count() return self.last - self.first + 1 end
function File:first_no() return self.off + self.first end
function File:last_no() return self.off + self.last end

-- Dropping from the front leaves holes; once as many lines were dropped as are kept the
-- arrays are rebuilt so they stay dense (amortised O(1) per line, and table.concat
-- stays on the array part).
function File:drop_oldest(max_lines, max_bytes)
  local lines = self.lines
  while self:count() > max_lines or (self.held > max_bytes and self:count() > 1) do
    self.held = self.held - #lines[self.first] - 1
    lines[self.first], self.times[self.first] = nil, nil
    self.first = self.first + 1
  end
  if self.first > math.max(self:count(), 1024) then
    local n = self.last - self.first + 1
    self.lines = table.move(self.lines, self.first, self.last, 1, {})
    self.times = table.move(self.times, self.first, self.last, 1, {})
    self.off = self.off + self.first - 1
    self.first, self.last = 1, n
  end
end

function File:append(line, t, max_lines, max_bytes)
  local n = self.last + 1
  self.lines[n], self.times[n], self.last = line, t, n
  self.written = self.written + 1
  self.bytes = self.bytes + #line + 1
  self.held = self.held + #line + 1
  if n - self.first >= max_lines or self.held > max_bytes then self:drop_oldest(max_lines, max_bytes) end
  if self.waiting then
    self.waiting = false
    self.wake:set()
  end
end

function File:close(why)
  if self.closed then return end
  self.closed = why
  self.waiting = false
  self.wake:set()
end

--- Wait for a line after number no, or the end of the file, at most `seconds`.
function File:wait_after(no, seconds)
  if self:last_no() > no or self.closed then return end
  self.waiting = true
  self.wake:clear()
  self.wake:wait(seconds)
end

function File:lines_per_chunk()
  local avg = self.written > 0 and self.bytes / self.written or 80
  return math.max(16, floor(CHUNK_BYTES / avg))
end

--- The index of the first line at or after time t (times only grow).
function File:index_since(t)
  local lo, hi = self.first, self.last + 1
  while lo < hi do
    local mid = (lo + hi) // 2
    if self.times[mid] < t then lo = mid + 1 else hi = mid end
  end
  return lo
end

-- ---- timestamps as the kubelet prints them (RFC3339Nano, fixed nine digits) ----

local last_sec, last_prefix

local function stamp(t)
  local sec = floor(t)
  if sec ~= last_sec then
    last_sec, last_prefix = sec, os.date("!%Y-%m-%dT%H:%M:%S", sec)
  end
  local nanos = floor((t - sec) * 1e9 + 0.5)
  if nanos > 999999999 then nanos = 999999999 end
  return ("%s.%09dZ "):format(last_prefix, nanos)
end
M.stamp = stamp

--- Lines i..j of a file (array indexes) as the stream's bytes.
function File:render(i, j, timestamps)
  if not timestamps then return concat(self.lines, "\n", i, j) .. "\n" end
  local parts, lines, times, n = {}, self.lines, self.times, 0
  for k = i, j do
    parts[n + 1], parts[n + 2], parts[n + 3] = stamp(times[k]), lines[k], "\n"
    n = n + 3
  end
  return concat(parts)
end

-- ---- the store: container -> {current, previous} instances ----

local Logs = {}
Logs.__index = Logs

-- pods[ns][pod][container]: nested rather than one joined key, so that a write (the hot
-- path) builds no string.
function Logs:find(ns, pod, container)
  local in_ns = self.pods[ns]
  local in_pod = in_ns and in_ns[pod]
  return in_pod and in_pod[container]
end

function Logs:container(ns, pod, container)
  local c = self:find(ns, pod, container)
  if c then return c end
  local in_ns = self.pods[ns] or {}
  self.pods[ns] = in_ns
  local in_pod = in_ns[pod] or {}
  in_ns[pod] = in_pod
  c = {}
  in_pod[container] = c
  return c
end

local function new_instance(restart_count)
  return { restart_count = restart_count or 0, file = new_file() }
end

--- A container instance starts; the one before it becomes the previous.
function Logs:start(ns, pod, container, restart_count)
  local c = self:container(ns, pod, container)
  if c.current then
    c.current.file:close("stopped")
    c.current.stopped = true
  end
  -- restart count 0 is a new pod (a StatefulSet's pod recreated): it has no previous
  c.previous = (restart_count or 0) > 0 and c.current or nil
  c.current = new_instance(restart_count)
  return c.current
end

function Logs:current(ns, pod, container)
  local c = self:find(ns, pod, container) or self:container(ns, pod, container)
  local inst = c.current
  if not inst then
    inst = new_instance(0)
    c.current = inst
  end
  return inst
end

local function split_lines(s)
  local out = {}
  for line in (s .. "\n"):gmatch("(.-)\r?\n") do out[#out + 1] = line end
  if out[#out] == "" and #out > 1 then out[#out] = nil end
  return out
end

function Logs:write(ns, pod, container, line, time)
  local inst = self:current(ns, pod, container)
  line = tostring(line)
  time = time or self.sim.clock:now()
  if line:find("\n", 1, true) then
    for _, l in ipairs(split_lines(line)) do self:append(inst, l, time) end
  else
    self:append(inst, line, time)
  end
end

function Logs:append(inst, line, time)
  local f = inst.file
  f:append(line, time, self.max_lines, self.max_bytes)
  if self.rotate_every and f.written >= self.rotate_every then self:rotate_instance(inst) end
end

function Logs:stop(ns, pod, container)
  local c = self:find(ns, pod, container)
  if not c or not c.current then return end
  c.current.stopped = true
  c.current.file:close("stopped")
end

function Logs:rotate_instance(inst)
  local old = inst.file
  inst.file = new_file()
  old:close("rotated")
end

--- What the kubelet's rotation does: the file being followed ends (the follower's stream
--- is cut) and only the new file is served from now on.
function Logs:rotate(ns, pod, container)
  self:rotate_instance(self:current(ns, pod, container))
end

function Logs:lines(ns, pod, container, opts)
  local c = self:find(ns, pod, container)
  local inst = c and ((opts and opts.previous) and c.previous or c.current)
  if not inst then return {}, {} end
  local f = inst.file
  return table.move(f.lines, f.first, f.last, 1, {}), table.move(f.times, f.first, f.last, 1, {})
end

--- Drop a pod's logs (the pod was deleted): its followers end.
function Logs:forget(ns, pod)
  local in_ns = self.pods[ns]
  for _, c in pairs(in_ns and in_ns[pod] or {}) do
    if c.current then c.current.file:close("stopped") end
    if c.previous then c.previous.file:close("stopped") end
  end
  if in_ns then in_ns[pod] = nil end
end

function Logs:instance(ns, pod, container, previous)
  local c = self:find(ns, pod, container)
  if previous then return c and c.previous end
  return c and c.current
end

-- ---- pods/log ----

local function container_names(list)
  local names = {}
  for _, c in ipairs(list or {}) do names[#names + 1] = c.name end
  return names
end

--- The spec of a pod's container, init container or ephemeral container by name, or nil.
function M.container_spec(pod, name)
  for _, list in ipairs { pod.spec.containers, pod.spec.initContainers, pod.spec.ephemeralContainers } do
    for _, c in ipairs(list or {}) do if c.name == name then return c end end
  end
end

--- The container a request means, or nil, message (the apiserver's validateContainer).
function M.pick_container(pod, name)
  local spec = pod.spec or {}
  if name and name ~= "" then
    if not M.container_spec(pod, name) then
      return nil, ("container %s is not valid for pod %s"):format(name, pod.metadata.name)
    end
    return name
  end
  local containers = spec.containers or {}
  if #containers == 1 then return containers[1].name end
  if #containers == 0 then return nil, "a container name must be specified for pod " .. pod.metadata.name end
  local msg = ("a container name must be specified for pod %s, choose one of: [%s]"):format(
    pod.metadata.name, concat(container_names(containers), " "))
  if spec.initContainers and #spec.initContainers > 0 then
    msg = msg .. (" or one of the init containers: [%s]"):format(concat(container_names(spec.initContainers), " "))
  end
  if spec.ephemeralContainers and #spec.ephemeralContainers > 0 then
    msg = msg .. (" or one of the ephemeral containers: [%s]"):format(concat(container_names(spec.ephemeralContainers), " "))
  end
  return nil, msg
end

function M.container_status(pod, name)
  local st = pod.status or {}
  for _, list in ipairs { st.containerStatuses, st.initContainerStatuses, st.ephemeralContainerStatuses } do
    for _, cs in ipairs(list or {}) do if cs.name == name then return cs end end
  end
end

local function is_init_container(pod, name)
  for _, c in ipairs(pod.spec.initContainers or {}) do if c.name == name then return true end end
  return false
end

-- The reason a container with no status yet gives: what the kubelet reports meanwhile.
local function pending_reason(pod, name)
  if not is_init_container(pod, name) and pod.spec.initContainers and #pod.spec.initContainers > 0 then
    return "PodInitializing"
  end
  return "ContainerCreating"
end

local function waiting_message(name, pod_name, reason)
  if reason == "ErrImagePull" then reason = "image can't be pulled"
  elseif reason == "ImagePullBackOff" then reason = "trying and failing to pull image" end
  return ('container "%s" in pod "%s" is waiting to start: %s'):format(name, pod_name, reason or "ContainerCreating")
end

--- The instance to serve, following the kubelet's validateContainerLogStatus, or nil, message.
function Logs:instance_for(pod, name, previous)
  local ns, pod_name = pod.metadata.namespace, pod.metadata.name
  local cs = M.container_status(pod, name)
  local state, last = cs and cs.state or {}, cs and cs.lastState or {}
  if previous then
    local inst = self:instance(ns, pod_name, name, true)
    if inst or last.terminated then return inst or new_instance(0) end
    return nil, ('previous terminated container "%s" in pod "%s" not found'):format(name, pod_name)
  end
  local inst = self:instance(ns, pod_name, name)
  if state.running or state.terminated or last.terminated then return inst or self:current(ns, pod_name, name) end
  if state.waiting then return nil, waiting_message(name, pod_name, state.waiting.reason) end
  if inst then return inst end -- logs written before any status: serve them
  return nil, waiting_message(name, pod_name, pending_reason(pod, name))
end

-- ---- the request's options, validated as the apiserver does ----

local function int_param(q, name)
  local v = q[name]
  if v == nil or v == "" then return nil end
  local n = tonumber(v)
  if not n or math.type(n) ~= "integer" and n ~= floor(n) then
    return nil, ("%s: invalid value %q: must be an integer"):format(name, v)
  end
  return floor(n)
end

local function bool_param(q, name)
  local v = q[name]
  return v == "true" or v == "1" or v == "True"
end

local function log_options(q, now)
  local o = { follow = bool_param(q, "follow"), previous = bool_param(q, "previous"),
              timestamps = bool_param(q, "timestamps"), container = q.container }
  local err, invalid = nil, {}
  o.tail, err = int_param(q, "tailLines")
  if err then return nil, 400, err end
  o.limit, err = int_param(q, "limitBytes")
  if err then return nil, 400, err end
  local since_seconds
  since_seconds, err = int_param(q, "sinceSeconds")
  if err then return nil, 400, err end
  if o.tail and o.tail < 0 then invalid[#invalid + 1] = ("tailLines: Invalid value: %d: must be greater than or equal to 0"):format(o.tail) end
  if o.limit and o.limit < 1 then invalid[#invalid + 1] = ("limitBytes: Invalid value: %d: must be greater than 0"):format(o.limit) end
  if since_seconds and since_seconds < 1 then invalid[#invalid + 1] = ("sinceSeconds: Invalid value: %d: must be greater than 0"):format(since_seconds) end
  if since_seconds and q.sinceTime and q.sinceTime ~= "" then invalid[#invalid + 1] = "[]: Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified" end
  if #invalid > 0 then return nil, 422, concat(invalid, ", ") end
  if since_seconds then o.since = now - since_seconds end
  if q.sinceTime and q.sinceTime ~= "" then
    o.since = util.parse_time(q.sinceTime)
    if not o.since then return nil, 400, ('sinceTime: invalid value %q: parsing time as RFC3339'):format(q.sinceTime) end
  end
  return o
end

-- ---- streaming ----

-- One response's progress through a file: the line number it is at and the bytes left.
local Reader = {}
Reader.__index = Reader

local function new_reader(res, file, o)
  local r = setmetatable({ res = res, file = file, o = o, left = o.limit }, Reader)
  local from = file.first
  if o.tail then from = math.max(from, file.last - o.tail + 1) end
  if o.since then from = math.max(from, file:index_since(o.since)) end
  r.next_no = file.off + from
  return r
end

--- Send the file's lines up to line number `upto`; false when the stream must end.
function Reader:send_upto(upto)
  local f = self.file
  local per_chunk = f:lines_per_chunk()
  while self.next_no <= upto do
    if self.next_no < f:first_no() then self.next_no = f:first_no() end -- dropped meanwhile
    local i = self.next_no - f.off
    local j = math.min(upto - f.off, i + per_chunk - 1)
    if j < i then break end
    local data = f:render(i, j, self.o.timestamps)
    self.next_no = f.off + j + 1
    if not self:send(data) then return false end
  end
  return true
end

function Reader:send(data)
  if self.left then
    if #data >= self.left then
      self.res:write(data:sub(1, self.left))
      self.left = 0
      return false
    end
    self.left = self.left - #data
  end
  return self.res:write(data) and self.res:connected()
end

-- The pod a follow belongs to is gone or replaced: its container ended with it.
local function pod_gone(sim, pod)
  local now = sim:get("pods", pod.metadata.namespace, pod.metadata.name)
  return not now or now.metadata.uid ~= pod.metadata.uid
end

function Logs:follow(reader, pod)
  local f = reader.file
  while true do
    if not reader:send_upto(f:last_no()) then return end
    if f.closed then
      reader:send_upto(f:last_no())
      return
    end
    if not reader.res:connected() or pod_gone(self.sim, pod) then return end
    f:wait_after(reader.next_no - 1, FOLLOW_POLL)
  end
end

function Logs:serve(req, res, r)
  local pod = self.sim:get("pods", r.ns, r.name)
  if not pod then
    return api_mod.send_status(res, 404, ('pods "%s" not found'):format(r.name), "NotFound", { name = r.name, kind = "pods" })
  end
  local o, code, msg = log_options(req.query, self.sim.clock:now())
  if not o then return api_mod.send_status(res, code, msg) end
  local name, err = M.pick_container(pod, o.container)
  if not name then return api_mod.send_status(res, 400, err, "BadRequest") end
  if not pod.spec.nodeName or pod.spec.nodeName == "" then
    -- not scheduled: the apiserver has no kubelet to ask and answers with nothing
    return res:send(200, "", { ["Content-Type"] = "text/plain" })
  end
  local inst
  inst, err = self:instance_for(pod, name, o.previous)
  if not inst then return api_mod.send_status(res, 400, err, "BadRequest") end
  res:start(200, { ["Content-Type"] = "text/plain", ["Cache-Control"] = "no-cache, private" })
  local reader = new_reader(res, inst.file, o)
  if o.follow and not o.previous then
    self:follow(reader, pod)
  else
    reader:send_upto(inst.file:last_no())
  end
  res:finish()
end

function M.new(sim, opts)
  return setmetatable({ sim = sim, pods = {}, max_lines = opts.log_max_lines or M.DEFAULT_MAX_LINES,
                        max_bytes = opts.log_max_bytes or M.DEFAULT_MAX_BYTES }, Logs)
end

function M.install(sim, opts)
  local logs = M.new(sim, opts or {})
  sim.logs = logs
  sim.subresources["pods/log"] = function(_, req, res, r)
    if req.method ~= "GET" and req.method ~= "HEAD" then
      return api_mod.send_status(res, 405, "method not allowed", "MethodNotAllowed")
    end
    return logs:serve(req, res, r)
  end
  sim.store:on_change(function(ev)
    if ev.key == "pods" and ev.type == "DELETED" then
      logs:forget(ev.object.metadata.namespace, ev.object.metadata.name)
    end
  end)
end

M.File = File
return M
