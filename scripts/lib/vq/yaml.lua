-- yaml: YAML for runbooks. The mechanism is C (bindings/yaml.c: libyaml's parser and emitter;
-- bindings/yaml_edit.c: where each node sits in the text, in bytes); the policy is here.
--
-- Reading. Plain scalars are read the way Kubernetes and Helm read them (sigs.k8s.io/yaml,
-- that is go-yaml v2, YAML 1.1): yes/no/on/off/y/n (any case form that YAML 1.1 lists) are
-- booleans, 0123 is octal, 0x1F and 0o17 are integers, 1_000 is 1000, .inf/.nan are floats,
-- ~/null/empty are yaml.null. {schema = "core"} reads YAML 1.2's core schema instead (only
-- true/false are booleans, 0123 is 123). Quoted scalars are always strings; !!str, !!int,
-- !!float, !!bool and !!null are honoured; other tags are ignored. Mapping keys are always
-- strings, as written ("9000: x" has the key "9000"). Duplicate keys are an error, as in
-- Kubernetes. Aliases are copied (no shared tables), and all aliases of a document together
-- may expand to at most max_alias_nodes nodes (1,000,000), so a "billion laughs" document is
-- an error. "<<" merge keys are applied.
--
-- Writing. Block style, keys sorted (opts.order lists keys to put first), a string quoted when
-- it would read back as something else to Kubernetes, to YAML 1.2 or to a YAML 1.1 reader
-- ("1.30", "no", "on", "0123", "", "null", "2024-01-01", "1:30"), multi-line strings as
-- literal blocks.
--
-- Editing in place. edit, insert, append, rename, delete and uncomment change the text of a
-- file only where they mean to: every comment, blank line, key order, quote style, line
-- ending, indentation and BOM elsewhere is kept byte for byte. Each one checks its own work:
-- it decodes the result and compares it with the original plus the intended change, and
-- returns nil, err rather than a text that means something else.
--
-- Paths: "vantiq.image.tag", or a list {"metadata", "annotations", "kubernetes.io/name"} for
-- keys with dots. A dotted path also finds keys with dots in them when only one reading
-- matches. Numbers index sequences, from 1 ("spec.containers.1.image").
--
-- Errors are nil, err with err.code: "yaml" (the text does not parse; err.file, err.line,
-- err.column), "not_found", "ambiguous", "exists", "unsupported" (the edit cannot be made
-- without touching more than intended, or needs {replace = true}).
local core = require "vq.core.yaml"

local yaml = {
  null = core.null,
  sequence_mt = core.sequence_mt,
  mapping_mt = core.mapping_mt,
}

local null, sequence_mt, mapping_mt = core.null, core.sequence_mt, core.mapping_mt

--- Mark a table as a sequence (so that an empty one is written [], not {}).
function yaml.sequence(t) return setmetatable(t or {}, sequence_mt) end
--- Mark a table as a mapping (so that {[1] = x} is written "1: x", not "- x").
function yaml.mapping(t) return setmetatable(t or {}, mapping_mt) end
function yaml.is_null(v) return v == null end

-- ---- options ----

local DECODE_DEFAULTS = { schema = "kubernetes", max_depth = 512, max_alias_nodes = 1000000 }

local function merged(defaults, opts)
  local o = {}
  for k, v in pairs(defaults) do o[k] = v end
  for k, v in pairs(opts or {}) do o[k] = v end
  return o
end

-- json.array_mt marks sequences too, when the json module has one (coordination by name).
local json_marks
local function sequence_marks()
  if json_marks == nil then
    local ok, json = pcall(require, "vq.json")
    json_marks = ok and type(json) == "table" and type(json.array_mt) == "table"
        and { json.array_mt } or false
  end
  return json_marks or nil
end

local function encode_options(opts)
  opts = opts or {}
  local o = { indent = opts.indent or 2, flow = opts.flow, max_depth = opts.max_depth,
              sequence_mts = sequence_marks() }
  if opts.order then
    o.order = {}
    for i, key in ipairs(opts.order) do o.order[key] = i end
  end
  return o
end

-- ---- reading and writing ----

--- The first document's value (yaml.null for an empty text), or nil, err.
--- opts: file (for messages), schema ("kubernetes" or "core"), max_depth, max_alias_nodes.
function yaml.decode(text, opts) return core.decode(text, merged(DECODE_DEFAULTS, opts)) end

--- A list of every document's value, or nil, err.
function yaml.decode_all(text, opts) return core.decode_all(text, merged(DECODE_DEFAULTS, opts)) end

--- The YAML text of value, or nil, err. opts: order (keys to put first, in that order, at
--- every level), indent (2), flow (one line, flow style).
function yaml.encode(value, opts) return core.encode(value, encode_options(opts)) end

--- One text of several documents separated by "---".
function yaml.encode_all(docs, opts) return core.encode_all(docs, encode_options(opts)) end

-- ---- paths ----

