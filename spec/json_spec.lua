-- json: Kubernetes objects through decode and encode, exactly.
local json = require "json"
local files = require "sim.gradlew.files"

local FIXTURES = "spec/fixtures/json/"

local function read(name) return assert(files.read(FIXTURES .. name)) end

local function assert_error(result, err)
  assert.is_nil(result)
  assert.is_table(err)
  assert.are.equal("json", err.code)
  return err
end

-- A Pod list over 32 KB: the decoder walks a container that large member by member.
local function pod_list(count)
  local items = {}
  for i = 1, count do
    items[i] = ([[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web-%d","namespace":"prod",]]
      .. [["labels":{"app":"web","pod-template-hash":"7d4b9c8f6d"},"annotations":{},]]
      .. [["resourceVersion":"%d","uid":"4f2b8e1c-9d3a-4c55-8a7e-%012d"},]]
      .. [["spec":{"containers":[{"name":"web","image":"nginx:1.25","ports":[{"containerPort":8080}],]]
      .. [["resources":{"requests":{"cpu":"250m","memory":"256Mi"}}}],"nodeName":"node-%d",]]
      .. [["tolerations":[],"priority":%d},"status":{"phase":"Running","podIP":"10.244.1.%d",]]
      .. [["startTime":null,"restartCount":%d,"score":%s}}]]):format(
      i, 1000000 + i, i, i % 7, 9007199254740993 + i, i % 250, i % 3, ("%.17g"):format(i / 7))
  end
  return '{"apiVersion":"v1","kind":"List","items":[' .. table.concat(items, ",")
    .. '],"metadata":{"resourceVersion":""}}'
end

