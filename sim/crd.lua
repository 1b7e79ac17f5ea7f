-- CustomResourceDefinitions as the apiextensions-apiserver serves them. A CRD written to
-- the store is validated and defaulted; its names are checked against the other types of
-- its group and its status set at once, as the naming and establishing controllers set it
-- moments later on a real cluster (acceptedNames, NamesAccepted, Established). An
-- established CRD's served versions join this simulator's type registry (sim.types), so
-- discovery, the generic REST verbs, watches, patches, apply, tables and OpenAPI serve them
-- as any built-in type. Deleting the CRD deletes its objects at once (the real server
-- holds the CRD with the customresourcecleanup finalizer until they are gone) and closes
-- their watches.
--
-- Discovery lists a custom group's versions in kube-aware version order (v2, v1, v1beta1,
-- v1alpha1, then others by name), and its preferredVersion is the first of them: the real
-- apiserver sorts CRD versions that way (all of a group's versions have the same version
-- priority) and prefers the first served one, which need not be the storage version.
--
-- Objects are pruned and defaulted by their version's structural schema as the real server
-- does: fields the schema does not declare are dropped unless
-- x-kubernetes-preserve-unknown-fields (or additionalProperties) keeps them, and absent
-- properties with a default get it. Other schema validation (types, formats, required,
-- CEL rules) is not done.
local vq = require "vq"
local json = require "json"
local util = require "sim.util"
local api_mod = require "sim.api"
local printers = require "sim.printers"
local resources = require "sim.resources"
local types = require "vq.kube.types"

local M = {}

local function array(t) return setmetatable(t or {}, json.array_mt) end

local KEY = "customresourcedefinitions.apiextensions.k8s.io"
-- the verbs and their order as a custom resource's discovery lists them
local VERBS = { "delete", "deletecollection", "get", "list", "patch", "create", "update", "watch" }

-- ---- validation and defaults ----

local function cause(reason, field, message)
  return { reason = reason, field = field, message = message }
end

local function required(field, detail)
  return cause("FieldValueRequired", field, "Required value" .. (detail and (": " .. detail) or ""))
end

local function invalid_value(field, value, detail)
  return cause("FieldValueInvalid", field, ("Invalid value: %s: %s"):format(value, detail))
end

