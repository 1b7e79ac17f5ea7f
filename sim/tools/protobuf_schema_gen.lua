-- Writes sim/protobuf_schema.lua: the protobuf field numbers of the built-in API types, so
-- the simulator can read what kubectl 1.32+ sends (typed clients POST and PUT
-- application/vnd.kubernetes.protobuf). The struct tags of k8s.io/api's types.go carry
-- both encodings (json name, omitempty, proto number and wire type), so one source does.
--
--   vqlua sim/tools/protobuf_schema_gen.lua <k8s.io/api clone> <k8s.io/apimachinery clone> <tag> > sim/protobuf_schema.lua
--   e.g. the tag v0.33.1 (Kubernetes 1.33.1): older servers' types are subsets of it.
local API_GROUPS = {
  "core/v1", "apps/v1", "batch/v1", "rbac/v1", "policy/v1", "authorization/v1", "authentication/v1",
  "networking/v1", "scheduling/v1", "storage/v1", "coordination/v1", "autoscaling/v1", "autoscaling/v2",
  "events/v1",
}

-- Package directory -> API group name.
local GROUP_NAMES = {
  core = "", apps = "apps", batch = "batch", rbac = "rbac.authorization.k8s.io", policy = "policy",
  authorization = "authorization.k8s.io", authentication = "authentication.k8s.io", networking = "networking.k8s.io",
  scheduling = "scheduling.k8s.io", storage = "storage.k8s.io", coordination = "coordination.k8s.io",
  autoscaling = "autoscaling", events = "events.k8s.io", meta = "meta.k8s.io",
}

-- Types with their own protobuf and JSON forms (time, quantities, raw JSON).
local SPECIAL = {
  ["resource.Quantity"] = "Q", ["intstr.IntOrString"] = "I", ["runtime.RawExtension"] = "R",
  ["meta/v1.Time"] = "T", ["meta/v1.MicroTime"] = "U", ["meta/v1.Duration"] = "D", ["meta/v1.FieldsV1"] = "F",
}

local SCALAR = {
  string = "s", bool = "t", int = "i", int32 = "i", int64 = "i", uint32 = "i", uint64 = "i", byte = "i",
  float32 = "f", float64 = "f", ["[]byte"] = "b",
}

local function git_show(repo, tag, path)
  local p = assert(io.popen(("git -C '%s' show '%s:%s' 2>/dev/null"):format(repo, tag, path)))
  local text = p:read("a")
  p:close()
  return text
end

