-- Patches as the apiserver applies them: JSON merge patch (RFC 7386), JSON patch
-- (RFC 6902), strategic merge patch (merge keys and $patch directives for the fields the
-- procedures touch), and server-side apply with managedFields, conflicts and force.
local json = require "json"
local util = require "sim.util"

local M = {}

local function array(t) return setmetatable(t or {}, json.array_mt) end
local function is_array(v)
  if type(v) ~= "table" then return false end
  if getmetatable(v) == json.array_mt then return true end
  if getmetatable(v) == json.object_mt then return false end
  return #v > 0 or next(v) == nil and false
end
local null = json.null

local function status(code, message, reason, details)
  return { kind = "Status", apiVersion = "v1", metadata = {}, status = "Failure", message = message,
           reason = reason, details = details, code = code }
end

-- ---- JSON merge patch ----

local function merge_patch(target, p)
  if type(p) ~= "table" or is_array(p) then return util.copy(p) end
  if type(target) ~= "table" or is_array(target) then target = {} end
  local out = util.copy(target)
  for k, v in pairs(p) do
    if v == null then out[k] = nil else out[k] = merge_patch(out[k], v) end
  end
  return out
end
M.merge_patch = merge_patch

-- ---- JSON patch ----

local function unescape_pointer(s) return (s:gsub("~1", "/"):gsub("~0", "~")) end

