-- RBAC as a cluster has it: the built-in ClusterRoles (view/edit/admin aggregated from the
-- system:aggregate-to-* roles), the clusterrole-aggregation-controller that fills an
-- aggregated role's rules from the roles its selectors match, and the question the
-- workloads ask (may this service account watch pods at the cluster scope?).
local json = require "json"
local vq = require "vq"
local util = require "sim.util"

local M = {}

local function array(t) return setmetatable(t or {}, json.array_mt) end

local READ = { "get", "list", "watch" }
local WRITE = { "create", "delete", "deletecollection", "patch", "update" }

local function rule(groups, resources, verbs)
  return { apiGroups = array(groups), resources = array(resources), verbs = array(verbs) }
end

local AGG = "rbac.authorization.k8s.io/aggregate-to-"
local BOOT = { ["kubernetes.io/bootstrapping"] = "rbac-defaults" }

local function labels(extra)
  local out = util.copy(BOOT)
  for k, v in pairs(extra or {}) do out[k] = v end
  return out
end

local function aggregated(name, to, extra_labels)
  return {
    metadata = { name = name, labels = labels(extra_labels),
                 annotations = { ["rbac.authorization.kubernetes.io/autoupdate"] = "true" } },
    aggregationRule = { clusterRoleSelectors = array { { matchLabels = { [AGG .. to] = "true" } } } },
    rules = array(),
  }
end

local function plain(name, rules, extra_labels)
  return { metadata = { name = name, labels = labels(extra_labels),
                        annotations = { ["rbac.authorization.kubernetes.io/autoupdate"] = "true" } },
           rules = array(rules) }
end

--- The ClusterRoles every cluster starts with (the part of them runbooks meet).
function M.builtin_roles()
  return {
    plain("cluster-admin", { rule({ "*" }, { "*" }, { "*" }), { nonResourceURLs = array { "*" }, verbs = array { "*" } } }),
    aggregated("admin", "admin"),
    aggregated("edit", "edit", { [AGG .. "admin"] = "true" }),
    aggregated("view", "view", { [AGG .. "edit"] = "true" }),
    plain("system:aggregate-to-view", {
      rule({ "" }, { "configmaps", "endpoints", "persistentvolumeclaims", "persistentvolumeclaims/status", "pods",
                     "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts", "services", "services/status" }, READ),
      rule({ "" }, { "bindings", "events", "limitranges", "namespaces/status", "pods/log", "pods/status",
                     "replicationcontrollers/status", "resourcequotas", "resourcequotas/status" }, READ),
      rule({ "" }, { "namespaces" }, READ),
      rule({ "discovery.k8s.io" }, { "endpointslices" }, READ),
      rule({ "apps" }, { "controllerrevisions", "daemonsets", "daemonsets/status", "deployments", "deployments/scale",
                         "deployments/status", "replicasets", "replicasets/scale", "replicasets/status", "statefulsets",
                         "statefulsets/scale", "statefulsets/status" }, READ),
      rule({ "autoscaling" }, { "horizontalpodautoscalers", "horizontalpodautoscalers/status" }, READ),
      rule({ "batch" }, { "cronjobs", "cronjobs/status", "jobs", "jobs/status" }, READ),
      rule({ "policy" }, { "poddisruptionbudgets", "poddisruptionbudgets/status" }, READ),
      rule({ "networking.k8s.io" }, { "ingresses", "ingresses/status", "networkpolicies" }, READ),
    }, { [AGG .. "view"] = "true" }),
    plain("system:aggregate-to-edit", {
      rule({ "" }, { "pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy" }, READ),
      rule({ "" }, { "serviceaccounts" }, { "impersonate" }),
      rule({ "" }, { "pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy" }, WRITE),
      rule({ "" }, { "configmaps", "events", "persistentvolumeclaims", "replicationcontrollers",
                     "replicationcontrollers/scale", "secrets", "serviceaccounts", "services", "services/proxy" }, WRITE),
      rule({ "apps" }, { "daemonsets", "deployments", "deployments/rollback", "deployments/scale", "replicasets",
                         "replicasets/scale", "statefulsets", "statefulsets/scale" }, WRITE),
      rule({ "batch" }, { "cronjobs", "jobs" }, WRITE),
    }, { [AGG .. "edit"] = "true" }),
    plain("system:aggregate-to-admin", {
      rule({ "authorization.k8s.io" }, { "localsubjectaccessreviews" }, { "create" }),
      rule({ "rbac.authorization.k8s.io" }, { "rolebindings", "roles" }, { "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch" }),
    }, { [AGG .. "admin"] = "true" }),
    plain("system:basic-user", {
      rule({ "authorization.k8s.io" }, { "selfsubjectaccessreviews", "selfsubjectrulesreviews" }, { "create" }),
    }),
  }
end

