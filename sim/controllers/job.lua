-- The Job controller: pods up to parallelism until completions succeeded, failures
-- counted against backoffLimit (restarts too, under OnFailure) with the controller's
-- growing delay before a replacement, activeDeadlineSeconds, the Complete and Failed
-- conditions, and ttlSecondsAfterFinished. Finished pods are counted once, through the
-- batch.kubernetes.io/job-tracking finalizer as the real controller tracks them.
local vq = require "vq"
local util = require "sim.util"
local resources = require "sim.resources"
local R = require "sim.controllers.runtime"

local M = {}

local KEY = "jobs.batch"
local COMPONENT = "job-controller"
local TRACKING = "batch.kubernetes.io/job-tracking"
local BACKOFF_START, BACKOFF_MAX = 10, 360
local array = R.array

local function has_tracking(pod)
  for _, f in ipairs(pod.metadata.finalizers or {}) do if f == TRACKING then return true end end
  return false
end

local function drop_tracking(sim, pod)
  local current = sim:get("pods", pod.metadata.namespace, pod.metadata.name)
  if current and has_tracking(current) then
    require("sim.core").remove_finalizer(sim, resources.by_key.pods, current, TRACKING)
  end
end

function M.finished(job)
  for _, c in ipairs(job.status and job.status.conditions or {}) do
    if (c.type == "Complete" or c.type == "Failed") and c.status == "True" then return c.type end
  end
end

local function new_pod(job, index)
  local t = job.spec.template
  local meta = t.metadata or {}
  local labels = util.copy(meta.labels or {})
  local annotations = meta.annotations and util.copy(meta.annotations) or nil
  local prefix = job.metadata.name .. "-"
  local spec = util.copy(t.spec)
  if index then
    prefix = ("%s-%d-"):format(job.metadata.name, index)
    labels["batch.kubernetes.io/job-completion-index"] = tostring(index)
    annotations = annotations or {}
    annotations["batch.kubernetes.io/job-completion-index"] = tostring(index)
    spec.hostname = ("%s-%d"):format(job.metadata.name, index)
    for _, c in ipairs(spec.containers or {}) do
      c.env = c.env or array()
      table.insert(c.env, { name = "JOB_COMPLETION_INDEX", valueFrom = { fieldRef = {
        fieldPath = "metadata.annotations['batch.kubernetes.io/job-completion-index']" } } })
    end
  end
  return {
    metadata = { generateName = prefix, namespace = job.metadata.namespace, labels = labels, annotations = annotations,
                 finalizers = array { TRACKING }, ownerReferences = array { R.owner_ref(job, "Job", "batch/v1") } },
    spec = spec,
  }
end

local function index_of(pod)
  return tonumber((pod.metadata.annotations or {})["batch.kubernetes.io/job-completion-index"] or "")
end

--- Simulated seconds to wait before replacing a failed pod: 10s, 20s, 40s ... 6 min.
local function pod_backoff(failures)
  if failures <= 0 then return 0 end
  return math.min(BACKOFF_START * 2 ^ (failures - 1), BACKOFF_MAX)
end

local function fail(sim, job, st, reason, message, active)
  for _, pod in ipairs(active) do
    sim:delete("pods", pod)
    sim.event(job, "Normal", "SuccessfulDelete", "Deleted pod: " .. pod.metadata.name, COMPONENT)
  end
  local now = R.now(sim)
  R.set_condition(st, { type = "Failed", status = "True", reason = reason, message = message, lastProbeTime = now }, now)
  sim.event(job, "Warning", reason, message, COMPONENT)
end

local function complete(sim, job, st, active)
  for _, pod in ipairs(active) do
    sim:delete("pods", pod)
  end
  local now = R.now(sim)
  R.set_condition(st, { type = "Complete", status = "True", lastProbeTime = now }, now)
  st.completionTime = now
  sim.event(job, "Normal", "Completed", "Job completed", COMPONENT)
end

