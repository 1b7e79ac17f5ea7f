-- vq.secrets against a real-looking tools dir (spec/fixtures/tools): reading, editing in
-- place, deploy/sensitive, the doctor's azure_backup and keycloak checks on the guide's own
-- mistakes, secret values that never show themselves, cluster Secrets in the simulator.
local uv = require "luv"
local log = require "log"
local secrets = require "vq.secrets"
local repl = require "vq.repl"
local base64 = require "vq.base64"
local files = require "sim.gradlew.files"
local run = require "spec.support.run"
local cluster = require "spec.support.cluster"

local FIXTURES = "spec/fixtures/tools"
local SENSITIVE = "/targetCluster/deploy/sensitive/"

-- The fixture's secret values: none of them may ever reach the console.
local KEYCLOAK_PASSWORD = "Kc-Adm1n-Pa55w0rd-93b1"
local MONGO_PASSWORD = "Mdb-Adm1n-7c41f2"
local PG_PASSWORD = "pg-S3cret-e1d2c3"

local write = files.write
local function read(path) return assert(files.read(path)) end

local function sh(cmd) assert(os.execute(cmd), cmd) end

local function mode_of(path) return uv.fs_stat(path).mode & 4095 end

local function chmod(path, mode) assert(uv.fs_chmod(path, mode)) end

local O600, O640, O644 = 384, 416, 420

local temps = {}