function M.builtin_bindings()
  return {
    { metadata = { name = "cluster-admin", labels = labels() },
      roleRef = { apiGroup = "rbac.authorization.k8s.io", kind = "ClusterRole", name = "cluster-admin" },
      subjects = array { { apiGroup = "rbac.authorization.k8s.io", kind = "Group", name = "system:masters" } } },
    { metadata = { name = "system:basic-user", labels = labels() },
      roleRef = { apiGroup = "rbac.authorization.k8s.io", kind = "ClusterRole", name = "system:basic-user" },
      subjects = array { { apiGroup = "rbac.authorization.k8s.io", kind = "Group", name = "system:authenticated" } } },
  }
end

-- ---- label selectors as RBAC writes them (matchLabels, matchExpressions) ----

local function expression_matches(e, labels_)
  local v = labels_[e.key]
  local set = {}
  for _, x in ipairs(e.values or {}) do set[x] = true end
  if e.operator == "In" then return v ~= nil and set[v] == true end
  if e.operator == "NotIn" then return v == nil or not set[v] end
  if e.operator == "Exists" then return v ~= nil end
  if e.operator == "DoesNotExist" then return v == nil end
  return false
end

function M.selector_matches(sel, labels_)
  labels_ = labels_ or {}
  if not sel or (next(sel.matchLabels or {}) == nil and #(sel.matchExpressions or {}) == 0) then return false end
  for k, v in pairs(sel.matchLabels or {}) do
    if labels_[k] ~= v then return false end
  end
  for _, e in ipairs(sel.matchExpressions or {}) do
    if not expression_matches(e, labels_) then return false end
  end
  return true
end

-- ---- the aggregation controller ----

local ROLES = "clusterroles.rbac.authorization.k8s.io"
local MANAGER = "clusterrole-aggregation-controller"

--- The rules an aggregated role should hold: those of every other role its selectors
--- match, roles in name order, each rule once.
function M.aggregate_rules(sim, role)
  local out, seen = array(), {}
  for _, sel in ipairs(role.aggregationRule.clusterRoleSelectors or {}) do
    for _, other in ipairs(sim:list(ROLES, nil)) do
      if other.metadata.name ~= role.metadata.name and M.selector_matches(sel, other.metadata.labels) then
        for _, r in ipairs(other.rules or {}) do
          local key = json.encode(r, { sort_keys = true })
          if not seen[key] then
            seen[key] = true
            out[#out + 1] = util.copy(r)
          end
        end
      end
    end
  end
  return out
end

local function same_rules(a, b)
  return json.encode(a or {}, { sort_keys = true }) == json.encode(b or {}, { sort_keys = true })
end

-- One pass over the aggregated roles; true when one changed (nested ones need another).
local function reconcile(sim)
  local changed = false
  for _, role in ipairs(sim:list(ROLES, nil)) do
    if role.aggregationRule and not role.metadata.deletionTimestamp then
      local want = M.aggregate_rules(sim, role)
      if not same_rules(want, role.rules) then
        local copy = util.copy(role)
        copy.rules = want
        if sim:update(ROLES, copy, { manager = MANAGER }) then changed = true end
      end
    end
  end
  return changed
end

--- Start the controller: it reconciles whenever a ClusterRole changes.
function M.start_aggregation(sim)
  local dirty = vq.event()
  dirty:set()
  sim.store:on_change(function(ev)
    if ev.key == ROLES then dirty:set() end
  end)
  sim:spawn(function()
    while not sim.stopped do
      dirty:wait()
      dirty:clear()
      for _ = 1, 10 do
        if not reconcile(sim) then break end
      end
    end
  end)
end

M.reconcile = reconcile

-- ---- authorization: does a subject hold a permission at the cluster scope? ----

local function has(list, want)
  for _, x in ipairs(list or {}) do
    if x == "*" or x == want then return true end
  end
  return false
end

local function rule_allows(r, verb, group, resource)
  return has(r.verbs, verb) and has(r.apiGroups, group) and has(r.resources, resource)
end

local function subject_matches(s, sa_ns, sa_name)
  if s.kind == "ServiceAccount" then return s.name == sa_name and (s.namespace or "") == sa_ns end
  if s.kind == "Group" then
    return s.name == "system:serviceaccounts" or s.name == "system:serviceaccounts:" .. sa_ns
      or s.name == "system:authenticated"
  end
  return false
end

--- True when the service account ns/name may `verb` `resource` (of API group `group`)
--- at the cluster scope, through a ClusterRoleBinding; else false, the apiserver's message.
function M.allows(sim, sa_ns, sa_name, verb, group, resource)
  for _, b in ipairs(sim:list("clusterrolebindings.rbac.authorization.k8s.io", nil)) do
    local bound = false
    for _, s in ipairs(b.subjects or {}) do
      if subject_matches(s, sa_ns, sa_name) then bound = true end
    end
    local role = bound and b.roleRef and b.roleRef.kind == "ClusterRole" and sim:get(ROLES, nil, b.roleRef.name)
    for _, r in ipairs(role and role.rules or {}) do
      if rule_allows(r, verb, group, resource) then return true end
    end
  end
  return false, ('%s is forbidden: User "system:serviceaccount:%s:%s" cannot %s resource "%s" in API group "%s" at the cluster scope')
    :format(resource, sa_ns, sa_name, verb, resource, group)
end

return M
