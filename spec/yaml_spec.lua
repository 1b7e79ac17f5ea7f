-- yaml: reading, writing, and edits that change only the intended lines of a file kept in git.
local yaml = require "yaml"
local files = require "sim.gradlew.files"

local FIXTURES = "spec/fixtures/yaml/"
local BOM = "\239\187\191"

local function read(name) return assert(files.read(FIXTURES .. name)) end

local function lines_of(text)
  local lines = {}
  for line in (text .. "\n"):gmatch("(.-)\n") do lines[#lines + 1] = line end
  return lines
end

-- The one hunk where two texts differ: the old lines and the new lines (with any "\r").
local function changes(old, new)
  local a, b = lines_of(old), lines_of(new)
  local first = 1
  while first <= #a and first <= #b and a[first] == b[first] do first = first + 1 end
  local la, lb = #a, #b
  while la >= first and lb >= first and a[la] == b[lb] do la, lb = la - 1, lb - 1 end
  return { removed = table.move(a, first, la, 1, {}), added = table.move(b, first, lb, 1, {}) }
end

local function assert_changes(old, new, removed, added)
  assert.is_string(new)
  assert.are.same({ removed = removed, added = added }, changes(old, new))
end

local function assert_error(code, result, err)
  assert.is_nil(result)
  assert.is_table(err)
  assert.are.equal(code, err.code)
  return err
end

describe("yaml.decode", function()
  it("reads plain scalars as Kubernetes (go-yaml v2, YAML 1.1) reads them", function()
    local cases = {
      { "~", yaml.null }, { "null", yaml.null }, { "Null", yaml.null }, { "", yaml.null },
      { "true", true }, { "False", false }, { "yes", true }, { "No", false }, { "on", true },
      { "OFF", false }, { "y", true }, { "n", false },
      { "42", 42 }, { "-17", -17 }, { "+5", 5 }, { "0x1F", 31 }, { "0o17", 15 }, { "0123", 83 },
      { "0b101", 5 }, { "1_000", 1000 }, { "0", 0 },
      { "1.30", 1.3 }, { "1.", 1.0 }, { ".5", 0.5 }, { "-1.5e3", -1500.0 }, { "1e3", 1000.0 },
      { "0128", 128.0 },
      { "3.9.1", "3.9.1" }, { "1.30.0", "1.30.0" }, { "yes please", "yes please" },
      { "2024-01-01", "2024-01-01" }, { "1:30", "1:30" }, { "0x", "0x" }, { "-x", "-x" },
      { "1e400", "1e400" }, { "nginx:1.25", "nginx:1.25" }, { "トークン", "トークン" },
    }
    for _, case in ipairs(cases) do
      local got = yaml.decode("v: " .. case[1]).v
      assert.are.equal(case[2], got, "reading " .. case[1])
      assert.are.equal(math.type(case[2]), math.type(got), "the number type of " .. case[1])
    end
    assert.are.equal(math.huge, yaml.decode("v: .inf").v)
    assert.are.equal(-math.huge, yaml.decode("v: -.Inf").v)
    local nan = yaml.decode("v: .nan").v
    assert.is_true(nan ~= nan)
    assert.are.equal(math.maxinteger, yaml.decode("v: 9223372036854775807").v)
    assert.are.equal(math.mininteger, yaml.decode("v: -9223372036854775808").v)
    assert.are.equal("float", math.type(yaml.decode("v: 18446744073709551615").v))
  end)

  it("reads YAML 1.2's core schema when asked", function()
    local doc = yaml.decode("a: yes\nb: on\nc: 0123\nd: 0o17\ne: true\nf: ~\ng: 1_000\n",
                            { schema = "core" })
    assert.are.same({ a = "yes", b = "on", c = 123, d = 15, e = true, f = yaml.null, g = "1_000" }, doc)
    assert.has_error(function() yaml.decode("a: 1", { schema = "1.1" }) end)
  end)

  it("keeps quoted scalars strings and honours tags", function()
    local doc = yaml.decode([[
a: "1.30"
b: 'no'
c: !!str 0123
d: !!int "42"
e: !!float 3
f: !!bool "yes"
g: !!null ""
h: !custom 12
i: !!binary aGVsbG8=
j: ! 12
]])
    assert.are.same({ a = "1.30", b = "no", c = "0123", d = 42, e = 3.0, f = true, g = yaml.null,
                      h = "12", i = "aGVsbG8=", j = "12" }, doc)
    assert.are.equal("float", math.type(doc.e))
    local err = assert_error("yaml", yaml.decode("x: !!int twelve"))
    assert.matches("!!int", err.message)
  end)

  it("marks sequences and mappings, so that empty ones stay what they were", function()
    local doc = yaml.decode("list: [a, b]\nempty_list: []\nmap: {k: v}\nempty_map: {}\n")
    assert.are.equal(yaml.sequence_mt, getmetatable(doc.list))
    assert.are.equal(yaml.sequence_mt, getmetatable(doc.empty_list))
    assert.are.equal(yaml.mapping_mt, getmetatable(doc.map))
    assert.are.equal(yaml.mapping_mt, getmetatable(doc.empty_map))
    assert.are.equal(yaml.mapping_mt, getmetatable(doc))
    assert.are.equal("list: []\nmap: {}\n", yaml.encode({ list = doc.empty_list, map = doc.empty_map }))
  end)

  it("reads mapping keys as the strings written", function()
    local doc = yaml.decode("9000: tcp\ntrue: x\n~: z\n'quoted': z\n1.5: w\n")
    assert.are.same({ ["9000"] = "tcp", ["true"] = "x", ["~"] = "z", quoted = "z", ["1.5"] = "w" }, doc)
  end)

  it("refuses duplicate keys, as Kubernetes does", function()
    local err = assert_error("yaml", yaml.decode("a:\n  b: 1\n  c: 2\n  b: 3\n", { file = "deploy.yaml" }))
    assert.are.equal(4, err.line)
    assert.are.equal(3, err.column)
    assert.are.equal("deploy.yaml", err.file)
    assert.are.equal("deploy.yaml:4:3: duplicate key 'b'", err.message)
  end)

  it("refuses keys that are not scalars", function()
    assert_error("yaml", yaml.decode("? [a, b]\n: c\n"))
    assert_error("yaml", yaml.decode("base: &b {x: 1}\n*b : c\n"))
  end)

  it("copies aliases and applies merge keys", function()
    local doc = assert(yaml.decode(read("anchors.yaml")))
    assert.are.same({ cpu = "500m", memory = "4Gi" }, doc.vantiq.resources)
    assert.are.same({ cpu = "500m", memory = "1Gi" }, doc.keycloak.resources)
    assert.are_not.equal(doc.defaults, doc.keycloak.resources)
    assert.are.equal(7, doc.standalone)
    local merged = yaml.decode("a: &a {x: 1, y: 1}\nb: &b {y: 2, z: 2}\nc:\n  <<: [*a, *b]\n  z: 3\n")
    assert.are.same({ x = 1, y = 1, z = 3 }, merged.c)
    local key = yaml.decode("k: &k name\nm: {*k : v}\n")
    assert.are.same({ name = "v" }, key.m)
    assert_error("yaml", yaml.decode("a: 1\n<<: [1, 2]\n"))
    assert_error("yaml", yaml.decode("a: *undefined\n"))
  end)

  it("stops a billion laughs at the alias budget", function()
    local lines = { 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]' }
    local previous = "a"
    for _, name in ipairs { "b", "c", "d", "e", "f", "g", "h", "i" } do
      lines[#lines + 1] = ("%s: &%s [%s*%s]"):format(name, name, ("*" .. previous .. ","):rep(9), previous)
      previous = name
    end
    local started = os.clock()
    local err = assert_error("yaml", yaml.decode(table.concat(lines, "\n")))
    assert.matches("max_alias_nodes", err.message)
    assert.is_true(os.clock() - started < 5)
    assert.is_table(yaml.decode("a: &a [1, 2]\nb: [*a, *a, *a]\n", { max_alias_nodes = 9 }))
    assert_error("yaml", yaml.decode("a: &a [1, 2]\nb: [*a, *a, *a, *a]\n", { max_alias_nodes = 9 }))
  end)

  it("refuses nesting deeper than max_depth", function()
    assert_error("yaml", yaml.decode(("["):rep(10000)))
    assert_error("yaml", yaml.decode(("- "):rep(600) .. "x"))
    assert.is_table(yaml.decode(("["):rep(100) .. ("]"):rep(100)))
    assert_error("yaml", yaml.decode(("["):rep(20) .. ("]"):rep(20), { max_depth = 10 }))
  end)

  it("reports syntax errors with the file, line and column (1-based, in characters)", function()
    local err = assert_error("yaml", yaml.decode("vantiq:\n  image: a: b\n", { file = "deploy.yaml" }))
    assert.are.equal("deploy.yaml:2:11: mapping values are not allowed in this context", err.message)
    assert.are.same({ 2, 11 }, { err.line, err.column })
    err = assert_error("yaml", yaml.decode("# 説明\n名前: 値: x\n"))
    assert.are.same({ 2, 6 }, { err.line, err.column })
    err = assert_error("yaml", yaml.decode("a: [1, 2\n"))
    assert.matches("line 2, column 1", err.message)
    err = assert_error("yaml", yaml.decode("a: \255\n"))
    assert.are.same({ 1, 4 }, { err.line, err.column })
    assert.are.equal("line 2, column 1: did not find expected ',' or ']' (while parsing a flow sequence at line 1, column 4)",
                     select(2, yaml.decode("a: [1, 2\n")).message)
    assert.matches("%(yaml%)$", tostring(err))
  end)

  it("reads documents, a BOM, CRLF line ends and UTF-16", function()
    local docs = yaml.decode_all(read("multi.yaml"))
    assert.are.equal(2, #docs)
    assert.are.equal("0123", docs[2].stringData.token)
    assert.are.equal("ConfigMap", yaml.decode(read("multi.yaml")).kind)
    assert.are.equal(yaml.null, yaml.decode(""))
    assert.are.same({}, yaml.decode_all(""))
    local lf = yaml.decode(read("deploy.yaml"))
    assert.are.same(lf, yaml.decode(read("deploy-crlf.yaml")))
    assert.are.same(lf, yaml.decode(read("deploy-bom.yaml")))
    assert.are.equal("#!/bin/sh\necho \"初期化中...\"\nexit 0\n", yaml.decode(read("deploy-crlf.yaml")).vantiq.initScript)
    assert.are.same({ a = "b" }, yaml.decode("\255\254a\0:\0 \0b\0\n\0"))
  end)

  it("reads the fixtures as intended", function()
    local deploy = yaml.decode(read("deploy.yaml"), { file = "deploy.yaml" })
    assert.are.equal("3.9.1", deploy.vantiq.image.tag)
    assert.are.equal(3, deploy.vantiq.replicas)
    assert.is_false(deploy.nginx.controller.tls.selfSigned)
    assert.are.equal("keycloak-db.example.co.jp", deploy.keycloak.keycloak.persistence.dbHost)
    assert.is_true(deploy.grafana.enabled)
    assert.are.equal(yaml.null, deploy.grafana.adminPassword)
    assert.are.same({ app = "vantiq", tier = "backend" }, deploy.vantiq.labels)
    local secrets = yaml.decode(read("secrets.yaml"))
    assert.are.equal("azure-creds.sh", secrets.vantiq["dbbackup-creds"].files.credentials)
    assert.are.equal("s3cr3t:パスワード", secrets.shared.keycloak.data.password)
    assert.are.equal('p@ss "quoted"', secrets.shared.mongodb.data.password)
  end)
end)

describe("yaml.encode", function()
  it("quotes strings that would read back as another type", function()
    local quoted = { "1.30", "no", "No", "on", "off", "y", "n", "yes", "0123", "", "null", "~", "true",
                     "1e3", "0x1F", ".5", ".inf", "2024-01-01", "1:30", "<<", "=", "+1", "1_000" }
    for _, s in ipairs(quoted) do
      local text = yaml.encode({ v = s })
      assert.are.equal(('v: "%s"\n'):format(s), text, "writing " .. s)
      assert.are.equal(s, yaml.decode(text).v)
      assert.are.equal(s, yaml.decode(text, { schema = "core" }).v)
    end
    local other = { "a: b", "- x", "#x", " lead", "trail ", "x #y", "*ref", "&a", "!tag", "%x",
                    "@x", "`x", "{x}", "[x]", "'q'", '"q"', "a\tb", "ü", "3.9.1", "nginx:1.25" }
    for _, s in ipairs(other) do
      assert.are.equal(s, yaml.decode(yaml.encode({ v = s })).v, "round trip of " .. s)
    end
    assert.are.equal("v: 3.9.1\n", yaml.encode({ v = "3.9.1" }))
    assert.are.equal("v: 日本語\n", yaml.encode({ v = "日本語" }))
  end)

  it("writes multi-line strings as literal blocks", function()
    local text = yaml.encode({ script = "#!/bin/sh\necho hi\n", keep = "a\n\n", strip = "a\nb" })
    assert.are.equal("keep: |+\n  a\n\nscript: |\n  #!/bin/sh\n  echo hi\nstrip: |-\n  a\n  b\n", text)
    assert.are.same({ script = "#!/bin/sh\necho hi\n", keep = "a\n\n", strip = "a\nb" }, yaml.decode(text))
  end)

  it("writes numbers, booleans and null so that they read back the same", function()
    local text = yaml.encode({ i = 3, f = 1.0, g = 0.1, big = 1e20, neg = -2.5, t = true, n = yaml.null,
                               inf = math.huge, ninf = -math.huge, min = math.mininteger })
    assert.are.equal("big: 1e+20\nf: 1.0\ng: 0.1\ni: 3\ninf: .inf\nmin: -9223372036854775808\n\z
                      \"n\": null\nneg: -2.5\nninf: -.inf\nt: true\n", text)
    local back = yaml.decode(text)
    assert.are.equal("float", math.type(back.f))
    assert.are.equal("integer", math.type(back.i))
    assert.are.equal(".nan\n", yaml.encode(0 / 0))
  end)

  it("sorts keys, or puts opts.order first", function()
    local obj = { spec = { replicas = 1 }, kind = "Deployment", apiVersion = "apps/v1", metadata = { name = "v" } }
    assert.are.equal("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: v\nspec:\n  replicas: 1\n",
                     yaml.encode(obj))
    assert.are.equal("kind: Deployment\nmetadata:\n  name: v\napiVersion: apps/v1\nspec:\n  replicas: 1\n",
                     yaml.encode(obj, { order = { "kind", "metadata" } }))
    assert.are.equal("1: a\n2: b\nx: c\n", yaml.encode({ [1] = "a", [2] = "b", x = "c" }))
  end)

  it("writes block style with two spaces, or flow, or another indentation", function()
    local v = { a = { b = { c = { 1, 2 } } } }
    assert.are.equal("a:\n  b:\n    c:\n    - 1\n    - 2\n", yaml.encode(v))
    assert.are.equal("a:\n    b:\n        c:\n        - 1\n        - 2\n", yaml.encode(v, { indent = 4 }))
    assert.are.equal("{a: {b: {c: [1, 2]}}}\n", yaml.encode(v, { flow = true }))
    assert.are.equal("{}\n", yaml.encode({}))
    assert.are.equal("[]\n", yaml.encode(yaml.sequence()))
    assert.are.equal("1: x\n", yaml.encode(yaml.mapping({ "x" })))
    assert.are.equal("hello\n", yaml.encode("hello"))
  end)

  it("round-trips Kubernetes objects", function()
    local objects = {
      {
        apiVersion = "apps/v1", kind = "Deployment",
        metadata = { name = "vantiq", namespace = "prod", labels = { app = "vantiq", version = "1.30" },
                     annotations = { ["kubernetes.io/change-cause"] = "upgrade to 1.31: see #12" } },
        spec = {
          replicas = 3,
          selector = { matchLabels = { app = "vantiq" } },
          template = {
            metadata = { labels = { app = "vantiq" } },
            spec = {
              containers = { {
                name = "vantiq", image = "quay.io/vantiq/vantiq-server:1.30",
                args = { "--port", "8080", "--verbose", "no" },
                env = { { name = "TZ", value = "Asia/Tokyo" }, { name = "DEBUG", value = "off" },
                        { name = "EMPTY", value = "" } },
                resources = { limits = { cpu = "2", memory = "4Gi" }, requests = {} },
                ports = { { containerPort = 8080, protocol = "TCP" } },
              } },
              volumes = yaml.sequence(),
              nodeSelector = { ["kubernetes.io/os"] = "linux" },
            },
          },
        },
      },
      {
        apiVersion = "v1", kind = "ConfigMap", metadata = { name = "scripts" },
        data = { ["init.sh"] = "#!/bin/sh\necho '初期化'\nexit 0\n", ["version"] = "0123",
                 ["on"] = "yes", ["ratio"] = "1.0", ["note"] = "  leading spaces\nand more  " },
      },
      { apiVersion = "v1", kind = "Secret", type = "Opaque", stringData = { password = "p@ss: 'x' #1" } },
    }
    for _, obj in ipairs(objects) do
      local text = assert(yaml.encode(obj))
      assert.are.same(obj, yaml.decode(text))
    end
    local docs = yaml.decode_all(assert(yaml.encode_all(objects)))
    assert.are.same(objects, docs)
  end)

  it("returns nil, err for what YAML cannot hold", function()
    assert_error("yaml", yaml.encode({ f = print }))
    local cycle = {}
    cycle.me = cycle
    assert_error("yaml", yaml.encode(cycle))
    assert_error("yaml", yaml.encode({ bad = "\255\254" }))
    assert_error("yaml", yaml.encode({ [{}] = 1 }))
    local shared = { x = 1 }
    assert.are.equal("a:\n  x: 1\nb:\n  x: 1\n", yaml.encode({ a = shared, b = shared }))
  end)

  it("takes json.array_mt as a sequence mark when the json module has one", function()
    local ok, json = pcall(require, "vq.json")
    if not (ok and type(json) == "table" and json.array_mt) then return end
    assert.are.equal("a: []\n", yaml.encode({ a = setmetatable({}, json.array_mt) }))
  end)
end)

describe("yaml.get", function()
  local text = read("deploy.yaml")

  it("walks a dotted path, a list of keys, and sequence indexes from 1", function()
    assert.are.equal("3.9.1", yaml.get(text, "vantiq.image.tag"))
    assert.are.equal("nginx", yaml.get(text, { "vantiq", "ingress", "annotations", "kubernetes.io/ingress.class" }))
    assert.are.equal("nginx", yaml.get(text, "vantiq.ingress.annotations.kubernetes.io/ingress.class"))
    assert.are.equal("TZ", yaml.get(text, "vantiq.env.2.name"))
    assert.is_false(yaml.get(text, "nginx.controller.tls.selfSigned"))
    assert.are.equal(yaml.null, yaml.get(text, "grafana.adminPassword"))
    assert.are.equal("vantiq-secret", yaml.get(read("multi.yaml"), "metadata.name", { document = 2 }))
  end)

  it("returns nil, err for a missing or ambiguous path", function()
    assert_error("not_found", yaml.get(text, "vantiq.image.digest"))
    assert_error("not_found", yaml.get(text, "vantiq.env.3"))
    assert_error("ambiguous", yaml.get("a.b: 1\na:\n  b: 2\n", "a.b"))
    assert.are.equal(1, yaml.get("a.b: 1\na:\n  b: 2\n", { "a.b" }))
    assert_error("yaml", yaml.get("a: [", "a"))
  end)
end)

describe("yaml.edit", function()
  local text = read("deploy.yaml")

  it("sets a scalar, changing that line only and keeping its comment and quotes", function()
    local new = yaml.edit(text, "vantiq.image.tag", "3.9.2")
    assert_changes(text, new, { '    tag: "3.9.1"   # リリースタグ' }, { '    tag: "3.9.2"   # リリースタグ' })
    assert.are.equal("3.9.2", yaml.get(new, "vantiq.image.tag"))
    new = yaml.edit(text, "vantiq.mongodb.backup.schedule", "it's 4")
    assert_changes(text, new, { "      schedule: '0 3 * * *'   # 毎日 3:00 (JST)" },
                   { "      schedule: 'it''s 4'   # 毎日 3:00 (JST)" })
  end)

  it("quotes a string that would read as another type, and writes numbers and booleans plain", function()
    local cases = {
      { "1.30", '  replicas: "1.30"' }, { "no", '  replicas: "no"' }, { "on", '  replicas: "on"' },
      { "0123", '  replicas: "0123"' }, { "", '  replicas: ""' }, { "null", '  replicas: "null"' },
      { "a: b", "  replicas: 'a: b'" }, { "plain text", "  replicas: plain text" },
      { 5, "  replicas: 5" }, { 1.5, "  replicas: 1.5" }, { 2.0, "  replicas: 2.0" },
      { true, "  replicas: true" }, { yaml.null, "  replicas: null" },
      { "two\nlines", '  replicas: "two\\nlines"' },
    }
    for _, case in ipairs(cases) do
      local new, err = yaml.edit(text, "vantiq.replicas", case[1])
      assert(new, err)
      assert_changes(text, new, { "  replicas: 3" }, { case[2] })
      local got = yaml.get(new, "vantiq.replicas")
      assert.are.equal(case[1], got)
      assert.are.equal(math.type(case[1]), math.type(got))
    end
    -- a number replaces a quoted string plainly
    assert_changes(text, yaml.edit(text, "vantiq.image.tag", 4), { '    tag: "3.9.1"   # リリースタグ' },
                   { "    tag: 4   # リリースタグ" })
  end)

  it("edits inside flow mappings and sequences", function()
    local new = yaml.edit(text, "vantiq.labels.app", "a, b")
    assert_changes(text, new, { '  labels: {app: vantiq, tier: "backend"}' },
                   { "  labels: {app: 'a, b', tier: \"backend\"}" })
    new = yaml.edit(text, "vantiq.labels.tier", "front")
    assert_changes(text, new, { '  labels: {app: vantiq, tier: "backend"}' }, { '  labels: {app: vantiq, tier: "front"}' })
    new = yaml.edit(text, "vantiq.env.2.value", "UTC")
    assert_changes(text, new, { "      value: Asia/Tokyo" }, { "      value: UTC" })
    assert.are.equal("b", yaml.get(yaml.edit("a: [x, y]\n", "a.2", "b"), "a.2"))
  end)

  it("finds keys with dots, by a list or by the one dotted reading that matches", function()
    local want = { "      kubernetes.io/ingress.class: nginx" }
    local got = { "      kubernetes.io/ingress.class: traefik" }
    assert_changes(text, yaml.edit(text, { "vantiq", "ingress", "annotations", "kubernetes.io/ingress.class" }, "traefik"), want, got)
    assert_changes(text, yaml.edit(text, "vantiq.ingress.annotations.kubernetes.io/ingress.class", "traefik"), want, got)
    assert_error("ambiguous", yaml.edit("a.b: 1\na:\n  b: 2\n", "a.b", 3))
  end)

  it("fills an empty value and replaces a null", function()
    local new = yaml.edit("a:\nb: 1\n", "a", "x")
    assert.are.equal("a: x\nb: 1\n", new)
    new = yaml.edit(text, "grafana.adminPassword", "パスワード")
    assert_changes(text, new, { "  adminPassword: ~" }, { "  adminPassword: パスワード" })
    assert.are.equal("a: &x 2\nb: 1\n", yaml.edit("a: &x 1\nb: 1\n", "a", 2))
    assert.are.equal("a: !!str 2\n", yaml.edit("a: !!str 1\n", "a", "2"))
    assert.are.equal("a: 2\n", yaml.edit("a: !!str 1\n", "a", 2))
  end)

  it("refuses to replace a block scalar or a collection unless opts.replace", function()
    local err = assert_error("unsupported", yaml.edit(text, "vantiq.initScript", "x"))
    assert.matches("replace", err.message)
    assert_error("unsupported", yaml.edit(text, "vantiq.image", "x"))
    assert_error("unsupported", yaml.edit(text, "vantiq.labels", "x"))
    local new = yaml.edit(text, "vantiq.initScript", "#!/bin/sh\nexit 1\n", { replace = true })
    assert_changes(text, new, { '    echo "初期化中..."', "    exit 0" }, { "    exit 1" })
    new = yaml.edit(text, "vantiq.initScript", "none", { replace = true })
    assert_changes(text, new, { "  initScript: |", "    #!/bin/sh", '    echo "初期化中..."', "    exit 0" },
                   { "  initScript: none" })
    new = yaml.edit(text, "vantiq.image", "registry/vantiq:1.30", { replace = true })
    assert_changes(text, new, { "  image:", "    repository: quay.io/vantiq/vantiq-server", '    tag: "3.9.1"   # リリースタグ' },
                   { "  image: registry/vantiq:1.30" })
    new = yaml.edit(text, "vantiq.image", { repository = "r", tag = "1.30" }, { replace = true })
    assert_changes(text, new, { "    repository: quay.io/vantiq/vantiq-server", '    tag: "3.9.1"   # リリースタグ' },
                   { "    repository: r", '    tag: "1.30"' })
    new = yaml.edit(text, "vantiq.labels", { app = "x" }, { replace = true })
    assert_changes(text, new, { '  labels: {app: vantiq, tier: "backend"}' }, { "  labels: {app: x}" })
  end)

  it("sets a table where a scalar was", function()
    local new = yaml.edit(text, "vantiq.replicas", { min = 2, max = 5 })
    assert_changes(text, new, { "  replicas: 3" }, { "  replicas:", "    max: 5", "    min: 2" })
    new = yaml.edit(text, "vantiq.env.1.value", { "-Xmx4g", "-Xms1g" })
    assert_changes(text, new, { "      value: -Xmx4g" }, { "      value:", "        - -Xmx4g", "        - -Xms1g" })
    assert.are.same({ "-Xmx4g", "-Xms1g" }, yaml.get(new, "vantiq.env.1.value"))
  end)

  it("returns nil, err for a missing path, a broken file, an alias or a shared anchor", function()
    local err = assert_error("not_found", yaml.edit(text, "vantiq.image.digest", "x", { file = "deploy.yaml" }))
    assert.are.equal("deploy.yaml: vantiq.image.digest not found (vantiq.image has no digest)", err.message)
    assert_error("not_found", yaml.edit(text, "vantiq.env.5.name", "x"))
    err = assert_error("yaml", yaml.edit("a: [\n", "a", 1, { file = "broken.yaml" }))
    assert.are.equal("broken.yaml", err.file)
    assert_error("yaml", yaml.edit("a: 1\na: 2\n", "a", 3))
    local anchors = read("anchors.yaml")
    assert_error("unsupported", yaml.edit(anchors, "defaults.cpu", "1"))
    assert_error("unsupported", yaml.edit(anchors, "keycloak.resources.cpu", "1"))
    local new = yaml.edit(anchors, "vantiq.resources.memory", "8Gi")
    assert_changes(anchors, new, { "    memory: 4Gi" }, { "    memory: 8Gi" })
    assert_changes(anchors, yaml.edit(anchors, "standalone", 8), { "standalone: &solo 7" }, { "standalone: &solo 8" })
    assert.has_error(function() yaml.edit(text, "vantiq.replicas", nil) end)
  end)

  it("edits the document asked for", function()
    local multi = read("multi.yaml")
    local new = yaml.edit(multi, "stringData.token", "0124", { document = 2 })
    assert_changes(multi, new, { '  token: "0123"' }, { '  token: "0124"' })
    assert_error("not_found", yaml.edit(multi, "stringData.token", "x"))
    assert_error("not_found", yaml.edit(multi, "kind", "x", { document = 3 }))
  end)

  it("works in bytes while libyaml counts characters", function()
    local t = "# 日本語のコメント 😀\nキー: 値  # コメント\nタグ: '1.0' # 版\n"
    assert.are.equal("# 日本語のコメント 😀\nキー: 値  # コメント\nタグ: '2.0' # 版\n", yaml.edit(t, "タグ", "2.0"))
    assert.are.equal("# 日本語のコメント 😀\nキー: 新しい値  # コメント\nタグ: '1.0' # 版\n", yaml.edit(t, "キー", "新しい値"))
    local secrets = read("secrets.yaml")
    local new = yaml.edit(secrets, "shared.keycloak.data.password", "新しい:パスワード")
    assert_changes(secrets, new, { '      password: "s3cr3t:パスワード"' }, { '      password: "新しい:パスワード"' })
    new = yaml.edit(secrets, { "vantiq", "dbbackup-creds", "files", "credentials" }, "gcp-creds.sh")
    assert_changes(secrets, new, { "      credentials: azure-creds.sh   # バックアップ用の認証情報" },
                   { "      credentials: gcp-creds.sh   # バックアップ用の認証情報" })
    new = yaml.edit(secrets, "shared.mongodb.data.password", "it's")
    assert_changes(secrets, new, { "      password: 'p@ss \"quoted\"'" }, { "      password: 'it''s'" })
  end)
end)

describe("yaml.insert", function()
  local text = read("deploy.yaml")

  it("adds a key after the mapping's last key, at its indentation", function()
    local new = yaml.insert(text, "vantiq.mongodb.backup", "enabled2", true)
    assert_changes(text, new, {}, { "      enabled2: true" })
    local lines = lines_of(new)
    for i, line in ipairs(lines) do
      if line == "      enabled2: true" then assert.matches("schedule:", lines[i - 1]) end
    end
    assert.is_true(yaml.get(new, "vantiq.mongodb.backup.enabled2"))
  end)

  it("writes a table as a nested block", function()
    local new = yaml.insert(text, "vantiq.mongodb.backup", "remote", { bucket = "b", region = "japaneast", keep = { 7, 30 } })
    assert_changes(text, new, {}, { "      remote:", "        bucket: b", "        keep:", "        - 7", "        - 30",
                                    "        region: japaneast" })
    assert.are.same({ 7, 30 }, yaml.get(new, "vantiq.mongodb.backup.remote.keep"))
  end)

  it("quotes the value as edit does", function()
    local new = yaml.insert(text, "vantiq.image", "pullPolicy", "1.30")
    assert_changes(text, new, {}, { '    pullPolicy: "1.30"' })
    new = yaml.insert(text, "", "version", "no")
    assert_changes(text, new, {}, { 'version: "no"' })
  end)

  it("goes after or before a given key", function()
    local new = yaml.insert(text, "nginx.controller.tls", "minVersion", "1.2", { after = "selfSigned" })
    assert_changes(text, new, {}, { '      minVersion: "1.2"' })
    assert.matches('selfSigned: false\n      minVersion: "1.2"\n      # 証明書', new)
    new = yaml.insert(text, "nginx.controller.tls", "minVersion", "1.2", { before = "secretName" })
    assert.matches('selfSigned: false\n      minVersion: "1.2"\n      # 証明書', new)
    new = yaml.insert(text, "vantiq", "tier", "gold", { before = "image" })
    assert.matches("vantiq:\n  tier: gold\n  # イメージの設定\n  image:", new)
    assert_error("not_found", yaml.insert(text, "vantiq", "x", 1, { after = "nothing" }))
  end)

  it("adds to flow mappings and turns a null into a mapping", function()
    local new = yaml.insert(text, "vantiq.labels", "env", "prod")
    assert_changes(text, new, { '  labels: {app: vantiq, tier: "backend"}' }, { '  labels: {app: vantiq, tier: "backend", env: prod}' })
    assert.are.equal("a: {x: 1}\n", yaml.insert("a: {}\n", "a", "x", 1))
    new = yaml.insert(text, "grafana.adminPassword", "secretKey", "admin-password")
    assert_changes(text, new, { "  adminPassword: ~" }, { "  adminPassword:", "    secretKey: admin-password" })
    assert.are.equal("a:\n  b: 1\nc: 2\n", yaml.insert("a:\nc: 2\n", "a", "b", 1))
  end)

  it("refuses an existing key and a non-mapping", function()
    assert_error("exists", yaml.insert(text, "vantiq.mongodb.backup", "enabled", true))
    assert_error("unsupported", yaml.insert(text, "vantiq.replicas", "x", 1))
    assert_error("not_found", yaml.insert(text, "vantiq.missing", "x", 1))
    assert_error("exists", yaml.insert(read("anchors.yaml"), "vantiq.resources", "cpu", "1"))
  end)

  it("uses the file's indentation step and line ends", function()
    local four = read("indent4.yaml")
    local new = yaml.insert(four, "vantiq.image", "pull", { policy = "Always" })
    assert_changes(four, new, {}, { "        pull:", "            policy: Always" })
    assert.are.equal("a: 1\nb: 2", yaml.insert("a: 1", "", "b", 2))
    assert.are.equal("a: 1\r\nb: 2\r\n", yaml.insert("a: 1\r\n", "", "b", 2))
  end)

  it("appends to sequences", function()
    local new = yaml.append(text, "vantiq.env", { name = "LANG", value = "ja_JP.UTF-8" })
    assert_changes(text, new, {}, { "    - name: LANG", "      value: ja_JP.UTF-8" })
    assert.are.equal("a: [1, 2, 3]\n", yaml.append("a: [1, 2]\n", "a", 3))
    assert.are.equal("a: [x]\n", yaml.append("a: []\n", "a", "x"))
    assert.are.equal("a:\n  - \"1.30\"\n", yaml.append("a:\n", "a", "1.30"))
    assert_error("unsupported", yaml.append(text, "vantiq.image", 1))
  end)
end)

describe("yaml.rename", function()
  local text = read("deploy.yaml")

  it("renames a key in place, keeping its quotes", function()
    assert_changes(text, yaml.rename(text, "vantiq.replicas", "replicaCount"), { "  replicas: 3" }, { "  replicaCount: 3" })
    assert.are.equal('"b": 1\n', yaml.rename('"a": 1\n', "a", "b"))
    assert.are.equal("'no': 1\n", yaml.rename("'a': 1\n", "a", "no"))
    assert.are.equal('"no": 1\n', yaml.rename("a: 1\n", "a", "no"))
    assert.are.equal("m: {x: 1, z: 2}\n", yaml.rename("m: {x: 1, y: 2}\n", "m.y", "z"))
    local new = yaml.rename(text, "keycloak.keycloak.persistence", "storage")
    assert_changes(text, new, { "    persistence:" }, { "    storage:" })
    assert.are.equal("keycloak-db.example.co.jp", yaml.get(new, "keycloak.keycloak.storage.dbHost"))
  end)

  it("refuses a name that exists, and an index", function()
    assert_error("exists", yaml.rename(text, "vantiq.replicas", "image"))
    assert_error("unsupported", yaml.rename(text, "vantiq.env.1", "x"))
    assert_error("not_found", yaml.rename(text, "vantiq.nothing", "x"))
  end)
end)

describe("yaml.delete", function()
  local text = read("deploy.yaml")

  it("removes a key's line and keeps the comments around it", function()
    assert_changes(text, yaml.delete(text, "vantiq.mongodb.backup.schedule"),
                   { "      schedule: '0 3 * * *'   # 毎日 3:00 (JST)" }, {})
    assert_changes(text, yaml.delete(text, "nginx.controller.tls.selfSigned"), { "      selfSigned: false" }, {})
    assert_changes(text, yaml.delete(text, "keycloak.keycloak.username"), { "    username: admin" }, {})
  end)

  it("removes a nested block with its key", function()
    assert_changes(text, yaml.delete(text, "vantiq.mongodb.backup"),
                   { "    backup:", "      enabled: false", "      schedule: '0 3 * * *'   # 毎日 3:00 (JST)" }, {})
    assert_changes(text, yaml.delete(text, "vantiq.initScript"),
                   { "  initScript: |", "    #!/bin/sh", '    echo "初期化中..."', "    exit 0" }, {})
  end)

  it("removes sequence items and keys of items", function()
    assert_changes(text, yaml.delete(text, "vantiq.env.1"), { "    - name: JAVA_OPTS", "      value: -Xmx4g" }, {})
    local new = yaml.delete(text, "vantiq.env.1.name")
    assert_changes(text, new, { "    - name: JAVA_OPTS", "      value: -Xmx4g" }, { "    - value: -Xmx4g" })
    assert.are.same({ value = "-Xmx4g" }, yaml.get(new, "vantiq.env.1"))
    assert.are.equal("a:\n- x\n- z\n", yaml.delete("a:\n- x\n- y\n- z\n", "a.2"))
    assert.are.equal("a: [x, z]\n", yaml.delete("a: [x, y, z]\n", "a.2"))
    assert.are.equal("a: [x, y]\n", yaml.delete("a: [x, y, z]\n", "a.3"))
  end)

  it("removes flow entries", function()
    assert_changes(text, yaml.delete(text, "vantiq.labels.app"), { '  labels: {app: vantiq, tier: "backend"}' },
                   { '  labels: {tier: "backend"}' })
    assert_changes(text, yaml.delete(text, "vantiq.labels.tier"), { '  labels: {app: vantiq, tier: "backend"}' },
                   { "  labels: {app: vantiq}" })
    assert.are.equal("a: {}\n", yaml.delete("a: {x: 1}\n", "a.x"))
  end)

  it("leaves {} or [] where the last entry was", function()
    assert.are.equal("a: {}\n  # note\nb: 1\n", yaml.delete("a:\n  x: 1\n  # note\nb: 1\n", "a.x"))
    assert.are.equal("a: []\nb: 1\n", yaml.delete("a:\n- x\nb: 1\n", "a.1"))
    assert.are.equal("- {}\n", yaml.delete("- x: 1\n", "1.x"))
    assert.are.equal("# c\n{}\n", yaml.delete("# c\na: 1\n", "a"))
    assert.are.same({}, yaml.decode(yaml.delete("a:\n  x: 1\n", "a.x")).a)
  end)

  it("keeps a file without a final line break without one", function()
    assert.are.equal("a: 1", yaml.delete("a: 1\nb: 2", "b"))
  end)

  it("refuses what it cannot find", function()
    assert_error("not_found", yaml.delete(text, "vantiq.nothing"))
    assert_error("unsupported", yaml.delete(text, ""))
  end)
end)

describe("yaml.uncomment", function()
  local text = read("deploy.yaml")

  it("brings back a commented-out key at its mapping's indentation", function()
    assert_changes(text, yaml.uncomment(text, "vantiq.mongodb.backup.requiredRemote"),
                   { "    #  requiredRemote: false" }, { "      requiredRemote: false" })
    local new = yaml.uncomment(text, "vantiq.mongodb.backup.provider")
    assert_changes(text, new, { "    #  provider: azure" }, { "      provider: azure" })
    assert.are.equal("azure", yaml.get(new, "vantiq.mongodb.backup.provider"))
    new = yaml.uncomment(text, "vantiq.mongodb.bucket")
    assert_changes(text, new, { "    #bucket: vantiq-backup" }, { "    bucket: vantiq-backup" })
    assert.is_false(yaml.get(yaml.uncomment(text, "vantiq.mongodb.backup.requiredRemote"),
                             "vantiq.mongodb.backup.requiredRemote"))
  end)

  it("fills a null parent, with the nested block when asked", function()
    local four = read("indent4.yaml")
    local new = yaml.uncomment(four, "vantiq.backup.enabled")
    assert_changes(four, new, { "#        enabled: true" }, { "        enabled: true" })
    assert.is_true(yaml.get(new, "vantiq.backup.enabled"))
    local t = "a:\n  b:\n#  c:\n#    d: 1\n#    e: [x]\n#  f: 2\n"
    new = yaml.uncomment(t, "a.b.c", { block = true })
    assert.are.equal("a:\n  b:\n    c:\n      d: 1\n      e: [x]\n#  f: 2\n", new)
    assert.are.same({ d = 1, e = { "x" } }, yaml.get(new, "a.b.c"))
  end)

  it("works at the top level and on CRLF files", function()
    assert.are.equal("a: 1\nb: 2\n", yaml.uncomment("a: 1\n# b: 2\n", "b"))
    assert.are.equal("a: 1\r\nb: 2\r\n", yaml.uncomment("a: 1\r\n# b: 2\r\n", "b"))
  end)

  it("refuses an unknown, ambiguous or existing key", function()
    assert_error("not_found", yaml.uncomment(text, "vantiq.mongodb.backup.nothing"))
    assert_error("exists", yaml.uncomment(text, "vantiq.mongodb.backup.enabled"))
    assert_error("ambiguous", yaml.uncomment("a:\n  x: 1\n  # k: 1\n  # k: 2\n", "a.k"))
    assert_error("unsupported", yaml.uncomment("a:\n  # b: [\n  x: 1\n", "a.b"))
  end)
end)

describe("edits keep the file's bytes", function()
  local lf, crlf, bom = read("deploy.yaml"), read("deploy-crlf.yaml"), read("deploy-bom.yaml")
  local edits = {
    function(t) return yaml.edit(t, "vantiq.image.tag", "1.31.0") end,
    function(t) return yaml.edit(t, "vantiq.initScript", "#!/bin/sh\nexit 1\n", { replace = true }) end,
    function(t) return yaml.edit(t, "vantiq.image", { tag = "1.30" }, { replace = true }) end,
    function(t) return yaml.edit(t, "vantiq.replicas", { min = 1 }) end,
    function(t) return yaml.insert(t, "vantiq.mongodb.backup", "enabled2", true) end,
    function(t) return yaml.insert(t, "vantiq.mongodb.backup", "remote", { a = "x\ny" }) end,
    function(t) return yaml.insert(t, "grafana.adminPassword", "k", "v") end,
    function(t) return yaml.insert(t, "", "first", 1, { before = "vantiq" }) end,
    function(t) return yaml.append(t, "vantiq.env", { name = "A", value = "1" }) end,
    function(t) return yaml.rename(t, "nginx.controller", "ctrl") end,
    function(t) return yaml.delete(t, "vantiq.mongodb.backup") end,
    function(t) return yaml.delete(t, "vantiq.env.2") end,
    function(t) return yaml.delete(t, "vantiq") end,
    function(t) return yaml.uncomment(t, "vantiq.mongodb.backup.requiredRemote") end,
  }

  it("keeps CRLF line ends on every line", function()
    for i, edit in ipairs(edits) do
      local a, err = edit(lf)
      assert(a, ("edit %d: %s"):format(i, tostring(err)))
      local b = assert(edit(crlf))
      assert.are.equal(a:gsub("\n", "\r\n"), b, "edit " .. i)
    end
  end)

  it("keeps the BOM", function()
    for i, edit in ipairs(edits) do
      local a = assert(edit(lf))
      local b = assert(edit(bom))
      assert.are.equal(BOM .. a, b, "edit " .. i)
    end
  end)

  it("refuses an edit that would change more than intended", function()
    -- a keep-chomped block owns the blank line after it: a key put there would take it
    local t = "a: |+\n  x\n\nb: 1\n"
    local new, err = yaml.insert(t, "", "c", 2, { after = "a" })
    if new then
      assert.are.equal("x\n\n", yaml.decode(new).a)
    else
      assert.are.equal("unsupported", err.code)
    end
  end)

  it("refuses UTF-16 text", function()
    assert_error("yaml", yaml.edit("\255\254a\0:\0 \0b\0\n\0", "a", "c"))
  end)
end)

describe("yaml.edit with false (a fuzzer finding)", function()
  it("writes false like any other value", function()
    local yaml = require "yaml"
    local out = assert(yaml.edit("a: true\nb: 1\n", "a", false))
    assert.are.equal("a: false\nb: 1\n", out)
    assert.is_false(yaml.decode(out).a)
  end)
end)
