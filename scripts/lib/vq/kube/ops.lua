-- kubectl's operations with kubectl's semantics (k8s.io/kubectl pkg/cmd, polymorphichelpers):
-- scale, rollout restart and status, a Job from a CronJob, taints, pod summaries, events,
-- service proxy, version skew (logs in vq.kube.logs, exec in vq.kube.exec).
local vq = require "vq"
local http = require "vq.http"
local json = require "json"
local log = require "log"
local time = require "vq.time"
local pods = require "vq.kube.pods"

local function err(code, message, details) return vq.error(code, message, details) end

return function(kube, Client)

  local function ref(res)
    local r, n = res:match("^([^/]+)/(.+)$")
    return r or res, n
  end

  -- ---- scale ----

  --- scale("sts/vantiq", n, {namespace=, wait=, ready=, timeout=}) through the scale
  --- subresource. wait: until status.replicas == n (kubectl's condition); ready: also every
  --- replica Ready (what a runbook means by "up").
  function Client:scale(res, replicas, opts)
    opts = opts or {}
    local r, name = ref(res)
    local t, e = self:resource(r)
    if not t then return nil, e end
    local scale, se = self:patch(t.key, name, { spec = { replicas = replicas } },
      { namespace = opts.namespace, subresource = "scale", type = "merge" })
    if not scale then return nil, se end
    if not (opts.wait or opts.ready) or self.dry_run then return scale end
    return self:wait_for(t.key, name, function(obj)
      if not obj then return false end
      local st = obj.status or {}
      if (st.observedGeneration or 0) < (obj.metadata.generation or 0) then return false end
      if (st.replicas or 0) ~= replicas then return false end
      return not opts.ready or replicas == 0 or (st.readyReplicas or 0) == replicas
    end, { namespace = opts.namespace, timeout = opts.timeout or 600 })
  end

  function Client:replicas(res, opts)
    local obj, e = self:get(res, nil, opts)
    if not obj then return nil, e end
    return (obj.spec or {}).replicas or 0, obj
  end

  -- ---- rollout ----

  --- kubectl rollout restart: the restartedAt annotation on the pod template.
  function Client:rollout_restart(res, opts)
    opts = opts or {}
    local r, name = ref(res)
    local stamp = os.date("!%Y-%m-%dT%H:%M:%SZ")
    return self:patch(r, name, { spec = { template = { metadata = { annotations = {
      ["kubectl.kubernetes.io/restartedAt"] = stamp } } } } }, { namespace = opts.namespace, type = "strategic" })
  end

  -- kubectl's status viewers (polymorphichelpers/rollout_status.go), one per kind: each
  -- returns message, done, or nil, err for a hopeless state.
  local viewers = {}

  function viewers.Deployment(name, spec, st, gen)
    if gen > (st.observedGeneration or 0) then return "Waiting for deployment spec update to be observed...", false end
    for _, c in ipairs(st.conditions or {}) do
      if c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded" then
        return nil, err("rollout", ('deployment "%s" exceeded its progress deadline'):format(name))
      end
    end
    local want, updated = spec.replicas or 1, st.updatedReplicas or 0
    local waiting = 'Waiting for deployment "' .. name .. '" rollout to finish: '
    if updated < want then
      return waiting .. ("%d out of %d new replicas have been updated..."):format(updated, want), false
    end
    if (st.replicas or 0) > updated then
      return waiting .. ("%d old replicas are pending termination..."):format(st.replicas - updated), false
    end
    if (st.availableReplicas or 0) < updated then
      return waiting .. ("%d of %d updated replicas are available..."):format(st.availableReplicas or 0, updated), false
    end
    return ('deployment "%s" successfully rolled out'):format(name), true
  end

  local function rolling_update_only(spec)
    if (spec.updateStrategy or {}).type ~= "RollingUpdate" then
      return err("rollout", "rollout status is only available for RollingUpdate strategy type")
    end
  end

  function viewers.DaemonSet(name, spec, st, gen)
    local bad = rolling_update_only(spec)
    if bad then return nil, bad end
    if gen > (st.observedGeneration or 0) then return "Waiting for daemon set spec update to be observed...", false end
    local desired, waiting = st.desiredNumberScheduled or 0, 'Waiting for daemon set "' .. name .. '" rollout to finish: '
    if (st.updatedNumberScheduled or 0) < desired then
      return waiting .. ("%d out of %d new pods have been updated..."):format(st.updatedNumberScheduled or 0, desired), false
    end
    if (st.numberAvailable or 0) < desired then
      return waiting .. ("%d of %d updated pods are available..."):format(st.numberAvailable or 0, desired), false
    end
    return ('daemon set "%s" successfully rolled out'):format(name), true
  end

  local function partitioned(st, want, partition)
    if (st.updatedReplicas or 0) < want - partition then
      return ("Waiting for partitioned roll out to finish: %d out of %d new pods have been updated..."):format(st.updatedReplicas or 0, want - partition), false
    end
    return ("partitioned roll out complete: %d new pods have been updated..."):format(st.updatedReplicas or 0), true
  end

  function viewers.StatefulSet(_, spec, st, gen)
    local bad = rolling_update_only(spec)
    if bad then return nil, bad end
    if (st.observedGeneration or 0) == 0 or gen > st.observedGeneration then
      return "Waiting for statefulset spec update to be observed...", false
    end
    local want = spec.replicas or 1
    if (st.readyReplicas or 0) < want then
      return ("Waiting for %d pods to be ready..."):format(want - (st.readyReplicas or 0)), false
    end
    local partition = spec.updateStrategy.rollingUpdate and spec.updateStrategy.rollingUpdate.partition
    if partition and partition > 0 then return partitioned(st, want, partition) end
    if st.updateRevision ~= st.currentRevision then
      return ("waiting for statefulset rolling update to complete %d pods at revision %s..."):format(st.updatedReplicas or 0, tostring(st.updateRevision)), false
    end
    return ("statefulset rolling update complete %d pods at revision %s..."):format(st.currentReplicas or 0, tostring(st.currentRevision)), true
  end

  --- kubectl's status viewers: returns message, done, or nil, err for a hopeless state.
  function kube.rollout_state(kind, obj)
    local viewer = viewers[kind]
    if not viewer then return nil, err("rollout", "no status viewer for " .. tostring(kind)) end
    return viewer(obj.metadata.name, obj.spec or {}, obj.status or {}, obj.metadata.generation or 0)
  end

  --- Watch until the rollout completes (kubectl rollout status); progress goes to
  --- opts.on_progress(message) or the log. Returns the final message or nil, err.
  function Client:rollout_status(res, opts)
    opts = opts or {}
    local r, name = ref(res)
    local t, e = self:resource(r)
    if not t then return nil, e end
    local last_msg, final, failure
    local ok, we = self:wait_for(t.key, name, function(obj)
      if not obj then return false end
      local msg, done = kube.rollout_state(t.kind, obj)
      if not msg then failure = done return true end
      if msg ~= last_msg then
        last_msg = msg
        if opts.on_progress then opts.on_progress(msg) else log.info("%s", msg) end
      end
      if done then final = msg end
      return done
    end, { namespace = opts.namespace, timeout = opts.timeout or 600 })
    if failure then return nil, failure end
    if not ok then return nil, we end
    return final
  end

  -- ---- jobs ----

  --- kubectl create job NAME --from=cronjob/CRONJOB, with a unique name when none given.
  function Client:create_job_from_cronjob(cronjob, opts)
    opts = opts or {}
    local cj, e = self:get("cronjobs.batch", cronjob, { namespace = opts.namespace })
    if not cj then return nil, e end
    local tmpl = cj.spec.jobTemplate or {}
    local annotations = {}
    for k, v in pairs(tmpl.metadata and tmpl.metadata.annotations or {}) do annotations[k] = v end
    annotations["cronjob.kubernetes.io/instantiate"] = "manual"
    local name = opts.name or (cronjob .. "-manual-" .. os.date("!%Y%m%d%H%M%S"):sub(3) .. "-" ..
      require("vq.base64").encode(tostring(math.random(1, 1e9))):lower():gsub("[^a-z0-9]", ""):sub(1, 4))
    if #name > 63 then name = name:sub(1, 63):gsub("%-+$", "") end
    local job = {
      apiVersion = "batch/v1", kind = "Job",
      metadata = { name = name, namespace = cj.metadata.namespace, annotations = annotations,
        labels = tmpl.metadata and tmpl.metadata.labels or nil,
        ownerReferences = setmetatable({ { apiVersion = "batch/v1", kind = "CronJob", name = cj.metadata.name,
          uid = cj.metadata.uid, controller = true, blockOwnerDeletion = true } }, json.array_mt) },
      spec = tmpl.spec,
    }
    return self:create(job, { namespace = cj.metadata.namespace })
  end

  local function job_condition(job, kind)
    for _, c in ipairs(job and job.status and job.status.conditions or {}) do
      if c.type == kind and c.status == "True" then return c end
    end
  end
  kube.job_condition = job_condition

  --- Wait for a Job to complete: the Job, or nil, err {code = "job_failed"} when it failed.
  function Client:wait_job(name, opts)
    opts = opts or {}
    local job, e = self:wait_for("jobs.batch", name, function(j)
      return j and (job_condition(j, "Complete") or job_condition(j, "Failed")) ~= nil
    end, { namespace = opts.namespace, timeout = opts.timeout or 3600 })
    if not job then return nil, e end
    local failed = job_condition(job, "Failed")
    if failed then
      return nil, err("job_failed", ("job %s failed: %s"):format(name, failed.message or failed.reason or "?"), { job = job })
    end
    return job
  end

  -- ---- pods ----

  --- What kubectl get pods shows, as a table per pod, plus what a runbook needs to know
  --- about stragglers (waiting reasons, last termination).
  function kube.pod_summary(pod)
    local status, ready = pods.status(pod)
    local restarts, waiting, terminated = 0, {}, {}
    for _, c in ipairs((pod.status or {}).containerStatuses or {}) do
      restarts = restarts + (c.restartCount or 0)
      local st = c.state or {}
      if st.waiting then waiting[c.name] = st.waiting.reason end
      if c.lastState and c.lastState.terminated then terminated[c.name] = c.lastState.terminated end
    end
    local total = #((pod.spec or {}).containers or {})
    local ready_n = tonumber(ready:match("^(%d+)")) or 0
    return {
      name = pod.metadata.name, namespace = pod.metadata.namespace, status = status, ready = ready,
      is_ready = total > 0 and ready_n == total, phase = (pod.status or {}).phase, restarts = restarts,
      node = (pod.spec or {}).nodeName, ip = (pod.status or {}).podIP, waiting = waiting, last_terminated = terminated,
      age = pod.metadata.creationTimestamp and time.human_duration(os.time() - (time.parse(pod.metadata.creationTimestamp) or os.time())),
      done = (pod.status or {}).phase == "Succeeded",
    }
  end

  function Client:pods(opts)
    local list, e = self:list("pods", opts)
    if not list then return nil, e end
    local out = {}
    for i, p in ipairs(list) do out[i] = kube.pod_summary(p) end
    return out
  end

  -- ---- a short-lived pod ----

  local function array_of(list)
    if not list then return nil end
    return setmetatable(table.move(list, 1, #list, 1, {}), json.array_mt)
  end

  local function env_list(env)
    if not env then return nil end
    local names, out = {}, setmetatable({}, json.array_mt)
    for k in pairs(env) do names[#names + 1] = k end
    table.sort(names)
    for i, k in ipairs(names) do out[i] = { name = k, value = tostring(env[k]) } end
    return out
  end

  local function run_pod(ns, opts)
    return { apiVersion = "v1", kind = "Pod",
      metadata = { generateName = (opts.name or "vqlua-run") .. "-", namespace = ns,
                   labels = { ["app.kubernetes.io/managed-by"] = "vqlua" } },
      spec = { restartPolicy = "Never", nodeName = opts.node, terminationGracePeriodSeconds = 0,
               tolerations = opts.node and setmetatable({ { operator = "Exists" } }, json.array_mt) or nil,
               containers = setmetatable({ { name = "run", image = assert(opts.image, "k:run needs an image"),
                 command = array_of(opts.command), args = array_of(opts.args), env = env_list(opts.env) } }, json.array_mt) } }
  end

  local function finished(p)
    local phase = p and p.status and p.status.phase
    return phase == "Succeeded" or phase == "Failed"
  end

  --- A pod that runs one command and is deleted, as `kubectl run --rm --restart=Never`:
  --- k:run{image=, command={...}, args=, env={NAME=value}, namespace=, node= (pinned there,
  --- every taint tolerated), name= (a prefix), timeout= (120 s)}. Returns {exit_code=,
  --- output= (its log), pod=, node=}, or nil, err. The pod goes however the run ends.
  function Client:run(opts)
    local ns = opts.namespace or self.namespace
    local made, e = self:create(run_pod(ns, opts))
    if not made then return nil, e end
    if self.dry_run then return { dry_run = true, pod = made.metadata.name } end
    local name = made.metadata.name
    local cleanup <close> = setmetatable({}, { __close = function() self:delete("pods", name, { namespace = ns, grace = 0 }) end })
    local done, we = self:wait_for("pods", name, finished, { namespace = ns, timeout = opts.timeout or 120 })
    if not done then return nil, we end
    local lines = {}
    for line in self:logs(name, { namespace = ns }) do lines[#lines + 1] = line end
    local st = ((done.status.containerStatuses or {})[1] or {}).state or {}
    return { exit_code = st.terminated and st.terminated.exitCode, output = table.concat(lines, "\n"),
             pod = name, node = done.spec.nodeName }
  end

  -- ---- nodes ----

  -- Read, change, write; on a conflict read again (client-go's retry.RetryOnConflict).
  function Client:update_with_retry(res, name, change, opts)
    opts = opts or {}
    for attempt = 1, opts.attempts or 5 do
      local obj, e = self:get(res, name, opts)
      if not obj then return nil, e end
      local ok, ce = change(obj)
      if ok == false then return nil, ce end
      local updated, ue = self:replace(obj, opts)
      if updated then return updated end
      if ue.code ~= 409 or attempt == (opts.attempts or 5) then return nil, ue end
      vq.sleep(0.01 * attempt)
    end
  end

  --- kubectl taint nodes NODE key=value:effect (overwrite: replace a taint of the same key
  --- and effect; without it that is an error, as in kubectl).
  function Client:taint(node, key, value, effect, opts)
    opts = opts or {}
    return self:update_with_retry("nodes", node, function(n)
      n.spec = n.spec or {}
      local taints = n.spec.taints or setmetatable({}, json.array_mt)
      for i, tt in ipairs(taints) do
        if tt.key == key and tt.effect == effect then
          if not opts.overwrite then
            return false, err("exists", ("node %s already has a taint with key (%s) and effect (%s), and --overwrite is false"):format(node, key, effect))
          end
          table.remove(taints, i)
          break
        end
      end
      taints[#taints + 1] = { key = key, value = value ~= "" and value or nil, effect = effect }
      n.spec.taints = taints
    end)
  end

  --- kubectl taint nodes NODE key[:effect]- ; a taint that is not there is an error
  --- unless opts.missing_ok (a clean-up that must always run).
  function Client:untaint(node, key, effect, opts)
    opts = opts or {}
    return self:update_with_retry("nodes", node, function(n)
      local kept, removed = setmetatable({}, json.array_mt), false
      for _, tt in ipairs(n.spec and n.spec.taints or {}) do
        if tt.key == key and (not effect or tt.effect == effect) then removed = true else kept[#kept + 1] = tt end
      end
      if not removed and not opts.missing_ok then
        return false, err("not_found", ("taint %q not found on node %s"):format(key .. (effect and (":" .. effect) or ""), node))
      end
      n.spec = n.spec or {}
      n.spec.taints = #kept > 0 and kept or nil
    end)
  end

  -- ---- events ----

  --- The events about an object, oldest first (kubectl describe's Events section).
  function Client:events_for(obj)
    local fields = ("involvedObject.name=%s,involvedObject.uid=%s"):format(obj.metadata.name, obj.metadata.uid or "")
    local list, e = self:list("events", { namespace = obj.metadata.namespace or "default", fields = fields })
    if not list then return nil, e end
    table.sort(list, function(a, b)
      return (a.lastTimestamp or a.eventTime or "") < (b.lastTimestamp or b.eventTime or "")
    end)
    return list
  end

  -- ---- version ----

  function Client:version()
    return self:request { path = "/version", verb = "get", resource = "version" }
  end

  --- The skew policy kubectl documents: a client within one minor version of the server.
  function kube.skew(client_version, server_version)
    local cmaj, cmin = tostring(client_version):match("v?(%d+)%.(%d+)")
    local smaj, smin = tostring(server_version):match("v?(%d+)%.(%d+)")
    if not cmaj or not smaj then return nil, err("version", "cannot read versions " .. tostring(client_version) .. " / " .. tostring(server_version)) end
    local d = (tonumber(cmaj) - tonumber(smaj)) * 100 + tonumber(cmin) - tonumber(smin)
    return math.abs(d) <= 1, d
  end

  -- ---- proxy ----

  --- An HTTP request to an in-cluster service through the API server:
  --- k:proxy("shared", "influxdb:8086", "/query", {query=, method=, json=, body=, headers=}).
  function Client:proxy(ns, service, path, opts)
    opts = opts or {}
    local o = { method = opts.method or "GET", path = ("/api/v1/namespaces/%s/services/%s/proxy%s"):format(ns, service, path),
      query = opts.query, body = opts.body, json = opts.json, headers = opts.headers, raw = true,
      accept = opts.accept or "*/*", verb = "proxy", resource = "services/proxy", name = service, namespace = ns }
    local body, e = self:request(o)
    if body == nil then return nil, e end
    if type(body) == "string" and opts.decode ~= false then
      local v = json.decode(body)
      if v ~= nil then return v end
    end
    return body
  end
  require("vq.kube.logs")(kube, Client)
  require("vq.kube.exec")(kube, Client)
end
