-- The built-in Kubernetes resource types: group, version, kind, plural, short names,
-- scope, verbs and subresources, as the apiserver's discovery lists them. The client
-- resolves names from this table without asking the server; the simulator serves it. def
-- completes a type, version_less orders a group's versions: the client and the simulator share both.
local M = {}

local ALL = { "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch" }
local RO_CREATE = { "create" }

--- Complete a type from its group, version, kind and plural: singular, verbs, short names,
--- api_version and key (plural.group) as the client and the simulator name it.
local function def(t)
  if t.singular == "" then t.singular = nil end
  t.singular = t.singular or t.kind:lower()
  t.verbs = t.verbs or ALL
  t.short = t.short or {}
  t.group = t.group or ""
  t.api_version = t.group == "" and t.version or (t.group .. "/" .. t.version)
  t.key = t.group == "" and t.plural or (t.plural .. "." .. t.group)
  return t
end

M.list = {
  def { kind = "Namespace", version = "v1", plural = "namespaces", short = { "ns" }, namespaced = false,
        verbs = { "create", "delete", "get", "list", "patch", "update", "watch" } },
  def { kind = "Node", version = "v1", plural = "nodes", short = { "no" }, namespaced = false, subresources = { "status", "proxy" } },
  def { kind = "Pod", version = "v1", plural = "pods", short = { "po" }, namespaced = true, categories = { "all" },
        subresources = { "status", "log", "exec", "proxy", "eviction", "ephemeralcontainers", "attach", "portforward", "binding" } },
  def { kind = "Service", version = "v1", plural = "services", short = { "svc" }, namespaced = true, categories = { "all" },
        subresources = { "status", "proxy" }, verbs = { "create", "delete", "deletecollection", "get", "list", "patch", "update", "watch" } },
  def { kind = "Endpoints", version = "v1", plural = "endpoints", singular = "endpoints", short = { "ep" }, namespaced = true },
  def { kind = "Secret", version = "v1", plural = "secrets", namespaced = true },
  def { kind = "ConfigMap", version = "v1", plural = "configmaps", short = { "cm" }, namespaced = true },
  def { kind = "ServiceAccount", version = "v1", plural = "serviceaccounts", short = { "sa" }, namespaced = true },
  def { kind = "PersistentVolume", version = "v1", plural = "persistentvolumes", short = { "pv" }, namespaced = false, subresources = { "status" } },
  def { kind = "PersistentVolumeClaim", version = "v1", plural = "persistentvolumeclaims", short = { "pvc" }, namespaced = true, subresources = { "status" } },
  def { kind = "Event", version = "v1", plural = "events", short = { "ev" }, namespaced = true },
  def { kind = "ReplicationController", version = "v1", plural = "replicationcontrollers", short = { "rc" }, namespaced = true, categories = { "all" }, subresources = { "status", "scale" } },
  def { kind = "ResourceQuota", version = "v1", plural = "resourcequotas", short = { "quota" }, namespaced = true, subresources = { "status" } },
  def { kind = "LimitRange", version = "v1", plural = "limitranges", short = { "limits" }, namespaced = true },
  def { kind = "PodTemplate", version = "v1", plural = "podtemplates", namespaced = true },
  def { kind = "ComponentStatus", version = "v1", plural = "componentstatuses", short = { "cs" }, namespaced = false, verbs = { "get", "list" } },
  def { kind = "Binding", version = "v1", plural = "bindings", namespaced = true, verbs = RO_CREATE },

  def { group = "apps", version = "v1", kind = "StatefulSet", plural = "statefulsets", short = { "sts" }, namespaced = true, categories = { "all" }, subresources = { "status", "scale" } },
  def { group = "apps", version = "v1", kind = "Deployment", plural = "deployments", short = { "deploy" }, namespaced = true, categories = { "all" }, subresources = { "status", "scale" } },
  def { group = "apps", version = "v1", kind = "DaemonSet", plural = "daemonsets", short = { "ds" }, namespaced = true, categories = { "all" }, subresources = { "status" } },
  def { group = "apps", version = "v1", kind = "ReplicaSet", plural = "replicasets", short = { "rs" }, namespaced = true, categories = { "all" }, subresources = { "status", "scale" } },
  def { group = "apps", version = "v1", kind = "ControllerRevision", plural = "controllerrevisions", namespaced = true },

  def { group = "batch", version = "v1", kind = "Job", plural = "jobs", namespaced = true, categories = { "all" }, subresources = { "status" } },
  def { group = "batch", version = "v1", kind = "CronJob", plural = "cronjobs", short = { "cj" }, namespaced = true, categories = { "all" }, subresources = { "status" } },

  def { group = "events.k8s.io", version = "v1", kind = "Event", plural = "events", short = { "ev" }, namespaced = true, shared_with = "events" },

  def { group = "rbac.authorization.k8s.io", version = "v1", kind = "ClusterRole", plural = "clusterroles", namespaced = false },
  def { group = "rbac.authorization.k8s.io", version = "v1", kind = "ClusterRoleBinding", plural = "clusterrolebindings", namespaced = false },
  def { group = "rbac.authorization.k8s.io", version = "v1", kind = "Role", plural = "roles", namespaced = true },
  def { group = "rbac.authorization.k8s.io", version = "v1", kind = "RoleBinding", plural = "rolebindings", namespaced = true },

  def { group = "authorization.k8s.io", version = "v1", kind = "SelfSubjectAccessReview", plural = "selfsubjectaccessreviews", namespaced = false, verbs = RO_CREATE },
  def { group = "authorization.k8s.io", version = "v1", kind = "SelfSubjectRulesReview", plural = "selfsubjectrulesreviews", namespaced = false, verbs = RO_CREATE },
  def { group = "authentication.k8s.io", version = "v1", kind = "SelfSubjectReview", plural = "selfsubjectreviews", namespaced = false, verbs = RO_CREATE },

  def { group = "networking.k8s.io", version = "v1", kind = "Ingress", plural = "ingresses", short = { "ing" }, namespaced = true, subresources = { "status" } },
  def { group = "networking.k8s.io", version = "v1", kind = "IngressClass", plural = "ingressclasses", namespaced = false },
  def { group = "storage.k8s.io", version = "v1", kind = "StorageClass", plural = "storageclasses", short = { "sc" }, namespaced = false },
  def { group = "coordination.k8s.io", version = "v1", kind = "Lease", plural = "leases", namespaced = true },
  def { group = "policy", version = "v1", kind = "PodDisruptionBudget", plural = "poddisruptionbudgets", short = { "pdb" }, namespaced = true, subresources = { "status" } },
  def { group = "autoscaling", version = "v2", kind = "HorizontalPodAutoscaler", plural = "horizontalpodautoscalers", short = { "hpa" }, namespaced = true, categories = { "all" }, subresources = { "status" } },
  def { group = "scheduling.k8s.io", version = "v1", kind = "PriorityClass", plural = "priorityclasses", short = { "pc" }, namespaced = false },
  def { group = "apiextensions.k8s.io", version = "v1", kind = "CustomResourceDefinition", plural = "customresourcedefinitions", short = { "crd", "crds" }, namespaced = false, subresources = { "status" } },
}


M.def = def

-- GA before beta before alpha, higher numbers first; versions not of that form after them.
local function version_rank(v)
  local major = v:match("^v(%d+)$")
  if major then return 3, tonumber(major), 0 end
  local m, level, n = v:match("^v(%d+)(%l+)(%d+)$")
  local order = { beta = 2, alpha = 1 }
  if m and order[level] then return order[level], tonumber(m), tonumber(n) end
  return 0, 0, 0
end

--- True when version a sorts before b in the order the apiserver lists a group's versions
--- (v2, v1, v1beta2, v1beta1, v1alpha1, then others by name).
function M.version_less(a, b)
  local la, ma, na = version_rank(a)
  local lb, mb, nb = version_rank(b)
  if la ~= lb then return la > lb end
  if la == 0 then return a < b end
  if ma ~= mb then return ma > mb end
  return na > nb
end

return M
