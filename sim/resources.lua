-- The resource types the simulator serves: what discovery lists and what routes,
-- stores and prints each. One entry per type, as the real apiserver registers them: the
-- client's types, the built-in ones runbooks never touch (so `kubectl api-resources`
-- lists what a real cluster lists), and per type the minor versions that serve it.
local M = {}

local def = require("vq.kube.types").def

local REVIEW = { "create" }

-- Built in and on by default in 1.27 … 1.33, beyond the client's types.
local EXTRA = {
  def { group = "admissionregistration.k8s.io", version = "v1", kind = "MutatingWebhookConfiguration", plural = "mutatingwebhookconfigurations", namespaced = false },
  def { group = "admissionregistration.k8s.io", version = "v1", kind = "ValidatingWebhookConfiguration", plural = "validatingwebhookconfigurations", namespaced = false },
  def { group = "admissionregistration.k8s.io", version = "v1", kind = "ValidatingAdmissionPolicy", plural = "validatingadmissionpolicies", namespaced = false, subresources = { "status" }, min_minor = 30 },
  def { group = "admissionregistration.k8s.io", version = "v1", kind = "ValidatingAdmissionPolicyBinding", plural = "validatingadmissionpolicybindings", namespaced = false, min_minor = 30 },
  def { group = "apiregistration.k8s.io", version = "v1", kind = "APIService", plural = "apiservices", namespaced = false, subresources = { "status" } },
  def { group = "authentication.k8s.io", version = "v1", kind = "TokenReview", plural = "tokenreviews", namespaced = false, verbs = REVIEW },
  def { group = "authentication.k8s.io", version = "v1beta1", kind = "SelfSubjectReview", plural = "selfsubjectreviews", namespaced = false, verbs = REVIEW, max_minor = 27 },
  def { group = "authorization.k8s.io", version = "v1", kind = "LocalSubjectAccessReview", plural = "localsubjectaccessreviews", namespaced = true, verbs = REVIEW },
  def { group = "authorization.k8s.io", version = "v1", kind = "SubjectAccessReview", plural = "subjectaccessreviews", namespaced = false, verbs = REVIEW },
  def { group = "certificates.k8s.io", version = "v1", kind = "CertificateSigningRequest", plural = "certificatesigningrequests", short = { "csr" }, namespaced = false, subresources = { "approval", "status" } },
  def { group = "discovery.k8s.io", version = "v1", kind = "EndpointSlice", plural = "endpointslices", namespaced = true },
  def { group = "flowcontrol.apiserver.k8s.io", version = "v1beta3", kind = "FlowSchema", plural = "flowschemas", namespaced = false, subresources = { "status" }, max_minor = 28 },
  def { group = "flowcontrol.apiserver.k8s.io", version = "v1beta3", kind = "PriorityLevelConfiguration", plural = "prioritylevelconfigurations", namespaced = false, subresources = { "status" }, max_minor = 28 },
  def { group = "flowcontrol.apiserver.k8s.io", version = "v1", kind = "FlowSchema", plural = "flowschemas", namespaced = false, subresources = { "status" }, min_minor = 29,
        shared_with = "flowschemas.flowcontrol.apiserver.k8s.io" },
  def { group = "flowcontrol.apiserver.k8s.io", version = "v1", kind = "PriorityLevelConfiguration", plural = "prioritylevelconfigurations", namespaced = false, subresources = { "status" }, min_minor = 29,
        shared_with = "prioritylevelconfigurations.flowcontrol.apiserver.k8s.io" },
  def { group = "networking.k8s.io", version = "v1", kind = "NetworkPolicy", plural = "networkpolicies", short = { "netpol" }, namespaced = true },
  def { group = "networking.k8s.io", version = "v1", kind = "IPAddress", plural = "ipaddresses", short = { "ip" }, namespaced = false, min_minor = 33 },
  def { group = "networking.k8s.io", version = "v1", kind = "ServiceCIDR", plural = "servicecidrs", namespaced = false, subresources = { "status" }, min_minor = 33 },
  def { group = "node.k8s.io", version = "v1", kind = "RuntimeClass", plural = "runtimeclasses", namespaced = false },
  def { group = "storage.k8s.io", version = "v1", kind = "CSIDriver", plural = "csidrivers", namespaced = false },
  def { group = "storage.k8s.io", version = "v1", kind = "CSINode", plural = "csinodes", namespaced = false },
  def { group = "storage.k8s.io", version = "v1", kind = "CSIStorageCapacity", plural = "csistoragecapacities", namespaced = true },
  def { group = "storage.k8s.io", version = "v1", kind = "VolumeAttachment", plural = "volumeattachments", namespaced = false, subresources = { "status" } },
}

-- The client's types that a minor version does not serve (SelfSubjectReview went GA in 1.28).
local RANGES = {
  ["selfsubjectreviews.authentication.k8s.io/v1"] = { min = 28 },
}

