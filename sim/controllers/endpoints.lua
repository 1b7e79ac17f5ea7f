-- The endpoints controller: a Service with a selector gets an Endpoints object of the same
-- name listing its pods' IPs, ready ones as addresses and the others as notReadyAddresses,
-- with the target ports resolved per pod (named container ports too).
local util = require "sim.util"
local json = require "json"
local R = require "sim.controllers.runtime"

local M = {}

local array = R.array

local function selects(svc, pod)
  local sel = svc.spec and svc.spec.selector
  if type(sel) ~= "table" or next(sel) == nil then return false end
  for k, v in pairs(sel) do
    if (pod.metadata.labels or {})[k] ~= v then return false end
  end
  return true
end

local function target_port(port, pod)
  local target = port.targetPort or port.port
  if type(target) == "number" then return target end
  local n = tonumber(target)
  if n then return n end
  for _, c in ipairs(pod.spec.containers or {}) do
    for _, p in ipairs(c.ports or {}) do
      if p.name == target then return p.containerPort end
    end
  end
end

local function address(pod)
  return { ip = pod.status.podIP, nodeName = pod.spec.nodeName, hostname = pod.spec.subdomain and pod.spec.hostname or nil,
           targetRef = { kind = "Pod", namespace = pod.metadata.namespace, name = pod.metadata.name, uid = pod.metadata.uid } }
end

--- Subsets grouped by the ports the pods resolve to, as the real controller packs them.
local function subsets_for(svc, pods)
  local groups, order = {}, {}
  local publish = svc.spec.publishNotReadyAddresses
  for _, pod in ipairs(pods) do
    local ports, complete = array(), true
    for _, p in ipairs(svc.spec.ports or {}) do
      local n = target_port(p, pod)
      if not n then complete = false break end
      ports[#ports + 1] = { name = p.name, port = n, protocol = p.protocol or "TCP" }
    end
    if complete then
      local key = json.encode(ports, { sort_keys = true })
      if not groups[key] then
        groups[key] = { addresses = array(), notReadyAddresses = array(), ports = ports }
        order[#order + 1] = key
      end
      local list = (R.pod_ready(pod) or publish) and groups[key].addresses or groups[key].notReadyAddresses
      list[#list + 1] = address(pod)
    end
  end
  local out = array()
  for _, key in ipairs(order) do
    local g = groups[key]
    table.sort(g.addresses, function(a, b) return a.ip < b.ip end)
    table.sort(g.notReadyAddresses, function(a, b) return a.ip < b.ip end)
    out[#out + 1] = { addresses = #g.addresses > 0 and g.addresses or nil,
                      notReadyAddresses = #g.notReadyAddresses > 0 and g.notReadyAddresses or nil,
                      ports = #g.ports > 0 and g.ports or nil }
  end
  return out
end

local function sync(sim, ns, name)
  local svc = sim:get("services", ns, name)
  local ep = sim:get("endpoints", ns, name)
  if not svc then
    if ep then sim:delete("endpoints", ep) end
    return
  end
  local sel = svc.spec and svc.spec.selector
  if type(sel) ~= "table" or next(sel) == nil then return end
  local pods = sim:list("pods", ns, function(p)
    return selects(svc, p) and p.status and p.status.podIP and not R.pod_terminal(p) and not p.metadata.deletionTimestamp
  end)
  local subsets = subsets_for(svc, pods)
  local labels = util.copy(svc.metadata.labels or {})
  if not ep then
    sim:create("endpoints", { metadata = { name = name, namespace = ns, labels = labels },
                              subsets = #subsets > 0 and subsets or nil })
  elseif not R.same(ep.subsets or array(), subsets) or not R.same(ep.metadata.labels or {}, labels) then
    local copy = util.copy(ep)
    copy.subsets = #subsets > 0 and subsets or nil
    copy.metadata.labels = labels
    sim:update("endpoints", copy)
  end
end

function M.install(sim, rt)
  local ctl = rt:controller("endpoints", function(ns, name) sync(sim, ns, name) end)
  rt:watch("services", function(ev)
    ctl:enqueue(ev.object.metadata.namespace, ev.object.metadata.name)
  end)
  rt:watch("pods", function(ev)
    local ns = ev.object.metadata.namespace
    for _, svc in ipairs(sim:list("services", ns)) do
      if selects(svc, ev.object) or (ev.old and selects(svc, ev.old)) then ctl:enqueue(ns, svc.metadata.name) end
    end
  end)
  rt.endpoints = ctl
end

function M.started(sim, rt)
  for _, svc in ipairs(sim:list("services", nil)) do rt.endpoints:enqueue(svc.metadata.namespace, svc.metadata.name) end
end

return M
