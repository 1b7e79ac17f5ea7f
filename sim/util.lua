-- Small pieces the simulator shares: copies, paths, selectors, names, times.
local M = {}

function M.copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = M.copy(x) end
  return setmetatable(out, getmetatable(v))
end

--- Follow a dotted path ("status.phase", "metadata.labels.app") through tables.
function M.get_path(obj, path)
  local v = obj
  for part in path:gmatch("[^.]+") do
    if type(v) ~= "table" then return nil end
    v = v[part]
  end
  return v
end

--- The table at a dotted path, created on the way.
function M.ensure(obj, path)
  local v = obj
  for part in path:gmatch("[^.]+") do
    if type(v[part]) ~= "table" then v[part] = {} end
    v = v[part]
  end
  return v
end

-- ---- label selectors (equality- and set-based, as kubectl -l writes them) ----

local function split_top(s)
  local parts, depth, start = {}, 0, 1
  for i = 1, #s do
    local c = s:sub(i, i)
    if c == "(" then depth = depth + 1
    elseif c == ")" then depth = depth - 1
    elseif c == "," and depth == 0 then
      parts[#parts + 1] = s:sub(start, i - 1)
      start = i + 1
    end
  end
  parts[#parts + 1] = s:sub(start)
  return parts
end

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

local function value_set(list)
  local set = {}
  for v in list:gmatch("[^,%s]+") do set[v] = true end
  return set
end

--- Parse a label selector into a list of requirements, or nil, message.
function M.parse_labels(s)
  local reqs = {}
  if not s or s == "" then return reqs end
  for _, part in ipairs(split_top(s)) do
    part = trim(part)
    local key, op, rest
    key, rest = part:match("^([%w%._/%-]+)%s+in%s+%((.*)%)$")
    if key then
      reqs[#reqs + 1] = { key = key, op = "in", values = value_set(rest) }
    else
      key, rest = part:match("^([%w%._/%-]+)%s+notin%s+%((.*)%)$")
      if key then
        reqs[#reqs + 1] = { key = key, op = "notin", values = value_set(rest) }
      else
        key, op, rest = part:match("^([%w%._/%-]+)%s*([!=]=?)%s*([%w%._%-]*)$")
        if key and (op == "=" or op == "==" or op == "!=") then
          reqs[#reqs + 1] = { key = key, op = op == "!=" and "!=" or "=", value = rest }
        elseif part:match("^![%w%._/%-]+$") then
          reqs[#reqs + 1] = { key = part:sub(2), op = "!exists" }
        elseif part:match("^[%w%._/%-]+$") then
          reqs[#reqs + 1] = { key = part, op = "exists" }
        else
          return nil, ("unable to parse requirement: %q"):format(part)
        end
      end
    end
  end
  return reqs
end

function M.match_labels(reqs, labels)
  labels = labels or {}
  for _, r in ipairs(reqs) do
    local v = labels[r.key]
    if r.op == "=" and v ~= r.value then return false end
    if r.op == "!=" and v == r.value then return false end
    if r.op == "in" and not (v and r.values[v]) then return false end
    if r.op == "notin" and v and r.values[v] then return false end
    if r.op == "exists" and v == nil then return false end
    if r.op == "!exists" and v ~= nil then return false end
  end
  return true
end

--- A field selector: "spec.nodeName=n1,status.phase!=Failed".
function M.parse_fields(s)
  local reqs = {}
  if not s or s == "" then return reqs end
  for part in s:gmatch("[^,]+") do
    local key, op, value = part:match("^%s*([%w%.]+)%s*([!=]=?)%s*(.-)%s*$")
    if not key then return nil, ("invalid field selector: %q"):format(part) end
    reqs[#reqs + 1] = { key = key, op = op == "!=" and "!=" or "=", value = value }
  end
  return reqs
end

local function field_text(v)
  if v == nil then return "" end
  if type(v) == "boolean" then return tostring(v) end
  return tostring(v)
end

function M.match_fields(reqs, obj)
  for _, r in ipairs(reqs) do
    local v = field_text(M.get_path(obj, r.key))
    if r.op == "=" and v ~= r.value then return false end
    if r.op == "!=" and v == r.value then return false end
  end
  return true
end

-- ---- names and ids ----

local NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789" -- as the apiserver's generateName uses

function M.random_suffix(n)
  local out = {}
  for i = 1, n do
    local k = math.random(#NAME_CHARS)
    out[i] = NAME_CHARS:sub(k, k)
  end
  return table.concat(out)
end

function M.uuid()
  local t = {}
  for i = 1, 16 do t[i] = math.random(0, 255) end
  t[7] = (t[7] & 0x0f) | 0x40
  t[9] = (t[9] & 0x3f) | 0x80
  local h = {}
  for i = 1, 16 do h[i] = ("%02x"):format(t[i]) end
  return table.concat(h, "", 1, 4) .. "-" .. table.concat(h, "", 5, 6) .. "-" ..
    table.concat(h, "", 7, 8) .. "-" .. table.concat(h, "", 9, 10) .. "-" .. table.concat(h, "", 11, 16)
end

-- ---- files ----

--- Remove a file or a folder and everything in it (links are removed, not followed).
function M.remove_tree(path)
  local uv = require "luv"
  local st = uv.fs_lstat(path)
  if not st then return end
  if st.type == "directory" then
    local req = uv.fs_scandir(path)
    while req do
      local name = uv.fs_scandir_next(req)
      if not name then break end
      M.remove_tree(path .. "/" .. name)
    end
    uv.fs_rmdir(path)
  else
    uv.fs_unlink(path)
  end
end

--- A loopback port nobody listens on now (for a program started next, as nginx).
function M.free_port()
  local uv = require "luv"
  local tcp = uv.new_tcp()
  assert(tcp:bind("127.0.0.1", 0))
  local port = tcp:getsockname().port
  tcp:close()
  return port
end

-- ---- shared with the client: base64 and times ----

local base64 = require "vq.base64"
local time = require "vq.time"
M.base64, M.unbase64 = base64.encode, base64.decode
M.rfc3339, M.rfc3339_micro, M.parse_time = time.format, time.format_micro, time.parse
M.human_duration = time.human_duration

return M