M.list = {}
for _, t in ipairs(require("vq.kube.types").list) do M.list[#M.list + 1] = t end
for _, t in ipairs(EXTRA) do M.list[#M.list + 1] = t end

M.by_key, M.by_gv = {}, {}
for _, t in ipairs(M.list) do
  -- a type served as two versions (flowcontrol v1beta3, v1) is stored once, by its first
  M.by_key[t.key] = M.by_key[t.key] or t
  local gv = t.api_version
  M.by_gv[gv] = M.by_gv[gv] or {}
  M.by_gv[gv][t.plural] = t
end

--- True when the server of that minor version serves t.
function M.served(t, minor)
  local r = RANGES[t.key .. "/" .. t.version] or {}
  local min, max = t.min_minor or r.min, t.max_minor or r.max
  return (not min or minor >= min) and (not max or minor <= max)
end

-- Add t's group (in order of first appearance) and its version to the list of groups.
local function add_group_version(out, by_name, t)
  local g = by_name[t.group]
  if not g then
    g = { name = t.group, version = t.version, versions = {} }
    by_name[t.group] = g
    out[#out + 1] = g
  end
  for _, v in ipairs(g.versions) do
    if v == t.version then return end
  end
  g.versions[#g.versions + 1] = t.version
end

--- Groups in the order the real apiserver lists them, each with the versions a server of
--- that minor version serves (the preferred first).
function M.groups(minor)
  local by_name, out = {}, {}
  for _, t in ipairs(M.list) do
    if t.group ~= "" and (not minor or M.served(t, minor)) then add_group_version(out, by_name, t) end
  end
  return out
end

--- The type served at group/version/plural, or nil.
function M.lookup(group, version, plural)
  local gv = group == "" and version or (group .. "/" .. version)
  return M.by_gv[gv] and M.by_gv[gv][plural]
end

--- The type for an object's apiVersion and kind.
function M.for_object(obj)
  for _, t in ipairs(M.list) do
    if t.api_version == obj.apiVersion and t.kind == obj.kind then return t end
  end
end

--- Storage key: core and events.k8s.io events are one store, as in the real apiserver.
function M.store_key(t) return t.shared_with or t.key end

-- Kube-aware version order (v2, v1, v1beta2, v1beta1, v1alpha1, then others by name).
M.version_less = require("vq.kube.types").version_less

-- ---- the types of one simulator ----

-- The built-in types above are the same for every simulator; the custom ones a
-- simulator's CustomResourceDefinitions define are its own, layered over them.
local Registry = {}
Registry.__index = Registry

--- An empty registry: the built-in types only.
function M.registry()
  return setmetatable({ crds = {}, custom = {}, all = M.list, by_key = {}, by_gv = {} }, Registry)
end

local function custom_before(a, b)
  if a.group ~= b.group then return a.group < b.group end
  if a.version ~= b.version then return M.version_less(a.version, b.version) end
  return a.plural < b.plural
end

--- Serve the types of a CRD (by its name), replacing what it served before; nil stops serving them.
function Registry:set(crd_name, types)
  self.crds[crd_name] = types
  local custom = {}
  for _, list in pairs(self.crds) do
    for _, t in ipairs(list) do custom[#custom + 1] = t end
  end
  table.sort(custom, custom_before)
  self.custom, self.by_key, self.by_gv = custom, {}, {}
  local all = { table.unpack(M.list) }
  for _, t in ipairs(custom) do
    all[#all + 1] = t
    if not t.shared_with then self.by_key[t.key] = t end
    self.by_gv[t.api_version] = self.by_gv[t.api_version] or {}
    self.by_gv[t.api_version][t.plural] = t
  end
  self.all = all
end

--- The types a CRD serves (by its name), or nil.
function Registry:of(crd_name) return self.crds[crd_name] end

--- Every type served, built-in first (do not modify the list).
function Registry:list() return self.all end

--- The type of a resource key ("pods", "widgets.example.com"), or nil.
function Registry:get(key) return M.by_key[key] or self.by_key[key] end

--- The type served at group/version/plural, or nil.
function Registry:lookup(group, version, plural)
  local t = M.lookup(group, version, plural)
  if t then return t end
  local gv = self.by_gv[group == "" and version or (group .. "/" .. version)]
  return gv and gv[plural]
end

--- The type for an object's apiVersion and kind.
function Registry:for_object(obj)
  local t = M.for_object(obj)
  if t then return t end
  for _, c in ipairs(self.custom) do
    if c.api_version == obj.apiVersion and c.kind == obj.kind then return c end
  end
end

--- The groups as M.groups lists them, the custom ones after the built-in ones as the
--- aggregator orders them (equal priority: by name), their versions in kube-aware order.
function Registry:groups(minor)
  local out, by_name = M.groups(minor), {}
  for _, g in ipairs(out) do by_name[g.name] = g end
  for _, t in ipairs(self.custom) do
    if not t.unpublished then add_group_version(out, by_name, t) end
  end
  return out
end

return M
