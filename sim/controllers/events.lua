-- The event recorder: core v1 Events as client-go's recorder writes them, the same event
-- again (same source, object, type, reason and message) counted on the first one.
local util = require "sim.util"

local M = {}

local function reference(obj, field_path)
  local meta = obj.metadata or {}
  -- the kubelet names its node by name in events, and kubectl describe node looks them up so
  local uid = obj.kind == "Node" and meta.name or meta.uid
  return {
    kind = obj.kind, namespace = meta.namespace, name = meta.name, uid = uid,
    apiVersion = obj.apiVersion, resourceVersion = meta.resourceVersion, fieldPath = field_path,
  }
end

local function unique_name(sim, ns, base)
  local stamp = math.floor(sim.clock:now() * 1e9)
  while true do
    local name = ("%s.%x"):format(base, stamp)
    if not sim:get("events", ns, name) then return name end
    stamp = stamp + 1
  end
end

--- sim.event(obj, type, reason, message, component[, opts]): opts.field_path
--- ("spec.containers{app}"), opts.host (the node, for kubelet events).
function M.install(sim, rt)
  local seen = {}   -- correlation key -> event name

  local function record(obj, typ, reason, message, component, opts)
    opts = opts or {}
    component = component or "sim"
    local meta = obj.metadata or {}
    local ns = meta.namespace or "default"
    local key = table.concat({ component, opts.host or "", obj.kind or "", ns, meta.name or "", meta.uid or "",
                               opts.field_path or "", typ, reason, message }, "\0")
    local now = util.rfc3339(sim.clock:now())
    local existing = seen[key] and sim:get("events", ns, seen[key])
    if existing then
      local copy = util.copy(existing)
      copy.count = (copy.count or 1) + 1
      copy.lastTimestamp = now
      return sim:update("events", copy)
    end
    local ev = {
      metadata = { name = unique_name(sim, ns, meta.name or "unknown"), namespace = ns },
      involvedObject = reference(obj, opts.field_path),
      reason = reason, message = message, type = typ or "Normal",
      source = { component = component, host = opts.host },
      firstTimestamp = now, lastTimestamp = now, count = 1,
      eventTime = require("json").null,
      reportingComponent = component, reportingInstance = opts.host or "",
    }
    local stored = sim:create("events", ev)
    if stored then seen[key] = stored.metadata.name end
    return stored
  end

  sim.event = function(obj, typ, reason, message, component, opts)
    -- an event must never fail the controller that records it
    local ok, res = pcall(record, obj, typ, reason, message, component, opts)
    if ok then return res end
    if rt and require("sim.controllers.runtime").cancelled(res) then error(res, 0) end
    require("log").warn("sim event %s: %s", tostring(reason), tostring(res))
  end
  return sim.event
end

M.reference = reference
return M