-- A copy of the fixture tools dir (git keeps no modes: the secret files get 0600), with a
-- broken variant's files laid over it.
local function tools_copy(variant)
  local dir = run.tmpdir()
  temps[#temps + 1] = dir
  sh(("cp -R %s/targetCluster %s/"):format(FIXTURES, dir))
  if variant then sh(("cp -R %s/broken/%s/targetCluster %s/"):format(FIXTURES, variant, dir)) end
  sh(("chmod 600 %s%s*"):format(dir, SENSITIVE))
  sh(("chmod 644 %s%svantiq-example-chain.crt %s%spublic.pem"):format(dir, SENSITIVE, dir, SENSITIVE))
  sh(("chmod 600 %s/targetCluster/secrets.yaml"):format(dir))
  return dir
end

local function open_copy(variant)
  local dir = tools_copy(variant)
  return assert(secrets.open(dir)), dir
end

teardown(function()
  for _, d in ipairs(temps) do os.execute("rm -rf " .. d) end
end)

local text_diff = require "spec.support.text"
local lines_of, diff = text_diff.lines_of, text_diff.changed_lines

local function dir_names(dir)
  assert(files.is_dir(dir), dir)
  return files.list(dir)
end

local function temp_files(dir)
  local out = {}
  for _, n in ipairs(dir_names(dir)) do
    if n:find("%.tmp$") then out[#out + 1] = n end
  end
  return out
end

-- The findings of a check, keyed "level file:line" for compact expectations.
local function summary(findings)
  local out = {}
  for _, f in ipairs(findings) do
    out[#out + 1] = ("%s %s:%s"):format(f.level, f.file:match("targetCluster/(.*)$") or f.file, tostring(f.line))
  end
  table.sort(out)
  return out
end

local function find(findings, pattern)
  for _, f in ipairs(findings) do
    if f.message:find(pattern) then return f end
  end
  error("no finding matches " .. pattern .. ": " .. table.concat(summary(findings), "; "))
end

describe("secret values", function()
  it("show only their length, and their text only to :reveal()", function()
    local s = secrets.wrap("hunter2")
    assert.are.equal("<redacted: 7 bytes>", tostring(s))
    assert.are.equal("<redacted: 7 bytes>", ("%s"):format(s))
    assert.are.equal("hunter2", s:reveal())
    assert.are.equal(7, s:len())
    assert.are.equal(7, #s)
    assert.is_nil(next(s), "the text is not a field a printer could walk")
    assert.has_error(function() return "pw: " .. s end)
    assert.has_error(function() s.x = 1 end)
    assert.is_true(secrets.is_secret(s))
    assert.is_false(secrets.is_secret("hunter2"))
  end)

  it("compare by the tool, which says only same or differs", function()
    local a, b, c = secrets.wrap("hunter2"), secrets.wrap("hunter2"), secrets.wrap("hunter3")
    assert.are.equal("same", secrets.same(a, b))
    assert.are.equal("differs", secrets.same(a, c))
    assert.are.equal("same", secrets.same(a, "hunter2"))
    assert.are.equal("differs", secrets.same("x", "xy"))
    assert.is_true(a == b)
    assert.is_false(a == c)
    assert.is_false(a == {})
  end)

  it("are registered for redaction, with their base64 form", function()
    secrets.wrap("spec-secret-value-1")
    assert.are.equal("a *** b", log.redact("a spec-secret-value-1 b"))
    assert.are.equal("***", log.redact(base64.encode("spec-secret-value-1")))
  end)

  it("print as <redacted: N bytes> in the REPL's printer, alone or in a table", function()
    local s = secrets.wrap("hunter2")
    assert.are.equal("<redacted: 7 bytes>", repl.format(s))
    assert.are.equal("{password = <redacted: 7 bytes>}", repl.format({ password = s }))
    assert.are.equal("<redacted: 7 bytes>\t1\n", repl.show(s, 1))
  end)

  it("are recognised by the REPL's printer by type, whatever their __tostring says", function()
    local fake = setmetatable({ "visible" }, { __name = "vq.secret", __len = function() return 3 end,
                                               __tostring = function() return "the plain text" end })
    assert.are.equal("<redacted: 3 bytes>", repl.format(fake))
  end)

  it("print as <redacted: 7 bytes> at the real REPL's prompt", function()
    local r = run.vq { "-i", env = { NO_COLOR = "1" },
      stdin = "s = require('vq.secrets').wrap('hunter2')\ns\n{pw = s}\nprint(s)\ns:len()\n" }
    assert.are.equal(0, r.status, r.stderr)
    assert.are.equal("<redacted: 7 bytes>\n{pw = <redacted: 7 bytes>}\n<redacted: 7 bytes>\n7\n", r.stdout)
  end)
end)

describe("secrets.password", function()
  it("has the length and alphabet asked for, and is a registered secret", function()
    local p = secrets.password { length = 32, alphabet = "hex" }
    assert.is_true(secrets.is_secret(p))
    assert.are.equal(32, #p)
    assert.matches("^[0-9a-f]+$", p:reveal())
    assert.are.equal("***", log.redact(p:reveal()))
    local d = secrets.password { length = 10, alphabet = "xyz" }
    assert.matches("^[xyz]+$", d:reveal())
    assert.are.equal(24, #secrets.password())
    assert.matches("^[%w]+$", secrets.password():reveal())
    assert.are.equal("differs", secrets.same(secrets.password(), secrets.password()))
  end)

  it("refuses alphabets that would bias it or not print", function()
    assert.has_error(function() secrets.password { alphabet = "aab" } end)
    assert.has_error(function() secrets.password { alphabet = "a" } end)
    assert.has_error(function() secrets.password { alphabet = "ab\n" } end)
    assert.has_error(function() secrets.password { length = 0 } end)
  end)

  it("draws every character equally often (no modulo bias)", function()
    -- 95 characters: 256 % 95 = 66, so a plain modulo would draw the first 66 one and a
    -- half times as often as the other 29
    local chars = {}
    for b = 32, 126 do chars[#chars + 1] = string.char(b) end
    local alphabet = table.concat(chars)
    local counts = {}
    for _ = 1, 8 do
      local p = secrets.password { length = 4096, alphabet = alphabet }:reveal()
      for i = 1, #p do counts[p:sub(i, i)] = (counts[p:sub(i, i)] or 0) + 1 end
    end
    local first, rest = 0, 0
    for i = 1, 95 do
      if i <= 66 then first = first + (counts[chars[i]] or 0) else rest = rest + (counts[chars[i]] or 0) end
    end
    local ratio = (first / 66) / (rest / 29)
    assert.is_true(ratio > 0.92 and ratio < 1.08, ("ratio %.3f"):format(ratio))
  end)
end)

describe("a tools dir", function()
  it("opens targetCluster and names its files", function()
    local t, dir = open_copy()
    assert.are.equal(dir .. "/targetCluster/cluster.properties", t.paths.cluster_properties)
    assert.are.equal(dir .. "/targetCluster/deploy.yaml", t.paths.deploy)
    assert.are.equal(dir .. "/targetCluster/secrets.yaml", t.paths.secrets)
    assert.are.equal(dir .. "/targetCluster/deploy/sensitive", t.paths.sensitive)
    local none, err = secrets.open(dir .. "/nowhere")
    assert.is_nil(none)
    assert.are.equal("not_found", err.code)
  end)

  it("refuses a targetCluster checked out on another cluster's branch", function()
    local dir = tools_copy()
    sh(("mkdir -p %s/targetCluster/.git"):format(dir))
    write(dir .. "/targetCluster/.git/HEAD", "ref: refs/heads/tkeksfuji7\n")
    local t, err = secrets.open(dir, { cluster = "prod-east" })
    assert.is_nil(t)
    assert.are.equal("wrong_cluster", err.code)
    assert.are.equal("tkeksfuji7", assert(secrets.open(dir, { cluster = "tkeksfuji7" })).cluster)
  end)

  it("reads deploy.yaml and cluster.properties by key", function()
    local t = open_copy()
    assert.are.equal("1.37.4", t:deploy("vantiq.image.tag"))
    assert.are.equal("keycloakvantiqjp.postgres.database.azure.com", t:deploy("keycloak.keycloak.persistence.dbHost"))
    assert.are.equal("azure", t:property("provider"))
    local _, err = t:deploy("vantiq.nothing.here")
    assert.are.equal("not_found", err.code)
  end)

  it("reads secrets.yaml as secret values, registered on load", function()
    local t = open_copy()
    assert.are.equal("***", log.redact(KEYCLOAK_PASSWORD), "registered by open")
    assert.are.equal("***", log.redact(PG_PASSWORD))
    local pw = assert(t:secret_value("shared.keycloak.data.password"))
    assert.are.equal("<redacted: 22 bytes>", tostring(pw))
    assert.are.equal(KEYCLOAK_PASSWORD, pw:reveal())
    local data = assert(t:secret_value("vantiq.mongodb-credentials.data"))
    assert.are.equal(MONGO_PASSWORD, data.password:reveal())
    assert.are.equal("keycloak", log.redact("keycloak"), "a user name is not masked everywhere")
  end)

  it("registers the private files secrets.yaml names, not the public ones", function()
    local _, dir = open_copy()
    local creds = read(dir .. SENSITIVE .. "azure_creds.sh")
    local key = creds:match("AZURE_STORAGE_KEY=(%S+)")
    assert.are.equal("x *** y", log.redact("x " .. key .. " y"))
    local pem = read(dir .. SENSITIVE .. "vantiq-example.key")
    local body_line = pem:match("\n([^\n-][^\n]+)\n")
    assert.are.equal("***", log.redact(body_line))
    local license_line = read(dir .. SENSITIVE .. "license.key"):match("\n([^\n]+)\n")
    assert.are.equal("***", log.redact(license_line))
    local cert_line = read(dir .. SENSITIVE .. "vantiq-example-chain.crt"):match("\n([^\n]+)\n")
    assert.are.equal(cert_line, log.redact(cert_line), "a certificate is public")
  end)
end)

describe("editing in place", function()
  it("set_deploy changes one line, keeps the comment, quotes and mode, and leaves no temp file", function()
    local t = open_copy()
    chmod(t.paths.deploy, O640)
    local ino = uv.fs_stat(t.paths.deploy).ino
    local before = read(t.paths.deploy)
    local info = assert(t:set_deploy("vantiq.image.tag", "1.38.0"))
    assert.is_true(info.changed)
    local after = read(t.paths.deploy)
    local changed, lines = diff(before, after)
    assert.are.same({ info.line }, changed)
    assert.are.equal('    tag: "1.38.0"   # リリースタグ\n', lines[info.line])
    assert.are.equal(O640, mode_of(t.paths.deploy))
    assert.are_not.equal(ino, uv.fs_stat(t.paths.deploy).ino, "replaced by a rename")
    assert.are.same({}, temp_files(t.dir))
    assert.are.equal("1.38.0", t:deploy("vantiq.image.tag"))
  end)

  it("set_deploy with create adds a missing key to its mapping", function()
    local t = open_copy()
    local before = read(t.paths.deploy)
    assert(t:set_deploy("vantiq.mongodb.backup.retention", 7, { create = true }))
    local after = read(t.paths.deploy)
    assert.are.equal(#lines_of(before) + 1, #lines_of(after))
    assert.are.equal(7, t:deploy("vantiq.mongodb.backup.retention"))
    local _, err = t:set_deploy("vantiq.nothing.x", 1)
    assert.are.equal("not_found", err.code)
  end)

  it("refuses to put a secret into deploy.yaml", function()
    local t = open_copy()
    assert.has_error(function() t:set_deploy("vantiq.image.tag", secrets.wrap("s3cret-value")) end)
  end)

  it("honours a dry run", function()
    local t = open_copy()
    local before = read(t.paths.deploy)
    local info = assert(t:set_deploy("vantiq.replicas", 3, { dry_run = true }))
    assert.is_true(info.dry_run)
    assert.are.equal(before, read(t.paths.deploy))
  end)

  it("set_property uncomments #requiredRemote=false and changes nothing else", function()
    local t = open_copy()
    local before = read(t.paths.cluster_properties)
    local info = assert(t:set_property("requiredRemote", "false"))
    assert.are.equal("uncommented", info.action)
    local changed, lines = diff(before, read(t.paths.cluster_properties))
    assert.are.same({ info.line }, changed)
    assert.are.equal("requiredRemote=false\n", lines[info.line])
    info = assert(t:set_property("provider", "aws"))
    assert.are.equal("changed", info.action)
    assert.are.equal("aws", t:property("provider"))
    assert.are.equal("false", t:property("requiredRemote"))
  end)

  it("set_secret writes a generated password into secrets.yaml, 0600 kept", function()
    local t = open_copy()
    chmod(t.paths.secrets, O600)
    local before = read(t.paths.secrets)
    local pw = secrets.password { length = 20 }
    assert(t:set_secret("shared.keycloak-db.data.password", pw))
    local after = read(t.paths.secrets)
    local changed = diff(before, after)
    assert.are.equal(1, #changed)
    assert.are.equal(O600, mode_of(t.paths.secrets))
    assert.are.equal("same", secrets.same(pw, assert(t:secret_value("shared.keycloak-db.data.password"))))
    assert.is_nil(after:find(PG_PASSWORD, 1, true))
  end)
end)

describe("deploy/sensitive", function()
  it("lists its files with size, mode and time", function()
    local t = open_copy()
    local files = t:sensitive_files()
    local names = {}
    for i, f in ipairs(files) do names[i] = f.name end
    assert.are.same({ "azure_creds.sh", "license.key", "public.pem", "vantiq-example-chain.crt", "vantiq-example.key" }, names)
    for _, f in ipairs(files) do
      assert.are.equal(#read(f.path), f.size)
      assert.are.equal(mode_of(f.path), f.mode)
      assert.is_true(f.mtime > 0)
    end
    assert.are.equal("0600", files[1].mode_text)
  end)

  it("takes the names secrets.yaml references, not the vendor's fullchain.crt / private.key", function()
    local t = open_copy()
    local by = {}
    for _, r in ipairs(t:referenced_files()) do
      by[r.secret .. "/" .. r.key] = r
      assert.is_true(r.exists, r.path)
    end
    assert.are.equal("vantiq-example-chain.crt", by["vantiq-ssl-cert/tls.crt"].name)
    assert.are.equal("vantiq-example.key", by["vantiq-ssl-cert/tls.key"].name)
    assert.are.equal("vantiq-example.key", by["default-ssl-cert/tls.key"].name)
    assert.are.equal("license.key", by["vantiq-license/license.key"].name)
    assert.are.equal("azure_creds.sh", by["dbbackup-creds/credentials"].name)
    assert.are.equal(8, by["vantiq-ssl-cert/tls.key"].line)
    assert.are.equal("shared", by["default-ssl-cert/tls.crt"].section)
  end)

  it("backs a file up with a timestamp, its content and its mode", function()
    local t = open_copy()
    local key = t.paths.sensitive .. "/vantiq-example.key"
    chmod(key, O640)
    local copy = assert(t:backup("vantiq-example.key"))
    assert.matches("/vantiq%-example%.key%.%d+T%d+Z%.bak$", copy)
    assert.are.equal(read(key), read(copy))
    assert.are.equal(O640, mode_of(copy))
    local second = assert(t:backup("deploy/sensitive/vantiq-example.key"))
    assert.are_not.equal(copy, second, "two backups in one second do not collide")
    local _, err = t:backup("nothing.key")
    assert.are.equal("not_found", err.code)
  end)

  it("replaces a file atomically: old mode kept, rename not rewrite, no temp left", function()
    local t = open_copy()
    local key = t.paths.sensitive .. "/vantiq-example.key"
    chmod(key, O640)
    local old = read(key)
    local ino = uv.fs_stat(key).ino
    local reader = assert(io.open(key, "rb"))
    local info = assert(t:replace("vantiq-example.key", "-----BEGIN PRIVATE KEY-----\nnew\n-----END PRIVATE KEY-----\n"))
    assert.is_false(info.created)
    assert.are.equal(O640, mode_of(key))
    assert.are.equal(O640, info.mode)
    assert.matches("^%-%-%-%-%-BEGIN PRIVATE KEY%-%-%-%-%-\nnew\n", read(key))
    assert.are_not.equal(ino, uv.fs_stat(key).ino)
    assert.are.equal(old, reader:read("a"), "a reader that had the old file still reads all of it")
    reader:close()
    assert.are.same({}, temp_files(t.paths.sensitive))
  end)

  it("creates a new secret file 0600, whatever the umask", function()
    local t = open_copy()
    local info = assert(t:replace("new-license.key", "LICENSE-TEXT-0123456789"))
    assert.is_true(info.created)
    assert.are.equal(O600, mode_of(t.paths.sensitive .. "/new-license.key"))
    assert.are.same({}, temp_files(t.paths.sensitive))
  end)

  it("replaces from a file's path, or {path =}, or {content =}", function()
    local t, dir = open_copy()
    local src = dir .. "/downloaded-license.key"
    write(src, "FROM-THE-VENDOR\n")
    assert(t:replace("license.key", src))
    assert.are.equal("FROM-THE-VENDOR\n", read(t.paths.sensitive .. "/license.key"))
    assert(t:replace("public.pem", { path = t.paths.sensitive .. "/vantiq-example-chain.crt" }))
    assert.are.equal(read(t.paths.sensitive .. "/vantiq-example-chain.crt"), read(t.paths.sensitive .. "/public.pem"))
    assert(t:replace("license.key", { content = dir .. "/not-a-path-but-content" }))
    assert.are.equal(dir .. "/not-a-path-but-content", read(t.paths.sensitive .. "/license.key"))
  end)

  it("leaves the old file and no temp behind when it cannot replace", function()
    local t = open_copy()
    local key = t.paths.sensitive .. "/vantiq-example.key"
    local old = read(key)
    local info, err = t:replace("vantiq-example.key", { path = "/nonexistent/new.key" })
    assert.is_nil(info)
    assert.are.equal("not_found", err.code)
    assert.are.equal(old, read(key))
    sh(("mkdir %s/a-folder"):format(t.paths.sensitive))
    info, err = t:replace("a-folder", "content")
    assert.is_nil(info)
    assert.are.equal("io", err.code)
    assert.are.same({}, temp_files(t.paths.sensitive))
  end)

  it("writes nothing outside deploy/sensitive", function()
    local t = open_copy()
    for _, name in ipairs({ "../secrets.yaml", "/etc/passwd", "a/../../x", "" }) do
      local info, err = t:replace(name, "x")
      assert.is_nil(info, name)
      assert.are.equal("invalid", err.code)
    end
  end)
end)

describe("the azure_backup check", function()
  it("finds nothing wrong in the good tools dir (and validate finds nothing at all)", function()
    local t = open_copy()
    assert.are.same({}, summary(t:check_azure_backup()))
    assert.are.same({}, summary(t:validate()))
  end)

  it("warns when others may read secrets.yaml or a private file, not a certificate", function()
    local t = open_copy()
    chmod(t.paths.secrets, O644)
    chmod(t.paths.sensitive .. "/license.key", O640)
    local findings = t:check_layout()
    assert.are.same({ "warn deploy/sensitive/license.key:nil", "warn secrets.yaml:nil" }, summary(findings))
    find(findings, "mode 0640")
    find(findings, "mode 0644")
  end)

  it("names each of the guide's three mistakes where it is, when copied verbatim", function()
    local t = open_copy("guide-verbatim")
    local findings = t:check_azure_backup()
    assert.are.same({ "error deploy.yaml:17", "error secrets.yaml:33", "error secrets.yaml:36" }, summary(findings))
    local typo = find(findings, "`vantig`")
    assert.matches("misspelling of `vantiq`", typo.message)
    assert.matches("vantiq:", typo.fix)
    local name = find(findings, "azure_storage_credentials.txt, which does not exist")
    assert.matches("deploy/sensitive has azure_store_credentials.txt", name.message)
    assert.matches("rename deploy/sensitive/azure_store_credentials.txt to azure_storage_credentials.txt", name.fix)
    local indent = find(findings, "indentation of `backup:`")
    assert.matches("`enabled`, `provider`, `schedule`, `bucket` %(lines 17, 18, 19, 20%)", indent.message)
    assert.matches("line 16, column 5", indent.message)
    assert.matches("two more spaces", indent.fix)
    for _, f in ipairs(findings) do assert.are.equal("azure_backup", f.check) end
  end)

  it("finds the misspelt top-level key alone", function()
    local findings = open_copy("vantig"):check_azure_backup()
    assert.are.same({ "error secrets.yaml:33" }, summary(findings))
  end)

  it("finds the file name that differs between the two lines alone", function()
    local findings = open_copy("filename"):check_azure_backup()
    assert.are.same({ "error secrets.yaml:17" }, summary(findings))
    assert.matches("deploy/sensitive has azure_store_credentials.txt", findings[1].message)
  end)

  it("finds enabled at the wrong indentation alone", function()
    local findings = open_copy("indent"):check_azure_backup()
    assert.are.same({ "error deploy.yaml:20" }, summary(findings))
    assert.matches("`enabled` %(line 20%) is at the indentation of `backup:`", findings[1].message)
    assert.matches("vantiq.mongodb.enabled", findings[1].message)
  end)

  it("checks the credentials file: placeholders, a missing export, CRLF, its mode", function()
    local t = open_copy("creds-template")
    local findings = t:check_azure_backup()
    assert.are.same({ "error deploy/sensitive/azure_creds.sh:2", "error deploy/sensitive/azure_creds.sh:3" }, summary(findings))
    assert.matches("AZURE_STORAGE_ACCOUNT is still the guide's placeholder", findings[1].message)
    assert.matches("AZURE_STORAGE_KEY is set but not exported", findings[2].message)
    local creds = t.paths.sensitive .. "/azure_creds.sh"
    local good = read(FIXTURES .. SENSITIVE .. "azure_creds.sh")
    write(creds, (good:gsub("\n", "\r\n")))
    chmod(creds, O644)
    findings = t:check_azure_backup()
    assert.are.same({ "error deploy/sensitive/azure_creds.sh:nil", "warn deploy/sensitive/azure_creds.sh:nil" }, summary(findings))
    find(findings, "Windows line endings")
    find(findings, "mode 0644")
  end)

  it("reports a missing secrets.yaml, and a duplicate vantiq block, as such", function()
    local t = open_copy()
    os.remove(t.paths.secrets)
    local f = find(t:check_azure_backup(), "secrets.yaml does not exist")
    assert.matches("setupCluster", f.fix)
    write(t.paths.deploy, read(t.paths.deploy) .. "vantiq:\n  mongodb:\n    backup:\n      enabled: true\n")
    local dup
    for _, x in ipairs(t:check_azure_backup()) do
      if x.file == t.paths.deploy then dup = x end
    end
    assert.are.equal("error", dup.level)
    assert.is_number(dup.line)
    assert.matches("duplicate", dup.fix)
  end)

  it("reports disabled backup, another provider, a placeholder bucket", function()
    local t = open_copy()
    -- by hand: yaml.edit cannot write false yet (it asserts on the decoded value)
    write(t.paths.deploy, (read(t.paths.deploy):gsub("enabled: true", "enabled: false")))
    assert(t:set_deploy("vantiq.mongodb.backup.provider", "aws"))
    assert(t:set_deploy("vantiq.mongodb.backup.bucket", "<bucket名>"))
    local findings = t:check_azure_backup()
    assert.are.same({ "error deploy.yaml:17", "error deploy.yaml:18", "error deploy.yaml:20" }, summary(findings))
    find(findings, "backup is disabled")
    find(findings, "provider is aws")
    find(findings, "placeholder")
  end)
end)

describe("the keycloak check", function()
  it("accepts the plain user on an Azure server (Flexible Server)", function()
    assert.are.same({}, open_copy():check_keycloak())
  end)

  it("warns, and does not fail, on Single Server's user@server", function()
    local findings = open_copy("keycloak-single-server"):check_keycloak()
    assert.are.same({ "warn deploy.yaml:39" }, summary(findings))
    assert.matches("Single Server", findings[1].message)
    assert.matches("dbUser: keycloak$", findings[1].fix)
  end)

  it("fails when dbUser names another server than dbHost", function()
    local findings = open_copy("keycloak-mismatch"):check_keycloak()
    assert.are.same({ "error deploy.yaml:39" }, summary(findings))
    assert.matches("keycloakvantiqjpinternalprod", findings[1].message)
  end)

  it("fails when persistence sits one level too high", function()
    local findings = open_copy("keycloak-misplaced"):check_keycloak()
    assert.are.same({ "error deploy.yaml:35" }, summary(findings))
    assert.matches("directly under keycloak", findings[1].message)
  end)

  it("says when dbHost or, on Azure, dbUser is missing; nothing when keycloak is excluded", function()
    local t = open_copy()
    local text = read(t.paths.deploy):gsub("      dbUser: keycloak[^\n]*\n", "")
    write(t.paths.deploy, text)
    local findings = t:check_keycloak()
    assert.are.same({ "error deploy.yaml:37" }, summary(findings))
    assert.matches("dbUser is not set", findings[1].message)
    write(t.paths.deploy, (text:gsub("      dbHost: [^\n]*\n", "")))
    find(t:check_keycloak(), "dbHost is not set")
    assert(t:set_property("excludeKeycloak", "true"))
    assert.are.same({}, t:check_keycloak())
  end)
end)

describe("cluster Secrets", function()
  local sim, k

  setup(function()
    sim = cluster.start { speed = 0.02, modules = { "sim.auth", "sim.core" } }
    k = assert(require("vq.kube").connect { kubeconfig = sim.spec_kubeconfig })
    assert(k:create { apiVersion = "v1", kind = "Namespace", metadata = { name = "vantiq" } })
  end)

  teardown(function() cluster.finish(sim) end)

  local function create_secret(name, data)
    local encoded = {}
    for key, v in pairs(data) do encoded[key] = base64.encode(v) end
    assert(k:create { apiVersion = "v1", kind = "Secret", type = "Opaque",
                      metadata = { name = name, namespace = "vantiq" }, data = encoded })
  end

  it("decodes a Secret's data into registered secret values", function()
    create_secret("decode-me", { token = "cluster-token-0f9e8d" })
    local data = secrets.decode_secret(assert(k:get("secrets", "decode-me", { namespace = "vantiq" })))
    assert.is_true(secrets.is_secret(data.token))
    assert.are.equal("cluster-token-0f9e8d", data.token:reveal())
    assert.are.equal("***", log.redact("cluster-token-0f9e8d"))
  end)

  it("compares a Secret with local files: same, differs, missing, extra", function()
    local t = open_copy()
    local s = t.paths.sensitive
    local chain = read(s .. "/vantiq-example-chain.crt")
    create_secret("vantiq-ssl-cert", {
      ["tls.crt"] = chain,
      ["tls.key"] = "-----BEGIN PRIVATE KEY-----\nold key\n-----END PRIVATE KEY-----\n",
      ["ca.crt"] = chain,
      ["license.key"] = read(s .. "/license.key"):gsub("\n", "\r\n"),
    })
    local r = assert(secrets.compare_secret(k, "vantiq", "vantiq-ssl-cert", {
      ["tls.crt"] = s .. "/vantiq-example-chain.crt",
      ["tls.key"] = s .. "/vantiq-example.key",
      ["license.key"] = s .. "/license.key",
      ["public.pem"] = { content = read(s .. "/public.pem") },
    }))
    assert.are.same({ "tls.crt" }, r.same)
    assert.are.same({ "license.key", "tls.key" }, r.differs)
    assert.are.same({ "license.key" }, r.whitespace)
    assert.are.same({ "public.pem" }, r.missing)
    assert.are.same({ "ca.crt" }, r.extra)
  end)

  it("says why when the Secret or a local file cannot be read", function()
    local r, err = secrets.compare_secret(k, "vantiq", "no-such-secret", {})
    assert.is_nil(r)
    assert.are.equal(404, err.code)
    create_secret("one-key", { a = "x" })
    r, err = secrets.compare_secret(k, "vantiq", "one-key", { a = "/nonexistent/file" })
    assert.is_nil(r)
    assert.are.equal("not_found", err.code)
  end)
end)

describe("no secret reaches the console", function()
  it("in findings, errors, log lines and printed values of a child vqlua", function()
    local dir = tools_copy("guide-verbatim")
    local key_line = read(dir .. SENSITIVE .. "vantiq-example.key"):match("\n([^\n-][^\n]+)\n")
    local storage_key = read(dir .. SENSITIVE .. "azure_creds.sh"):match("AZURE_STORAGE_KEY=(%S+)")
    local script = dir .. "/leak.lua"
    write(script, ([[
      local secrets = require "vq.secrets"
      local log = require "log"
      local t = assert(secrets.open(%q))
      for _, f in ipairs(t:validate()) do
        print(f.level, f.file, f.line, f.message, f.fix)
      end
      local pw = t:secret_value("shared.keycloak.data.password")
      print("password:", pw)
      log.info("logged %%s", pw)
      log.warn("mongo %%s", t:secret_value("vantiq.mongodb-credentials.data"))
      print(select(2, t:secret_value("shared.nothing")))
      print(select(2, t:replace("license.key", {path = "/nonexistent"})))
      print(t:replace("azure_creds.sh", {content = "export AZURE_STORAGE_KEY=rotated-key-7a6b5c4d\n"}).size)
      print(secrets.same(pw, t:secret_value("shared.keycloak-db.data.password")))
      for k, v in pairs(secrets.decode_secret({data = {p = "cGctUzNjcmV0LWUxZDJjMw=="}})) do print(k, v) end
      local p = secrets.password{length = 16}
      print("generated", p)
      error("failed with " .. tostring(pw))
    ]]):format(dir))
    local r = run.vq { script, env = { NO_COLOR = "1" } }
    local out = r.stdout .. r.stderr
    assert.are.equal(1, r.status)
    assert.matches("password:\t<redacted: 22 bytes>", out, 1, true)
    assert.matches("logged <redacted: 22 bytes>", out, 1, true)
    assert.matches("failed with <redacted: 22 bytes>", out, 1, true)
    assert.matches("misspelling of `vantiq`", out, 1, true)
    assert.matches("generated\t<redacted: 16 bytes>", out, 1, true)
    for _, secret in ipairs({ KEYCLOAK_PASSWORD, MONGO_PASSWORD, PG_PASSWORD, key_line, storage_key,
                              "rotated-key-7a6b5c4d", base64.encode(KEYCLOAK_PASSWORD) }) do
      assert.is_nil(out:find(secret, 1, true), "a secret was printed")
    end
    assert.is_nil(out:find("***", 1, true), "nothing even tried to print a secret: " .. out)
  end)
end)