describe("json", function()
  it("is the same module as json, vq.json and vq.core.json", function()
    assert.are.equal(require "vq.json", json)
    local core = require "vq.core.json"
    for _, name in ipairs({"decode", "encode", "array", "object", "null", "array_mt", "object_mt"}) do
      assert.are.equal(core[name], json[name], name)
    end
  end)

  describe("round trips", function()
    it("keeps a Deployment exactly, whatever the key order", function()
      local text = read("deployment.json")
      local value = assert(json.decode(text))
      assert.are.equal(3, value.spec.replicas)
      assert.are.equal("Grüße, 世界 🚀", value.spec.template.spec.containers[1].env[2].value)
      assert.are.equal(json.null, value.spec.template.metadata.creationTimestamp)
      local again = json.encode(value)
      assert.are.same(value, json.decode(again))
      local sorted = {sort_keys = true}
      assert.are.equal(json.encode(value, sorted), json.encode(json.decode(again), sorted))
    end)

    it("keeps the escaped JSON inside an annotation byte for byte", function()
      local LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
      local value = assert(json.decode(read("deployment.json")))
      local applied = value.metadata.annotations[LAST_APPLIED]
      local inner = assert(json.decode(applied))
      assert.are.equal("vantiq", inner.metadata.name)
      assert.are.equal(applied, json.decode(json.encode(value)).metadata.annotations[LAST_APPLIED])
      assert.are.equal("owner: équipe plateforme — see <https://wiki.example.com/x?a=1&b=2>",
        value.metadata.annotations.note)
    end)

    it("keeps a list of Pods larger than 32 KB, numbers exact, through both paths", function()
      local text = pod_list(200)
      assert.is_true(#text > 64 * 1024)
      local list = assert(json.decode(text))
      assert.are.equal(200, #list.items)
      for i, pod in ipairs(list.items) do
        assert.are.equal("web-" .. i, pod.metadata.name)
        assert.are.equal(9007199254740993 + i, pod.spec.priority)
        assert.are.equal("integer", math.type(pod.spec.priority))
        assert.are.equal(i / 7, pod.status.score)
        assert.are.equal(json.null, pod.status.startTime)
      end
      assert.are.same(list, json.decode(json.encode(list)))
      local compact = json.encode(list, {sort_keys = true})
      assert.are.equal(compact, json.encode(json.decode(json.encode(list, {indent = 4})), {sort_keys = true}))
    end)

    it("finds the source of wide integers and NUL bytes deep in a large list", function()
      local entries = {}
      for i = 1, 600 do
        entries[i] = ('{"k\\u0000%d":"v\\u0000%s","n":%d,"pad":"%s"}'):format(
          i, ("x"):rep(i % 5), math.maxinteger - i, ("p"):rep(60))
      end
      local text = '{"a\\u0000b":[' .. table.concat(entries, ",") .. '],"z":-9223372036854775808}'
      local list = assert(json.decode(text))
      local items = list["a\0b"]
      assert.are.equal(600, #items)
      for i, item in ipairs(items) do
        assert.are.equal("v\0" .. ("x"):rep(i % 5), item["k\0" .. i])
        assert.are.equal(math.maxinteger - i, item.n)
      end
      assert.are.equal(math.mininteger, list.z)
    end)
  end)

  describe("null", function()
    it("decodes to json.null in arrays, objects and alone, and encodes as null", function()
      local v = assert(json.decode('{"a": null, "b": [1, null, 3]}'))
      assert.are.equal(json.null, v.a)
      assert.are.equal(json.null, v.b[2])
      assert.are.equal(3, #v.b)
      assert.are.equal(json.null, json.decode("null"))
      assert.are.equal('{"a":null,"b":[1,null,3]}', json.encode(v, {sort_keys = true}))
      assert.are.equal("null", json.encode(json.null))
      assert.are.equal("null", json.encode(nil))
    end)

    it("prints as null and is a userdata of its own", function()
      assert.are.equal("null", tostring(json.null))
      assert.are.equal("userdata", type(json.null))
      assert.has_error(function() json.encode({x = io.stdout}) end)
    end)
  end)

  describe("empty arrays and objects", function()
    it("survive decode and encode", function()
      local text = '{"args":[],"env":{},"list":[[],{}],"nested":{"a":{},"b":[]}}'
      assert.are.equal(text, json.encode(json.decode(text), {sort_keys = true}))
      assert.are.equal("[]", json.encode(json.decode("[]")))
      assert.are.equal("{}", json.encode(json.decode("{}")))
    end)

    it("carry json.array_mt and json.object_mt", function()
      local v = json.decode('{"a": [], "o": {}}')
      assert.are.equal(json.object_mt, getmetatable(v))
      assert.are.equal(json.array_mt, getmetatable(v.a))
      assert.are.equal(json.object_mt, getmetatable(v.o))
    end)

    it("follow the mark when marked, else the shape", function()
      assert.are.equal("{}", json.encode({}))
      assert.are.equal("[]", json.encode(json.array()))
      assert.are.equal("[]", json.encode(json.array({})))
      assert.are.equal("{}", json.encode(json.object()))
      assert.are.equal('{"1":"a","2":"b"}', json.encode(json.object({"a", "b"}), {sort_keys = true}))
      assert.are.equal('["a","b"]', json.encode({"a", "b"}))
      assert.are.equal('{"1":"a","3":"c"}', json.encode({[1] = "a", [3] = "c"}, {sort_keys = true}))
      assert.are.equal('{"1":"a","x":1}', json.encode({"a", x = 1}, {sort_keys = true}))
      assert.are.equal('[1,null,3]', json.encode(json.array({1, nil, 3})))
      assert.are.equal("[]", json.encode(setmetatable({}, {__jsontype = "array"})))
    end)

    it("marks a table in place and returns it", function()
      local t = {}
      assert.are.equal(t, json.array(t))
      assert.are.equal(json.array_mt, getmetatable(t))
      assert.has_error(function() json.array(setmetatable({}, {__metatable = false})) end)
    end)
  end)

  describe("numbers", function()
    it("decodes integral numbers as Lua integers", function()
      local v = json.decode('{"replicas": 3, "e": 1e3, "f": 3.0, "neg": -12}')
      assert.are.equal("integer", math.type(v.replicas))
      assert.are.equal("3", tostring(v.replicas))
      assert.are.equal("integer", math.type(v.e))
      assert.are.equal(1000, v.e)
      assert.are.equal("integer", math.type(v.f))
      assert.are.equal(-12, v.neg)
    end)

    it("keeps integers exact beyond 2^53 and up to the int64 limits", function()
      for _, n in ipairs({9007199254740993, -9007199254740993, math.maxinteger, math.mininteger,
                          1234567890123456789}) do
        local text = json.encode(n)
        assert.are.equal(("%d"):format(n), text)
        assert.are.equal(n, json.decode(text))
        assert.are.equal("integer", math.type(json.decode(text)))
        assert.are.equal(n, json.decode("[" .. text .. "]")[1])
      end
    end)

    it("turns integers beyond int64 into floats", function()
      assert.are.equal("float", math.type(json.decode("9223372036854775808")))
      assert.are.equal(2^63, json.decode("9223372036854775808"))
      assert.are.equal("float", math.type(json.decode("-9223372036854775809")))
    end)

    it("writes floats with the fewest digits that read back the same", function()
      assert.are.equal("0.1", json.encode(0.1))
      assert.are.equal("2.5", json.encode(2.5))
      assert.are.equal("0.30000000000000004", json.encode(0.1 + 0.2))
      assert.are.equal("3", json.encode(3.0))
      assert.are.equal("1e+300", json.encode(1e300))
      for _, x in ipairs({1/3, -1/7, 5e-324, 1.7976931348623157e308, 2^-1074, 123456.789}) do
        assert.are.equal(x, json.decode(json.encode(x)))
      end
    end)

    it("refuses NaN and infinity, saying where", function()
      assert.has_error(function() json.encode({a = {0/0}}) end)
      local ok, message = pcall(json.encode, {spec = {ratio = math.huge}})
      assert.is_false(ok)
      assert.matches("inf", message)
      assert.matches("value.spec.ratio", message, 1, true)
    end)
  end)

  describe("sort_keys and indent", function()
    it("gives the same text whatever order the keys were set in", function()
      local a, b = {}, {}
      local keys = {"zeta", "Alpha", "alpha", "b", "a.b", "a", "10", "9", "é"}
      for i = 1, #keys do a[keys[i]] = i end
      for i = #keys, 1, -1 do b[keys[i]] = i end
      local text = json.encode(a, {sort_keys = true})
      assert.are.equal(text, json.encode(b, {sort_keys = true}))
      assert.are.equal('{"10":7,"9":8,"Alpha":2,"a":6,"a.b":5,"alpha":3,"b":4,"zeta":1,"é":9}', text)
    end)

    it("sorts integer keys as their text", function()
      assert.are.equal('{"1":"a","10":"b","2":"c","x":"d"}',
        json.encode({[1] = "a", [10] = "b", [2] = "c", x = "d"}, {sort_keys = true}))
    end)

    it("pretty prints with the given indent", function()
      local v = json.decode('{"b": [1, {"c": []}], "a": {}}')
      assert.are.equal('{\n  "a": {},\n  "b": [\n    1,\n    {\n      "c": []\n    }\n  ]\n}',
        json.encode(v, {sort_keys = true, indent = 2}))
      assert.are.equal(json.encode(v, {sort_keys = true, indent = 2}), json.pretty(v))
      assert.are.equal('[\n    1\n]', json.encode({1}, {indent = 4}))
      assert.are.equal('[1]', json.encode({1}, {indent = 0}))
    end)

    it("refuses options it does not know", function()
      assert.has_error(function() json.encode({}, {sortkeys = true}) end)
      assert.has_error(function() json.encode({}, {indent = -1}) end)
      assert.has_error(function() json.encode({}, {indent = 2.5}) end)
      assert.has_error(function() json.decode("{}", {filename = "x"}) end)
    end)
  end)

  describe("strings", function()
    it("escape what JSON requires and keep UTF-8 as it is", function()
      assert.are.equal([["a\"b\\c\n\t\u0001\u0000é"]], json.encode('a"b\\c\n\t\1\0é'))
      assert.are.equal('"</script>"', json.encode("</script>"))
      assert.are.equal("a\0b", json.decode(json.encode("a\0b")))
    end)

    it("refuse invalid UTF-8 both ways", function()
      local ok, message = pcall(json.encode, {metadata = {name = "web\xff"}})
      assert.is_false(ok)
      assert.matches("invalid UTF-8", message, 1, true)
      assert.matches("value.metadata.name", message, 1, true)
      local err = assert_error(json.decode('{"name": "web\xff"}'))
      assert.are.equal(14, err.offset)
    end)
  end)

  describe("encode errors", function()
    it("name functions and cycles with their place in the value", function()
      local ok, message = pcall(json.encode, {spec = {containers = {{lifecycle = print}}}})
      assert.is_false(ok)
      assert.matches("cannot encode a function at value.spec.containers[1].lifecycle", message, 1, true)
      local t = {metadata = {}}
      t.metadata.owner = t
      ok, message = pcall(json.encode, t)
      assert.is_false(ok)
      assert.matches("cycle: value.metadata.owner refers back to value", message, 1, true)
    end)

    it("allows the same table twice when it is not its own ancestor", function()
      local shared = {1, 2}
      assert.are.equal('{"a":[1,2],"b":[1,2]}', json.encode({a = shared, b = shared}, {sort_keys = true}))
    end)
  end)

  describe("decode errors", function()
    it("give offset, line and column", function()
      local err = assert_error(json.decode('{\n  "a": 1,\n  "b": [1, 2,]\n}'))
      assert.are.equal(3, err.line)
      assert.are.equal(14, err.column)
      assert.are.equal(26, err.offset)
      assert.matches("expected a value but found ']'", err.message, 1, true)
      assert.are.equal("invalid JSON at line 3, column 14: expected a value but found ']'", err.message)
      assert.are.equal(err.message .. " (json)", tostring(err))
    end)

    it("put the file name in the message and a field", function()
      local err = assert_error(json.decode('{"a": tru}', {file = "deploy.json"}))
      assert.are.equal("deploy.json", err.file)
      assert.are.equal("deploy.json:1:7: invalid JSON: invalid literal (true, false or null expected)",
        err.message)
      assert.are.equal(7, err.offset)
    end)

    it("point at the first problem", function()
      local cases = {
        {"", 1, "no JSON value"},
        {'{"a": [1, 2', 12, "unexpected end"},
        {'{"a": 1} {}', 10, "after the JSON value"},
        {'"\\q"', 2, "invalid escape"},
        {'"\\u00zz"', 2, "4 hex digits"},
        {"[01]", 2, "invalid number 01"},
        {"[1e999]", 2, "out of range"},
        {'{"a" 1}', 6, "expected ':'"},
        {('['):rep(1001) .. (']'):rep(1001), 1001, "nesting deeper than 1000 levels"},
      }
      for _, case in ipairs(cases) do
        local err = assert_error(json.decode(case[1]))
        assert.are.equal(case[2], err.offset, case[1])
        assert.matches(case[3], err.reason, 1, true)
        assert.are.equal(case[1]:sub(case[2], case[2]), case[1]:sub(err.offset, err.offset))
      end
    end)

    it("skip a byte order mark and take nothing else that is not JSON", function()
      assert.are.same({a = 1}, json.decode("\239\187\191{\"a\": 1}"))
      assert.are.equal(1, json.decode("\239\187\1911"))
      for _, text in ipairs({'{"a": 1,}', '// c\n{}', "{'a': 1}", '[1]\0', '\f[]', '"tab\there"'}) do
        assert_error(json.decode(text))
      end
    end)

    it("point into the right line of a large document", function()
      local text = pod_list(200)
      local at = text:find('"podIP"', #text // 2, true)
      local broken = text:sub(1, at - 1) .. '"podIP" "x"' .. text:sub(at + #'"podIP":"x"')
      local err = assert_error(json.decode(broken))
      assert.are.equal(at + #'"podIP"' + 1, err.offset)
      assert.are.equal(1, err.line)
      assert.are.equal(err.offset, err.column)
    end)

    it("raises on what is not text", function()
      assert.has_error(function() json.decode({}) end)
      assert.has_error(function() json.decode() end)
    end)
  end)
end)
