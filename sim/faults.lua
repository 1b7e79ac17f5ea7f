-- Transport faults for the client's tests and for rehearsing a flaky apiserver: the API
-- calls sim.faults:before(req, res) first, and a fault that handles the request answers
-- it (true) or changes how it is answered (a slow start, a stream cut after n lines).
--
--   sim.faults:add{kind = "status", code = 429, count = 3, retry_after = 1, path = "^/api"}
--   sim.faults:add{kind = "drop", after = 5, count = 1, streams = true}  -- cut after 5 lines
--                                       (a request that is no stream: closed unanswered)
--   sim.faults:add{kind = "slow", delay = 2, count = 5}                  -- seconds, real time
--   sim.faults:add{kind = "watch-410", count = 1}                        -- next watch: 410 ERROR
--   sim.faults:add{kind = "token-expired", after_requests = 10}         -- or after_seconds
--   sim.faults:add{kind = "log-rotation", every = 20}                    -- sim.logs.rotate_every
--
-- Common fields: path (a Lua pattern on the request path; default every API path), method,
-- streams (true: only watches and follows), match = function(req) -> bool, count (how many
-- requests it applies to; default unlimited). add returns the fault; remove(fault) or
-- clear() ends it. fault.hits counts the requests it touched. Times are real seconds:
-- transport faults are for the client's clock, not scaled by sim.speed.
local json = require "json"
local vq = require "vq"
local api_mod = require "sim.api"

local M = {}
local Faults = {}
Faults.__index = Faults

local KINDS = { status = true, drop = true, slow = true, ["watch-410"] = true, ["token-expired"] = true, ["log-rotation"] = true }

local function is_stream(req)
  local q = req.query or {}
  return q.watch == "1" or q.watch == "true" or q.follow == "true" or q.follow == "1"
end

local function matches(f, req)
  if f.path and not req.path:find(f.path) then return false end
  if not f.path and not req.path:find("^/api") then return false end
  if f.method and f.method ~= req.method then return false end
  if f.streams and not is_stream(req) then return false end
  if f.kind == "watch-410" and not (req.query.watch == "1" or req.query.watch == "true") then return false end
  if f.match and not f.match(req) then return false end
  return true
end

-- Cut the response after `after` lines (watch events, log lines): the connection closes
-- mid-stream, without the chunked terminator, as when a proxy or the apiserver goes away.
local function cut_after(res, after)
  local left = after
  local write = res.write
  res.write = function(self, data)
    if left <= 0 then return false end
    local pos, n = 0, 0
    while n < left do
      local nl = data:find("\n", pos + 1, true)
      if not nl then break end
      pos, n = nl, n + 1
    end
    if n < left then
      left = left - n
      return write(self, data)
    end
    write(self, data:sub(1, pos))
    left = 0
    self.conn:close()
    return false
  end
end

local function expire_token(sim, f)
  local since = vq.now()
  f.requests = 0
  sim.token_expired = function(token)
    if token ~= sim.token then return false end
    f.requests = f.requests + 1
    if f.after_requests then return f.requests > f.after_requests end
    return vq.now() - since >= (f.after_seconds or 0)
  end
end

local function apply_rotation(sim, f)
  if sim.logs then
    f.saved_rotation = sim.logs.rotate_every
    sim.logs.rotate_every = f.every or 20
    f.applied = true
  end
end

--- Add a fault (see the header); returns it.
function Faults:add(f)
  assert(KINDS[f.kind], "unknown fault kind: " .. tostring(f.kind))
  f.hits = 0
  self.list[#self.list + 1] = f
  if f.kind == "token-expired" then expire_token(self.sim, f) end
  if f.kind == "log-rotation" then apply_rotation(self.sim, f) end
  return f
end

function Faults:remove(f)
  for i, x in ipairs(self.list) do
    if x == f then table.remove(self.list, i) break end
  end
  if f.kind == "token-expired" then self.sim.token_expired = nil end
  if f.kind == "log-rotation" and f.applied and self.sim.logs then self.sim.logs.rotate_every = f.saved_rotation end
end

function Faults:clear()
  for i = #self.list, 1, -1 do self:remove(self.list[i]) end
end

-- One use of a fault; it goes when its count is spent.
local function spend(self, f)
  f.hits = f.hits + 1
  if f.count and f.hits >= f.count then self:remove(f) end
end

local function answer_status(f, res)
  local code = f.code or 503
  local headers = { ["Retry-After"] = tostring(f.retry_after or 1) }
  if f.retry_after == false then headers = nil end
  api_mod.send_status(res, code, f.message or ({ [429] = "Too many requests, please try again later.",
    [500] = "Internal error occurred: etcdserver: request timed out",
    [503] = "the server is currently unable to handle the request" })[code] or "fault", nil, nil, headers)
end

local function answer_410(sim, req, res)
  local rv = req.query.resourceVersion
  if not rv or rv == "" or rv == "0" then rv = tostring(sim.store.rv - 1) end
  res:start(200, { ["Content-Type"] = "application/json" })
  res:write(json.encode { type = "ERROR", object = api_mod.status(410,
    ("too old resource version: %s (%d)"):format(rv, sim.store.rv), "Expired") } .. "\n")
  res:finish()
end

--- The API's hook: true when a fault answered the request.
function Faults:before(req, res)
  for _, f in ipairs({ table.unpack(self.list) }) do
    if f.kind ~= "token-expired" and f.kind ~= "log-rotation" and matches(f, req) then
      spend(self, f)
      if f.kind == "status" then answer_status(f, res) return true end
      if f.kind == "watch-410" then answer_410(self.sim, req, res) return true end
      if f.kind == "slow" then vq.sleep(f.delay or 2) end
      if f.kind == "drop" then
        -- a plain request loses its connection before any answer
        if not is_stream(req) then res.conn:close() return true end
        cut_after(res, f.after or 3)
      end
    end
  end
  if self.list[1] then
    for _, f in ipairs(self.list) do
      if f.kind == "log-rotation" and not f.applied then apply_rotation(self.sim, f) end
    end
  end
  return false
end

function M.new(sim)
  return setmetatable({ sim = sim, list = {} }, Faults)
end

--- Install sim.faults (once).
function M.install(sim)
  if not sim.faults then sim.faults = M.new(sim) end
  return sim.faults
end

return M
