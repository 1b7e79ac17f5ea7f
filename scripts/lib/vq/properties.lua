-- vq.properties: Java .properties files (cluster.properties), read the way
-- java.util.Properties.load reads them and edited in place.
--
-- Reading follows Java's LineReader and loadConvert: lines end in \n, \r\n or \r; blank
-- lines and lines whose first non-blank character is # or ! are skipped (a comment never
-- continues); a line ending in an odd number of backslashes continues on the next one, whose
-- leading blanks are dropped; the key ends at the first unescaped "=", ":" or blank, the
-- separator is blanks with at most one "=" or ":"; escapes are \t \n \r \f \uXXXX and "\x"
-- for any other x; the last of duplicate keys wins. Bytes outside ASCII are kept as they
-- are (the files are UTF-8 here), and \uXXXX becomes UTF-8. A malformed \uXXXX is an error,
-- as in Java.
--
-- Editing. set, uncomment and delete change only the lines of the entry they mean to: every
-- other byte (comments, blank lines, order, line endings) stays. A value is written escaped
-- as Java needs it to read back the same string (backslashes, control characters, a leading
-- blank, anything outside ASCII as \uXXXX, so that a reader in ISO-8859-1 agrees). Each edit
-- parses its result and compares it with the original plus the intended change, and returns
-- nil, err rather than a text that means something else.
--
-- Errors: nil, err with err.code "properties" (err.file, err.line), "not_found", "exists",
-- "invalid" (a value that cannot be written) or "unsupported".
local vq = require "vq"

local M = {}

local BLANK = "[ \t\f]"

local function fail(opts, code, message, details)
  local file = opts and opts.file
  details = details or {}
  details.file = file
  if file and details.line then message = ("%s:%d: %s"):format(file, details.line, message)
  elseif file then message = file .. ": " .. message end
  return nil, vq.error(code, message, details)
end

-- ---- physical lines ----