local function git_ls(repo, tag, dir)
  local p = assert(io.popen(("git -C '%s' ls-tree --name-only '%s' '%s/'"):format(repo, tag, dir)))
  local out = {}
  for line in p:lines() do
    if line:match("%.go$") and not line:match("_test%.go$") and not line:match("generated") and not line:match("zz_") then
      out[#out + 1] = line
    end
  end
  p:close()
  return out
end

-- alias -> package id ("core/v1", "meta/v1", or the last element for the special packages)
local function imports(text)
  local out = {}
  local function add(alias, path)
    local id = path:match("^k8s%.io/api/(.+)$") or (path == "k8s.io/apimachinery/pkg/apis/meta/v1" and "meta/v1")
      or path:match("([^/]+)$")
    out[alias or path:match("([^/]+)$")] = id
  end
  for block in text:gmatch("\nimport%s*(%b())") do
    for line in block:gmatch("[^\n]+") do
      local alias, path = line:match('^%s*([%w_]+)%s+"([^"]+)"')
      if not alias then path = line:match('^%s*"([^"]+)"') end
      if path then add(alias, path) end
    end
  end
  for alias, path in text:gmatch('\nimport%s+([%w_]*)%s*"([^"]+)"') do add(alias ~= "" and alias or nil, path) end
  return out
end

local function parse_tag(tags, key)
  return tags:match(key .. ':"([^"]*)"')
end

-- One package: its structs (fields with tags) and named types.
local function parse_package(pkg, texts, db)
  for _, text in ipairs(texts) do
    local imp = imports(text)
    for name, base in text:gmatch("\ntype%s+([%w_]+)%s+=?%s*([^\n{]-)%s*\n") do
      if base ~= "struct" and base ~= "" and not base:match("^interface") then
        db.named[pkg .. "." .. name] = { base = base, imp = imp, pkg = pkg }
      end
    end
    for name, body in text:gmatch("\ntype%s+([%w_]+)%s+struct%s*(%b{})") do
      local fields = {}
      for line in body:gmatch("[^\n]+") do
        local code = line:gsub("^%s+", "")
        if not code:match("^//") then
          local fname, ftype, tags = code:match("^([%w_]+)%s+([^`%s]+)%s+`([^`]*)`")
          if not fname then ftype, tags = code:match("^([%w_%.%*]+)%s+`([^`]*)`") end
          if ftype then fields[#fields + 1] = { go = fname, type = ftype, json = parse_tag(tags, "json"), proto = parse_tag(tags, "protobuf") } end
        end
      end
      db.structs[pkg .. "." .. name] = { fields = fields, imp = imp, pkg = pkg }
    end
  end
end

-- Qualify a Go type name seen in package pkg: "corev1.PodSpec" -> "core/v1.PodSpec".
local function qualify(t, pkg, imp)
  local alias, name = t:match("^([%w_]+)%.([%w_]+)$")
  if alias then return (imp[alias] or alias) .. "." .. name end
  return pkg .. "." .. t
end

local resolve

-- The kind token of a (non-repeated, non-map) Go type.
local function kind_of(t, pkg, imp, db)
  if SCALAR[t] then return SCALAR[t] end
  local q = qualify(t, pkg, imp)
  if SPECIAL[q] then return SPECIAL[q] end
  if q:match("^types%.") then return "s" end
  if db.structs[q] then return "@" .. q end
  local named = db.named[q]
  if named then return resolve(named.base, named.pkg, named.imp, db) end
  error("unknown type " .. q)
end

-- {kind, repeated, map key kind} of a Go type.
resolve = function(t, pkg, imp, db)
  t = t:gsub("^%*", "")
  if t == "[]byte" then return "b" end
  local elem = t:match("^%[%](.+)$")
  if elem then return kind_of(elem:gsub("^%*", ""), pkg, imp, db), true end
  local k, v = t:match("^map%[([^%]]+)%](.+)$")
  if k then
    local vk, vrep = resolve(v, pkg, imp, db)
    return { key = kind_of(k, pkg, imp, db), value = vk, value_repeated = vrep }
  end
  return kind_of(t, pkg, imp, db)
end

local function field_spec(f, s, db)
  local wire, num, card = f.proto:match("^(%w+),(%d+),(%w+)")
  local json = f.json or ""
  local name, opts = json:match("^([^,]*)(.*)$")
  local inline = opts:find("inline", 1, true) ~= nil
  local kind, rep = resolve(f.type, s.pkg, s.imp, db)
  if card == "rep" then rep = true end
  local flags = (f.type:match("^%*") and "p" or "") .. (opts:find("omitempty", 1, true) and "o" or "")
    .. (inline and "n" or "") .. (rep and type(kind) ~= "table" and "r" or "")
  local k
  if type(kind) == "table" then
    k = "{" .. kind.key .. "," .. kind.value .. (kind.value_repeated and "*" or "") .. "}"
  else
    k = kind
  end
  assert(wire, f.proto)
  return ("%s:%s:%s:%s"):format(num, inline and "" or name, k, flags)
end

-- kinds: "apiVersion Kind" -> struct, for each struct that embeds TypeMeta.
local function served_kinds(db)
  local kinds = {}
  for q, s in pairs(db.structs) do
    for _, f in ipairs(s.fields) do
      if f.type == "metav1.TypeMeta" or (s.pkg == "meta/v1" and f.type == "TypeMeta") then
        local group, version = s.pkg:match("^(.-)/(v%w+)$")
        local g = GROUP_NAMES[group]
        kinds[(g == "" and version or (g .. "/" .. version)) .. " " .. q:match("%.([%w_]+)$")] = q
      end
    end
  end
  return kinds
end

local function has_proto(s)
  for _, f in ipairs(s.fields) do
    if f.proto then return true end
  end
  return false
end

-- Only the messages an object of a served kind can hold (not lists and options).
local function reachable(kinds, db)
  local want, seen = {}, {}
  for _, q in pairs(kinds) do
    if not q:match("List$") and not q:match("Options$") or q:match("DeleteOptions$") then want[#want + 1] = q end
  end
  while #want > 0 do
    local q = table.remove(want)
    if db.structs[q] and not seen[q] and not SPECIAL[q] and has_proto(db.structs[q]) then
      seen[q] = true
      for _, f in ipairs(db.structs[q].fields) do
        if f.proto then
          for ref in field_spec(f, db.structs[q], db):gmatch("@([%w_/%.]+)") do want[#want + 1] = ref end
        end
      end
    end
  end
  return seen
end

local function load(api_repo, am_repo, tag)
  local db = { structs = {}, named = {} }
  local function package(repo, dir, pkg)
    local texts = {}
    for _, f in ipairs(git_ls(repo, tag, dir)) do texts[#texts + 1] = git_show(repo, tag, f) end
    parse_package(pkg, texts, db)
  end
  package(am_repo, "pkg/apis/meta/v1", "meta/v1")
  for _, g in ipairs(API_GROUPS) do package(api_repo, g, g) end
  return db
end

local function message_line(q, db)
  local specs = {}
  for _, f in ipairs(db.structs[q].fields) do
    if f.proto then
      local ok, spec = pcall(field_spec, f, db.structs[q], db)
      if not ok then error(q .. "." .. f.go .. ": " .. spec) end
      specs[#specs + 1] = spec
    end
  end
  return ('  ["%s"] = "%s",'):format(q, table.concat(specs, " "))
end

local function sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

local function main(api_repo, am_repo, tag)
  local db = load(api_repo, am_repo, tag)
  local kinds = served_kinds(db)
  local messages = reachable(kinds, db)
  local out = {
    "-- Generated by sim/tools/protobuf_schema_gen.lua from k8s.io/api and k8s.io/apimachinery " .. tag .. ": do not edit.",
    "-- messages[type] = fields \"number:json:kind:flags\"; kind s string, b bytes, t bool, i integer, f double,",
    "-- @type message, Q quantity, T time, U micro time, D duration, I int-or-string, R raw JSON, F fieldsV1,",
    "-- {key,value} map (value* repeated); flags p pointer, o omitempty, n inline, r repeated.",
    "local M = {}", "", "M.kinds = {",
  }
  for _, k in ipairs(sorted_keys(kinds)) do
    if messages[kinds[k]] then out[#out + 1] = ('  ["%s"] = "%s",'):format(k, kinds[k]) end
  end
  out[#out + 1] = "}\n\nM.messages = {"
  for _, q in ipairs(sorted_keys(messages)) do out[#out + 1] = message_line(q, db) end
  out[#out + 1] = "}\n\nreturn M"
  io.write(table.concat(out, "\n"), "\n")
end

main(arg[1], arg[2], arg[3] or "v0.33.1")