local function validate_names(spec, causes)
  local names = spec.names or {}
  for _, f in ipairs { "plural", "singular", "kind", "listKind" } do
    if type(names[f]) ~= "string" or names[f] == "" then causes[#causes + 1] = required("spec.names." .. f) end
  end
end

local function validate_scope(spec, causes)
  if spec.scope == nil or spec.scope == "" then
    causes[#causes + 1] = required("spec.scope")
  elseif spec.scope ~= "Namespaced" and spec.scope ~= "Cluster" then
    causes[#causes + 1] = cause("FieldValueNotSupported", "spec.scope",
      ('Unsupported value: "%s": supported values: "Cluster", "Namespaced"'):format(tostring(spec.scope)))
  end
end

-- Go prints the whole []CustomResourceDefinitionVersion here; its elements are left out.
local VERSIONS_VALUE = "[]apiextensions.CustomResourceDefinitionVersion{...}"

local function dns1035(name)
  return type(name) == "string" and #name <= 63 and name:match("^[a-z][-a-z0-9]*$") ~= nil and name:match("[a-z0-9]$") ~= nil
end

local function validate_version(v, field, causes)
  if not dns1035(v.name) then
    causes[#causes + 1] = invalid_value(field .. ".name", ('"%s"'):format(tostring(v.name or "")),
      "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character")
  end
  if not (type(v.schema) == "table" and v.schema.openAPIV3Schema) then
    causes[#causes + 1] = required(field .. ".schema.openAPIV3Schema", "schemas are required")
  end
end

local function validate_versions(spec, causes)
  local storage, seen, unique = 0, {}, true
  if type(spec.versions) ~= "table" then spec.versions = array() end
  for i, v in ipairs(spec.versions) do
    if type(v) ~= "table" then v = {} end
    validate_version(v, ("spec.versions[%d]"):format(i - 1), causes)
    if v.storage then storage = storage + 1 end
    if v.name ~= nil then
      unique = unique and not seen[v.name]
      seen[v.name] = true
    end
  end
  if not unique then causes[#causes + 1] = invalid_value("spec.versions", VERSIONS_VALUE, "must contain unique version names") end
  if storage ~= 1 then
    causes[#causes + 1] = invalid_value("spec.versions", VERSIONS_VALUE, "must have exactly one version marked as storage version")
  end
end

local function validate_group(spec, causes)
  local group = spec.group
  if type(group) ~= "string" or group == "" then
    causes[#causes + 1] = required("spec.group")
  elseif not group:find(".", 1, true) then
    causes[#causes + 1] = invalid_value("spec.group", ('"%s"'):format(group), "should be a domain with at least one dot")
  end
end

local function immutable(causes, field, new, old)
  if new ~= old then causes[#causes + 1] = invalid_value(field, ('"%s"'):format(tostring(new)), "field is immutable") end
end

local function validate_update(crd, old, causes)
  local spec, was = crd.spec, old.spec or {}
  immutable(causes, "spec.group", spec.group, was.group)
  immutable(causes, "spec.names.plural", (spec.names or {}).plural, (was.names or {}).plural)
  if M.established(old) then
    immutable(causes, "spec.scope", spec.scope, was.scope)
    immutable(causes, "spec.names.kind", (spec.names or {}).kind, (was.names or {}).kind)
  end
end

-- A group of the Kubernetes project (k8s.io, kubernetes.io) takes a CRD whose API was
-- reviewed: the annotation must be there (its value, a URL or "unapproved...", is not checked).
local APPROVAL = "api-approved.kubernetes.io"

local function validate_approval(crd, causes)
  local group = crd.spec.group
  if type(group) ~= "string" then return end
  local protected = group == "k8s.io" or group == "kubernetes.io" or group:match("%.k8s%.io$") or group:match("%.kubernetes%.io$")
  if protected and not (crd.metadata.annotations or {})[APPROVAL] then
    causes[#causes + 1] = required(("metadata.annotations[%s]"):format(APPROVAL),
      ('protected groups must have approval annotation "%s", see https://github.com/kubernetes/enhancements/pull/1111'):format(APPROVAL))
  end
end

--- The causes of a CRD's invalidity (empty when valid), as ValidateCustomResourceDefinition finds them.
local function validate(crd, old)
  local causes, spec = {}, crd.spec
  local names = spec.names or {}
  local want = tostring(names.plural) .. "." .. tostring(spec.group)
  if crd.metadata.name ~= want then
    causes[#causes + 1] = invalid_value("metadata.name", ('"%s"'):format(crd.metadata.name), 'must be spec.names.plural+"."+spec.group')
  end
  validate_group(spec, causes)
  validate_approval(crd, causes)
  validate_scope(spec, causes)
  validate_versions(spec, causes)
  validate_names(spec, causes)
  if old then validate_update(crd, old, causes) end
  return causes
end

local function rejection(crd, causes)
  local msgs = {}
  for i, c in ipairs(causes) do msgs[i] = c.field .. ": " .. c.message end
  local text = #msgs == 1 and msgs[1] or ("[" .. table.concat(msgs, ", ") .. "]")
  return false, api_mod.status(422, ('CustomResourceDefinition.apiextensions.k8s.io "%s" is invalid: %s'):format(crd.metadata.name, text),
    "Invalid", { name = crd.metadata.name, group = "apiextensions.k8s.io", kind = "CustomResourceDefinition", causes = array(causes) })
end

local function default_crd(crd)
  crd.spec = type(crd.spec) == "table" and crd.spec or {}
  local spec = crd.spec
  spec.names = type(spec.names) == "table" and spec.names or {}
  local names = spec.names
  if type(names.kind) == "string" and names.kind ~= "" then
    names.singular = names.singular or names.kind:lower()
    names.listKind = names.listKind or (names.kind .. "List")
  end
  spec.conversion = spec.conversion or { strategy = "None" }
end

-- ---- names and conditions (the naming and establishing controllers) ----

local function add_names(set, list)
  for _, n in ipairs(list) do if type(n) == "string" then set[n] = true end end
end

-- The resource names and kinds the group's other types hold: the accepted names of its
-- other CRDs, and its built-in types'.
local function names_in_use(sim, crd)
  local names, kinds, group = {}, {}, crd.spec.group
  for _, other in ipairs(sim.store:list(KEY)) do
    if other.metadata.name ~= crd.metadata.name and other.spec and other.spec.group == group then
      local a = other.status and other.status.acceptedNames or {}
      add_names(names, { a.plural, a.singular })
      add_names(names, a.shortNames or {})
      add_names(kinds, { a.kind, a.listKind })
    end
  end
  for _, t in ipairs(resources.list) do
    if t.group == group then
      add_names(names, { t.plural, t.singular })
      add_names(names, t.short)
      add_names(kinds, { t.kind, t.kind .. "List" })
    end
  end
  return names, kinds
end

-- equalToAcceptedOrFresh
local function conflict(wanted, accepted, used)
  if wanted == accepted or not used[wanted] then return nil end
  return ('"%s" is already in use'):format(wanted)
end

local function short_names_conflict(wanted, accepted, used)
  local mine, errs = {}, {}
  add_names(mine, accepted or {})
  for _, s in ipairs(wanted or {}) do
    if not mine[s] then errs[#errs + 1] = conflict(s, nil, used) end
  end
  if #errs == 0 then return nil end
  return #errs == 1 and errs[1] or ("[" .. table.concat(errs, ", ") .. "]")
end

--- The names a CRD gets and its NamesAccepted condition {status, reason, message}.
local function accept_names(sim, crd, accepted)
  local want, used, kinds = crd.spec.names, names_in_use(sim, crd)
  local out = util.copy(accepted)
  local failed
  local function check(field, err, reason)
    if err then failed = { "False", reason, err } else out[field] = util.copy(want[field]) end
  end
  check("plural", conflict(want.plural, accepted.plural, used), "PluralConflict")
  check("singular", conflict(want.singular, accepted.singular, used), "SingularConflict")
  check("shortNames", short_names_conflict(want.shortNames, accepted.shortNames, used), "ShortNamesConflict")
  check("kind", conflict(want.kind, accepted.kind, kinds), "KindConflict")
  check("listKind", conflict(want.listKind, accepted.listKind, kinds), "ListKindConflict")
  out.categories = util.copy(want.categories)
  return out, failed or { "True", "NoConflicts", "no conflicts found" }
end

local function find_condition(conds, typ)
  for _, c in ipairs(conds or {}) do
    if c.type == typ then return c end
  end
end

local function condition(sim, old_conds, typ, status, reason, message)
  local old = find_condition(old_conds, typ)
  local since = old and old.status == status and old.lastTransitionTime or util.rfc3339(sim.clock:now())
  return { type = typ, status = status, reason = reason, message = message, lastTransitionTime = since }
end

local function stored_versions(crd, old_status)
  local out, seen = array(), {}
  for _, v in ipairs(old_status.storedVersions or {}) do
    out[#out + 1], seen[v] = v, true
  end
  for _, v in ipairs(crd.spec.versions or {}) do
    if v.storage and not seen[v.name] then out[#out + 1] = v.name end
  end
  return out
end

-- The status the controllers give a CRD: accepted names, NamesAccepted and Established
-- (Established stays True once the names were accepted; served names are the accepted ones).
local function controlled_status(sim, crd, old)
  local old_status = old and old.status or {}
  local conds = old_status.conditions
  local names, accepted = accept_names(sim, crd, old_status.acceptedNames or {})
  local established = find_condition(conds, "Established")
  local est
  if accepted[1] == "True" or (established and established.status == "True") then
    est = condition(sim, conds, "Established", "True", "InitialNamesAccepted", "the initial names have been accepted")
  else
    est = condition(sim, conds, "Established", "False", "NotAccepted", "not all names are accepted")
  end
  return {
    acceptedNames = names,
    conditions = array { condition(sim, conds, "NamesAccepted", accepted[1], accepted[2], accepted[3]), est },
    storedVersions = stored_versions(crd, old_status),
  }
end

--- True when the CRD's resource is served (its Established condition is True).
function M.established(crd)
  local c = find_condition(crd.status and crd.status.conditions, "Established")
  return c ~= nil and c.status == "True"
end

local function admit_crd(sim, op, crd, old)
  default_crd(crd)
  local causes = validate(crd, op == "update" and old or nil)
  if #causes > 0 then return rejection(crd, causes) end
  crd.status = controlled_status(sim, crd, op == "update" and old or nil)
end

-- ---- pruning and defaulting by the structural schema ----

local prune

local function prune_object(obj, schema, root)
  local props, extra = schema.properties or {}, schema.additionalProperties
  local keep = schema["x-kubernetes-preserve-unknown-fields"] == true or extra == true
  for k, v in pairs(obj) do
    if root and (k == "apiVersion" or k == "kind" or k == "metadata") then
      -- always kept
    elseif props[k] then
      prune(v, props[k])
    elseif type(extra) == "table" then
      prune(v, extra)
    elseif not keep then
      obj[k] = nil
    end
  end
  for k, s in pairs(props) do
    if obj[k] == nil and s.default ~= nil and not (root and k == "metadata") then obj[k] = util.copy(s.default) end
  end
end

prune = function(v, schema, root)
  if type(v) ~= "table" or type(schema) ~= "table" then return end
  if schema.type == "array" or getmetatable(v) == json.array_mt then
    for _, x in ipairs(v) do prune(x, schema.items) end
  elseif schema.type == "object" or schema.properties then
    prune_object(v, schema, root)
  end
end

-- What the custom resource handler does to every object it writes: drop the fields its
-- version's schema does not know, default the ones it leaves out, and on create drop the
-- status when the status subresource owns it.
local function admit_custom(by_version)
  return function(_, op, obj)
    local t = by_version[obj.apiVersion]
    if not t then return end
    if op == "create" and t.status_subresource then obj.status = nil end
    if t.schema then prune(obj, t.schema, true) end
  end
end

-- ---- the registry: what an established CRD serves ----

local function subresources_of(v)
  local subs, list = v.subresources or {}, {}
  if subs.status then list[#list + 1] = "status" end
  if subs.scale then list[#list + 1] = "scale" end
  return list, subs.scale
end

local function version_type(crd, v, first)
  local spec, names = crd.spec, crd.status.acceptedNames
  local subs, scale = subresources_of(v)
  local t = types.def {
    group = spec.group, version = v.name,
    kind = names.kind, list_kind = names.listKind, plural = names.plural, singular = names.singular,
    short = names.shortNames, categories = names.categories, namespaced = spec.scope == "Namespaced",
    verbs = VERBS, subresources = subs, scale = scale, status_subresource = subs[1] == "status",
    printer = printers.custom(v.additionalPrinterColumns), schema = v.schema and v.schema.openAPIV3Schema,
    custom = crd.metadata.name,
  }
  -- one store for all versions: what walks every store (GC, namespace deletion) takes the first
  t.shared_with = not first and t.key or nil
  return t
end

--- The types an established CRD serves: one per served version, in discovery's order.
local function types_of(crd)
  local served = {}
  for _, v in ipairs(crd.spec.versions or {}) do
    if v.served then served[#served + 1] = v end
  end
  table.sort(served, function(a, b) return resources.version_less(a.name, b.name) end)
  local out = {}
  for i, v in ipairs(served) do out[i] = version_type(crd, v, i == 1) end
  return out
end

-- The real apiserver serves an established CRD's resources at once but lists them in
-- discovery only when its discovery controller next runs; crd_publish_delay (seconds,
-- default 0) plays that lag for clients that must not depend on it.
local function publish_later(sim, name, types)
  local delay = sim.crd_publish_delay or 0
  if delay <= 0 then return end
  for _, t in ipairs(types) do t.unpublished = true end
  sim:spawn(function()
    vq.sleep(delay)
    if sim.types:of(name) == types then
      for _, t in ipairs(types) do t.unpublished = nil end
    end
  end)
end

local function serve(sim, crd)
  local name = crd.metadata.name
  local types = M.established(crd) and types_of(crd) or nil
  if types and #types == 0 then types = nil end
  sim.types:set(name, types)
  local key, by_version, scale = types and types[1].key, {}, false
  for _, t in ipairs(types or {}) do
    by_version[t.api_version] = t
    scale = scale or t.scale ~= nil
  end
  if not key then return end
  publish_later(sim, name, types)
  sim.admission[key] = admit_custom(by_version)
  sim.subresources[key .. "/scale"] = scale and require("sim.core").scale_handler or nil
end

local function unserve(sim, crd)
  local types = sim.types:of(crd.metadata.name)
  sim.types:set(crd.metadata.name, nil)
  if not types then return end
  local key = types[1].key
  sim.admission[key], sim.subresources[key .. "/scale"] = nil, nil
  for _, obj in ipairs(sim.store:list(key)) do sim.store:remove(key, obj) end
  sim.store:close_watchers(key)
end

-- A deleted CRD frees its names: the group's CRDs that wanted them try again.
local function recheck_group(sim, group)
  sim:spawn(function()
    for _, crd in ipairs(sim:list(KEY)) do
      if crd.spec.group == group and not M.established(crd) then sim:update_status(KEY, util.copy(crd)) end
    end
  end)
end

local function on_change(sim, ev)
  if ev.key ~= KEY then return end
  if ev.type == "DELETED" then
    unserve(sim, ev.object)
    recheck_group(sim, ev.object.spec.group)
  else
    serve(sim, ev.object)
  end
end

function M.install(sim)
  sim.admission[KEY] = admit_crd
  sim.store:on_change(function(ev) on_change(sim, ev) end)
end

return M
