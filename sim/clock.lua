-- The simulator's clock: real time plus an offset a scenario or a spec can advance
-- (an admin key older than 48 h, a certificate about to expire, a node's skew).
local uv = require "uv"

local Clock = {}
Clock.__index = Clock

local function real_now()
  local s, us = uv.gettimeofday()
  return s + us / 1e6
end

function Clock:now() return real_now() + self.offset end
function Clock:advance(seconds) self.offset = self.offset + seconds end

return {
  new = function(offset) return setmetatable({ offset = offset or 0 }, Clock) end,
}
