-- codec_bench: vq's json against Debian's lua-cjson on a ~10 MB Kubernetes-style Pod list.
--
--   vqlua bench/codec_bench.lua [megabytes] [runs]     (defaults: 10 MB, best of 7)
--
-- Measure with an optimized build (the project's default, RelWithDebInfo): lua-cjson is a -O2
-- library, and a Debug tree compiles bindings/json.c with -O0.
--
-- The list, as many Pods as make `megabytes` of text, is generated deterministically (a fixed
-- LCG, sorted keys, compact as the API server sends it) into a temporary file and read back.
-- Each codec then decodes it, encodes what it decoded, and does both in one go; times are wall
-- clock, best of `runs`, with a full collection before every timed run.
-- BENCH_KEEP=path keeps the generated file at that path.
local json = require "json"
local cjson = require "cjson"

local megabytes = tonumber(arg[1]) or 10
local runs = tonumber(arg[2]) or 7

local clock = os.clock
do
  local ok, uv = pcall(require, "luv")
  if ok then clock = function() return uv.hrtime() / 1e9 end end
end

-- ---- a deterministic Kubernetes-style list ----

local seed = 20240501
local function random(n)
  seed = (seed * 1103515245 + 12345) % 2147483648
  return (seed >> 8) % n
end

local function hex(n)
  local t = {}
  for i = 1, n do t[i] = ("%x"):format(random(16)) end
  return table.concat(t)
end

local function uid() return ("%s-%s-%s-%s-%s"):format(hex(8), hex(4), hex(4), hex(4), hex(12)) end

local function timestamp()
  return ("2024-%02d-%02dT%02d:%02d:%02dZ"):format(1 + random(12), 1 + random(28), random(24),
    random(60), random(60))
end

local tiers = {"frontend", "backend", "cache", "worker", "batch"}

local function container(app, i)
  return {
    name = app .. "-" .. i,
    image = ("registry.example.com/team-%d/%s:1.%d.%d"):format(random(9), app, random(30), random(9)),
    imagePullPolicy = "IfNotPresent",
    ports = {{containerPort = 8080 + i, protocol = "TCP", name = "http"}},
    env = {
      {name = "LOG_LEVEL", value = "info"},
      {name = "POD_NAME", valueFrom = {fieldRef = {apiVersion = "v1", fieldPath = "metadata.name"}}},
    },
    resources = {
      requests = {cpu = ("%dm"):format(50 * (1 + random(10))),
                  memory = ("%dMi"):format(64 * (1 + random(8)))},
      limits = {cpu = tostring(1 + random(4)), memory = ("%dMi"):format(512 * (1 + random(4)))},
    },
    readinessProbe = {httpGet = {path = "/healthz", port = 8080 + i}, periodSeconds = 10},
    volumeMounts = {{name = "kube-api-access-" .. hex(5), readOnly = true,
                     mountPath = "/var/run/secrets/kubernetes.io/serviceaccount"}},
    terminationMessagePath = "/dev/termination-log",
    terminationMessagePolicy = "File",
  }
end

local function pod(n)
  local app = ("svc-%03d"):format(random(400))
  local hash = hex(10)
  local name = ("%s-%s-%s"):format(app, hash, hex(5))
  local ns = ("team-%d"):format(random(40))
  local ip = ("10.244.%d.%d"):format(random(256), random(256))
  local containers, statuses = {}, {}
  for i = 1, random(5) == 0 and 2 or 1 do
    containers[i] = container(app, i)
    statuses[i] = {
      name = containers[i].name, ready = true, started = true, restartCount = random(3),
      image = containers[i].image,
      imageID = "registry.example.com/team/" .. app .. "@sha256:" .. hex(64),
      containerID = "containerd://" .. hex(64),
      state = {running = {startedAt = timestamp()}}, lastState = {},
    }
  end
  local applied = ('{"apiVersion":"v1","kind":"Pod","metadata":{"annotations":{},"labels":{"app":"%s"},'
    .. '"name":"%s","namespace":"%s"},"spec":{"containers":[{"image":"%s","name":"%s"}]}}\n')
    :format(app, name, ns, containers[1].image, containers[1].name)
  return {
    apiVersion = "v1", kind = "Pod",
    metadata = {
      name = name, generateName = app .. "-" .. hash .. "-", namespace = ns, uid = uid(),
      resourceVersion = tostring(1000000 + n * 7 + random(7)), creationTimestamp = timestamp(),
      labels = {["app.kubernetes.io/name"] = app, ["app.kubernetes.io/instance"] = app .. "-" .. random(5),
                ["pod-template-hash"] = hash, tier = tiers[1 + random(#tiers)]},
      annotations = {["kubectl.kubernetes.io/last-applied-configuration"] = applied,
                     ["prometheus.io/scrape"] = "true", ["prometheus.io/port"] = "9090"},
      ownerReferences = {{apiVersion = "apps/v1", kind = "ReplicaSet", name = app .. "-" .. hash,
                          uid = uid(), controller = true, blockOwnerDeletion = true}},
    },
    spec = {
      containers = containers,
      volumes = {{name = "kube-api-access-" .. hex(5), projected = {defaultMode = 420, sources = {
        {serviceAccountToken = {expirationSeconds = 3607, path = "token"}},
        {configMap = {name = "kube-root-ca.crt", items = {{key = "ca.crt", path = "ca.crt"}}}}}}}},
      nodeName = ("node-%02d"):format(random(60)), restartPolicy = "Always",
      terminationGracePeriodSeconds = 30, dnsPolicy = "ClusterFirst",
      serviceAccountName = "default", schedulerName = "default-scheduler", priority = 0,
      enableServiceLinks = true, preemptionPolicy = "PreemptLowerPriority",
      securityContext = {}, nodeSelector = {["kubernetes.io/os"] = "linux"},
      tolerations = {
        {key = "node.kubernetes.io/not-ready", operator = "Exists", effect = "NoExecute",
         tolerationSeconds = 300}},
    },
    status = {
      phase = "Running", qosClass = "Burstable", hostIP = ("10.0.%d.%d"):format(random(4), random(256)),
      podIP = ip, podIPs = {{ip = ip}}, startTime = timestamp(),
      conditions = {
        {type = "Initialized", status = "True", lastProbeTime = "null", lastTransitionTime = timestamp()},
        {type = "Ready", status = "True", lastProbeTime = "null", lastTransitionTime = timestamp()},
        {type = "PodScheduled", status = "True", lastProbeTime = "null", lastTransitionTime = timestamp()}},
      containerStatuses = statuses,
    },
  }
end

-- A tiny serializer of our own (sorted keys, compact), so that the input does not depend on
-- either codec under test. "null" strings become JSON null.
local function write(out, v)
  local t = type(v)
  if t == "string" then
    if v == "null" then out[#out + 1] = "null"
    else out[#out + 1] = '"' .. v:gsub('[%c"\\]', function(c)
      return ({['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n"})[c] or ("\\u%04x"):format(c:byte())
    end) .. '"' end
  elseif t == "number" or t == "boolean" then
    out[#out + 1] = tostring(v)
  else
    if #v > 0 then
      out[#out + 1] = "["
      for i, x in ipairs(v) do
        if i > 1 then out[#out + 1] = "," end
        write(out, x)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = k end
      table.sort(keys)
      if #keys == 0 then out[#out + 1] = "{}" return end
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        out[#out + 1] = (i > 1 and ',"' or '"') .. k .. '":'
        write(out, v[k])
      end
      out[#out + 1] = "}"
    end
  end
end

-- Pods until the text reaches `bytes`.
local function generate(bytes)
  local parts, size, count = {}, 0, 0
  while size < bytes do
    count = count + 1
    local out = {}
    write(out, pod(count))
    parts[count] = table.concat(out)
    size = size + #parts[count] + 1
  end
  local head = '{"apiVersion":"v1","items":['
  local tail = '],"kind":"List","metadata":{"resourceVersion":"12345678"}}\n'
  return head .. table.concat(parts, ",") .. tail, count
end

local path = os.getenv("BENCH_KEEP") or os.tmpname()
local pods
do
  local text
  text, pods = generate(megabytes * 1e6)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end
local f = assert(io.open(path, "rb"))
local text = f:read("a")
f:close()
if not os.getenv("BENCH_KEEP") then os.remove(path) end

-- ---- timing ----

-- The codecs take turns, run after run, so that both see the same state of the machine. Each
-- run encodes the value it just decoded: a value kept from the start would sit wherever the
-- heap had holes then, and encoding it would measure that more than the encoder.
local function measure(codecs)
  local results = {}
  for i, codec in ipairs(codecs) do
    results[i] = {name = codec.name, decode = math.huge, encode = math.huge, both = math.huge}
  end
  local function time(r, key, fn, ...)
    collectgarbage("collect")
    local t0 = clock()
    local result = fn(...)
    r[key] = math.min(r[key], clock() - t0)
    return result
  end
  for _ = 1, runs do
    for i, codec in ipairs(codecs) do
      local r = results[i]
      local value = time(r, "decode", codec.decode, text)
      time(r, "encode", codec.encode, value)
      value = nil
      time(r, "both", function() return codec.encode(codec.decode(text)) end)
    end
  end
  return results
end

-- The codecs must agree on what the text says before their speed means anything.
local function same(a, b)
  if a == json.null or b == cjson.null then return a == json.null and b == cjson.null end
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end
do
  local a, b = json.decode(text), cjson.decode(text)
  assert(#a.items == pods and same(a, b), "the codecs decode the text differently")
  assert(same(json.decode(json.encode(a)), cjson.decode(cjson.encode(b))), "round trips differ")
end

local results = measure({{name = "vq json", decode = json.decode, encode = json.encode},
                         {name = "lua-cjson", decode = cjson.decode, encode = cjson.encode}})
local ours, theirs = results[1], results[2]

print(("input: %d pods, %.1f MB (%d bytes); best of %d runs; %s"):format(
  pods, #text / 1e6, #text, runs, _VERSION))
print(("%-10s %10s %10s %14s"):format("codec", "decode", "encode", "decode+encode"))
for _, r in ipairs(results) do
  print(("%-10s %8.1fms %8.1fms %12.1fms"):format(r.name, r.decode * 1e3, r.encode * 1e3, r.both * 1e3))
end
print(("lua-cjson time / vq time (above 1: vq is faster): decode %.2f, encode %.2f, decode+encode %.2f"):format(
  theirs.decode / ours.decode, theirs.encode / ours.encode, theirs.both / ours.both))
