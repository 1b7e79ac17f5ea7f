-- Times as Kubernetes writes them (RFC 3339) and ages as kubectl prints them.
local M = {}

function M.format(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(t))
end

function M.format_micro(t)
  local frac = math.floor((t - math.floor(t)) * 1e6)
  return os.date("!%Y-%m-%dT%H:%M:%S", math.floor(t)) .. (".%06dZ"):format(frac)
end

--- Seconds since the epoch from an RFC 3339 time (UTC "Z" or an offset).
function M.parse(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, sec, frac, zone = s:match("^(%d+)-(%d+)-(%d+)T(%d+):(%d+):(%d+)(%.?%d*)(.*)$")
  if not y then return nil end
  local t = os.time { year = tonumber(y), month = tonumber(mo), day = tonumber(d),
                      hour = tonumber(h), min = tonumber(mi), sec = tonumber(sec), isdst = false }
  -- os.time reads local time: correct by the local offset at that moment
  local utc = os.time(os.date("!*t", t))
  t = t + (t - utc)
  if zone ~= "Z" and zone ~= "" then
    local sign, oh, om = zone:match("^([+-])(%d%d):?(%d%d)$")
    if sign then
      local off = tonumber(oh) * 3600 + tonumber(om) * 60
      t = sign == "+" and t - off or t + off
    end
  end
  return t + (tonumber("0" .. frac) or 0)
end

local DAYS = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }
local MONTHS = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" }
local MONTH_NUMBER = {}
for i, m in ipairs(MONTHS) do MONTH_NUMBER[m] = i end

--- An HTTP Date header (RFC 7231's IMF-fixdate), in English whatever the locale.
function M.http_date(t)
  local d = os.date("!*t", math.floor(t))
  return ("%s, %02d %s %04d %02d:%02d:%02d GMT"):format(DAYS[d.wday], d.day, MONTHS[d.month], d.year, d.hour, d.min, d.sec)
end

--- Seconds since the epoch from an HTTP Date header, or nil.
function M.parse_http_date(s)
  local d, mon, y, hms = tostring(s or ""):match("^%a+, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d:%d%d:%d%d) GMT$")
  if not (d and MONTH_NUMBER[mon]) then return nil end
  return M.parse(("%s-%02d-%sT%sZ"):format(y, MONTH_NUMBER[mon], d, hms))
end

--- Age as kubectl prints it (duration.HumanDuration): 5s, 3m12s, 5h, 3d4h, 400d.
function M.human_duration(d)
  d = math.floor(d)
  if d < 0 then d = 0 end
  if d < 60 * 2 then return d .. "s" end
  local minutes = d // 60
  if minutes < 10 then
    local s = d % 60
    return s == 0 and (minutes .. "m") or (minutes .. "m" .. s .. "s")
  end
  if minutes < 60 * 3 then return minutes .. "m" end
  local hours = d // 3600
  if hours < 8 then
    local m = minutes % 60
    return m == 0 and (hours .. "h") or (hours .. "h" .. m .. "m")
  end
  if hours < 48 then return hours .. "h" end
  if hours < 24 * 8 then
    local h = hours % 24
    return h == 0 and ((hours // 24) .. "d") or ((hours // 24) .. "d" .. h .. "h")
  end
  if hours < 24 * 365 * 2 then return (hours // 24) .. "d" end
  if hours < 24 * 365 * 8 then
    local days = (hours // 24) % 365
    return days == 0 and ((hours // 24 // 365) .. "y") or ((hours // 24 // 365) .. "y" .. days .. "d")
  end
  return (hours // 24 // 365) .. "y"
end


return M