local function path_components(path)
  if type(path) == "table" then return path, true end
  if type(path) == "number" then return { path }, true end
  assert(type(path) == "string", "a yaml path is a string or a list of keys")
  if path == "" then return {}, true end
  local comps = {}
  for part in (path .. "."):gmatch("(.-)%.") do comps[#comps + 1] = part end
  return comps, false
end

local function path_text(comps, last)
  local parts = {}
  for i = 1, last or #comps do parts[i] = tostring(comps[i]) end
  return table.concat(parts, ".")
end

local function as_index(c)
  if math.type(c) == "integer" then return c end
  if type(c) == "string" and c:match("^%d+$") then return math.tointeger(tonumber(c)) end
end

local function is_sequence(v) return type(v) == "table" and getmetatable(v) == sequence_mt end

-- Every way comps[i..] leads from a decoded value: with a dotted path, "a.b.c" may be the key
-- "a.b" then "c" as well as "a", "b", "c".
local function find_values(v, comps, i, exact, found, trail)
  if i > #comps then
    found[#found + 1] = { value = v, keys = table.move(trail, 1, #trail, 1, {}) }
    return
  end
  if type(v) ~= "table" then return end
  if is_sequence(v) then
    local n = as_index(comps[i])
    if n and v[n] ~= nil then
      trail[#trail + 1] = n
      find_values(v[n], comps, i + 1, exact, found, trail)
      trail[#trail] = nil
    end
    return
  end
  for j = i, exact and i or #comps do
    local name = exact and tostring(comps[i]) or table.concat(comps, ".", i, j)
    if v[name] ~= nil then
      trail[#trail + 1] = name
      find_values(v[name], comps, j + 1, exact, found, trail)
      trail[#trail] = nil
    end
  end
end

local function fail(opts, code, fmt, ...)
  local message = fmt:format(...)
  local file = opts and opts.file
  return nil, core.error(code, file and (file .. ": " .. message) or message, { file = file })
end

--- The value at path in the first document (or opts.document), or nil, err.
function yaml.get(text, path, opts)
  local docs, err = yaml.decode_all(text, opts)
  if not docs then return nil, err end
  local comps, exact = path_components(path)
  local found = {}
  local doc = docs[(opts and opts.document) or 1]
  if doc ~= nil then find_values(doc, comps, 1, exact, found, {}) end
  if #found == 1 then return found[1].value end
  if #found > 1 then return fail(opts, "ambiguous", "%s matches %d keys", path_text(comps), #found) end
  return fail(opts, "not_found", "%s not found", path_text(comps))
end

-- ---- values: copy, compare, set ----

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = deep_copy(x) end
  return setmetatable(t, getmetatable(v))
end

local function deep_equal(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) == "number" then
    return math.type(a) == math.type(b) and (a == b or (a ~= a and b ~= b))
  end
  if type(a) ~= "table" then return a == b end
  if getmetatable(a) ~= getmetatable(b) then return false end
  for k, x in pairs(a) do
    if not deep_equal(x, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

local function get_in(root, keys, last)
  local v = root
  for i = 1, last or #keys do v = v[keys[i]] end
  return v
end

-- Returns the new root.
local function set_in(root, keys, value)
  if #keys == 0 then return value end
  get_in(root, keys, #keys - 1)[keys[#keys]] = value
  return root
end

-- A value as it reads back once written: what the edited file must hold.
local function normalized(value, ctx)
  local text = assert(core.encode(value, encode_options()))
  local decoded, err = core.decode(text, ctx.dopts)
  if decoded == nil then error(err, 2) end -- false is a value, not a failure
  return decoded
end

-- ---- the text: lines, splices ----

local function index_lines(text, bom)
  local starts = { bom and 4 or 1 }
  for pos in text:gmatch("\n()") do starts[#starts + 1] = pos end
  return starts
end

local function line_of(ctx, pos)
  local starts = ctx.starts
  local lo, hi = 1, #starts
  while lo < hi do
    local mid = (lo + hi + 1) // 2
    if starts[mid] <= pos then lo = mid else hi = mid - 1 end
  end
  return lo
end

local function line_start(ctx, n) return ctx.starts[n] end
local function next_line_start(ctx, n) return ctx.starts[n + 1] or #ctx.text + 1 end

-- Where the line's text ends, before its "\n" or "\r\n".
local function line_end(ctx, n)
  local stop = ctx.starts[n + 1]
  if not stop then return #ctx.text + 1 end
  stop = stop - 1
  if stop > ctx.starts[n] and ctx.text:sub(stop - 1, stop - 1) == "\r" then stop = stop - 1 end
  return stop
end

local function line_text(ctx, n) return ctx.text:sub(line_start(ctx, n), line_end(ctx, n) - 1) end

local function starts_line(ctx, pos)
  return ctx.text:sub(line_start(ctx, line_of(ctx, pos)), pos - 1):match("^[ \t]*$") ~= nil
end

local function column_of(ctx, pos) return pos - line_start(ctx, line_of(ctx, pos)) end

-- Splices {s, e, text} (e exclusive), applied from the last one back.
local function apply(text, splices)
  table.sort(splices, function(a, b) return a[1] > b[1] end)
  for _, sp in ipairs(splices) do text = text:sub(1, sp[1] - 1) .. sp[3] .. text:sub(sp[2]) end
  return text
end

-- Rendered lines ("\n"-separated) indented by `indent` spaces (empty lines stay empty, so that
-- literal blocks keep their content), joined with the file's line ending.
local function indent_lines(rendered, indent, eol, skip_first)
  local out, pad = {}, (" "):rep(indent)
  local i = 0
  for line in (rendered .. "\n"):gmatch("(.-)\n") do
    i = i + 1
    out[i] = (line == "" or (skip_first and i == 1)) and line or pad .. line
  end
  return table.concat(out, eol)
end

-- ---- the scanned document ----

local function indent_step(root)
  local step
  local function walk(node, depth)
    if step or depth > 64 then return end
    if node.kind == "mapping" and not node.flow then
      for i, v in ipairs(node.values) do
        local k = node.keys[i]
        if v.kind == "mapping" and not v.flow and v.line > k.line then
          step = v.col - k.col
          return
        end
        walk(v, depth + 1)
      end
    elseif node.kind == "sequence" then
      for _, v in ipairs(node.items) do walk(v, depth + 1) end
    end
  end
  if root then walk(root, 0) end
  return (step and step >= 2 and step <= 9) and step or 2
end

local function first_line_break(text)
  local nl = text:find("\n", 1, true)
  return (nl and nl > 1 and text:sub(nl - 1, nl - 1) == "\r") and "\r\n" or "\n"
end

local function open(text, opts, op)
  if type(text) ~= "string" then error(("yaml.%s: the text must be a string"):format(op), 3) end
  opts = opts or {}
  local dopts = merged(DECODE_DEFAULTS, opts)
  local scan, err = core.scan(text, dopts)
  if not scan then return nil, err end
  local values
  values, err = core.decode_all(text, dopts)
  if not values then return nil, err end
  local di = opts.document or 1
  local doc = scan.docs[di]
  if not doc then return fail(opts, "not_found", "the text has no document %d", di) end
  return {
    text = text, opts = opts, dopts = dopts, doc = doc, root = doc.root, di = di,
    values = values, starts = index_lines(text, scan.bom), eol = first_line_break(text),
    step = indent_step(doc.root),
  }
end

-- Every way comps leads through the scanned nodes. A match: {node =, trail = {step...}}, a
-- step: {parent = collection node, index =, key = decoded key}.
local function find_nodes(node, comps, i, exact, found, trail, seen)
  seen.depth = math.max(seen.depth, i - 1)
  if i > #comps then
    found[#found + 1] = { node = node, trail = table.move(trail, 1, #trail, 1, {}) }
    return
  end
  if node.kind == "mapping" then
    for j = i, exact and i or #comps do
      local name = exact and tostring(comps[i]) or table.concat(comps, ".", i, j)
      for k, key in ipairs(node.keys) do
        if key.kind == "scalar" and key.value == name then
          trail[#trail + 1] = { parent = node, index = k, key = name }
          find_nodes(node.values[k], comps, j + 1, exact, found, trail, seen)
          trail[#trail] = nil
        end
      end
    end
  elseif node.kind == "sequence" then
    local n = as_index(comps[i])
    if n and node.items[n] then
      trail[#trail + 1] = { parent = node, index = n, key = n }
      find_nodes(node.items[n], comps, i + 1, exact, found, trail, seen)
      trail[#trail] = nil
    end
  elseif node.kind == "alias" then
    seen.alias = node
  end
end

local function keys_of(trail)
  local keys = {}
  for i, st in ipairs(trail) do keys[i] = st.key end
  return keys
end

local function locate(ctx, path)
  local comps, exact = path_components(path)
  local found, seen = {}, { depth = 0 }
  if ctx.root then find_nodes(ctx.root, comps, 1, exact, found, {}, seen) end
  local where = path_text(comps)
  if #found > 1 then return fail(ctx.opts, "ambiguous", "%s matches %d keys", where, #found) end
  if #found == 0 then
    if seen.alias then
      return fail(ctx.opts, "unsupported", "%s goes through the alias *%s", where, seen.alias.anchor)
    end
    if seen.depth == 0 then return fail(ctx.opts, "not_found", "%s not found", where) end
    return fail(ctx.opts, "not_found", "%s not found (%s has no %s)", where,
                path_text(comps, seen.depth), tostring(comps[seen.depth + 1]))
  end
  local m = found[1]
  m.path, m.keys = where ~= "" and where or "the top level", keys_of(m.trail)
  m.in_flow = false
  for _, st in ipairs(m.trail) do m.in_flow = m.in_flow or st.parent.flow end
  return m
end

-- Editing under an anchor that aliases reuse would change every copy.
local function check_not_shared(ctx, m)
  local chain = { m.node }
  for _, st in ipairs(m.trail) do chain[#chain + 1] = st.parent end
  for _, node in ipairs(chain) do
    if node.anchor and ctx.doc.aliases[node.anchor] then
      return fail(ctx.opts, "unsupported", "%s is under the anchor &%s, which aliases reuse",
                  m.path, node.anchor)
    end
  end
  return true
end

-- The document and the node at path that an edit changes (not one an alias reuses), or
-- nil, err.
local function target(text, path, opts, op)
  local ctx, err = open(text, opts, op)
  if not ctx then return nil, err end
  local m
  m, err = locate(ctx, path)
  if not m then return nil, err end
  local ok
  ok, err = check_not_shared(ctx, m)
  if not ok then return nil, err end
  return ctx, m
end

local function is_null_scalar(ctx, node)
  return node.kind == "scalar" and node.style == "plain" and not node.tag
      and core.resolve(node.value, ctx.dopts.schema) == null
end

-- Past the anchor and tag in front of a node: where its own text starts.
local function content_start(ctx, node)
  local text, p = ctx.text, node.s
  while p < node.e and text:find("^[&!]", p) do
    local stop = text:find("[ \t\r\n]", p)
    if not stop or stop >= node.e then return node.e end
    p = text:find("[^ \t\r\n]", stop) or node.e
  end
  return p
end

-- The anchors (and, for a string, a !!str tag) to keep in front of a new scalar.
local function kept_properties(ctx, node, value)
  if node.kind ~= "scalar" and node.kind ~= "alias" then return "" end
  local kept = {}
  for prop in ctx.text:sub(node.s, content_start(ctx, node) - 1):gmatch("%S+") do
    local str_tag = prop == "!" or prop == "!!str" or prop == "!<tag:yaml.org,2002:str>"
    if prop:sub(1, 1) == "&" or (str_tag and type(value) == "string") then kept[#kept + 1] = prop end
  end
  return #kept > 0 and table.concat(kept, " ") .. " " or ""
end

-- Just after the ":" of a block mapping key.
local function colon_end(ctx, key)
  local p = ctx.text:find("[^ \t]", key.e)
  if p and ctx.text:sub(p, p) == ":" then return p + 1 end
end

-- The "-" of a block sequence item.
local function dash_of(ctx, item)
  local p = item.s - 1
  while p >= 1 and ctx.text:sub(p, p):match("[ \t\r\n]") do p = p - 1 end
  if p >= 1 and ctx.text:sub(p, p) == "-" then return p end
end

local function verify(ctx, new_text, change, what)
  local values, err = core.decode_all(new_text, ctx.dopts)
  if not values then
    return fail(ctx.opts, "unsupported", "%s would not parse (%s); the text is unchanged", what,
                err.message)
  end
  local expected = deep_copy(ctx.values)
  expected[ctx.di] = change(expected[ctx.di], values[ctx.di])
  if not deep_equal(values, expected) then
    return fail(ctx.opts, "unsupported", "%s would change more than it means to; the text is unchanged",
                what)
  end
  return new_text
end

-- ---- edit ----

local function scalar_text(ctx, m, value)
  local node, context = m.node, m.in_flow and "flow" or "value"
  if type(value) ~= "string" then return core.render(value, "auto", context) end
  -- a kept !!str tag makes it a string already: plain when libyaml can
  local style = kept_properties(ctx, node, value):find("!") and "plain" or "auto"
  local old = node.kind == "scalar" and node.style
  if old == "single" or old == "double" then style = old end
  if value:find("\n", 1, true) then
    style = (old == "literal" or old == "folded") and context == "value" and "literal" or "double"
  end
  return core.render(value, style, context, ctx.step)
end

-- The column a value's nested lines are indented from: its key's, or its "-"'s.
local function parent_column(ctx, m)
  local st = m.trail[#m.trail]
  if not st then return 0 end
  if st.parent.kind == "mapping" then return st.parent.keys[st.index].col - 1 end
  local dash = dash_of(ctx, m.node)
  return dash and column_of(ctx, dash) or 0
end

-- Where a value that starts on its own indicator's line (after "key:" or "-") is replaced from.
local function value_start(ctx, m)
  local node, st = m.node, m.trail[#m.trail]
  if not st then return node.s end
  if st.parent.kind == "mapping" then return colon_end(ctx, st.parent.keys[st.index]) end
  local dash = dash_of(ctx, node)
  return dash and dash + 1
end

local function table_text(ctx, m, value)
  if m.in_flow or m.node.flow then
    local out, err = core.encode(value, { flow = true })
    if not out then return nil, err end
    return (out:gsub("\n$", ""))
  end
  local out, err = core.encode(value, encode_options({ indent = ctx.step }))
  if not out then return nil, err end
  return (out:gsub("\n$", ""))
end

-- Replace the node's text with `rendered` (one line, or lines relative to column 0). A block
-- goes below the line the old value ended on, so that a comment there stays on it.
local function replace_with(ctx, m, rendered, value)
  local node, st = m.node, m.trail[#m.trail]
  -- a block collection goes below its key even when it is one line ("tag: x", "- x")
  local multi = rendered:find("\n", 1, true)
      or (type(value) == "table" and value ~= null and not rendered:match("^[{%[]"))
  local block_node = (node.kind == "mapping" or node.kind == "sequence") and not node.flow
  if not multi and not block_node then
    local text = kept_properties(ctx, node, value) .. rendered
    if node.s == node.e and not ctx.text:sub(node.s - 1, node.s - 1):match("^[ \t]?$") then
      text = " " .. text
    end
    return apply(ctx.text, { { node.s, node.ce, text } })
  end
  if not st then return apply(ctx.text, { { node.s, node.ce, indent_lines(rendered, 0, ctx.eol) } }) end
  local from = value_start(ctx, m)
  if not from then return fail(ctx.opts, "unsupported", "cannot find where %s starts", m.path) end
  -- a block collection goes with its lines, comments on them included
  local stop = block_node and line_end(ctx, line_of(ctx, node.ce - 1)) or node.ce
  if not multi then return apply(ctx.text, { { from, stop, " " .. rendered } }) end
  local col = parent_column(ctx, m)
  local head, body = rendered:match("^([^\n]*)\n(.*)$")
  if not head then head, body = rendered, "" end
  local indent
  if head:match("^[|>]") then
    indent = col -- a literal block's lines are indented already
  elseif st.parent.kind == "sequence" then
    indent = col + 2
    if body == "" then return apply(ctx.text, { { from, stop, " " .. head } }) end
  else
    head, body = "", rendered
    indent = (block_node and node.line > line_of(ctx, from)) and node.col - 1 or col + ctx.step
  end
  local after = line_end(ctx, line_of(ctx, node.ce - 1))
  return apply(ctx.text, {
    { from, stop, head ~= "" and " " .. head or "" },
    { after, after, ctx.eol .. indent_lines(body, indent, ctx.eol) },
  })
end

--- Set the value at path: a scalar keeps its quote style (a string is quoted when it would
--- otherwise read as another type; numbers and booleans are written plain). Replacing a block
--- scalar, a mapping or a sequence needs {replace = true}. Returns the new text, or nil, err.
function yaml.edit(text, path, value, opts)
  if value == nil then error("yaml.edit: the value is nil (yaml.null writes null)", 2) end
  local ctx, m = target(text, path, opts, "edit")
  if not ctx then return nil, m end
  local err
  local node = m.node
  local block = (node.kind == "mapping" or node.kind == "sequence") and node.kind
      or (node.kind == "scalar" and (node.style == "literal" or node.style == "folded") and "block scalar")
  if block and not ctx.opts.replace then
    return fail(ctx.opts, "unsupported", "%s is a %s: pass {replace = true} to replace it", m.path, block)
  end
  local rendered
  if type(value) == "table" then rendered, err = table_text(ctx, m, value)
  else rendered, err = scalar_text(ctx, m, value) end
  if not rendered then return nil, err end
  local new_text
  new_text, err = replace_with(ctx, m, rendered, value)
  if not new_text then return nil, err end
  local want = normalized(value, ctx)
  return verify(ctx, new_text, function(doc) return set_in(doc, m.keys, want) end, "setting " .. m.path)
end

-- ---- insert and append ----

local function render_lines(ctx, value, indent)
  local out, err = core.encode(value, encode_options({ indent = ctx.step }))
  if not out then return nil, err end
  return indent_lines(out:gsub("\n$", ""), indent, ctx.eol) .. ctx.eol
end

-- Lines go in at the start of the line after `line`; a last line without a line break gets one.
local function insert_after_line(ctx, line, lines)
  local pos = next_line_start(ctx, line)
  if pos > #ctx.text and ctx.text:sub(-1) ~= "\n" then lines = ctx.eol .. lines:sub(1, -#ctx.eol - 1) end
  return apply(ctx.text, { { pos, pos, lines } })
end

-- Before a key's line, and before the comment lines just above it at its indentation.
local function insert_before_line(ctx, line, indent, lines)
  local pad = (" "):rep(indent)
  while line > 1 and line_text(ctx, line - 1):find("^" .. pad .. "#") do line = line - 1 end
  local pos = line_start(ctx, line)
  return apply(ctx.text, { { pos, pos, lines } })
end

local function flow_inner(ctx, value)
  local out, err = core.encode(value, { flow = true })
  if not out then return nil, err end
  return (out:gsub("\n$", ""):sub(2, -2))
end

-- Into a flow collection: after its last entry, or inside the empty braces.
local function insert_flow(ctx, node, last_ce, value)
  local inner, err = flow_inner(ctx, value)
  if not inner then return nil, err end
  if last_ce then return apply(ctx.text, { { last_ce, last_ce, ", " .. inner } }) end
  return apply(ctx.text, { { node.e - 1, node.e - 1, inner } })
end

local function key_index(node, key)
  for i, k in ipairs(node.keys) do
    if k.kind == "scalar" and k.value == key then return i end
  end
end

local function insert_block(ctx, node, key, value)
  local lines, err = render_lines(ctx, yaml.mapping({ [key] = value }), node.col - 1)
  if not lines then return nil, err end
  local o = ctx.opts
  if o.before or o.after then
    local i = key_index(node, tostring(o.before or o.after))
    if not i then
      return fail(o, "not_found", "no key %s to insert next to", tostring(o.before or o.after))
    end
    if o.before then
      if not starts_line(ctx, node.keys[i].s) then
        return fail(o, "unsupported", "cannot insert before %s: it does not start its line", o.before)
      end
      return insert_before_line(ctx, line_of(ctx, node.keys[i].s), node.col - 1, lines)
    end
    return insert_after_line(ctx, line_of(ctx, node.values[i].ce - 1), lines)
  end
  return insert_after_line(ctx, line_of(ctx, node.values[#node.values].ce - 1), lines)
end

-- "key:" or "key: ~" becomes "key:" followed by the new block.
local function insert_under_null(ctx, m, value)
  local st = m.trail[#m.trail]
  if not st or st.parent.kind ~= "mapping" or st.parent.flow then
    return fail(ctx.opts, "unsupported", "%s is null and not the value of a block mapping key", m.path)
  end
  local key = st.parent.keys[st.index]
  local lines, err = render_lines(ctx, value, key.col - 1 + ctx.step)
  if not lines then return nil, err end
  local node = m.node
  local from = colon_end(ctx, key)
  if not from then return fail(ctx.opts, "unsupported", "cannot find the key of %s", m.path) end
  local line = line_of(ctx, node.ce - 1)
  local pos = next_line_start(ctx, line)
  if pos > #ctx.text and ctx.text:sub(-1) ~= "\n" then lines = ctx.eol .. lines:sub(1, -#ctx.eol - 1) end
  local splices = { { pos, pos, lines } }
  if node.e > node.s then splices[#splices + 1] = { from, node.e, "" } end
  return apply(ctx.text, splices)
end

local function decoded_at(ctx, m) return get_in(ctx.values[ctx.di], m.keys) end

--- Add key = value to the mapping at path (after its last key, or opts.after / opts.before a
--- key), at the mapping's indentation. A null value at path ("backup:") becomes a mapping.
function yaml.insert(text, path, key, value, opts)
  assert(type(key) == "string" or math.type(key) == "integer", "yaml.insert: the key must be a string")
  if value == nil then error("yaml.insert: the value is nil (yaml.null writes null)", 2) end
  key = tostring(key)
  local ctx, m = target(text, path, opts, "insert")
  if not ctx then return nil, m end
  local err
  local node, current = m.node, decoded_at(ctx, m)
  if type(current) == "table" and current[key] ~= nil then
    return fail(ctx.opts, "exists", "%s already has %s", m.path, key)
  end
  local new_text
  if node.kind == "mapping" and node.flow then
    local n = #node.values
    new_text, err = insert_flow(ctx, node, n > 0 and node.values[n].ce, yaml.mapping({ [key] = value }))
  elseif node.kind == "mapping" then
    new_text, err = insert_block(ctx, node, key, value)
  elseif is_null_scalar(ctx, node) and not m.in_flow then
    new_text, err = insert_under_null(ctx, m, yaml.mapping({ [key] = value }))
  else
    return fail(ctx.opts, "unsupported", "%s is not a mapping", m.path)
  end
  if not new_text then return nil, err end
  local want = normalized(value, ctx)
  return verify(ctx, new_text, function(doc)
    local parent = get_in(doc, m.keys)
    if type(parent) ~= "table" then parent = yaml.mapping() doc = set_in(doc, m.keys, parent) end
    parent[key] = want
    return doc
  end, "inserting " .. key .. " under " .. m.path)
end

--- Add value at the end of the sequence at path (a null value there becomes a sequence).
function yaml.append(text, path, value, opts)
  if value == nil then error("yaml.append: the value is nil (yaml.null writes null)", 2) end
  local ctx, m = target(text, path, opts, "append")
  if not ctx then return nil, m end
  local err
  local node, item = m.node, yaml.sequence({ value })
  local new_text
  if node.kind == "sequence" and node.flow then
    local n = #node.items
    new_text, err = insert_flow(ctx, node, n > 0 and node.items[n].ce, item)
  elseif node.kind == "sequence" then
    local dash = dash_of(ctx, node.items[1])
    if not dash then return fail(ctx.opts, "unsupported", "cannot find the items of %s", m.path) end
    local lines
    lines, err = render_lines(ctx, item, column_of(ctx, dash))
    if not lines then return nil, err end
    new_text = insert_after_line(ctx, line_of(ctx, node.items[#node.items].ce - 1), lines)
  elseif is_null_scalar(ctx, node) and not m.in_flow then
    new_text, err = insert_under_null(ctx, m, item)
  else
    return fail(ctx.opts, "unsupported", "%s is not a sequence", m.path)
  end
  if not new_text then return nil, err end
  local want = normalized(value, ctx)
  return verify(ctx, new_text, function(doc)
    local list = get_in(doc, m.keys)
    if type(list) ~= "table" then list = yaml.sequence() doc = set_in(doc, m.keys, list) end
    list[#list + 1] = want
    return doc
  end, "appending to " .. m.path)
end

-- ---- rename ----

--- Rename the key at path (the last component) to new_key, keeping its quote style.
function yaml.rename(text, path, new_key, opts)
  assert(type(new_key) == "string", "yaml.rename: the new key must be a string")
  local ctx, err = open(text, opts, "rename")
  if not ctx then return nil, err end
  local m
  m, err = locate(ctx, path)
  if not m then return nil, err end
  local st = m.trail[#m.trail]
  if not st or st.parent.kind ~= "mapping" then
    return fail(ctx.opts, "unsupported", "%s is not a mapping key", m.path)
  end
  local parent_value = get_in(ctx.values[ctx.di], m.keys, #m.keys - 1)
  if parent_value[new_key] ~= nil then
    return fail(ctx.opts, "exists", "%s already has %s", path_text(m.keys, #m.keys - 1), new_key)
  end
  local key = st.parent.keys[st.index]
  local style = (key.style == "single" or key.style == "double") and key.style or "auto"
  local rendered
  rendered, err = core.render(new_key, style, m.in_flow and "flow" or "key")
  if not rendered then return nil, err end
  local new_text = apply(ctx.text, { { content_start(ctx, key), key.e, rendered } })
  return verify(ctx, new_text, function(doc)
    local parent = get_in(doc, m.keys, #m.keys - 1)
    parent[new_key], parent[st.key] = parent[st.key], nil
    return doc
  end, "renaming " .. m.path)
end

-- ---- delete ----

-- Remove lines first..last; a last line without a line break takes the one before it.
local function remove_lines(ctx, first, last)
  local from, to = line_start(ctx, first), next_line_start(ctx, last)
  if to > #ctx.text and ctx.text:sub(-1) ~= "\n" and first > 1 then from = line_end(ctx, first - 1) end
  return { from, to, "" }
end

-- The entry was a collection's only one: the collection becomes {} or [].
local function collapse(ctx, m, entry, empty)
  local text_splices = { remove_lines(ctx, line_of(ctx, entry.s), line_of(ctx, entry.ce - 1)) }
  local up = m.trail[#m.trail - 1]
  if not up then
    text_splices[1][3] = empty .. ctx.eol
  elseif up.parent.kind == "mapping" and not up.parent.flow then
    local colon = colon_end(ctx, up.parent.keys[up.index])
    if not colon then return fail(ctx.opts, "unsupported", "cannot find the key of %s", m.path) end
    text_splices[2] = { colon, colon, " " .. empty }
  else
    return fail(ctx.opts, "unsupported", "cannot empty the collection that holds %s", m.path)
  end
  return apply(ctx.text, text_splices)
end

-- entries: {s =, ce =} of each entry of the collection (from its key or its "-").
local function remove_entry(ctx, m, entries, k, flow, empty)
  local entry, n = entries[k], #entries
  if flow then
    if n == 1 then return apply(ctx.text, { { entry.s, entry.ce, "" } }) end
    if k < n then return apply(ctx.text, { { entry.s, entries[k + 1].s, "" } }) end
    return apply(ctx.text, { { entries[k - 1].ce, entry.ce, "" } })
  end
  if starts_line(ctx, entry.s) then
    if n == 1 then return collapse(ctx, m, entry, empty) end
    return apply(ctx.text, { remove_lines(ctx, line_of(ctx, entry.s), line_of(ctx, entry.ce - 1)) })
  end
  -- "- a: 1" / "  b: 2": the next entry moves up onto the "-" line
  if k < n then return apply(ctx.text, { { entry.s, entries[k + 1].s, "" } }) end
  if n == 1 then return apply(ctx.text, { { entry.s, entry.ce, empty } }) end
  return fail(ctx.opts, "unsupported", "cannot delete %s: it shares its line", m.path)
end

local function entries_of(ctx, parent)
  local entries = {}
  if parent.kind == "mapping" then
    for i, key in ipairs(parent.keys) do entries[i] = { s = key.s, ce = parent.values[i].ce } end
    return entries
  end
  for i, item in ipairs(parent.items) do
    local s = parent.flow and item.s or dash_of(ctx, item)
    if not s then return nil end
    entries[i] = { s = s, ce = item.ce }
  end
  return entries
end

--- Remove the key (or sequence item) at path with its nested block, and nothing else: the
--- comments above it stay. A collection left empty becomes {} or [].
function yaml.delete(text, path, opts)
  local ctx, m = target(text, path, opts, "delete")
  if not ctx then return nil, m end
  local err
  local st = m.trail[#m.trail]
  if not st then return fail(ctx.opts, "unsupported", "cannot delete the whole document") end
  local parent = st.parent
  local entries = entries_of(ctx, parent)
  if not entries then return fail(ctx.opts, "unsupported", "cannot find the items of %s", m.path) end
  local new_text
  new_text, err = remove_entry(ctx, m, entries, st.index, parent.flow,
                               parent.kind == "mapping" and "{}" or "[]")
  if not new_text then return nil, err end
  return verify(ctx, new_text, function(doc)
    local holder = get_in(doc, m.keys, #m.keys - 1)
    if parent.kind == "mapping" then holder[st.key] = nil else table.remove(holder, st.index) end
    return doc
  end, "deleting " .. m.path)
end

-- ---- uncomment ----

local function escape_pattern(s) return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0")) end

-- A commented-out "key: value" line: its parts, or nil.
local function commented_key(line, key)
  local lead, hashes, gap, rest = line:match("^([ \t]*)(#+)([ \t]*)" .. escape_pattern(key) .. "[ \t]*:(.*)$")
  if not lead or not (rest == "" or rest:match("^[ \t]")) then return nil end
  return { lead = #lead, hashes = hashes, key_col = #lead + #hashes + #gap, rest = rest }
end

local function is_comment_or_blank(ctx, n) return line_text(ctx, n):match("^[ \t]*#") or line_text(ctx, n):match("^[ \t]*$") end

-- The lines a mapping's commented-out keys may be on, and the column its keys are at. Lines
-- inside a live entry (a child's own nested comments) are not its.
local function comment_region(ctx, m)
  local node, st = m.node, m.trail[#m.trail]
  local first, last, indent, taken = 1, 0, 0, {}
  if node.kind == "mapping" and not node.flow then
    indent = node.col - 1
    if not st then first = 1
    elseif st.parent.kind == "mapping" then first = line_of(ctx, st.parent.keys[st.index].s) + 1
    else first = line_of(ctx, node.s) end
    last = line_of(ctx, node.ce - 1)
    for i, key in ipairs(node.keys) do
      for n = line_of(ctx, key.s), line_of(ctx, node.values[i].ce - 1) do taken[n] = true end
    end
  elseif is_null_scalar(ctx, node) and st and st.parent.kind == "mapping" and not m.in_flow then
    local key = st.parent.keys[st.index]
    indent = key.col - 1 + ctx.step
    first = line_of(ctx, node.ce - 1) + 1
    last = first - 1
  else
    return nil
  end
  while last < #ctx.starts and is_comment_or_blank(ctx, last + 1) do last = last + 1 end
  return first, last, indent, taken
end

-- The one candidate, or the ones nearest the mapping's indentation.
local function best_candidates(cands, indent)
  if #cands <= 1 then return cands end
  local best, score = {}, math.huge
  for _, c in ipairs(cands) do
    local s = math.min(math.abs(c.lead - indent), math.abs(c.key_col - indent))
    if s < score then best, score = { c }, s elseif s == score then best[#best + 1] = c end
  end
  return best
end

-- With opts.block, the commented lines right below that are nested deeper come back too.
local function uncomment_lines(ctx, c, indent, key, block)
  local splices = { { line_start(ctx, c.line), line_end(ctx, c.line),
                      (" "):rep(indent) .. key .. ":" .. c.rest } }
  if not block then return splices end
  local prefix = "^" .. (" "):rep(c.lead) .. escape_pattern(c.hashes) .. "([ \t]*)(.*)$"
  for n = c.line + 1, #ctx.starts do
    local gap, body = line_text(ctx, n):match(prefix)
    if not gap or body == "" or c.lead + #c.hashes + #gap <= c.key_col then break end
    local depth = c.lead + #c.hashes + #gap - c.key_col
    splices[#splices + 1] = { line_start(ctx, n), line_end(ctx, n), (" "):rep(indent + depth) .. body }
  end
  return splices
end

--- Turn a commented-out key line under the mapping that holds path ("#  requiredRemote: false",
--- "# key: value") into a live key at that mapping's indentation. opts.block also brings back
--- the commented lines nested below it.
function yaml.uncomment(text, path, opts)
  local ctx, err = open(text, opts, "uncomment")
  if not ctx then return nil, err end
  local comps, exact = path_components(path)
  if #comps == 0 then error("yaml.uncomment: the path is empty", 2) end
  local key = tostring(comps[#comps])
  local parent_path = table.move(comps, 1, #comps - 1, 1, {})
  local m
  if #parent_path == 0 then
    if not ctx.root then return fail(ctx.opts, "not_found", "the document is empty") end
    m = { node = ctx.root, trail = {}, keys = {}, path = "the top level", in_flow = false }
  else
    m, err = locate(ctx, exact and parent_path or table.concat(parent_path, "."))
    if not m then return nil, err end
  end
  local current = decoded_at(ctx, m)
  if type(current) == "table" and current[key] ~= nil then
    return fail(ctx.opts, "exists", "%s already has %s", m.path, key)
  end
  local first, last, indent, taken = comment_region(ctx, m)
  if not first then return fail(ctx.opts, "unsupported", "%s is not a block mapping", m.path) end
  local cands = {}
  for n = first, last do
    local c = not taken[n] and commented_key(line_text(ctx, n), key)
    if c then c.line = n; cands[#cands + 1] = c end
  end
  cands = best_candidates(cands, indent)
  if #cands == 0 then
    return fail(ctx.opts, "not_found", "no commented-out %s under %s", key, m.path)
  end
  if #cands > 1 then
    local lines = {}
    for i, c in ipairs(cands) do lines[i] = tostring(c.line) end
    return fail(ctx.opts, "ambiguous", "%s is commented out on lines %s", key, table.concat(lines, ", "))
  end
  local new_text = apply(ctx.text, uncomment_lines(ctx, cands[1], indent, key, ctx.opts.block))
  return verify(ctx, new_text, function(doc, got)
    local parent = get_in(doc, m.keys)
    if type(parent) ~= "table" then parent = yaml.mapping() doc = set_in(doc, m.keys, parent) end
    local ok, now = pcall(get_in, got, m.keys)
    if ok and type(now) == "table" then parent[key] = deep_copy(now[key]) end
    return doc
  end, "uncommenting " .. key .. " under " .. m.path)
end

return yaml
