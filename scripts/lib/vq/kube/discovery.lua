-- Discovery: the types the built-in table lacks (CRDs, aggregated APIs), asked of the
-- server once per run and again when a name is still unknown; and a CRD the server has
-- established but not yet published in discovery, read from the CRD itself.
local vq = require "vq"
local types = require "vq.kube.types"

-- Aggregated discovery (1.27+: every group's resources in one answer), else the classic
-- APIGroupList; the kind of the answer says which the server gave.
local AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
  .. "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"

local function discovered_type(group, version, r)
  return types.def { group = group, version = version, kind = r.kind, plural = r.plural, singular = r.singular,
                     namespaced = r.namespaced, short = r.short }
end

local function remember(found, t)
  found[t.group .. "/" .. t.kind] = t -- for objects (type_of_object)
  for _, n in ipairs { t.plural, t.singular, t.kind, t.key, t.kind:lower() } do found[n] = found[n] or t end
  for _, n in ipairs(t.short) do found[n] = found[n] or t end
end

local function remember_aggregated(found, list)
  for _, g in ipairs(list.items or {}) do
    local v = (g.versions or {})[1] -- the server lists versions in preference order
    for _, r in ipairs(v and v.resources or {}) do
      local rk = r.responseKind or {}
      remember(found, discovered_type(g.metadata and g.metadata.name or "", v.version, { plural = r.resource,
        kind = rk.kind or r.resource, singular = r.singularResource, namespaced = r.scope == "Namespaced",
        short = r.shortNames }))
    end
  end
end

local function established(crd)
  local conds = crd.status and crd.status.conditions
  for _, c in ipairs(type(conds) == "table" and conds or {}) do
    if c.type == "Established" then return c.status == "True" end
  end
  return false
end

-- The type a CRD serves at its preferred version (the first served one in kube's order).
local function crd_served_type(crd)
  local spec = crd.spec
  local names = (crd.status and type(crd.status.acceptedNames) == "table" and crd.status.acceptedNames.plural)
    and crd.status.acceptedNames or spec.names
  local served = {}
  for _, v in ipairs(spec.versions or {}) do
    if v.served then served[#served + 1] = v.name end
  end
  table.sort(served, types.version_less)
  if not served[1] then return nil end
  local short = type(names.shortNames) == "table" and names.shortNames or {}
  return discovered_type(spec.group, served[1], { plural = names.plural, kind = names.kind, singular = names.singular,
    namespaced = spec.scope == "Namespaced", short = short })
end

return function(_, Client)
  -- One group's preferred version, as /apis/<group>/<version> lists it (classic discovery).
  function Client:discover_group_version(found, group, version)
    local list, e = self:request { path = "/apis/" .. group .. "/" .. version }
    if not list then return nil, e end
    for _, r in ipairs(list.resources or {}) do
      if not r.name:find("/", 1, true) then
        remember(found, discovered_type(group, version, { plural = r.name, kind = r.kind,
          singular = r.singularName, namespaced = r.namespaced, short = r.shortNames }))
      end
    end
    return true
  end

  -- Discovery only for what the built-in table lacks: asked on the first unknown name, and
  -- again (fresh) on a later one. Concurrent callers share one round.
  function Client:discover(fresh)
    if self.discovery_done and not fresh then return true end
    if self.discovering then
      self.discovering:wait()
      return self.discovery_done, self.discovery_err
    end
    local ev = vq.event()
    self.discovering = ev
    local ok, e = self:discover_now()
    self.discovery_done, self.discovery_err = ok and true or self.discovery_done, e
    self.discovering = nil
    ev:set()
    return ok, e
  end

  -- A group that does not answer (an aggregated API whose service is down, as
  -- metrics.k8s.io often is) is left out, as kubectl leaves it out: self.discovery_failed
  -- names them.
  function Client:discover_now()
    local groups, e = self:request { path = "/apis", accept = AGGREGATED }
    if not groups then return nil, e end
    local found, failed = {}, {}
    if groups.kind == "APIGroupDiscoveryList" then
      remember_aggregated(found, groups)
    else
      local fetches = {}
      for _, g in ipairs(groups.groups or {}) do
        local pv = g.preferredVersion and g.preferredVersion.version
        if pv then
          fetches[#fetches + 1] = function()
            local ok, ge = self:discover_group_version(found, g.name, pv)
            if not ok then failed[#failed + 1] = g.name .. "/" .. pv .. ": " .. tostring(ge and ge.message) end
            return true
          end
        end
      end
      vq.all(fetches) -- every group at once: one round trip on an HTTP/2 connection
    end
    self.discovered, self.discovery_failed = found, failed
    return true
  end

  --- The type of an established CRD that answers to name (any name discovery would know it
  --- by, or "group/Kind"), read from the CRD itself: the apiserver publishes a new CRD's
  --- resources in discovery a moment after it is Established, and a runbook that waited for
  --- Established uses it at once. CRDs carry their schemas: they are read a few at a time
  --- (a cluster may hold hundreds).
  function Client:crd_type(name)
    local crds, st = self:each("customresourcedefinitions", { page_size = 20 })
    for crd in crds do
      local t = type((crd.spec or {}).names) == "table" and established(crd) and crd_served_type(crd)
      if t then
        local names = {}
        remember(names, t)
        if names[name] or names[name:lower()] then
          remember(self.discovered, t)
          return t
        end
      end
    end
    return nil, st.err
  end
end
