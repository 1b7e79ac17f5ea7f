-- The stand-in's changes to the cluster, made as Helm and kubectl would make them: Secrets
-- applied, chart objects created where missing, the vantiq StatefulSets upgraded, a release
-- uninstalled. Each returns what it did as kubectl words ("created", "configured"...).
local world = require "sim.world"
local chart = require "sim.gradlew.chart"

local M = {}

local function fail(what, err)
  return nil, ("%s: %s"):format(what, err and err.message or "failed")
end

--- The namespace holding the vantiq StatefulSet: cluster.properties' vantiq.namespace, else
--- where the StatefulSet (or, after undeployVantiq, MongoDB's claims) is, else "vantiq".
function M.vantiq_namespace(k, props, default)
  local given = props["vantiq.namespace"]
  if given and given ~= "" then return given end
  for sts in k:each("statefulsets", { all_namespaces = true }) do
    if sts.metadata.name == "vantiq" then return sts.metadata.namespace end
  end
  for pvc in k:each("persistentvolumeclaims", { all_namespaces = true }) do
    if pvc.metadata.name:match("^datadir%-mongodb%-%d+$") then return pvc.metadata.namespace end
  end
  return default
end

function M.ensure_namespace(k, ns)
  if k:get("namespaces", ns) then return nil end
  local ok, err = k:create { apiVersion = "v1", kind = "Namespace", metadata = { name = ns, labels = { name = ns } } }
  if not ok and err.code ~= 409 then return fail("namespace/" .. ns, err) end
  return "namespace/" .. ns .. " created"
end

local function same_data(a, b)
  a, b = a or {}, b or {}
  for k, v in pairs(a) do if b[k] ~= v then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

--- Create or update a Secret; returns "secret/x created|configured|unchanged".
function M.apply_secret(k, obj)
  local ns, name = obj.metadata.namespace, obj.metadata.name
  local what = ("secret/%s (%s)"):format(name, ns)
  local cur, err = k:get("secrets", name, { namespace = ns })
  if not cur and err.code ~= 404 then return fail(what, err) end
  if not cur then
    local ok, cerr = k:create(obj)
    if not ok then return fail(what, cerr) end
    return what .. " created"
  end
  if (cur.type or "Opaque") == obj.type and same_data(cur.data, obj.data) then return what .. " unchanged" end
  if (cur.type or "Opaque") ~= obj.type then
    -- a Secret's type is immutable: Helm replaces it
    local ok, derr = k:delete("secrets", name, { namespace = ns, wait = true, timeout = 30 })
    if not ok then return fail(what, derr) end
    local created, cerr = k:create(obj)
    if not created then return fail(what, cerr) end
    return what .. " replaced"
  end
  local ok, uerr = k:update_with_retry("secrets", name, function(s)
    s.data = obj.data
    s.metadata.annotations = s.metadata.annotations or {}
    for key, v in pairs(obj.metadata.annotations) do s.metadata.annotations[key] = v end
  end, { namespace = ns })
  if not ok then return fail(what, uerr) end
  return what .. " configured"
end

local IMAGE_REPOS = { [world.IMAGES.vantiq] = true, [world.IMAGES.vision] = true }

local function retag(containers, tag)
  local changed = false
  for _, c in ipairs(containers or {}) do
    local repo = c.image and c.image:match("^(.*):[^:/]+$") or c.image
    if IMAGE_REPOS[repo] and c.image ~= repo .. ":" .. tag then
      c.image, changed = repo .. ":" .. tag, true
    end
  end
  return changed
end

local function upgrade(sts, tag, replicas)
  local spec = sts.spec.template.spec
  local changed = retag(spec.containers, tag)
  changed = retag(spec.initContainers, tag) or changed
  if replicas and sts.spec.replicas ~= replicas then
    sts.spec.replicas, changed = replicas, true
  end
  return changed
end

--- helm upgrade of a vantiq StatefulSet: the image tag and the chart's replica count.
function M.upgrade_statefulset(k, ns, name, tag, replicas)
  local what = "statefulset.apps/" .. name
  local cur, gerr = k:get("statefulsets", name, { namespace = ns })
  if not cur then return fail(what, gerr) end
  if not upgrade(cur, tag, replicas) then return what .. " unchanged" end
  local ok, err = k:update_with_retry("statefulsets", name, function(sts) upgrade(sts, tag, replicas) end, { namespace = ns })
  if not ok then return fail(what, err) end
  return ("%s configured (image %s, replicas %d)"):format(what, ok.spec.template.spec.containers[1].image, ok.spec.replicas or 1)
end

local function label(obj) return obj.kind:lower() .. (obj.apiVersion:find("/") and ("." .. obj.apiVersion:match("^([^/]+)/")) or "") end

--- Create a chart's objects that are missing (skip(obj) true: leave out). Returns the lines
--- and the set of created "Kind/name".
function M.create_missing(k, manifests, skip)
  local lines, created = {}, {}
  for _, obj in ipairs(manifests) do
    local m = obj.metadata
    local cur, err = k:get(obj.kind, m.name, { namespace = m.namespace })
    if not cur and err.code ~= 404 then return fail(label(obj) .. "/" .. m.name, err) end
    if not cur and not (skip and skip(obj)) then
      local ok, cerr = k:create(obj)
      if not ok and cerr.code ~= 409 then return fail(label(obj) .. "/" .. m.name, cerr) end
      lines[#lines + 1] = ("%s/%s created"):format(label(obj), m.name)
      created[obj.kind .. "/" .. m.name] = true
    end
  end
  return lines, created
end

--- helm uninstall: every object of the release in the namespace (claims stay, as the
--- StatefulSets' volumeClaimTemplates leave them). Returns the lines, or nil, message.
function M.uninstall(k, ns, release)
  local lines = {}
  local keys = { "secrets" }
  for _, key in ipairs(chart.KEYS) do keys[#keys + 1] = key end
  for _, key in ipairs(keys) do
    local list, err = k:list(key, { namespace = ns })
    if not list then return fail(key, err) end
    for _, obj in ipairs(list) do
      if (obj.metadata.annotations or {})["meta.helm.sh/release-name"] == release then
        local ok, derr = k:delete(key, obj.metadata.name, { namespace = ns, propagation = "Background" })
        if not ok and derr.code ~= 404 then return fail(key .. "/" .. obj.metadata.name, derr) end
        lines[#lines + 1] = ("%s \"%s\" deleted"):format(key, obj.metadata.name)
      end
    end
  end
  return lines
end

return M
