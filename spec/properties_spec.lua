-- vq.properties: cluster.properties read as java.util.Properties reads it, and edited in
-- place without touching any other line.
local props = require "vq.properties"
local files = require "sim.gradlew.files"

local FIXTURE = "spec/fixtures/tools/targetCluster/cluster.properties"

local function read(path) return assert(files.read(path)) end

local text_diff = require "spec.support.text"
local lines_of, changed_lines = text_diff.lines_of, text_diff.changed_lines

local function parse(text)
  local map, entries = props.parse(text)
  assert(map, entries)
  return map, entries
end

describe("properties.parse", function()
  it("reads every separator form, blanks and comments as Java does", function()
    local map = parse(table.concat({
      "# comment", "! also a comment", "", "   ", "a=1", "b = 2", "c:3", "d : 4", "e 5",
      "f\t\t6", "  g=7", "h", "i=", "j = = x", "k==y", "l :: z",
    }, "\n"))
    assert.are.same({ a = "1", b = "2", c = "3", d = "4", e = "5", f = "6", g = "7",
                      h = "", i = "", j = "= x", k = "=y", l = ": z" }, map)
  end)

  it("keeps trailing blanks of a value, and drops none inside it", function()
    local map = parse("a = x  y  \n")
    assert.are.equal("x  y  ", map.a)
  end)

  it("joins lines ending in an odd number of backslashes, without the next line's indentation", function()
    local map, entries = parse("a=one \\\n    two \\\n\tthree\nb=x\\\\\nc=y\n")
    assert.are.equal("one two three", map.a)
    assert.are.equal("x\\", map.b, "an even number of backslashes does not continue")
    assert.are.equal("y", map.c)
    assert.are.same({ 1, 3 }, { entries[1].line, entries[1].last_line })
    assert.are.equal(4, entries[2].line)
  end)

  it("treats a continued line that looks like a comment as part of the value", function()
    assert.are.equal("x# not a comment", parse("a=x\\\n  # not a comment\n").a)
  end)

  it("never continues a comment, and ends an entry at a blank continuation line", function()
    local map = parse("# a comment \\\nb=1\nc=2\\\n\nd=3\n")
    assert.are.same({ b = "1", c = "2", d = "3" }, map)
  end)

  it("drops a continuation backslash on the last line", function()
    assert.are.equal("end", parse("a=end\\").a)
  end)

  it("unescapes \\t \\n \\r \\f \\uXXXX \\\\ \\= \\: and any other escaped character", function()
    local map = parse([[a=\t\n\r\f\\\=\:\q]] .. "\n" .. [[b=\u3042\u0041]] .. "\n" .. [[c=\uD83D\uDE00]] .. "\n")
    assert.are.equal("\t\n\r\f\\=:q", map.a)
    assert.are.equal("あA", map.b)
    assert.are.equal("😀", map.c, "a UTF-16 surrogate pair is one character")
  end)

  it("reads escaped separators and blanks inside a key", function()
    local map = parse([[my\ key\=with\:colon = v]] .. "\n" .. [[\#not-a-comment=1]])
    assert.are.equal("v", map["my key=with:colon"])
    assert.are.equal("1", map["#not-a-comment"])
  end)

  it("lets the last of duplicate keys win, and lists both", function()
    local map, entries = parse("a=1\nb=2\na=3\n")
    assert.are.equal("3", map.a)
    assert.are.equal(3, #entries)
    assert.is_true(entries[1].overridden)
    assert.is_nil(entries[3].overridden)
  end)

  it("reads \\r\\n and lone \\r line endings", function()
    assert.are.same({ a = "1", b = "2", c = "3" }, parse("a=1\r\nb=2\rc=3"))
  end)

  it("keeps UTF-8 as it is, comments in Japanese included", function()
    local map = parse("# 日本語のコメント\nname=値\n")
    assert.are.equal("値", map.name)
  end)

  it("names the file and the physical line of a malformed \\uXXXX", function()
    local map, err = props.parse("a=1\nb=ok \\\n  \\u12x4\n", { file = "cluster.properties" })
    assert.is_nil(map)
    assert.are.equal("properties", err.code)
    assert.are.equal("cluster.properties", err.file)
    assert.are.equal(3, err.line)
    assert.matches("cluster.properties:3:", err.message, 1, true)
    local _, err2 = props.parse("\\u00=x")
    assert.are.equal(1, err2.line)
  end)

  it("reads the tools dir's cluster.properties with the guide's keys", function()
    local map, entries = parse(read(FIXTURE))
    assert.are.equal("azure", map.provider)
    assert.are.equal("3.9.0", map.vantiq_system_release)
    assert.are.equal("development", map.deployment)
    assert.are.equal("tkeksfuji7", map["vantiq.installation"])
    assert.are.equal("-Xms2g -Xmx4g -Dfile.encoding=UTF-8", map["vantiq.extraJavaOptions"])
    assert.are.equal("soft", map.workloadPreference)
    assert.is_nil(map.requiredRemote, "commented out in the template")
    for _, e in ipairs(entries) do
      if e.key == "deployment" then assert.are.equal(": ", e.separator) end
    end
  end)
end)

describe("properties.get", function()
  it("gives a value, or not_found", function()
    assert.are.equal("azure", props.get(read(FIXTURE), "provider"))
    local v, err = props.get("a=1", "b", { file = "c.properties" })
    assert.is_nil(v)
    assert.are.equal("not_found", err.code)
  end)
end)

describe("properties.set", function()
  local text = read(FIXTURE)

  it("changes only the key's line, keeping its separator and indentation", function()
    for key, want in pairs({
      provider = "provider=aws\n",
      vantiq_system_release = "vantiq_system_release = 3.10.2\n",
      deployment = "deployment: production\n",
      ["vantiq.installation"] = "vantiq.installation prod01\n",
      workloadPreference = "  workloadPreference=hard\n",
    }) do
      local value = want:match("[=: ]+([%w.]+)\n$")
      local new, info = assert(props.set(text, key, value))
      assert.are.equal("changed", info.action)
      local changed, after = changed_lines(text, new)
      assert.are.same({ info.line }, changed, key)
      assert.are.equal(want, after[info.line])
      assert.are.equal(value, props.get(new, key))
    end
  end)

  it("says unchanged when the value is already there", function()
    local new, info = assert(props.set(text, "provider", "azure"))
    assert.are.equal(text, new)
    assert.are.equal("unchanged", info.action)
  end)

  it("writes a continued entry as one line and leaves the rest alone", function()
    local new = assert(props.set(text, "vantiq.extraJavaOptions", "-Xmx8g"))
    local before, after = lines_of(text), lines_of(new)
    assert.are.equal(#before - 2, #after)
    local at
    for i, l in ipairs(before) do
      if l:find("^vantiq.extraJavaOptions") then at = i end
    end
    assert.are.equal("vantiq.extraJavaOptions=-Xmx8g\n", after[at])
    for i = 1, at - 1 do assert.are.equal(before[i], after[i]) end
    for i = at + 3, #before do assert.are.equal(before[i], after[i - 2]) end
  end)

  it("uncomments #requiredRemote=false instead of appending (the install's step 3)", function()
    local new, info = assert(props.set(text, "requiredRemote", "false"))
    assert.are.equal("uncommented", info.action)
    local changed, after = changed_lines(text, new)
    assert.are.same({ info.line }, changed)
    assert.are.equal("requiredRemote=false\n", after[info.line])
    assert.are.equal("false", props.get(new, "requiredRemote"))
    local again = assert(props.set(text, "requiredRemote", "true"))
    assert.are.equal("requiredRemote=true\n", lines_of(again)[info.line])
  end)

  it("appends a key nobody commented out, with the file's line ending", function()
    local new, info = assert(props.set("a = 1\nb = 2", "c", "3"))
    assert.are.equal("a = 1\nb = 2\nc = 3\n", new)
    assert.are.equal("appended", info.action)
    assert.are.equal(3, info.line)
    assert.are.equal("x=1\r\ny=2\r\n", (props.set("x=1\r\n", "y", "2")))
    assert.are.equal("k=v\n", (props.set("", "k", "v")))
  end)

  it("escapes what Java would otherwise read differently", function()
    local cases = {
      { " leading blank", [[a=\ leading blank]] },
      { "back\\slash", [[a=back\\slash]] },
      { "two\nlines\ttab", [[a=two\nlines\ttab]] },
      { "日本", [[a=\u65E5\u672C]] },
      { "😀", [[a=\uD83D\uDE00]] },
      { "x=y:z # ! fine", [[a=x=y:z # ! fine]] },
      { "", "a=" },
    }
    for _, c in ipairs(cases) do
      local new = assert(props.set("a=old\n", "a", c[1]))
      assert.are.equal(c[2] .. "\n", new)
      assert.are.equal(c[1], props.get(new, "a"))
    end
  end)

  it("escapes a leading = or : after a blank-only separator", function()
    local new = assert(props.set("a old\n", "a", "=x"))
    assert.are.equal("a \\=x\n", new)
    assert.are.equal("=x", props.get(new, "a"))
    assert.are.equal("a: =x\n", (props.set("a: old\n", "a", "=x")))
  end)

  it("escapes a new key's separators, blanks and leading comment mark", function()
    local new = assert(props.set("", "#odd key=x:y", "v"))
    assert.are.equal([[\#odd\ key\=x\:y=v]] .. "\n", new)
    assert.are.equal("v", props.get(new, "#odd key=x:y"))
  end)

  it("refuses a value that is not UTF-8, and leaves no half edit", function()
    local new, err = props.set("a=1\n", "a", "\255\254")
    assert.is_nil(new)
    assert.are.equal("invalid", err.code)
  end)

  it("changes the entry in effect when a key is set twice, and says so", function()
    local new, info = assert(props.set("a=1\nb=2\na=3\n", "a", "9"))
    assert.are.equal("a=1\nb=2\na=9\n", new)
    assert.are.same({ 1, 3 }, info.duplicates)
  end)

  it("keeps CRLF line endings everywhere, the edited line included", function()
    local crlf = text:gsub("\n", "\r\n")
    local new, info = assert(props.set(crlf, "provider", "aws"))
    local changed, after = changed_lines(crlf, new)
    assert.are.same({ info.line }, changed)
    assert.are.equal("provider=aws\r\n", after[info.line])
    assert.is_nil(new:find("[^\r]\n"), "every line still ends in CRLF")
    local uncommented = assert(props.set(crlf, "requiredRemote", "false"))
    assert.is_nil(uncommented:find("[^\r]\n"))
  end)

  it("gives the parse error of a broken file instead of editing it", function()
    local new, err = props.set("a=\\uZZZZ\n", "b", "1", { file = "c.properties" })
    assert.is_nil(new)
    assert.are.equal("properties", err.code)
    assert.are.equal(1, err.line)
  end)
end)

describe("properties.uncomment", function()
  it("brings back the commented line as it was, or with a new value", function()
    local text = "# top\n  #  requiredRemote = false\nprovider=aws\n"
    local new, info = assert(props.uncomment(text, "requiredRemote"))
    assert.are.equal("# top\n  requiredRemote = false\nprovider=aws\n", new)
    assert.are.equal(2, info.line)
    assert.are.equal("# top\n  requiredRemote = true\nprovider=aws\n",
                     (props.uncomment(text, "requiredRemote", "true")))
  end)

  it("takes ! comments, and prefers the line that holds the wanted value", function()
    local text = "#provider=aws\n!provider=azure\n"
    assert.are.equal("#provider=aws\nprovider=azure\n", (props.uncomment(text, "provider", "azure")))
    assert.are.equal("provider=aws\n!provider=azure\n", (props.uncomment(text, "provider")))
  end)

  it("does not take prose for a commented-out key", function()
    local _, err = props.uncomment("# provider is one of aws|azure\n", "provider")
    assert.are.equal("not_found", err.code)
  end)

  it("refuses a key that is already set", function()
    local _, err = props.uncomment("#a=1\na=2\n", "a")
    assert.are.equal("exists", err.code)
  end)

  it("refuses to bring back a line that would swallow the next one", function()
    local _, err = props.uncomment("#a=x\\\n#b=1\n", "a")
    assert.are.equal("unsupported", err.code)
  end)
end)

describe("properties.delete", function()
  it("removes every line of the key's entries and nothing else", function()
    local text = "# keep\na=1\nb=2 \\\n  more\nc=3\nb=4\n"
    local new, info = assert(props.delete(text, "b"))
    assert.are.equal("# keep\na=1\nc=3\n", new)
    assert.are.same({ 3, 6 }, info.lines)
  end)

  it("handles a last line without a line break, and says not_found", function()
    assert.are.equal("a=1\n", (props.delete("a=1\nb=2", "b")))
    local _, err = props.delete("a=1\n", "zzz")
    assert.are.equal("not_found", err.code)
  end)
end)
