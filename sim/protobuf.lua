-- Protocol buffers as far as the simulator needs them: an encoder for the gnostic
-- OpenAPI v2 document kubectl 1.27 reads, and a reader of the Kubernetes protobuf
-- encoding ("k8s\0" + runtime.Unknown) that kubectl 1.32+ typed clients send, turned into
-- the object the JSON encoding of the same Go value would give.
local json = require "json"
local util = require "sim.util"

local M = {}

M.MAGIC = "k8s\0"
M.CONTENT_TYPE = "application/vnd.kubernetes.protobuf"

local VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5

-- ---- writing ----

function M.varint(n)
  local out = {}
  repeat
    local b = n & 0x7f
    n = n >> 7 -- logical shift: a negative int64 takes ten bytes, as in Go
    out[#out + 1] = string.char(n ~= 0 and (b | 0x80) or b)
  until n == 0
  return table.concat(out)
end

local function key(num, wire) return M.varint(num << 3 | wire) end

--- A length-delimited field (string, bytes or an encoded message).
function M.bytes(num, s) return key(num, BYTES) .. M.varint(#s) .. s end

function M.bool(num, b) return key(num, VARINT) .. (b and "\1" or "\0") end

function M.int(num, n) return key(num, VARINT) .. M.varint(n) end

--- A message field from its encoded parts.
function M.message(num, parts) return M.bytes(num, table.concat(parts)) end

-- ---- reading the wire format ----

local function read_varint(s, i)
  local n, shift = 0, 0
  while true do
    local b = s:byte(i)
    if not b then error("protobuf: truncated varint", 0) end
    i = i + 1
    n = n | ((b & 0x7f) << shift)
    if b < 0x80 then return n, i end
    shift = shift + 7
    if shift > 63 then error("protobuf: varint too long", 0) end
  end
end

--- Iterate the fields of a message: number, wire type, value (integer or string).
function M.fields(s)
  local i = 1
  return function()
    if i > #s then return nil end
    local k
    k, i = read_varint(s, i)
    local num, wire = k >> 3, k & 7
    local v
    if wire == VARINT then
      v, i = read_varint(s, i)
    elseif wire == BYTES then
      local len
      len, i = read_varint(s, i)
      if i + len - 1 > #s then error("protobuf: truncated field " .. num, 0) end
      v = s:sub(i, i + len - 1)
      i = i + len
    elseif wire == FIXED64 then
      v = s:sub(i, i + 7)
      i = i + 8
    elseif wire == FIXED32 then
      v = s:sub(i, i + 3)
      i = i + 4
    else
      error("protobuf: unsupported wire type " .. wire, 0)
    end
    return num, wire, v
  end
end

-- ---- the schema ----

local schema
local parsed = {}

-- "1:name:kind:flags" -> {num, name, kind, map = {key, value, repeated}, p, o, n, r}
local function parse_field(spec)
  local num, name, kind, flags = spec:match("^(%d+):([^:]*):([^:]+):(%a*)$")
  local f = { num = tonumber(num), name = name, kind = kind, pointer = flags:find("p") ~= nil,
              omitempty = flags:find("o") ~= nil, inline = flags:find("n") ~= nil, repeated = flags:find("r") ~= nil }
  local k, v, vrep = kind:match("^{([^,]+),([^*}]+)(%*?)}$")
  if k then f.map = { key = k, value = v, repeated = vrep == "*" } end
  return f
end

local function message_fields(name)
  if parsed[name] then return parsed[name] end
  schema = schema or require "sim.protobuf_schema"
  local spec = schema.messages[name]
  if not spec then error("protobuf: no schema for " .. name, 0) end
  local fields = {}
  for s in spec:gmatch("%S+") do
    local f = parse_field(s)
    fields[f.num] = f
  end
  parsed[name] = fields
  return fields
end

-- ---- Kubernetes values ----

local decode_message

local function go_fraction(v, unit)
  local whole, frac = v // unit, v % unit
  if frac == 0 then return tostring(whole) end
  local digits = #tostring(unit) - 1
  return (("%d.%0" .. digits .. "d"):format(whole, frac):gsub("0+$", ""))
end

-- time.Duration.String()
local function go_duration(ns)
  if ns == 0 then return "0s" end
  local sign = ns < 0 and "-" or ""
  ns = math.abs(ns)
  if ns < 1000 then return sign .. ns .. "ns" end
  if ns < 1000000 then return sign .. go_fraction(ns, 1000) .. "µs" end
  if ns < 1000000000 then return sign .. go_fraction(ns, 1000000) .. "ms" end
  local h, rest = ns // 3600000000000, ns % 3600000000000
  local m, s = rest // 60000000000, rest % 60000000000
  local out = sign
  if h > 0 then out = out .. h .. "h" end
  if h > 0 or m > 0 then out = out .. m .. "m" end
  return out .. go_fraction(s, 1000000000) .. "s"
end

local function sub_fields(s)
  local out = {}
  for num, _, v in M.fields(s) do out[num] = v end
  return out
end

local function raw_json(raw)
  if not raw or raw == "" then return nil end
  if raw:sub(1, 4) == M.MAGIC then return M.decode(raw) end
  return json.decode(raw)
end

-- The special types' JSON forms (metav1.Time, resource.Quantity, intstr ...).
local SPECIAL = {
  Q = function(s) return sub_fields(s)[1] or "0" end,
  T = function(s)
    local f = sub_fields(s)
    if f[1] == nil and f[2] == nil then return nil end
    return util.rfc3339(f[1] or 0)
  end,
  U = function(s)
    local f = sub_fields(s)
    if f[1] == nil and f[2] == nil then return nil end
    return util.rfc3339_micro((f[1] or 0) + (f[2] or 0) / 1e9)
  end,
  D = function(s) return go_duration(sub_fields(s)[1] or 0) end,
  I = function(s)
    local f = sub_fields(s)
    if f[1] == 1 then return f[3] or "" end
    return f[2] or 0
  end,
  R = function(s) return raw_json(sub_fields(s)[1]) end,
  F = function(s) return raw_json(sub_fields(s)[1]) end,
}

local function scalar(kind, wire, v)
  if kind == "s" then return v end
  if kind == "b" then return util.base64(v) end
  if kind == "t" then return v ~= 0 end
  if kind == "i" then return v end
  if kind == "f" then
    if wire == FIXED64 then return (string.unpack("<d", v)) end
    return (string.unpack("<f", v))
  end
  local special = SPECIAL[kind]
  if special then return special(v) end
  local msg = kind:match("^@(.+)$")
  if msg then return decode_message(v, msg) end
  error("protobuf: unknown kind " .. kind, 0)
end

-- Packed repeated varints arrive as one length-delimited field.
local function unpack_varints(s)
  local out, i = {}, 1
  while i <= #s do
    local n
    n, i = read_varint(s, i)
    out[#out + 1] = n
  end
  return out
end

local function add_repeated(obj, f, wire, v)
  local list = obj[f.name] or setmetatable({}, json.array_mt)
  obj[f.name] = list
  if wire == BYTES and (f.kind == "i" or f.kind == "t") then
    for _, n in ipairs(unpack_varints(v)) do list[#list + 1] = scalar(f.kind, VARINT, n) end
  else
    list[#list + 1] = scalar(f.kind, wire, v)
  end
end

local function add_map_entry(obj, f, v)
  local m = obj[f.name] or {}
  obj[f.name] = m
  local k, val = "", nil
  for num, wire, x in M.fields(v) do
    if num == 1 then k = scalar(f.map.key, wire, x)
    elseif num == 2 then
      if f.map.repeated then
        -- a named slice (ExtraValue) is a message of one repeated field
        val = setmetatable({}, json.array_mt)
        for _, _, item in M.fields(x) do val[#val + 1] = scalar(f.map.value, BYTES, item) end
      else
        val = scalar(f.map.value, wire, x)
      end
    end
  end
  if val == nil then val = f.map.value == "s" and "" or f.map.value == "i" and 0 or val end
  m[tostring(k)] = val
end

local function is_zero(v)
  return v == "" or v == 0 or v == false
end

decode_message = function(s, name)
  local fields = message_fields(name)
  local obj = {}
  for num, wire, v in M.fields(s) do
    local f = fields[num]
    if f then
      if f.map then
        add_map_entry(obj, f, v)
      elseif f.repeated then
        add_repeated(obj, f, wire, v)
      elseif f.inline then
        for k, x in pairs(scalar(f.kind, wire, v) or {}) do obj[k] = x end
      else
        local x = scalar(f.kind, wire, v)
        -- a zero metav1.Time that is no pointer is null in JSON (creationTimestamp: null)
        if x == nil and (f.kind == "T" or f.kind == "U") and not f.pointer then x = json.null end
        obj[f.name] = x
      end
    end
  end
  -- Go's encoding/json leaves out the zero values of omitempty fields that are no pointers
  for _, f in pairs(fields) do
    if f.omitempty and not f.pointer and not f.repeated and is_zero(obj[f.name]) then obj[f.name] = nil end
  end
  return obj
end

--- The object in a Kubernetes protobuf body, as the JSON encoding would give it; nil, err
--- when it is not one or its type is not known.
function M.decode(body)
  if type(body) ~= "string" or body:sub(1, 4) ~= M.MAGIC then return nil, "not a Kubernetes protobuf message" end
  schema = schema or require "sim.protobuf_schema"
  local ok, obj = pcall(function()
    local unknown = sub_fields(body:sub(5))
    local tm = sub_fields(unknown[1] or "")
    local api_version, kind = tm[1] or "", tm[2] or ""
    local name = schema.kinds[api_version .. " " .. kind] or (kind == "DeleteOptions" and "meta/v1.DeleteOptions")
    if not name then error(("no protobuf schema for %s %s"):format(api_version, kind), 0) end
    local out = decode_message(unknown[2] or "", name)
    if api_version ~= "" then out.apiVersion = api_version end
    if kind ~= "" then out.kind = kind end
    return out
  end)
  if not ok then return nil, obj end
  return obj
end

M.go_duration = go_duration
return M
