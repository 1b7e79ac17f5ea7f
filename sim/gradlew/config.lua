-- The tools dir's configuration as the deployment tool reads it: targetCluster's
-- cluster.properties, deploy.yaml and secrets.yaml, and the Secrets secrets.yaml describes.
-- Errors are nil, message: the stand-in prints them under "What went wrong".
local properties = require "vq.properties"
local yaml = require "vq.yaml"
local base64 = require "vq.base64"
local world = require "sim.world"
local util = require "sim.util"
local files = require "sim.gradlew.files"

local M = {}

M.PROVIDERS = { "aws", "azure", "alicloud", "openstack", "kubeadm" }
M.SHARED_NAMESPACE = "shared"
M.DEFAULT_NAMESPACE = "vantiq"
M.GENERATED = "deploy/sensitive/generated-secrets.yaml"

local function read_in(target, name, hint)
  local text = files.read(target .. "/" .. name)
  if not text then return nil, ("targetCluster/%s not found: %s"):format(name, hint) end
  return text
end

function M.cluster_properties(target)
  local text, err = read_in(target, "cluster.properties", "run configureVantiqSystem first")
  if not text then return nil, err end
  local map, perr = properties.parse(text, { file = "targetCluster/cluster.properties" })
  if not map then return nil, perr.message end
  return map
end

--- development or production, as cluster.properties says (development when unset).
function M.deployment(props)
  local d = props.deployment
  if d == nil or d == "" then return "development" end
  if not world.SIZES[d] then
    return nil, ("cluster.properties: deployment must be development or production, not '%s'"):format(d)
  end
  return d
end

function M.check_provider(props)
  for _, p in ipairs(M.PROVIDERS) do
    if props.provider == p then return true end
  end
  return nil, ("cluster.properties: provider must be one of %s, not '%s'"):format(table.concat(M.PROVIDERS, "|"),
    tostring(props.provider))
end

--- The replica counts deployVantiq resets to, by StatefulSet name.
function M.replicas(deployment)
  local size = world.SIZES[deployment]
  return { vantiq = size.vantiq, ["metrics-collector"] = size.metrics, ["vision-analytics"] = size.vision }
end

local function decode(text, name)
  local docs, err = yaml.decode_all(text)
  if not docs then return nil, ("targetCluster/%s: %s"):format(name, err.message) end
  local doc = docs[1]
  if doc == nil or doc == yaml.null then return {} end
  if type(doc) ~= "table" then return nil, ("targetCluster/%s is not a mapping"):format(name) end
  return doc
end

function M.deploy_yaml(target)
  local text, err = read_in(target, "deploy.yaml", "run configureVantiqSystem first")
  if not text then return nil, err end
  return decode(text, "deploy.yaml")
end

local function dig(t, ...)
  for _, k in ipairs { ... } do
    if type(t) ~= "table" then return nil end
    t = t[k]
  end
  if t == yaml.null then return nil end
  return t
end
M.dig = dig

local function scalar_text(v)
  if math.type(v) == "float" then return ("%g"):format(v) end
  if v ~= nil then return tostring(v) end
end

function M.image_tag(deploy)
  local tag = scalar_text(dig(deploy, "vantiq", "image", "tag"))
  if not tag or tag == "" then return nil, "targetCluster/deploy.yaml: vantiq.image.tag is not set" end
  return tag
end

--- The TLS files deploy.yaml gives nginx (names under deploy/sensitive).
function M.nginx_tls(deploy)
  local tls = dig(deploy, "nginx", "controller", "tls") or {}
  return scalar_text(tls.cert) or "cert.pem", scalar_text(tls.key) or "key.pem"
end

function M.secrets_yaml(target)
  local text, err = read_in(target, "secrets.yaml", "run setupCluster first")
  if not text then return nil, err end
  return decode(text, "secrets.yaml")
end

-- ---- Secrets ----