local function pointer(path)
  local parts = {}
  if path == "" then return parts end
  for p in path:sub(2):gmatch("[^/]*") do parts[#parts + 1] = unescape_pointer(p) end
  return parts
end

local function resolve_parent(doc, parts)
  local cur = doc
  for i = 1, #parts - 1 do
    local k = parts[i]
    if is_array(cur) then k = tonumber(k) and tonumber(k) + 1 end
    if type(cur) ~= "table" or k == nil or cur[k] == nil then return nil end
    cur = cur[k]
  end
  return cur, parts[#parts]
end

local function json_patch(doc, ops)
  doc = util.copy(doc)
  for _, op in ipairs(ops) do
    local parts = pointer(op.path or "")
    local parent, last = resolve_parent(doc, parts)
    if not parent then return nil, ("doc is missing path: %s"):format(op.path) end
    local arr = is_array(parent)
    local idx = arr and (last == "-" and #parent + 1 or (tonumber(last) and tonumber(last) + 1)) or last
    if op.op == "add" then
      if arr then table.insert(parent, idx, util.copy(op.value)) else parent[idx] = util.copy(op.value) end
    elseif op.op == "remove" then
      if parent[idx] == nil then return nil, ("doc is missing path: %s"):format(op.path) end
      if arr then table.remove(parent, idx) else parent[idx] = nil end
    elseif op.op == "replace" then
      if parent[idx] == nil then return nil, ("doc is missing key: %s"):format(op.path) end
      parent[idx] = util.copy(op.value)
    elseif op.op == "test" then
      if json.encode(parent[idx], { sort_keys = true }) ~= json.encode(op.value, { sort_keys = true }) then
        return nil, ("testing value %s failed"):format(op.path)
      end
    elseif op.op == "move" or op.op == "copy" then
      local fparent, flast = resolve_parent(doc, pointer(op.from or ""))
      if not fparent then return nil, "missing from path " .. tostring(op.from) end
      local fidx = is_array(fparent) and tonumber(flast) + 1 or flast
      local v = util.copy(fparent[fidx])
      if op.op == "move" then
        if is_array(fparent) then table.remove(fparent, fidx) else fparent[fidx] = nil end
      end
      if arr then table.insert(parent, idx, v) else parent[idx] = v end
    else
      return nil, "unknown patch operation " .. tostring(op.op)
    end
  end
  return doc
end
M.json_patch = json_patch

-- ---- strategic merge patch ----

-- The merge keys of the lists the procedures patch (from the API types' patchMergeKey).
local MERGE_KEYS = {
  containers = "name", initContainers = "name", ephemeralContainers = "name", env = "name",
  volumes = "name", volumeMounts = "mountPath", volumeDevices = "devicePath", imagePullSecrets = "name",
  taints = "key", conditions = "type", ownerReferences = "uid", hostAliases = "ip", addresses = "type",
  resourceClaims = "name", envFrom = nil,
}
-- Lists merged as sets of primitives.
local SET_LISTS = { finalizers = true }

local function merge_key(field, list)
  if field == "ports" then
    local first = list and list[1]
    if type(first) == "table" and first.containerPort then return "containerPort" end
    return "port"
  end
  return MERGE_KEYS[field]
end
M.merge_key = merge_key

local function find_by_key(list, key, value)
  for i, item in ipairs(list) do
    if type(item) == "table" and item[key] == value then return i end
  end
end

local smp

local function smp_list(field, old, p, siblings)
  local key = merge_key(field, p)
  if SET_LISTS[field] then
    local out = array(util.copy(old or {}))
    for _, v in ipairs(p) do
      local have = false
      for _, x in ipairs(out) do if x == v then have = true end end
      if not have then out[#out + 1] = v end
    end
    return out
  end
  if not key then return array(util.copy(p)) end
  for _, item in ipairs(p) do
    if type(item) == "table" and item["$patch"] == "replace" then
      local out = array()
      for _, it in ipairs(p) do
        if it["$patch"] ~= "replace" then out[#out + 1] = util.copy(it) end
      end
      return out
    end
  end
  local out = array(util.copy(old or {}))
  for _, item in ipairs(p) do
    if type(item) == "table" then
      local i = find_by_key(out, key, item[key])
      if item["$patch"] == "delete" then
        if i then table.remove(out, i) end
      elseif i then
        out[i] = smp(out[i], item)
      else
        local clean = smp({}, item)
        out[#out + 1] = clean
      end
    end
  end
  local order = siblings and siblings["$setElementOrder/" .. field]
  if type(order) == "table" then
    local sorted, used = array(), {}
    for _, o in ipairs(order) do
      local i = find_by_key(out, key, o[key])
      if i and not used[i] then sorted[#sorted + 1] = out[i] used[i] = true end
    end
    for i, item in ipairs(out) do if not used[i] then sorted[#sorted + 1] = item end end
    out = sorted
  end
  return out
end

smp = function(old, p)
  if type(p) ~= "table" or is_array(p) then return util.copy(p) end
  if p["$patch"] == "replace" then
    local out = util.copy(p)
    out["$patch"] = nil
    return out
  end
  if p["$patch"] == "delete" then return nil end
  local out = (type(old) == "table" and not is_array(old)) and util.copy(old) or {}
  local retain = p["$retainKeys"]
  for k, v in pairs(p) do
    if k:sub(1, 1) == "$" then
      local field = k:match("^%$deleteFromPrimitiveList/(.+)$")
      if field and type(out[field]) == "table" then
        local keep = array()
        for _, x in ipairs(out[field]) do
          local drop = false
          for _, d in ipairs(v) do if d == x then drop = true end end
          if not drop then keep[#keep + 1] = x end
        end
        out[field] = keep
      end
    elseif v == null then
      out[k] = nil
    elseif is_array(v) then
      out[k] = smp_list(k, out[k], v, p)
    else
      out[k] = smp(out[k], v)
    end
  end
  if type(retain) == "table" then
    local keep = {}
    for _, k in ipairs(retain) do keep[k] = true end
    for k in pairs(out) do if not keep[k] then out[k] = nil end end
  end
  return out
end
M.strategic_merge = smp

local PATCH_TYPES = { "application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml",
                      "application/strategic-merge-patch+json" }
local CUSTOM_PATCH_TYPES = { "application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml" }

local function unsupported(types)
  return status(415, "the body of the request was in an unknown format - accepted media types include: " .. table.concat(types, ", "),
    "UnsupportedMediaType")
end

--- Apply a PATCH body of the given content type to old. Returns the new object or
--- nil, status table / message.
function M.patch(content_type, old, body, t)
  local p, err = json.decode(body)
  if p == nil then return nil, status(400, "error decoding patch: " .. tostring(err and err.message or err), "BadRequest") end
  if content_type == "application/merge-patch+json" then
    return merge_patch(old, p)
  elseif content_type == "application/strategic-merge-patch+json" then
    -- a custom resource has no Go type to take patch strategies from: the apiserver refuses
    if t and t.custom then return nil, unsupported(CUSTOM_PATCH_TYPES) end
    return smp(old, p)
  elseif content_type == "application/json-patch+json" then
    if not is_array(p) then return nil, status(400, "json patch must be a list of operations", "BadRequest") end
    local out, e = json_patch(old, p)
    if not out then return nil, status(422, e, "Invalid") end
    return out
  end
  return nil, unsupported(t and t.custom and CUSTOM_PATCH_TYPES or PATCH_TYPES)
end

-- ---- managed fields ----

--- The field manager kubectl and client-go send: the User-Agent's program name.
function M.manager_from_agent(agent)
  if not agent or agent == "" then return "unknown" end
  return agent:match("^([^/%s]+)") or agent
end

local SKIP_META = { uid = true, resourceVersion = true, generation = true, creationTimestamp = true,
  managedFields = true, selfLink = true, deletionTimestamp = true, deletionGracePeriodSeconds = true }

local function key_element(item, key)
  return "k:" .. json.encode({ [key] = item[key] }, { sort_keys = true })
end

--- The set of leaf field paths of obj, in fieldsV1's element syntax.
local function field_set(obj, out, prefix, field)
  out = out or {}
  prefix = prefix or {}
  if type(obj) ~= "table" then
    out[#out + 1] = prefix
    return out
  end
  if is_array(obj) then
    local key = merge_key(field, obj)
    if key then
      for _, item in ipairs(obj) do
        if type(item) == "table" and item[key] ~= nil then
          local p = { table.unpack(prefix) }
          p[#p + 1] = key_element(item, key)
          local before = #out
          field_set(item, out, p)
          if #out == before then out[#out + 1] = p end
        end
      end
    elseif SET_LISTS[field] then
      for _, v in ipairs(obj) do
        local p = { table.unpack(prefix) }
        p[#p + 1] = "v:" .. json.encode(v)
        out[#out + 1] = p
      end
    else
      out[#out + 1] = prefix -- an atomic list is one field
    end
    return out
  end
  local any = false
  for k, v in pairs(obj) do
    local skip = #prefix == 1 and prefix[1] == "f:metadata" and SKIP_META[k]
    if #prefix == 0 and (k == "apiVersion" or k == "kind" or k == "status") then skip = true end
    if not skip then
      any = true
      local p = { table.unpack(prefix) }
      p[#p + 1] = "f:" .. k
      field_set(v, out, p, k)
    end
  end
  if not any and #prefix > 0 then out[#out + 1] = prefix end
  return out
end
M.field_set = field_set

local function path_key(p) return table.concat(p, "\0") end

local function to_fields_v1(paths)
  local tree = {}
  for _, p in ipairs(paths) do
    local node = tree
    for i, el in ipairs(p) do
      node[el] = node[el] or {}
      node = node[el]
      if el:sub(1, 2) == "k:" and i < #p then node["."] = node["."] or {} end
    end
  end
  return tree
end

local function from_fields_v1(tree, prefix, out)
  out = out or {}
  prefix = prefix or {}
  local leaf = true
  for k, v in pairs(tree) do
    if k ~= "." then
      leaf = false
      local p = { table.unpack(prefix) }
      p[#p + 1] = k
      from_fields_v1(v, p, out)
    end
  end
  if leaf and #prefix > 0 then out[#out + 1] = prefix end
  return out
end

--- The value at a field path in obj (nil when absent).
local function value_at(obj, p)
  local cur = obj
  for _, el in ipairs(p) do
    if type(cur) ~= "table" then return nil end
    local kind, rest = el:sub(1, 1), el:sub(3)
    if kind == "f" then
      cur = cur[rest]
    elseif kind == "k" then
      local sel = json.decode(rest)
      local found
      for _, item in ipairs(cur) do
        local match = type(item) == "table"
        for sk, sv in pairs(sel) do if item[sk] ~= sv then match = false end end
        if match then found = item break end
      end
      cur = found
    elseif kind == "v" then
      local want = json.decode(rest)
      local found
      for _, item in ipairs(cur) do if item == want then found = item end end
      cur = found
    end
  end
  return cur
end

local function same(a, b)
  return json.encode(a, { sort_keys = true }) == json.encode(b, { sort_keys = true })
end

--- Record that manager did an Update (or created obj): it owns the fields it changed.
function M.record_manager(new, manager, operation, now, subresource, old)
  local meta = new.metadata
  local entries = meta.managedFields or array()
  local paths
  if old then
    paths = {}
    for _, p in ipairs(field_set(new)) do
      if not same(value_at(new, p), value_at(old, p)) then paths[#paths + 1] = p end
    end
  else
    paths = field_set(subresource == "status" and { status = new.status } or new)
  end
  -- A field changed by an update moves to the updater: the others no longer own it.
  local changed = {}
  for _, p in ipairs(paths) do changed[path_key(p)] = true end
  local mine
  local kept = array()
  for _, e in ipairs(entries) do
    if e.manager == manager and e.operation == operation and (e.subresource or "") == (subresource or "") then
      mine = e
      kept[#kept + 1] = e
    else
      local keep = {}
      for _, p in ipairs(from_fields_v1(e.fieldsV1 or {})) do
        if not changed[path_key(p)] then keep[#keep + 1] = p end
      end
      e.fieldsV1 = to_fields_v1(keep)
      if next(e.fieldsV1) then kept[#kept + 1] = e end
    end
  end
  entries = kept
  if not mine then
    if #paths == 0 then return end
    mine = { manager = manager, operation = operation, apiVersion = new.apiVersion, fieldsType = "FieldsV1",
             subresource = subresource, fieldsV1 = {} }
    entries[#entries + 1] = mine
  end
  local set = {}
  for _, p in ipairs(from_fields_v1(mine.fieldsV1 or {})) do set[path_key(p)] = p end
  for _, p in ipairs(paths) do set[path_key(p)] = p end
  local all = {}
  for _, p in pairs(set) do all[#all + 1] = p end
  mine.fieldsV1 = to_fields_v1(all)
  mine.time = util.rfc3339(now)
  meta.managedFields = array(entries)
end

local function path_text(p)
  local out = {}
  for _, el in ipairs(p) do
    local kind, rest = el:sub(1, 1), el:sub(3)
    if kind == "f" then out[#out + 1] = "." .. rest
    elseif kind == "k" then out[#out + 1] = "[" .. rest:gsub('"', ""):gsub("[{}]", ""):gsub(":", "=") .. "]"
    else out[#out + 1] = "[" .. rest .. "]" end
  end
  return table.concat(out)
end

-- Merge an applied configuration into the live object: maps deep, keyed lists by key.
local function apply_merge(live, applied, field)
  if type(applied) ~= "table" then return util.copy(applied) end
  if is_array(applied) then
    local key = merge_key(field, applied)
    if not key or type(live) ~= "table" then return util.copy(applied) end
    local out = array(util.copy(live))
    for _, item in ipairs(applied) do
      local i = find_by_key(out, key, item[key])
      if i then out[i] = apply_merge(out[i], item) else out[#out + 1] = util.copy(item) end
    end
    return out
  end
  local out = (type(live) == "table" and not is_array(live)) and util.copy(live) or {}
  for k, v in pairs(applied) do out[k] = apply_merge(out[k], v, k) end
  return out
end

local function remove_path(obj, p)
  local parent = obj
  for i = 1, #p - 1 do
    parent = value_at(parent, { p[i] })
    if type(parent) ~= "table" then return end
  end
  local el = p[#p]
  local kind, rest = el:sub(1, 1), el:sub(3)
  if kind == "f" then
    parent[rest] = nil
  elseif kind == "k" or kind == "v" then
    local target = value_at(parent, { el })
    for i, item in ipairs(parent) do
      if item == target then table.remove(parent, i) break end
    end
  end
end

--- Server-side apply (PATCH application/apply-patch+yaml).
function M.apply(api, req, res, r, old, part)
  local send_json = require("sim.api").send_json
  local manager = req.query.fieldManager
  if not manager or manager == "" then
    return send_json(res, 400, status(400, "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch", "BadRequest"))
  end
  local applied, err = require("yaml").decode(req.body or "")
  if type(applied) ~= "table" then
    return send_json(res, 400, status(400, "error decoding YAML: " .. tostring(err and err.message or err), "BadRequest"))
  end
  local t = r.t
  if applied.kind ~= t.kind or applied.apiVersion ~= t.api_version then
    return send_json(res, 400, status(400, ("the API version in the data (%s) does not match the expected API version (%s)"):format(tostring(applied.apiVersion), t.api_version), "BadRequest"))
  end
  local force = req.query.force == "true"
  local dry_run = req.query.dryRun == "All"
  local now = api.sim.clock:now()
  local applied_paths = field_set(applied)
  if not old then
    applied.metadata = applied.metadata or {}
    applied.metadata.name = applied.metadata.name or r.name
    local obj, st = api:admit_create(t, r.ns, util.copy(applied))
    if not obj then return send_json(res, st.code, st) end
    obj.metadata.managedFields = array { { manager = manager, operation = "Apply", apiVersion = t.api_version,
      fieldsType = "FieldsV1", time = util.rfc3339(now), fieldsV1 = to_fields_v1(applied_paths) } }
    local stored = api:store_create(t, obj, dry_run)
    return send_json(res, 201, api:render(stored, t))
  end
  -- Conflicts: another manager owns a field we set to a different value.
  local conflicts, entries = {}, util.copy(old.metadata.managedFields or {})
  local mine_old = {}
  for _, e in ipairs(entries) do
    local paths = from_fields_v1(e.fieldsV1 or {})
    if e.manager == manager and e.operation == "Apply" then
      for _, p in ipairs(paths) do mine_old[path_key(p)] = p end
    elseif (e.subresource or "") == (part or "") then
      local owned = {}
      for _, p in ipairs(paths) do owned[path_key(p)] = true end
      for _, p in ipairs(applied_paths) do
        if owned[path_key(p)] and not same(value_at(applied, p), value_at(old, p)) then
          conflicts[#conflicts + 1] = { manager = e.manager, path = p, entry = e }
        end
      end
    end
  end
  if #conflicts > 0 and not force then
    local causes, lines = array(), {}
    for _, c in ipairs(conflicts) do
      local msg = ('conflict with "%s"%s: %s'):format(c.manager,
        c.entry.operation == "Update" and (" using " .. (c.entry.apiVersion or t.api_version)) or "", path_text(c.path))
      causes[#causes + 1] = { reason = "FieldManagerConflict", message = msg, field = path_text(c.path) }
      lines[#lines + 1] = "- " .. msg
    end
    local message = ("Apply failed with %d conflict%s: %s"):format(#conflicts, #conflicts == 1 and "" or "s",
      #conflicts == 1 and causes[1].message or table.concat(lines, "\n"))
    return send_json(res, 409, status(409, message, "Conflict", { causes = causes }))
  end
  -- Force takes the conflicting fields away from their managers.
  local taken = {}
  for _, c in ipairs(conflicts) do taken[c.entry] = taken[c.entry] or {} taken[c.entry][path_key(c.path)] = true end
  local new = util.copy(old)
  -- Fields this manager applied before and no longer applies are removed, unless shared.
  local applied_set = {}
  for _, p in ipairs(applied_paths) do applied_set[path_key(p)] = true end
  for k, p in pairs(mine_old) do
    if not applied_set[k] then
      local shared = false
      for _, e in ipairs(entries) do
        if not (e.manager == manager and e.operation == "Apply") then
          for _, q in ipairs(from_fields_v1(e.fieldsV1 or {})) do if path_key(q) == k then shared = true end end
        end
      end
      if not shared then remove_path(new, p) end
    end
  end
  local merged = apply_merge(new, applied)
  merged.metadata.managedFields = nil
  local out_entries = array()
  local mine_found = false
  for _, e in ipairs(entries) do
    if e.manager == manager and e.operation == "Apply" then
      mine_found = true
      e.fieldsV1 = to_fields_v1(applied_paths)
      e.time = util.rfc3339(now)
      out_entries[#out_entries + 1] = e
    else
      if taken[e] then
        local keep = {}
        for _, p in ipairs(from_fields_v1(e.fieldsV1 or {})) do
          if not taken[e][path_key(p)] then keep[#keep + 1] = p end
        end
        e.fieldsV1 = to_fields_v1(keep)
      end
      if next(e.fieldsV1 or {}) then out_entries[#out_entries + 1] = e end
    end
  end
  if not mine_found then
    out_entries[#out_entries + 1] = { manager = manager, operation = "Apply", apiVersion = t.api_version,
      fieldsType = "FieldsV1", time = util.rfc3339(now), fieldsV1 = to_fields_v1(applied_paths) }
  end
  merged.metadata.managedFields = out_entries
  merged.metadata.resourceVersion = nil
  local stored, st = api:replace(t, r.ns, r.name, merged, { part = part, dry_run = dry_run })
  if not stored then return send_json(res, st.code, st) end
  send_json(res, 200, api:render(stored, t))
end

return M