-- {s = first byte, e = end of content (exclusive), eol = "\n" | "\r\n" | "\r" | ""}
local function split_lines(text)
  local lines, pos, len = {}, 1, #text
  while pos <= len do
    local a = text:find("[\r\n]", pos)
    if not a then
      lines[#lines + 1] = { s = pos, e = len + 1, eol = "" }
      break
    end
    local eol = text:sub(a, a + 1) == "\r\n" and "\r\n" or text:sub(a, a)
    lines[#lines + 1] = { s = pos, e = a, eol = eol }
    pos = a + #eol
  end
  return lines
end

local function content(text, line) return text:sub(line.s, line.e - 1) end

-- Counted from the end by hand: a pattern anchored only at "$" is quadratic on a long run.
local function odd_backslashes(s)
  local i = #s
  while i > 0 and s:byte(i) == 92 do i = i - 1 end
  return (#s - i) % 2 == 1
end

-- ---- logical lines ----

-- An entry's text with its continuations joined, and where each piece came from (so that
-- an error names the physical line). Returns the logical text, its segments, the last
-- physical line it took.
local function join_logical(text, lines, first, lead)
  local pieces, segments = {}, {}
  local s = content(text, lines[first]):sub(lead + 1)
  local n, at = first, 1
  while true do
    local continues = odd_backslashes(s)
    if continues then s = s:sub(1, -2) end
    pieces[#pieces + 1] = s
    segments[#segments + 1] = { at = at, line = n }
    at = at + #s
    if not continues or n == #lines then break end
    n = n + 1
    s = content(text, lines[n]):gsub("^" .. BLANK .. "+", "")
    -- a blank line after a continuation ends the entry (Java's LineReader)
    if s == "" then break end
  end
  return table.concat(pieces), segments, n
end

local function line_at(segments, pos)
  local line = segments[1].line
  for _, seg in ipairs(segments) do
    if seg.at <= pos then line = seg.line end
  end
  return line
end

-- key text, separator text, where the value starts (in s)
local function split_entry(s)
  local i = 1
  while true do
    local p = s:find("[\\=: \t\f]", i)
    if not p then return s, "", #s + 1 end
    local c = s:sub(p, p)
    if c == "\\" then
      i = p + 2
    else
      local has_sep, q = c == "=" or c == ":", p + 1
      while q <= #s do
        local d = s:sub(q, q)
        if d == " " or d == "\t" or d == "\f" then q = q + 1
        elseif not has_sep and (d == "=" or d == ":") then has_sep, q = true, q + 1
        else break end
      end
      return s:sub(1, p - 1), s:sub(p, q - 1), q
    end
  end
end

-- ---- escapes ----

local UNESCAPE = { t = "\t", n = "\n", r = "\r", f = "\f" }

local function code_point(s, p)
  local hex = s:sub(p + 2, p + 5)
  if not hex:match("^%x%x%x%x$") then return nil end
  return tonumber(hex, 16)
end

-- The string Java reads, or nil and the position of a malformed \uXXXX.
local function unescape(s)
  if not s:find("\\", 1, true) then return s end
  local out, i = {}, 1
  while true do
    local p = s:find("\\", i, true)
    if not p then
      out[#out + 1] = s:sub(i)
      return table.concat(out)
    end
    out[#out + 1] = s:sub(i, p - 1)
    local c = s:sub(p + 1, p + 1)
    if c == "u" then
      local cp = code_point(s, p)
      if not cp then return nil, p end
      i = p + 6
      -- Java strings are UTF-16: a surrogate pair is one character
      if cp >= 0xD800 and cp <= 0xDBFF and s:sub(i, i + 1) == "\\u" then
        local low = code_point(s, i)
        if low and low >= 0xDC00 and low <= 0xDFFF then
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
          i = i + 6
        end
      end
      out[#out + 1] = utf8.char(cp)
    else
      out[#out + 1] = UNESCAPE[c] or c
      i = p + 2
    end
  end
end

local CONTROL = { ["\t"] = "\\t", ["\n"] = "\\n", ["\r"] = "\\r", ["\f"] = "\\f", ["\\"] = "\\\\" }

local function u_escape(cp)
  if cp <= 0xFFFF then return ("\\u%04X"):format(cp) end
  cp = cp - 0x10000
  return ("\\u%04X\\u%04X"):format(0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF))
end

local KEY_SPECIAL = { ["="] = true, [":"] = true, [" "] = true }

--- The text Java reads back as s: as a value, or as a key (what = "key"), which also
--- escapes "=", ":", blanks and a leading "#" or "!". nil, why when s is not UTF-8.
function M.escape(s, what)
  assert(type(s) == "string", "properties.escape: a string")
  if not utf8.len(s) then return nil, "it is not valid UTF-8" end
  local out = {}
  for _, cp in utf8.codes(s) do
    local ch = utf8.char(cp)
    if CONTROL[ch] then out[#out + 1] = CONTROL[ch]
    elseif cp > 126 or cp < 32 then out[#out + 1] = u_escape(cp)
    elseif what == "key" and KEY_SPECIAL[ch] then out[#out + 1] = "\\" .. ch
    else out[#out + 1] = ch end
  end
  local text = table.concat(out)
  local lead = what == "key" and "^[#!]" or "^ "
  if text:find(lead) then text = "\\" .. text end
  return text
end

-- ---- the document ----

-- The entry starting on physical line n, or nil, err for a malformed \uXXXX.
local function read_entry(text, lines, n, lead, opts)
  local logical, segments, last = join_logical(text, lines, n, lead)
  local key_raw, sep, vstart = split_entry(logical)
  local key, bad = unescape(key_raw)
  local value
  if key then value, bad = unescape(logical:sub(vstart)) end
  if not (key and value) then
    local pos = key and (vstart + bad - 1) or bad
    return fail(opts, "properties", "malformed \\uXXXX escape", { line = line_at(segments, pos) })
  end
  -- the value starts on the first physical line when the key and separator end there
  local on_first = #segments == 1 or segments[2].at >= vstart
  return {
    key = key, value = value, first = n, last = last, lead = lead, key_raw = key_raw,
    sep = sep, value_at = on_first and (lines[n].s + lead + vstart - 1) or nil,
  }
end

-- What each physical line is: an entry's first line, a comment, blank, or inside an entry.
local function scan(text, opts)
  local lines = split_lines(text)
  local doc = { text = text, lines = lines, entries = {}, comments = {} }
  local n = 1
  while n <= #lines do
    local line = content(text, lines[n])
    local lead = #line:match("^[ \t\f]*")
    local first = line:sub(lead + 1, lead + 1)
    if first == "#" or first == "!" then
      doc.comments[#doc.comments + 1] = { line = n, lead = lead }
    elseif first ~= "" then
      local e, err = read_entry(text, lines, n, lead, opts)
      if not e then return nil, err end
      doc.entries[#doc.entries + 1] = e
      n = e.last
    end
    n = n + 1
  end
  return doc
end

local function map_of(doc)
  local map = {}
  for _, e in ipairs(doc.entries) do map[e.key] = e.value end
  return map
end

--- The properties of text: map (key → value, the last duplicate winning) and the entries in
--- file order ({key =, value =, line =, last_line =, separator =, overridden = true for a
--- duplicate a later line replaces}), or nil, err {code = "properties", file =, line =}.
--- opts.file names the file in messages.
function M.parse(text, opts)
  if type(text) ~= "string" then error("properties.parse: the text must be a string", 2) end
  local doc, err = scan(text, opts)
  if not doc then return nil, err end
  local map, entries, last_of = map_of(doc), {}, {}
  for i, e in ipairs(doc.entries) do last_of[e.key] = i end
  for i, e in ipairs(doc.entries) do
    entries[i] = { key = e.key, value = e.value, line = e.first, last_line = e.last,
                   separator = e.sep, overridden = last_of[e.key] ~= i or nil }
  end
  return map, entries
end

--- The value of key, or nil, err (code "not_found", or the parse error).
function M.get(text, key, opts)
  local map, err = M.parse(text, opts)
  if not map then return nil, err end
  if map[key] == nil then return fail(opts, "not_found", ("%s is not set"):format(key)) end
  return map[key]
end

-- ---- editing ----

local function splice(text, s, e, new) return text:sub(1, s - 1) .. new .. text:sub(e) end

local function effective(doc, key)
  local found, lines = nil, {}
  for _, e in ipairs(doc.entries) do
    if e.key == key then found = e; lines[#lines + 1] = e.first end
  end
  return found, lines
end

-- "key" + separator + value, with a separator that reads back: a value starting with "=" or
-- ":" after a blank-only separator would be taken for the separator.
local function entry_text(key_raw, sep, escaped)
  if sep == "" then sep = "=" end
  if not sep:find("[=:]") and escaped:find("^[=:]") then escaped = "\\" .. escaped end
  return key_raw .. sep .. escaped
end

local function check(doc, new_text, opts, want, what)
  local map, err = M.parse(new_text)
  if not map then
    return fail(opts, "unsupported", ("%s would not parse (%s); the text is unchanged"):format(what, err.message))
  end
  local old = map_of(doc)
  for k, v in pairs(want) do old[k] = v or nil end
  for k, v in pairs(map) do
    if old[k] ~= v then
      return fail(opts, "unsupported", ("%s would change more than it means to; the text is unchanged"):format(what))
    end
  end
  for k in pairs(old) do
    if map[k] == nil then
      return fail(opts, "unsupported", ("%s would change more than it means to; the text is unchanged"):format(what))
    end
  end
  return new_text
end

local function escaped_value(value, opts)
  if type(value) == "number" or type(value) == "boolean" then value = tostring(value) end
  if type(value) ~= "string" then error("properties: the value must be a string", 3) end
  local escaped, why = M.escape(value)
  if not escaped then return fail(opts, "invalid", "the value cannot be written: " .. why) end
  return escaped, value
end

local function replace_entry(doc, e, escaped)
  local lines, text = doc.lines, doc.text
  local s, stop = lines[e.first].s, lines[e.last].e
  if e.value_at then
    local head, body = text:sub(s, e.value_at - 1), escaped
    if e.sep == "" then head = head .. "="
    elseif not e.sep:find("[=:]") and body:find("^[=:]") then body = "\\" .. body end
    return splice(text, s, stop, head .. body)
  end
  -- the key or separator itself runs over a continuation: one line instead
  return splice(text, s, stop, text:sub(s, s + e.lead - 1) .. entry_text(e.key_raw, "=", escaped))
end

-- A commented-out "key=value" (or "key: value") line: {line =, lead =, body =, key_raw =,
-- sep =, value =}, or nil.
local function commented(doc, c, key)
  local line = content(doc.text, doc.lines[c.line])
  local body = line:sub(c.lead + 1):gsub("^[#!]+" .. BLANK .. "*", "")
  if body == "" then return nil end
  local key_raw, sep, vstart = split_entry(body)
  if not sep:find("[=:]") or unescape(key_raw) ~= key then return nil end
  return { line = c.line, lead = c.lead, body = body, key_raw = key_raw, sep = sep,
           value = unescape(body:sub(vstart)), raw_value = body:sub(vstart) }
end

local function candidates(doc, key)
  local list = {}
  for _, c in ipairs(doc.comments) do
    local found = commented(doc, c, key)
    if found then list[#list + 1] = found end
  end
  return list
end

-- The commented line to bring back: one with the wanted value, else the first.
local function pick(list, value)
  for _, c in ipairs(list) do
    if value ~= nil and c.value == value then return c end
  end
  return list[1]
end

local function uncomment_line(doc, c, escaped)
  local line = doc.lines[c.line]
  local lead = doc.text:sub(line.s, line.s + c.lead - 1)
  local body = escaped and entry_text(c.key_raw, c.sep, escaped) or c.body
  return splice(doc.text, line.s, line.e, lead .. body)
end

local function dominant_separator(doc)
  local counts, best, most = {}, "=", 0
  for _, e in ipairs(doc.entries) do
    if e.sep ~= "" then
      counts[e.sep] = (counts[e.sep] or 0) + 1
      if counts[e.sep] > most then best, most = e.sep, counts[e.sep] end
    end
  end
  return best
end

local function append_entry(doc, key, escaped, opts)
  local key_raw, why = M.escape(key, "key")
  if not key_raw then return fail(opts, "invalid", "the key cannot be written: " .. why) end
  local text = doc.text
  local eol = (doc.lines[1] and doc.lines[1].eol ~= "") and doc.lines[1].eol or "\n"
  if text ~= "" and not text:find("[\r\n]$") then text = text .. eol end
  return text .. entry_text(key_raw, dominant_separator(doc), escaped) .. eol
end

local function open(text, opts, op)
  if type(text) ~= "string" then error(("properties.%s: the text must be a string"):format(op), 3) end
  return scan(text, opts)
end

--- Set key to value, changing only that entry's line (an entry continued over several lines
--- becomes one line): its indentation, key text and separator stay as written. When the key
--- is not set, a commented-out "#key=..." line is brought back (see uncomment); otherwise
--- "key=value" is appended at the end, with the separator most entries use. Returns the new
--- text and {action = "changed"|"unchanged"|"uncommented"|"appended", line =,
--- duplicates = {lines} when the key is set more than once (the last one is changed)}.
function M.set(text, key, value, opts)
  assert(type(key) == "string", "properties.set: the key must be a string")
  local doc, err = open(text, opts, "set")
  if not doc then return nil, err end
  local escaped
  escaped, value = escaped_value(value, opts)
  if not escaped then return nil, value end
  local e, dups = effective(doc, key)
  local new_text, info
  if e then
    if e.value == value and e.first == e.last then return text, { action = "unchanged", line = e.first } end
    new_text = replace_entry(doc, e, escaped)
    info = { action = "changed", line = e.first, duplicates = #dups > 1 and dups or nil }
  else
    local c = pick(candidates(doc, key), value)
    if c then
      new_text, info = uncomment_line(doc, c, escaped), { action = "uncommented", line = c.line }
    else
      new_text, err = append_entry(doc, key, escaped, opts)
      if not new_text then return nil, err end
      info = { action = "appended", line = #split_lines(new_text) }
    end
  end
  local ok
  ok, err = check(doc, new_text, opts, { [key] = value }, "setting " .. key)
  if not ok then return nil, err end
  return new_text, info
end

--- Bring back a commented-out "#key=value" line ("# key = value", "!key:value") as a live
--- entry: the comment marks and the blanks after them go, the rest of the line stays. With
--- value, its value is replaced too. Several such lines: the one holding value, else the
--- first. Returns the new text and {line =}, or nil, err ("exists" when key is set,
--- "not_found" when no line comments it out).
function M.uncomment(text, key, value, opts)
  assert(type(key) == "string", "properties.uncomment: the key must be a string")
  local doc, err = open(text, opts, "uncomment")
  if not doc then return nil, err end
  if effective(doc, key) then return fail(opts, "exists", ("%s is already set"):format(key)) end
  local escaped
  if value ~= nil then
    escaped, value = escaped_value(value, opts)
    if not escaped then return nil, value end
  end
  local c = pick(candidates(doc, key), value)
  if not c then return fail(opts, "not_found", ("no commented-out %s"):format(key)) end
  if not escaped and odd_backslashes(c.raw_value) then
    local message = ("the commented-out %s continues on the next line"):format(key)
    return fail(opts, "unsupported", message, { line = c.line })
  end
  local new_text = uncomment_line(doc, c, escaped)
  local ok
  ok, err = check(doc, new_text, opts, { [key] = value == nil and c.value or value }, "uncommenting " .. key)
  if not ok then return nil, err end
  return new_text, { line = c.line }
end

--- Remove every entry of key (all its lines, a continued one included), and nothing else.
--- Returns the new text and {lines = {first line of each removed entry}}, or nil, err.
function M.delete(text, key, opts)
  assert(type(key) == "string", "properties.delete: the key must be a string")
  local doc, err = open(text, opts, "delete")
  if not doc then return nil, err end
  local removed, kept, from = {}, {}, 1
  for _, e in ipairs(doc.entries) do
    if e.key == key then
      kept[#kept + 1] = text:sub(from, doc.lines[e.first].s - 1)
      from = doc.lines[e.last].e + #doc.lines[e.last].eol
      removed[#removed + 1] = e.first
    end
  end
  if #removed == 0 then return fail(opts, "not_found", ("%s is not set"):format(key)) end
  kept[#kept + 1] = text:sub(from)
  local new_text = table.concat(kept)
  local ok
  ok, err = check(doc, new_text, opts, { [key] = false }, "deleting " .. key)
  if not ok then return nil, err end
  return new_text, { lines = removed }
end

return M
