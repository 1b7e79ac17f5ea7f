-- vq.repl: the REPL's policy. The C side (host/repl.c) reads lines, runs statements as
-- tasks and owns the terminal; what a value looks like and what Tab offers is decided here.
local M = {}

--- Bounds of the pretty printer; change them at the prompt if a value needs more room.
M.options = {
  depth = 4,      -- nested tables deeper than this print as {...}
  items = 40,     -- entries shown per table before "... (+n more)"
  width = 100,    -- a table whose one-line form fits stays on one line
  string = 400,   -- strings inside tables are cut after this many bytes
}

local keywords = {}
for word in ([[and break do else elseif end false for function goto if in local nil not
  or repeat return then true until while]]):gmatch("%a+") do keywords[word] = true end

local function is_identifier(s)
  return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil and not keywords[s]
end

---- values ----

local escapes = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\a"] = "\\a", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t", ["\v"] = "\\v",
}

--- A string as a Lua literal that reads back to the same bytes (UTF-8 is kept as is).
local function quote(s, limit)
  local cut = ""
  if limit and #s > limit then
    cut = ("...(+%d bytes)"):format(#s - limit)
    s = s:sub(1, limit)
  end
  local body = s:gsub('[%c"\\]', function(c)
    return escapes[c] or ("\\x%02x"):format(c:byte())
  end)
  return '"' .. body .. '"' .. cut
end

local function metafield(v, name)
  local mt = debug.getmetatable(v)
  return mt and rawget(mt, name)
end

local function is_error(v)
  return type(v) == "table" and metafield(v, "__name") == "vq.error"
end

local function safe_tostring(v)
  local ok, s = pcall(tostring, v)
  if ok and type(s) == "string" then return s end
  return ("<%s: __tostring failed>"):format(type(v))
end

local function format_function(f)
  local info = debug.getinfo(f, "S")
  if info.what == "C" then return "<" .. tostring(f) .. ">" end
  return ("<function %s:%d>"):format(info.short_src, info.linedefined)
end

local type_rank = {number = 1, string = 2, boolean = 3}

local function key_less(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then
    local ra, rb = type_rank[ta] or 4, type_rank[tb] or 4
    if ra ~= rb then return ra < rb end
    return ta < tb
  end
  if ta == "number" or ta == "string" then return a < b end
  if ta == "boolean" then return not a and b end
  return tostring(a) < tostring(b)
end

local format_value

local function format_key(k, ctx)
  if is_identifier(k) then return k end
  return "[" .. format_value(k, ctx, ctx.depth_limit, "") .. "]"
end

--- The entries to show: the sequence 1..n first, then the other keys sorted. Error
--- tables lead with code and message and leave their traceback out (it is long, and
--- describe() shows it when the error is the statement's own).
local function entries(t, as_error)
  local list, n = {}, 0
  while rawget(t, n + 1) ~= nil do
    n = n + 1
    list[n] = {value = rawget(t, n)}
  end
  local keys = {}
  for k in next, t do
    if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
  end
  table.sort(keys, key_less)
  local first = {}
  if as_error then
    for _, k in ipairs({"code", "message"}) do
      if rawget(t, k) ~= nil then list[#list + 1] = {key = k, value = rawget(t, k)} end
      first[k] = true
    end
    first.traceback = true
  end
  for _, k in ipairs(keys) do
    if not first[k] then list[#list + 1] = {key = k, value = rawget(t, k)} end
  end
  return list
end

local function layout(open, parts, more, indent, width)
  if #parts == 0 and not more then return open .. "}" end
  if more then parts[#parts + 1] = more end
  local line = open .. table.concat(parts, ", ") .. "}"
  if #line + #indent <= width and not line:find("\n", 1, true) then return line end
  local inner = indent .. "  "
  return open .. "\n" .. inner .. table.concat(parts, ",\n" .. inner) .. "\n" .. indent .. "}"
end

local function format_table(t, ctx, depth, indent)
  local as_error = is_error(t)
  if not as_error and metafield(t, "__tostring") then return safe_tostring(t) end
  local open = as_error and "error{" or "{"
  if ctx.open[t] then return "<cycle>" end
  if next(t) == nil then return open .. "}" end
  if depth >= ctx.depth_limit then return open .. "...}" end
  ctx.open[t] = true
  local list, parts = entries(t, as_error), {}
  local shown = math.min(#list, ctx.items)
  for i = 1, shown do
    local e = list[i]
    local text = format_value(e.value, ctx, depth + 1, indent .. "  ")
    parts[i] = e.key == nil and text or (format_key(e.key, ctx) .. " = " .. text)
  end
  ctx.open[t] = nil
  local more = #list > shown and ("... (+%d more)"):format(#list - shown) or nil
  return layout(open, parts, more, indent, ctx.width)
end

-- A value vq.secrets loaded: its length only, whatever its own methods would say.
local function format_secret(v)
  local ok, n = pcall(metafield(v, "__len") or rawlen, v)
  return ("<redacted: %s bytes>"):format(ok and math.type(n) and n or "?")
end

-- A Secret as the API returns it (data in base64, stringData plain): shown with each value
-- as a vq.secrets value shows, by its length, so that poking at a cluster prints none.
local function redacted(n) return setmetatable({}, { __name = "vq.secret", __len = function() return n end }) end

local function secret_shown(obj)
  local copy = {}
  for k, x in pairs(obj) do copy[k] = x end
  for _, field in ipairs { "data", "stringData" } do
    if type(obj[field]) == "table" then
      local hidden = {}
      for k, x in pairs(obj[field]) do
        local bytes = field == "data" and type(x) == "string" and require("vq.base64").decode(x) or x
        hidden[k] = redacted(type(bytes) == "string" and #bytes or 0)
      end
      copy[field] = hidden
    end
  end
  return copy
end

function format_value(v, ctx, depth, indent)
  if metafield(v, "__name") == "vq.secret" then return format_secret(v) end
  local tv = type(v)
  if tv == "string" then return quote(v, depth > 0 and ctx.string or nil) end
  if tv == "table" and rawget(v, "kind") == "Secret" then v = secret_shown(v) end
  if tv == "table" then return format_table(v, ctx, depth, indent) end
  if tv == "function" then return format_function(v) end
  if tv == "userdata" then
    if metafield(v, "__name") == "vq.task" then return "<" .. safe_tostring(v) .. ">" end
    return safe_tostring(v)
  end
  return tostring(v)
end

local function context(opts)
  opts = opts or {}
  local o = M.options
  return {
    open = {},
    depth_limit = opts.depth or o.depth,
    items = opts.items or o.items,
    width = opts.width or o.width,
    string = opts.string or o.string,
  }
end

--- One value as the REPL shows it. opts may override M.options for this call.
function M.format(v, opts)
  return format_value(v, context(opts), 0, "")
end

--- A statement's results, tab-separated as lua.c prints them, with the final newline;
--- "" when there are none.
function M.show(...)
  local results = table.pack(...)
  if results.n == 0 then return "" end
  local parts = {}
  for i = 1, results.n do parts[i] = M.format(results[i]) end
  return table.concat(parts, "\t") .. "\n"
end

--- A statement's failure: its message and traceback; just "interrupted" after Ctrl-C.
function M.describe(err)
  if type(err) ~= "table" then return safe_tostring(err) .. "\n" end
  if rawget(err, "code") == "interrupted" then return "interrupted\n" end
  local head
  if is_error(err) then
    local message = rawget(err, "message")
    local code = rawget(err, "code")
    -- A plain error("...") arrives wrapped with code "error": its text is enough.
    head = code == "error" and tostring(message) or safe_tostring(err)
    local extra = {}
    for _, e in ipairs(entries(err, true)) do
      if e.key ~= "code" and e.key ~= "message" and e.key ~= "task" then
        extra[#extra + 1] = e
      end
    end
    if #extra > 0 then
      local copy = {}
      for _, e in ipairs(extra) do copy[e.key] = e.value end
      head = head .. " " .. M.format(copy)
    end
  else
    head = M.format(err)
  end
  local tb = rawget(err, "traceback")
  if type(tb) == "string" and tb ~= "" then head = head .. "\n" .. tb end
  return head .. "\n"
end

---- completion ----

--- v[k] the way Tab sees it: raw fields, then __index tables (never __index functions,
--- which could do anything).
local function lookup(v, k)
  for _ = 1, 16 do
    if type(v) == "table" then
      local x = rawget(v, k)
      if x ~= nil then return x end
    end
    local index = metafield(v, "__index")
    if type(index) ~= "table" then return nil end
    v = index
  end
end

local function add_fields(v, partial, methods_only, into)
  for _ = 1, 16 do
    if type(v) == "table" then
      for k, x in next, v do
        if is_identifier(k) and k:sub(1, #partial) == partial
            and (not methods_only or type(x) == "function") then
          into[k] = true
        end
      end
    end
    local index = metafield(v, "__index")
    if type(index) ~= "table" then return end
    v = index
  end
end

local function sorted_keys(set, prefix)
  local list = {}
  for k in pairs(set) do list[#list + 1] = prefix .. k end
  table.sort(list)
  return list
end

--- The candidates for the word before the cursor: a global or keyword, or a field after
--- `a.b.` / `a.b:` (only functions after `:`). Returns full words, sorted.
function M.complete(word, env)
  env = env or _G
  local path, sep, partial = word:match("^(.-)([.:])([%w_]*)$")
  local found = {}
  if not path then
    if not word:match("^[%a_]?[%w_]*$") then return {} end
    add_fields(env, word, false, found)
    for k in pairs(keywords) do
      if k:sub(1, #word) == word then found[k] = true end
    end
    return sorted_keys(found, "")
  end
  local v = env
  for name in (path .. "."):gmatch("(.-)%.") do
    if not is_identifier(name) then return {} end
    v = lookup(v, name)
    if v == nil then return {} end
  end
  add_fields(v, partial, sep == ":", found)
  return sorted_keys(found, path .. sep)
end

---- start ----

--- What the prompt has at hand before the first line: vq as a global.
function M.setup(env)
  env = env or _G
  if rawget(env, "vq") == nil then rawset(env, "vq", require "vq") end
  return M
end

return M