--- The Helm release a Secret belongs to (its chart's annotations).
function M.release_of(group, name)
  if group == "vantiq" then return "vantiq" end
  if name == "default-ssl-cert" then return "nginx-ingress" end
  return name
end

function M.namespace_of(group, vantiq_ns)
  if group == "vantiq" then return vantiq_ns end
  return group
end

local function secret_type(entry, data)
  if entry.type then return tostring(entry.type) end
  if data["tls.crt"] and data["tls.key"] then return "kubernetes.io/tls" end
  if data[".dockerconfigjson"] then return "kubernetes.io/dockerconfigjson" end
  return "Opaque"
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(type(t) == "table" and t or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

local function entry_data(target, where, entry)
  local data = {}
  for _, k in ipairs(sorted_keys(entry.data)) do
    local v = scalar_text(dig(entry.data, k))
    if not v or v == "" then return nil, ("secrets.yaml: %s.data.%s is empty"):format(where, k) end
    data[k] = v
  end
  for _, k in ipairs(sorted_keys(entry.files)) do
    local rel = scalar_text(dig(entry.files, k)) or ""
    local text = files.read(target .. "/" .. rel)
    if not text then
      return nil, ("secrets.yaml: %s.files.%s names %s, which does not exist in targetCluster"):format(where, k, rel)
    end
    data[k] = text
  end
  return data
end

--- A Secret as the chart labels it.
function M.secret_object(name, ns, release, stype, data)
  local encoded = {}
  for k, v in pairs(data) do encoded[k] = base64.encode(v) end
  return { apiVersion = "v1", kind = "Secret", type = stype, data = encoded,
    metadata = { name = name, namespace = ns, labels = { ["app.kubernetes.io/managed-by"] = "Helm" },
      annotations = { ["meta.helm.sh/release-name"] = release, ["meta.helm.sh/release-namespace"] = ns } } }
end

--- Every Secret secrets.yaml describes, built from its values and deploy/sensitive files:
--- a list of {group =, object =}, or nil, message.
function M.secrets(target, vantiq_ns)
  local doc, err = M.secrets_yaml(target)
  if not doc then return nil, err end
  local out = {}
  for _, group in ipairs(sorted_keys(doc)) do
    for _, name in ipairs(sorted_keys(doc[group])) do
      local entry = dig(doc, group, name)
      if type(entry) == "table" then
        local data, derr = entry_data(target, group .. "." .. name, entry)
        if not data then return nil, derr end
        local ns = M.namespace_of(group, vantiq_ns)
        out[#out + 1] = { group = group,
          object = M.secret_object(name, ns, M.release_of(group, name), secret_type(entry, data), data) }
      end
    end
  end
  return out
end

--- The files secrets.yaml names (relative to targetCluster), for setupCluster's placeholders.
function M.secret_files(target)
  local doc = M.secrets_yaml(target) or {}
  local out = {}
  for _, group in ipairs(sorted_keys(doc)) do
    for _, name in ipairs(sorted_keys(doc[group])) do
      for _, k in ipairs(sorted_keys(dig(doc, group, name, "files"))) do
        out[#out + 1] = scalar_text(dig(doc, group, name, "files", k))
      end
    end
  end
  return out
end

-- ---- what generateSecrets leaves for the deploy tasks ----

function M.write_generated(target, list)
  local docs = {}
  for i, s in ipairs(list) do
    local obj = util.copy(s.object)
    obj.metadata.annotations["k8sdeploy.vantiq.com/group"] = s.group
    docs[i] = obj
  end
  local text = assert(yaml.encode_all(docs, { order = { "apiVersion", "kind", "metadata", "type", "data" } }))
  files.write(target .. "/" .. M.GENERATED, "# generated by generateSecrets from secrets.yaml: do not edit\n" .. text,
    tonumber("600", 8))
end

--- The Secrets generateSecrets generated ({group =, object =} as M.secrets), or nil when it
--- has not run.
function M.read_generated(target)
  local text = files.read(target .. "/" .. M.GENERATED)
  if not text then return nil end
  local docs, err = yaml.decode_all(text)
  if not docs then return nil, ("targetCluster/%s: %s"):format(M.GENERATED, err.message) end
  local out = {}
  for _, obj in ipairs(docs) do
    if type(obj) == "table" then
      local group = dig(obj, "metadata", "annotations", "k8sdeploy.vantiq.com/group")
      obj.metadata.annotations["k8sdeploy.vantiq.com/group"] = nil
      out[#out + 1] = { group = group, object = obj }
    end
  end
  return out
end

return M
