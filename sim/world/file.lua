-- World files: a snapshot of a real cluster (`vqlua scripts/snapshot.lua` writes a JSON
-- list, or a List as `kubectl get -o json` prints it) or a Lua file returning a list of
-- objects, loaded instead of the built-in world. What the controllers make again (pods of
-- workloads, ReplicaSets, revisions, events) is left out; owner references are remapped
-- to the new objects' uids; creation times are kept.
local json = require "json"
local util = require "sim.util"
local resources = require "sim.resources"

local M = {}

local function array(t) return setmetatable(t or {}, json.array_mt) end

local SKIP = { pods = true, ["replicasets.apps"] = true, ["controllerrevisions.apps"] = true, events = true,
               ["events.events.k8s.io"] = true, endpoints = true, ["leases.coordination.k8s.io"] = true }

local function read_objects(path)
  local list
  if path:match("%.lua$") then
    list = assert(loadfile(path))()
  else
    local f = assert(io.open(path, "rb"))
    local text = f:read("a")
    f:close()
    list = json.decode(text)
  end
  if type(list) ~= "table" then error("world file " .. path .. ": not a list of objects", 0) end
  return list.items or list
end

local function strip(obj)
  local m = obj.metadata or {}
  obj.metadata = m
  local old_uid, refs, created = m.uid, m.ownerReferences, m.creationTimestamp
  m.uid, m.resourceVersion, m.managedFields, m.ownerReferences, m.generation, m.selfLink = nil, nil, nil, nil, nil, nil
  return old_uid, refs, created
end

local function relink(sim, key, obj, refs, uids)
  local out = array()
  for _, r in ipairs(refs) do
    if uids[r.uid] then
      local copy = util.copy(r)
      copy.uid = uids[r.uid]
      out[#out + 1] = copy
    end
  end
  if #out == 0 then return end
  local copy = util.copy(obj)
  copy.metadata.ownerReferences = out
  sim.store:put(resources.store_key(sim:type(key)), copy, "MODIFIED")
end

local function wanted(t, obj)
  return t and not SKIP[t.key] and not (t.key == "pods" and obj.metadata and obj.metadata.ownerReferences)
end

-- Namespaces first, then the CRDs (whose types the objects after them may be).
local function load_order(obj)
  if obj.kind == "Namespace" then return 0 end
  if obj.kind == "CustomResourceDefinition" then return 1 end
  return 2
end

--- Create the file's objects (namespaces and CRDs first); existing ones are kept.
function M.load(sim, path)
  local world = require "sim.world"
  local uids, later = {}, {}
  local list = read_objects(path)
  table.sort(list, function(a, b) return load_order(a) < load_order(b) end)
  for _, obj in ipairs(list) do
    local t = sim.types:for_object(obj) -- after the CRDs, their custom resources too
    if wanted(t, obj) then
      local old_uid, refs, created = strip(obj)
      local stored = world.seed(sim, { { t.key, obj } })[1]
      if stored then
        local t0 = util.parse_time(created or "")
        if t0 then stored[2] = world.backdate(sim, t.key, stored[2], sim.clock:now() - t0) end
        if old_uid then uids[old_uid] = stored[2].metadata.uid end
        if refs then later[#later + 1] = { t.key, stored[2], refs } end
      end
    end
  end
  for _, x in ipairs(later) do relink(sim, x[1], x[2], x[3], uids) end
end

local function secret_value(sim, ns, name, key)
  local s = sim:get("secrets", ns, name)
  local v = s and s.data and s.data[key]
  return v and util.unbase64(v) or nil
end

-- The credentials the loaded cluster holds are taken as the right ones.
local function credentials(sim, info)
  local sh = info.shared_namespace
  info.keycloak.admin_password = secret_value(sim, sh, "keycloak", "password")
  info.keycloak.db_password = secret_value(sim, sh, "keycloak", "db-password")
  info.grafana.admin_password = secret_value(sim, sh, "grafana", "admin-password")
  info.mongodb.password = secret_value(sim, info.namespace, "mongodb-credentials", "mongodb-password")
  info.mongodb.root_password = secret_value(sim, info.namespace, "mongodb-credentials", "mongodb-root-password")
end

--- What a loaded world tells about itself, filled into info: the vantiq StatefulSet's
--- namespace, tag and size, the ingress host, the LoadBalancer, the nodes, credentials.
function M.describe(sim, info)
  for _, s in ipairs(sim:list("statefulsets.apps", nil, function(o) return o.metadata.name == "vantiq" end)) do
    info.namespace = s.metadata.namespace
    info.vantiq_tag = require("sim.programs").tag_of(s.spec.template.spec.containers[1].image)
    info.schema_version = info.vantiq_tag
    info.deployment = (s.spec.replicas or 1) >= 3 and "production" or "development"
  end
  for _, i in ipairs(sim:list("ingresses.networking.k8s.io", info.namespace)) do
    local rule = i.spec and i.spec.rules and i.spec.rules[1]
    if rule and rule.host then info.domain = rule.host end
  end
  for _, s in ipairs(sim:list("services", nil, function(o) return o.spec and o.spec.type == "LoadBalancer" end)) do
    local ing = s.status and s.status.loadBalancer and s.status.loadBalancer.ingress or {}
    if ing[1] then info.lb_hostname, info.lb_ip = ing[1].hostname, ing[1].ip end
  end
  info.nodes = {}
  for _, n in ipairs(sim:list("nodes", nil)) do info.nodes[#info.nodes + 1] = n.metadata.name end
  credentials(sim, info)
  return info
end

return M