--- Count the finished pods not counted yet; returns the lists of active and counted pods.
local function count_finished(sim, st, pods, indexed)
  local active, newly = {}, {}
  for _, pod in ipairs(pods) do
    if R.pod_terminal(pod) then
      if has_tracking(pod) then
        if pod.status.phase == "Succeeded" then
          st.succeeded = (st.succeeded or 0) + 1
          local i = index_of(pod)
          if indexed and i then
            st.completedIndexes = M.add_index(st.completedIndexes, i)
          end
        else
          st.failed = (st.failed or 0) + 1
        end
        newly[#newly + 1] = pod
      end
    elseif not R.is_terminating(pod) then
      active[#active + 1] = pod
    elseif has_tracking(pod) and not pod.spec.nodeName then
      -- deleted before it ever ran: a failure, and nobody else will let it go
      st.failed = (st.failed or 0) + 1
      newly[#newly + 1] = pod
    end
  end
  return active, newly
end

--- "0-2,5" style index sets, as status.completedIndexes holds them.
function M.add_index(text, index)
  local set = {}
  for part in (text or ""):gmatch("[^,]+") do
    local a, b = part:match("^(%d+)%-(%d+)$")
    if a then for i = tonumber(a), tonumber(b) do set[i] = true end
    elseif tonumber(part) then set[tonumber(part)] = true end
  end
  set[index] = true
  local list = {}
  for i in pairs(set) do list[#list + 1] = i end
  table.sort(list)
  local out, i = {}, 1
  while i <= #list do
    local j = i
    while j < #list and list[j + 1] == list[j] + 1 do j = j + 1 end
    out[#out + 1] = i == j and tostring(list[i]) or (list[i] .. "-" .. list[j])
    i = j + 1
  end
  return table.concat(out, ",")
end

local function completed_index(st, i)
  for part in (st.completedIndexes or ""):gmatch("[^,]+") do
    local a, b = part:match("^(%d+)%-(%d+)$")
    if a and i >= tonumber(a) and i <= tonumber(b) then return true end
    if tonumber(part) == i then return true end
  end
  return false
end

local function create_pods(sim, job, st, active, want)
  local indexed = job.spec.completionMode == "Indexed"
  local busy = {}
  for _, pod in ipairs(active) do if index_of(pod) then busy[index_of(pod)] = true end end
  local next_index = 0
  for _ = 1, want - #active do
    local index
    if indexed then
      while next_index < (job.spec.completions or 1) and (busy[next_index] or completed_index(st, next_index)) do next_index = next_index + 1 end
      if next_index >= (job.spec.completions or 1) then return end
      index = next_index
      busy[index] = true
    end
    local pod, status = sim:create("pods", new_pod(job, index))
    if pod then
      sim.event(job, "Normal", "SuccessfulCreate", "Created pod: " .. pod.metadata.name, COMPONENT)
    else
      sim.event(job, "Warning", "FailedCreate", "Error creating: " .. (status and status.message or "?"), COMPONENT)
    end
  end
end

local function restarts(pods)
  local n = 0
  for _, pod in ipairs(pods) do
    for _, c in ipairs(pod.status and pod.status.containerStatuses or {}) do n = n + (c.restartCount or 0) end
    for _, c in ipairs(pod.status and pod.status.initContainerStatuses or {}) do n = n + (c.restartCount or 0) end
  end
  return n
end

local function expire(sim, rt, ctl, job)
  local ttl = job.spec.ttlSecondsAfterFinished
  if not ttl then return end
  local uid = job.metadata.uid
  rt.job_finished[uid] = rt.job_finished[uid] or vq.now()
  local left = ttl - rt:elapsed(rt.job_finished[uid])
  if left > 0 then return ctl:after(left, job.metadata.namespace, job.metadata.name) end
  rt.job_finished[uid] = nil
  sim:delete(KEY, job, { propagation = "Background" })
end

--- Pods to run now: up to parallelism, no more than the completions still missing.
local function wanted_pods(job, succeeded)
  local completions = job.spec.completions
  local parallelism = job.spec.parallelism or 1
  if not completions then return succeeded > 0 and 0 or parallelism end
  return math.min(parallelism, completions - succeeded)
end

--- Create or delete pods toward the wanted number, replacements after the back-off.
local function scale_pods(sim, rt, ctl, job, st, active)
  local ns, name, uid = job.metadata.namespace, job.metadata.name, job.metadata.uid
  local want = wanted_pods(job, st.succeeded or 0)
  if #active < want then
    local last_failure = rt.job_last_failure[uid]
    local wait = pod_backoff(st.failed or 0) - (last_failure and rt:elapsed(last_failure) or math.huge)
    if wait > 0 then ctl:after(wait, ns, name) else create_pods(sim, job, st, active, want) end
  elseif #active > want then
    for i = want + 1, #active do
      sim:delete("pods", active[i])
      sim.event(job, "Normal", "SuccessfulDelete", "Deleted pod: " .. active[i].metadata.name, COMPONENT)
    end
  end
  if job.spec.activeDeadlineSeconds then
    ctl:after(job.spec.activeDeadlineSeconds - rt:elapsed(rt.job_started[uid]), ns, name)
  end
end

--- The Suspended condition, when suspend turns on, and again when it turns off.
local function suspension(sim, job, st, suspended)
  local cond = R.condition(st, "Suspended")
  local was = cond ~= nil and cond.status == "True"
  if was == suspended or (not suspended and not cond) then return end
  local now = R.now(sim)
  local reason, message = suspended and "JobSuspended" or "JobResumed", suspended and "Job suspended" or "Job resumed"
  R.set_condition(st, { type = "Suspended", status = suspended and "True" or "False", reason = reason, message = message,
                        lastProbeTime = now }, now)
  sim.event(job, "Normal", suspended and "Suspended" or "Resumed", message, COMPONENT)
end

--- The Job's next step: failed, complete, suspended, or pods to run.
local function decide(sim, rt, ctl, job, st, active)
  local uid = job.metadata.uid
  local completions = job.spec.completions
  local succeeded = st.succeeded or 0
  local on_failure = job.spec.template.spec.restartPolicy == "OnFailure"
  local failures = (st.failed or 0) + (on_failure and restarts(active) or 0)
  local deadline = job.spec.activeDeadlineSeconds
  if failures > (job.spec.backoffLimit or 6) then
    fail(sim, job, st, "BackoffLimitExceeded", "Job has reached the specified backoff limit", active)
  elseif deadline and rt:elapsed(rt.job_started[uid]) >= deadline then
    fail(sim, job, st, "DeadlineExceeded", "Job was active longer than specified deadline", active)
  elseif (completions and succeeded >= completions) or (not completions and succeeded > 0 and #active == 0) then
    complete(sim, job, st, active)
  elseif job.spec.suspend then
    for _, pod in ipairs(active) do sim:delete("pods", pod) end
    suspension(sim, job, st, true)
  else
    suspension(sim, job, st, false)
    scale_pods(sim, rt, ctl, job, st, active)
  end
end

--- active, ready and terminating as the pods stand now.
local function count_pods(rt, job, st)
  local active, ready, terminating = 0, 0, 0
  for _, pod in ipairs(rt:owned("pods", job)) do
    if R.is_terminating(pod) and not R.pod_terminal(pod) then
      terminating = terminating + 1
    elseif R.pod_active(pod) then
      active = active + 1
      if R.pod_ready(pod) then ready = ready + 1 end
    end
  end
  st.active = active > 0 and active or nil
  st.ready, st.terminating = ready, terminating
  st.uncountedTerminatedPods = st.uncountedTerminatedPods or {}
end

--- A finished Job lets its pods go and waits out its TTL.
local function settle(sim, rt, ctl, job, pods)
  for _, pod in ipairs(pods) do
    if R.pod_terminal(pod) or R.is_terminating(pod) then drop_tracking(sim, pod) end
  end
  expire(sim, rt, ctl, job)
end

local function sync_job(sim, rt, ctl, ns, name)
  local job = sim:get(KEY, ns, name)
  if not job then return end
  local pods = rt:owned("pods", job)
  if job.metadata.deletionTimestamp then
    for _, pod in ipairs(pods) do drop_tracking(sim, pod) end
    return
  end
  if M.finished(job) then return settle(sim, rt, ctl, job, pods) end
  local st = util.copy(job.status or {})
  local uid = job.metadata.uid
  if not job.spec.suspend and not st.startTime then st.startTime = R.now(sim) end
  rt.job_started[uid] = rt.job_started[uid] or vq.now()
  local failed_before = st.failed or 0
  local active, newly = count_finished(sim, st, pods, job.spec.completionMode == "Indexed")
  if (st.failed or 0) > failed_before then rt.job_last_failure[uid] = vq.now() end
  decide(sim, rt, ctl, job, st, active)
  count_pods(rt, job, st)
  job = rt:write_status(KEY, job, st)
  -- counted in the status: the pods may go now
  for _, pod in ipairs(newly) do drop_tracking(sim, pod) end
  if M.finished(job) then ctl:enqueue(ns, name) end
end

function M.install(sim, rt)
  rt.job_started, rt.job_last_failure, rt.job_finished = {}, {}, {}
  local ctl
  ctl = rt:controller("job", function(ns, name) sync_job(sim, rt, ctl, ns, name) end)
  rt:watch(KEY, function(ev)
    if ev.type == "DELETED" then
      local uid = ev.object.metadata.uid
      rt.job_started[uid], rt.job_last_failure[uid], rt.job_finished[uid] = nil, nil, nil
      return
    end
    ctl:enqueue(ev.object.metadata.namespace, ev.object.metadata.name)
  end)
  rt:watch("pods", function(ev)
    local pod = ev.object
    local ref = R.controller_of(pod)
    local job = ref and ref.kind == "Job" and sim:get(KEY, pod.metadata.namespace, ref.name)
    if job and job.metadata.uid == ref.uid then
      ctl:enqueue(pod.metadata.namespace, ref.name)
    elseif ev.type ~= "DELETED" and has_tracking(pod) and (R.pod_terminal(pod) or R.is_terminating(pod)) then
      -- the pod of a Job that is gone must not be held by our finalizer
      rt:spawn("job orphan", function() drop_tracking(sim, pod) end)
    end
  end)
  rt.jobs = ctl
end

function M.started(sim, rt)
  for _, job in ipairs(sim:list(KEY, nil)) do rt.jobs:enqueue(job.metadata.namespace, job.metadata.name) end
end

return M
