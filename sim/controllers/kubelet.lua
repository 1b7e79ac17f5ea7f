-- The kubelet of every simulated node: for each pod bound to a node, a pod worker mounts
-- volumes, pulls images, runs init containers then containers (each a program), restarts
-- them by the pod's restart policy with CrashLoopBackOff back-off, reports the pod's
-- status as the real kubelet does, and stops the pod when it is deleted.
local vq = require "vq"
local json = require "json"
local util = require "sim.util"
local resources = require "sim.resources"
local R = require "sim.controllers.runtime"
local programs = require "sim.controllers.programs"

local M = {}

local COMPONENT = "kubelet"
local BACKOFF_START, BACKOFF_MAX = 10, 300
local BACKOFF_RESET = 600          -- a container that ran this long starts its back-off anew
local SANDBOX_DELAY = 0.5
local RELIST_DELAY = 1             -- PLEG: how long before an exited container is seen
local null = json.null
local array = R.array

local Worker = {}
Worker.__index = Worker

-- ---- small pieces ----

local function field_path(cs)
  return ("spec.%s{%s}"):format(cs.init and "initContainers" or "containers", cs.name)
end

local function pod_ref(w) return ("%s_%s(%s)"):format(w.name, w.ns, w.uid) end

local function qos_class(spec)
  local any, guaranteed = false, true
  for _, list in ipairs { spec.containers or {}, spec.initContainers or {} } do
    for _, c in ipairs(list) do
      local res = c.resources or {}
      local req, lim = res.requests or {}, res.limits or {}
      if next(req) or next(lim) then any = true end
      for _, r in ipairs { "cpu", "memory" } do
        local l = lim[r]
        local q = req[r] or l
        if not l or R.quantity(q) ~= R.quantity(l) then guaranteed = false end
      end
    end
  end
  if not any then return "BestEffort" end
  return guaranteed and "Guaranteed" or "Burstable"
end

local function image_ref(image)
  local name = image:gsub("@.*$", "")
  local repo = name:match("^(.-):[^/:]+$") or name
  if not repo:find("/", 1, true) then repo = "library/" .. repo end
  local first = repo:match("^([^/]+)/")
  if not (first and (first:find("[.:]") or first == "localhost")) then repo = "docker.io/" .. repo end
  return repo
end

local function image_id(image)
  local digest = image:match("@(sha256:%x+)$") or ("sha256:" .. R.hex64(image))
  return image_ref(image) .. "@" .. digest
end

local function image_size(image) return 20000000 + R.fnv32a(image) % 180000000 end

-- ---- the pod worker ----

