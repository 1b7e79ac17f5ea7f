-- json: JSON text to Lua values and back; the codec is C (bindings/json.c, on cJSON).
--
--   json.decode(text [, {file = name}])  -> value | nil, err
--   json.encode(value [, {sort_keys = true, indent = n}]) -> text   (raises on what JSON cannot hold)
--   json.pretty(value)                  -> text, 2-space indent and sorted keys, for people to read
--   json.null                           -> what JSON null decodes to, and encodes as null
--   json.array([t]) / json.object([t])  -> t, marked to encode as [] or {} even when empty
--   json.array_mt / json.object_mt      -> the marks: decoded arrays and objects carry them
--
-- Decoding
--   * Objects become tables with json.object_mt, arrays tables with json.array_mt, so that an
--     empty [] and {} come back out as they went in. null is json.null, also at the top.
--   * A number whose value is integral and fits in 64 bits is a Lua integer ({"replicas": 3}
--     gives 3, never 3.0), also when written 3.0 or 1e3; integer literals beyond 2^53 are read
--     exactly. Other numbers are floats; a number beyond a double's range is an error.
--   * Errors: nil and {code = "json", message, reason, offset, line, column[, file]}, with
--     offset, line and column 1-based (offset counts bytes, so text:sub(err.offset) starts at
--     the problem).
--   * The text must be strict JSON (RFC 8259) in UTF-8: no comments, trailing commas, 01, 1.,
--     single quotes, raw control bytes in strings or invalid UTF-8; a leading byte order mark
--     is skipped. Nesting deeper than 1000 levels is an error. A key given twice keeps the last
--     value.
--
-- Encoding
--   * A table marked as an array writes t[1] .. t[#t] (a hole is null; other keys are not
--     written); marked as an object, its keys. dkjson's __jsontype = "array" | "object" in a
--     metatable is honoured too. An unmarked table with keys exactly 1..n is an array, any
--     other an object, so an unmarked empty table is written {}.
--   * Object keys are strings; integer keys are written as their decimal text; other keys
--     are an error. sort_keys orders keys by their bytes.
--   * Integers are written exactly; floats with the fewest digits that read back the same
--     (so 3.0 is written 3). NaN and infinities, functions, threads, userdata other than
--     json.null, cycles and strings that are not valid UTF-8 raise an error that names
--     where in the value the problem is, like value.spec.containers[1].env.
local core = require "vq.core.json"

local json = {}
for name, value in pairs(core) do json[name] = value end

local pretty_options = {indent = 2, sort_keys = true}

--- The value as indented JSON with sorted keys: stable output for people and diffs.
function json.pretty(value)
  return core.encode(value, pretty_options)
end

return json