function M.new_worker(kl, pod)
  local w = setmetatable({
    kl = kl, sim = kl.sim, rt = kl.rt, uid = pod.metadata.uid, ns = pod.metadata.namespace,
    name = pod.metadata.name, node = pod.spec.nodeName, pod = pod, containers = {}, init = {}, main = {},
  }, Worker)
  local function add(list, c, init, i)
    local cs = { spec = c, name = c.name, init = init, index = i, restart_count = 0, ready = false, started = false,
                 state = { waiting = { reason = init and "PodInitializing" or "ContainerCreating" } } }
    list[#list + 1] = cs
    w.containers[#w.containers + 1] = cs
  end
  for i, c in ipairs(pod.spec.initContainers or {}) do add(w.init, c, true, i) end
  local has_init = #w.init > 0
  for i, c in ipairs(pod.spec.containers or {}) do add(w.main, c, false, i) end
  if has_init then
    for _, cs in ipairs(w.main) do cs.state = { waiting = { reason = "PodInitializing" } } end
  end
  return w
end

function Worker:current()
  local pod = self.sim:get("pods", self.ns, self.name)
  if pod and pod.metadata.uid == self.uid then return pod end
end

function Worker:event(typ, reason, message, cs)
  local pod = self:current() or self.pod
  self.sim.event(pod, typ, reason, message, COMPONENT, { host = self.node, field_path = cs and field_path(cs) or nil })
end

-- ---- status, as kubelet's generateAPIPodStatus puts it together ----

local function container_status(cs)
  return {
    name = cs.name, image = cs.spec.image, imageID = cs.image_id or "", containerID = cs.container_id,
    ready = cs.ready, started = cs.started, restartCount = cs.restart_count,
    state = cs.state, lastState = cs.last_state or {},
  }
end

local function names(list)
  local out = {}
  for _, cs in ipairs(list) do out[#out + 1] = cs.name end
  return "[" .. table.concat(out, " ") .. "]"
end

function Worker:initialized()
  for _, cs in ipairs(self.init) do
    local t = cs.state.terminated
    if not (t and t.exitCode == 0) then return false end
  end
  return true
end

function Worker:phase()
  local policy = self.pod.spec.restartPolicy or "Always"
  if not self:initialized() then
    for _, cs in ipairs(self.init) do
      local t = cs.state.terminated
      if t and t.exitCode ~= 0 and policy == "Never" then return "Failed" end
    end
    return "Pending"
  end
  local waiting, running, succeeded, failed, restarting = 0, 0, 0, 0, 0
  for _, cs in ipairs(self.main) do
    local st = cs.state
    if st.running then running = running + 1
    elseif st.terminated then
      if st.terminated.exitCode == 0 then succeeded = succeeded + 1 else failed = failed + 1 end
    elseif st.waiting then
      if cs.last_state and cs.last_state.terminated then restarting = restarting + 1 else waiting = waiting + 1 end
    end
  end
  if waiting > 0 then return "Pending" end
  if running > 0 or restarting > 0 then return "Running" end
  if policy == "Always" then return "Running" end
  if failed > 0 then return policy == "Never" and "Failed" or "Running" end
  return "Succeeded"
end

local CONDITION_ORDER = { PodReadyToStartContainers = 1, Initialized = 2, Ready = 3, ContainersReady = 4, PodScheduled = 5 }

local function condition(typ, status, reason, message)
  return { type = typ, status = status, reason = reason, message = message, lastProbeTime = null }
end

function Worker:initialized_condition(completed)
  local pending = {}
  for _, cs in ipairs(self.init) do
    local t = cs.state.terminated
    if not (t and t.exitCode == 0) then pending[#pending + 1] = cs end
  end
  if #pending == 0 or completed then
    return condition("Initialized", "True", (#self.init > 0 and completed) and "PodCompleted" or nil)
  end
  return condition("Initialized", "False", "ContainersNotInitialized", "containers with incomplete status: " .. names(pending))
end

--- The Ready and ContainersReady conditions.
function Worker:readiness_conditions(completed)
  if completed then
    return condition("Ready", "False", "PodCompleted"), condition("ContainersReady", "False", "PodCompleted")
  end
  local unready = {}
  for _, cs in ipairs(self.main) do if not cs.ready then unready[#unready + 1] = cs end end
  if #unready > 0 then
    local msg = "containers with unready status: " .. names(unready)
    return condition("Ready", "False", "ContainersNotReady", msg), condition("ContainersReady", "False", "ContainersNotReady", msg)
  end
  if not self.kl:node_ready(self.node) then
    -- the node lifecycle controller marks the pods of a NotReady node not ready
    return condition("Ready", "False"), condition("ContainersReady", "True")
  end
  return condition("Ready", "True"), condition("ContainersReady", "True")
end

function Worker:build_status(pod)
  local st = util.copy(pod.status or {})
  local now = R.now(self.sim)
  local phase = self.final_phase or self:phase()
  local completed = phase == "Succeeded" or phase == "Failed"
  st.phase = phase
  st.hostIP, st.podIP, st.startTime = self.host_ip, self.pod_ip, self.start_time
  -- hostIPs and PodReadyToStartContainers came on by default in 1.29 (PodHostIPs, beta)
  local minor = self.sim:minor()
  st.hostIPs = minor >= 29 and self.host_ip and array { { ip = self.host_ip } } or nil
  st.podIPs = self.pod_ip and array { { ip = self.pod_ip } } or nil
  st.qosClass = qos_class(pod.spec)
  local ready, cready = self:readiness_conditions(completed)
  if minor >= 29 then
    R.set_condition(st, condition("PodReadyToStartContainers", self.sandbox and not completed and "True" or "False"), now)
  end
  R.set_condition(st, self:initialized_condition(completed), now)
  R.set_condition(st, ready, now)
  R.set_condition(st, cready, now)
  R.set_condition(st, condition("PodScheduled", "True"), now)
  table.sort(st.conditions, function(a, b) return (CONDITION_ORDER[a.type] or 9) < (CONDITION_ORDER[b.type] or 9) end)
  if #self.init > 0 then
    st.initContainerStatuses = array()
    for _, cs in ipairs(self.init) do st.initContainerStatuses[#st.initContainerStatuses + 1] = container_status(cs) end
  end
  st.containerStatuses = array()
  for _, cs in ipairs(self.main) do st.containerStatuses[#st.containerStatuses + 1] = container_status(cs) end
  return st, ready.status == "True"
end

--- Write the pod's status from the worker's view.
function Worker:sync()
  local pod = self:current()
  if not pod then return end
  local status, ready = self:build_status(pod)
  if ready and not self.rt.ready_since[self.uid] then self.rt.ready_since[self.uid] = vq.now()
  elseif not ready then self.rt.ready_since[self.uid] = nil end
  self.rt:write_status("pods", pod, status)
end

-- ---- waiting for what a pod needs ----

--- Wait for a change the kubelet watches (claims, config maps, secrets, nodes), at most
--- `seconds` of simulated time.
function Worker:wait_change(seconds)
  self.kl.changed:wait(seconds * self.sim.speed)
end

--- Volumes that cannot be set up yet: a list of {volume, message}.
function Worker:unmounted()
  local out = {}
  for _, v in ipairs(self.pod.spec.volumes or {}) do
    if v.persistentVolumeClaim then
      local pvc = self.sim:get("persistentvolumeclaims", self.ns, v.persistentVolumeClaim.claimName)
      if not pvc or (pvc.status or {}).phase ~= "Bound" then out[#out + 1] = { v.name } end
    elseif v.configMap and not v.configMap.optional and not self.sim:get("configmaps", self.ns, v.configMap.name) then
      out[#out + 1] = { v.name, ('MountVolume.SetUp failed for volume "%s" : configmap "%s" not found'):format(v.name, v.configMap.name) }
    elseif v.secret and not v.secret.optional and not self.sim:get("secrets", self.ns, v.secret.secretName) then
      out[#out + 1] = { v.name, ('MountVolume.SetUp failed for volume "%s" : secret "%s" not found'):format(v.name, v.secret.secretName) }
    end
  end
  return out
end

function Worker:mount_volumes()
  local backoff = 2
  local waited = 0
  while true do
    local missing = self:unmounted()
    if #missing == 0 then return end
    for _, m in ipairs(missing) do
      if m[2] then self:event("Warning", "FailedMount", m[2]) end
    end
    local t0 = vq.now()
    self:wait_change(backoff)
    waited = waited + self.rt:elapsed(t0)
    if waited >= 120 then
      local list = {}
      for _, m in ipairs(missing) do list[#list + 1] = m[1] end
      self:event("Warning", "FailedMount", ("Unable to attach or mount volumes: unmounted volumes=[%s], unattached volumes=[%s]: timed out waiting for the condition")
        :format(table.concat(list, " "), table.concat(list, " ")))
      waited = 0
    end
    backoff = math.min(backoff * 2, 120)
  end
end

--- The container's environment as a map, or nil and the reason it cannot be made.
function Worker:environment(c)
  local env, sim, ns = {}, self.sim, self.ns
  local pod = self:current() or self.pod
  local function from_map(kind, name, key, optional)
    local obj = sim:get(kind == "ConfigMap" and "configmaps" or "secrets", ns, name)
    if not obj then
      if optional then return nil, true end
      return nil, false, ('%s "%s" not found'):format(kind == "ConfigMap" and "configmap" or "secret", name)
    end
    local v = (obj.data or {})[key]
    if v == nil then
      if optional then return nil, true end
      return nil, false, ("couldn't find key %s in %s %s/%s"):format(key, kind, ns, name)
    end
    if kind == "Secret" then v = util.unbase64(v) end
    return v, true
  end
  for _, from in ipairs(c.envFrom or {}) do
    local ref = from.configMapRef or from.secretRef
    local kind = from.configMapRef and "ConfigMap" or "Secret"
    local obj = ref and sim:get(kind == "ConfigMap" and "configmaps" or "secrets", ns, ref.name)
    if ref and not obj and not ref.optional then
      return nil, ('%s "%s" not found'):format(kind == "ConfigMap" and "configmap" or "secret", ref.name)
    end
    for k, v in pairs(obj and obj.data or {}) do
      env[(from.prefix or "") .. k] = kind == "Secret" and util.unbase64(v) or v
    end
  end
  for _, e in ipairs(c.env or {}) do
    if e.value ~= nil then
      env[e.name] = tostring(e.value)
    elseif e.valueFrom then
      local vf = e.valueFrom
      if vf.configMapKeyRef or vf.secretKeyRef then
        local ref = vf.configMapKeyRef or vf.secretKeyRef
        local v, ok, err = from_map(vf.configMapKeyRef and "ConfigMap" or "Secret", ref.name, ref.key, ref.optional)
        if not ok then return nil, err end
        env[e.name] = v
      elseif vf.fieldRef then
        local path = vf.fieldRef.fieldPath or ""
        local label = path:match("^metadata%.labels%['(.-)'%]$")
        local ann = path:match("^metadata%.annotations%['(.-)'%]$")
        if label then env[e.name] = (pod.metadata.labels or {})[label] or ""
        elseif ann then env[e.name] = (pod.metadata.annotations or {})[ann] or ""
        elseif path == "status.podIP" then env[e.name] = self.pod_ip or ""
        elseif path == "status.hostIP" then env[e.name] = self.host_ip or ""
        else env[e.name] = tostring(util.get_path(pod, path) or "") end
      elseif vf.resourceFieldRef then
        local res = (c.resources or {}).limits or {}
        env[e.name] = tostring(res[(vf.resourceFieldRef.resource or ""):gsub("^limits%.", "")] or "0")
      end
    end
  end
  return env
end

-- ---- images ----

function Worker:pull(cs)
  local image = cs.spec.image
  local cache = self.kl:images(self.node)
  local policy = cs.spec.imagePullPolicy or "IfNotPresent"
  while true do
    if cache[image] and policy ~= "Always" then
      self:event("Normal", "Pulled", ('Container image "%s" already present on machine'):format(image), cs)
      cs.image_id = image_id(image)
      return
    end
    if policy == "Never" then
      cs.state = { waiting = { reason = "ErrImageNeverPull",
        message = ('Container image "%s" is not present with pull policy of Never'):format(image) } }
      self:sync()
      self:event("Warning", "ErrImageNeverPull", cs.state.waiting.message, cs)
      self:wait_change(300)
    else
      self:event("Normal", "Pulling", ('Pulling image "%s"'):format(image), cs)
      local t0 = vq.now()
      self.rt:delay(self.kl.pull_delay)
      local failure = self.sim.image_pull_error and self.sim.image_pull_error(image, self:current() or self.pod)
      if not failure then
        local took = self.rt:elapsed(t0)
        self:event("Normal", "Pulled", ('Successfully pulled image "%s" in %.3fs (%.3fs including waiting). Image size: %d bytes.')
          :format(image, took, took, image_size(image)), cs)
        cache[image] = true
        cs.image_id = image_id(image)
        cs.pull_backoff = nil
        return
      end
      self:pull_failed(cs, image, failure)
    end
  end
end

function Worker:pull_failed(cs, image, failure)
  self:event("Warning", "Failed", ('Failed to pull image "%s": %s'):format(image, failure), cs)
  self:event("Warning", "Failed", "Error: ErrImagePull", cs)
  cs.state = { waiting = { reason = "ErrImagePull", message = failure } }
  self:sync()
  self.rt:delay(RELIST_DELAY)
  cs.pull_backoff = math.min((cs.pull_backoff or BACKOFF_START / 2) * 2, BACKOFF_MAX)
  local msg = ('Back-off pulling image "%s"'):format(image)
  cs.state = { waiting = { reason = "ImagePullBackOff", message = msg } }
  self:sync()
  self:event("Normal", "BackOff", msg, cs)
  self:event("Warning", "Failed", "Error: ImagePullBackOff", cs)
  self.rt:delay(cs.pull_backoff)
end

-- ---- containers ----

function Worker:ready_delay(c)
  local ann = self.pod.metadata.annotations or {}
  local explicit = tonumber(ann["sim.vqlua.io/ready-delay." .. c.name] or ann["sim.vqlua.io/ready-delay"] or "")
  if explicit then return explicit end
  local probe = c.readinessProbe or c.startupProbe
  return (probe and probe.initialDelaySeconds or 0) + self.kl.ready_delay
end

--- Start the container: events, running state, the logs, the program's context.
function Worker:create(cs)
  while true do
    local env, err = self:environment(cs.spec)
    if env then
      cs.env = env
      break
    end
    cs.state = { waiting = { reason = "CreateContainerConfigError", message = err } }
    self:sync()
    self:event("Warning", "Failed", "Error: " .. err, cs)
    self:wait_change(10)
  end
  cs.container_id = "containerd://" .. R.hex64(self.uid .. cs.name .. cs.restart_count .. vq.now())
  self:event("Normal", "Created", "Created container " .. cs.name, cs)
  self:event("Normal", "Started", "Started container " .. cs.name, cs)
  cs.state = { running = { startedAt = R.now(self.sim) } }
  cs.started = true
  cs.ran_since = vq.now()
  if self.sim.logs then self.sim.logs:start(self.ns, self.name, cs.name, cs.restart_count) end
  self:sync()
end

--- Run the container's program once; returns exit code, reason, message.
function Worker:execute(cs)
  local pod = self:current() or self.pod
  local program, pname = programs.choose(self.sim, pod, cs.spec)
  local args = {}
  for i, a in ipairs(cs.spec.args or {}) do args[i] = a end
  local ctx = programs.context({
    sim = self.sim, pod = pod, container = cs.spec, name = self.name, namespace = self.ns,
    restart_count = cs.restart_count, env = cs.env, args = args, ready_delay = self:ready_delay(cs.spec),
    node = self.node,
  }, function(flag)
    if cs.state.running and cs.ready ~= flag and not self.terminating then
      cs.ready = flag
      self:sync()
    end
  end)
  if cs.init then ctx.ready = function() end end
  return programs.run(program, ctx, pname)
end

function Worker:terminated(cs, code, reason, message)
  local started = cs.state.running and cs.state.running.startedAt or R.now(self.sim)
  cs.state = { terminated = { exitCode = code, reason = reason, message = message, startedAt = started,
                              finishedAt = R.now(self.sim), containerID = cs.container_id } }
  cs.ready = false
  cs.started = false
  if self.sim.logs then self.sim.logs:stop(self.ns, self.name, cs.name) end
end

local function restarts(policy, code)
  return policy == "Always" or (policy == "OnFailure" and code ~= 0)
end

--- Wait before a restart as the kubelet's back-off does: the first restart at once, then
--- 10s, 20s, 40s ... up to 5 minutes, in CrashLoopBackOff meanwhile.
function Worker:back_off(cs)
  if cs.backoff and cs.ran_since and self.rt:elapsed(cs.ran_since) > BACKOFF_RESET then cs.backoff = nil end
  if not cs.backoff then
    cs.backoff = BACKOFF_START
    self.rt:delay(RELIST_DELAY)
    return
  end
  local wait = cs.backoff
  cs.backoff = math.min(cs.backoff * 2, BACKOFF_MAX)
  self.rt:delay(RELIST_DELAY)
  cs.last_state = { terminated = cs.state.terminated }
  cs.state = { waiting = { reason = "CrashLoopBackOff",
    message = ("back-off %s restarting failed container=%s pod=%s"):format(R.go_duration(wait), cs.name, pod_ref(self)) } }
  self:sync()
  self:event("Warning", "BackOff", ("Back-off restarting failed container %s in pod %s"):format(cs.name, pod_ref(self)), cs)
  self.rt:delay(wait - RELIST_DELAY)
end

--- Take over a container that already runs (an adopted pod): no pull, no start events.
function Worker:resume(cs)
  cs.env = self:environment(cs.spec) or {}
  cs.ran_since = vq.now()
  if self.sim.logs then self.sim.logs:start(self.ns, self.name, cs.name, cs.restart_count) end
end

--- A container's whole life: start (or resume), run, restart by policy. Returns the
--- last exit code.
function Worker:run_container(cs, resuming)
  local policy = self.pod.spec.restartPolicy or "Always"
  while true do
    if resuming then
      self:resume(cs)
      resuming = false
    else
      self:pull(cs)
      self:create(cs)
    end
    local code, reason, message = self:execute(cs)
    self:terminated(cs, code, reason, message)
    self:sync()
    if cs.init and code == 0 then return 0 end
    if not restarts(policy, code) then return code end
    self:back_off(cs)
    cs.last_state = { terminated = cs.state.terminated or (cs.last_state or {}).terminated }
    cs.restart_count = cs.restart_count + 1
  end
end

-- ---- the pod's life ----

function Worker:start_sandbox()
  self.host_ip = self.kl:host_ip(self.node)
  self.pod_ip = self.pod.spec.hostNetwork and self.host_ip or self.kl:allocate_ip(self.node)
  self.start_time = self.start_time or R.now(self.sim)
  self:sync()
  self:mount_volumes()
  self.rt:delay(SANDBOX_DELAY)
  self.sandbox = true
  self:sync()
end

function Worker:run()
  self:start_sandbox()
  local policy = self.pod.spec.restartPolicy or "Always"
  for _, cs in ipairs(self.init) do
    local code = self:run_container(cs)
    if code ~= 0 and policy == "Never" then
      self:sync()
      return
    end
  end
  for _, cs in ipairs(self.main) do
    if #self.init > 0 then cs.state = { waiting = { reason = "ContainerCreating" } } end
  end
  self:sync()
  local tasks = {}
  for _, cs in ipairs(self.main) do
    cs.task = self.rt:spawn("container " .. self.name .. "/" .. cs.name, function() self:run_container(cs) end)
    tasks[#tasks + 1] = cs.task
  end
  for _, t in ipairs(tasks) do t:wait() end
  self:sync()
end

--- Pick up a pod that already runs (a seeded world): its containers go on from their
--- recorded state, their programs started again without the start-up events.
function Worker:adopt(pod)
  local st = pod.status or {}
  self.host_ip, self.pod_ip, self.start_time = st.hostIP, st.podIP, st.startTime
  self.sandbox = true
  local recorded = {}
  for _, list in ipairs { st.initContainerStatuses or {}, st.containerStatuses or {} } do
    for _, s in ipairs(list) do recorded[s.name] = s end
  end
  for _, cs in ipairs(self.containers) do
    local s = recorded[cs.name]
    if s then
      cs.state, cs.last_state = util.copy(s.state or cs.state), util.copy(s.lastState or {})
      cs.restart_count, cs.ready, cs.started = s.restartCount or 0, s.ready or false, s.started or false
      cs.container_id, cs.image_id = s.containerID, s.imageID
    end
  end
end

function Worker:run_adopted()
  local tasks = {}
  for _, cs in ipairs(self.main) do
    if cs.state.running then
      cs.task = self.rt:spawn("container " .. self.name .. "/" .. cs.name, function() self:run_container(cs, true) end)
      tasks[#tasks + 1] = cs.task
    end
  end
  for _, t in ipairs(tasks) do t:wait() end
end

function Worker:start(adopted)
  self.task = self.rt:spawn("pod " .. self.ns .. "/" .. self.name, function()
    if adopted then self:run_adopted() else self:run() end
  end)
end

--- A container whose image changed in the pod's spec is killed and started again on
--- the new image, as the kubelet does when a container's definition changes.
function Worker:respec(pod)
  if self.terminating then return end
  for _, c in ipairs(pod.spec.containers or {}) do
    for _, cs in ipairs(self.main) do
      if cs.name == c.name and cs.spec.image ~= c.image then
        local started = cs.task ~= nil
        cs.spec = util.copy(c)
        if started then self:replace_container(cs) end
      end
    end
  end
end

function Worker:replace_container(cs)
  self:event("Normal", "Killing", ("Container %s definition changed, will be restarted"):format(cs.name), cs)
  self.rt:cancel(cs.task)
  if cs.state.running then
    self:terminated(cs, 137, "Error")
  end
  if cs.state.terminated then cs.last_state = { terminated = cs.state.terminated } end
  cs.restart_count = cs.restart_count + 1
  cs.state = { waiting = { reason = "ContainerCreating" } }
  self:sync()
  cs.task = self.rt:spawn("container " .. self.name .. "/" .. cs.name, function() self:run_container(cs) end)
end

function Worker:stop_tasks()
  for _, cs in ipairs(self.containers) do self.rt:cancel(cs.task) end
  self.rt:cancel(self.task)
end

--- The pod is being deleted: stop its containers, then let it go.
function Worker:terminate()
  if self.terminating then return end
  self.terminating = true
  self.rt:spawn("terminate " .. self.ns .. "/" .. self.name, function()
    local pod = self:current()
    -- a node whose kubelet is gone cannot stop anything: the pod stays Terminating
    if not pod or not self.kl:node_alive(self.node) then return end
    for _, cs in ipairs(self.containers) do
      if cs.state.running then self:event("Normal", "Killing", "Stopping container " .. cs.name, cs) end
    end
    self:stop_tasks()
    local grace = pod.metadata.deletionGracePeriodSeconds or pod.spec.terminationGracePeriodSeconds or 30
    self.rt:delay(math.min(grace, self.kl.termination_delay))
    for _, cs in ipairs(self.containers) do
      if cs.state.running then self:terminated(cs, 143, "Error") end
      cs.ready = false
    end
    self.final_phase = self:stopped_phase()
    self:sync()
    local current = self:current()
    if current then self.sim.api:remove(resources.by_key.pods, current, { grace = 0 }) end
  end)
end

function Worker:stopped_phase()
  local phase = self:phase()
  if phase == "Succeeded" or phase == "Failed" then return phase end
  for _, cs in ipairs(self.main) do
    local t = cs.state.terminated
    if not t or t.exitCode ~= 0 then return "Failed" end
  end
  return "Succeeded"
end

--- The pod left the store: nothing of it may run on.
function Worker:destroy()
  self:stop_tasks()
  if self.sim.logs then
    for _, cs in ipairs(self.containers) do
      if cs.state.running then self.sim.logs:stop(self.ns, self.name, cs.name) end
    end
  end
  self.rt.ready_since[self.uid] = nil
end

-- ---- the kubelet ----

local Kubelet = {}
Kubelet.__index = Kubelet

function Kubelet:node_ready(name)
  local node = name and self.sim:get("nodes", nil, name)
  local c = node and R.condition(node.status, "Ready")
  return c == nil or c.status == "True"
end

--- A node whose kubelet still talks to the apiserver (Ready True or False, not Unknown).
function Kubelet:node_alive(name)
  local node = name and self.sim:get("nodes", nil, name)
  local c = node and R.condition(node.status, "Ready")
  return c == nil or c.status ~= "Unknown"
end

function Kubelet:images(node)
  self.image_cache[node] = self.image_cache[node] or {}
  return self.image_cache[node]
end

function Kubelet:node_index(name)
  if not self.node_indexes[name] then
    self.next_node_index = self.next_node_index + 1
    self.node_indexes[name] = self.next_node_index
  end
  return self.node_indexes[name]
end

function Kubelet:host_ip(name)
  local node = self.sim:get("nodes", nil, name)
  for _, a in ipairs(node and node.status and node.status.addresses or {}) do
    if a.type == "InternalIP" then return a.address end
  end
  return ("10.0.0.%d"):format(10 + self:node_index(name))
end

function Kubelet:allocate_ip(name)
  local idx = self:node_index(name)
  local n = (self.next_ip[name] or 1) + 1
  if n > 254 then n = 2 end
  self.next_ip[name] = n
  return ("10.244.%d.%d"):format(idx, n)
end

--- Something pods may wait for changed: wake the waiting workers.
function Kubelet:notify()
  local ev = self.changed
  self.changed = vq.event()
  ev:set()
end

function Kubelet:handle(pod)
  local uid = pod.metadata.uid
  local w = self.workers[uid]
  local node = pod.spec and pod.spec.nodeName
  if not w then
    if not node or node == "" or not self.sim:get("nodes", nil, node) then return end
    w = M.new_worker(self, pod)
    self.workers[uid] = w
    local st = pod.status or {}
    local recorded = st.containerStatuses ~= nil and (st.phase == "Running" or R.pod_terminal(pod))
    if recorded then w:adopt(pod) end
    if not pod.metadata.deletionTimestamp and not R.pod_terminal(pod) then w:start(recorded) end
  end
  if pod.metadata.deletionTimestamp then w:terminate() else w:respec(pod) end
end

--- The pods of a node whose readiness changed report their Ready condition again.
function Kubelet:resync_node(name)
  for _, w in pairs(self.workers) do
    if w.node == name and not w.terminating then w:sync() end
  end
  if self:node_alive(name) then
    for _, w in pairs(self.workers) do
      if w.node == name and w.terminating then
        w.terminating = false
        w:terminate()
      end
    end
  end
end

function M.install(sim, rt, opts)
  local kl = setmetatable({
    sim = sim, rt = rt, workers = {}, image_cache = {}, node_indexes = {}, next_node_index = 0, next_ip = {},
    changed = vq.event(),
    ready_delay = opts.ready_delay or 1,
    pull_delay = opts.pull_delay or 1.5,
    termination_delay = opts.termination_delay or 1,
  }, Kubelet)
  rt.kubelet = kl
  programs.install(sim)
  rt:watch("pods", function(ev)
    local pod = ev.object
    if ev.type == "DELETED" then
      local w = kl.workers[pod.metadata.uid]
      if w then
        kl.workers[pod.metadata.uid] = nil
        w:destroy()
      end
      kl:notify()
      return
    end
    if pod.spec and pod.spec.nodeName then kl:handle(pod) end
  end)
  for _, key in ipairs { "persistentvolumeclaims", "configmaps", "secrets" } do
    rt:watch(key, function() kl:notify() end)
  end
  rt:watch("nodes", function(ev)
    if ev.type == "ADDED" then
      for _, pod in ipairs(sim:list("pods", nil, function(p) return p.spec.nodeName == ev.object.metadata.name end)) do
        kl:handle(pod)
      end
    end
  end)
  return kl
end

--- Pick up the pods that were bound before the kubelet started.
function M.started(sim, rt)
  for _, pod in ipairs(sim:list("pods", nil, function(p) return p.spec and p.spec.nodeName ~= nil end)) do
    rt.kubelet:handle(pod)
  end
end

return M
