-- kubectl's operations with kubectl's semantics (k8s.io/kubectl pkg/cmd, polymorphichelpers):
-- scale, rollout restart and status, a Job from a CronJob, taints, pod summaries, events,
-- logs (with resumption), many pods' logs at once, service proxy, version skew.
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

  --- kubectl's status viewers: returns message, done, or nil, err for a hopeless state.
  function kube.rollout_state(kind, obj)
    local spec, st, gen = obj.spec or {}, obj.status or {}, obj.metadata.generation or 0
    local name = obj.metadata.name
    if kind == "Deployment" then
      if gen > (st.observedGeneration or 0) then return "Waiting for deployment spec update to be observed...", false end
      for _, c in ipairs(st.conditions or {}) do
        if c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded" then
          return nil, err("rollout", ('deployment "%s" exceeded its progress deadline'):format(name))
        end
      end
      local want = spec.replicas or 1
      if (st.updatedReplicas or 0) < want then
        return ('Waiting for deployment "%s" rollout to finish: %d out of %d new replicas have been updated...'):format(name, st.updatedReplicas or 0, want), false
      end
      if (st.replicas or 0) > (st.updatedReplicas or 0) then
        return ('Waiting for deployment "%s" rollout to finish: %d old replicas are pending termination...'):format(name, st.replicas - st.updatedReplicas), false
      end
      if (st.availableReplicas or 0) < (st.updatedReplicas or 0) then
        return ('Waiting for deployment "%s" rollout to finish: %d of %d updated replicas are available...'):format(name, st.availableReplicas or 0, st.updatedReplicas), false
      end
      return ('deployment "%s" successfully rolled out'):format(name), true
    elseif kind == "DaemonSet" then
      if (spec.updateStrategy or {}).type ~= "RollingUpdate" then
        return nil, err("rollout", "rollout status is only available for RollingUpdate strategy type")
      end
      if gen > (st.observedGeneration or 0) then return "Waiting for daemon set spec update to be observed...", false end
      local desired = st.desiredNumberScheduled or 0
      if (st.updatedNumberScheduled or 0) < desired then
        return ('Waiting for daemon set "%s" rollout to finish: %d out of %d new pods have been updated...'):format(name, st.updatedNumberScheduled or 0, desired), false
      end
      if (st.numberAvailable or 0) < desired then
        return ('Waiting for daemon set "%s" rollout to finish: %d of %d updated pods are available...'):format(name, st.numberAvailable or 0, desired), false
      end
      return ('daemon set "%s" successfully rolled out'):format(name), true
    elseif kind == "StatefulSet" then
      if (spec.updateStrategy or {}).type ~= "RollingUpdate" then
        return nil, err("rollout", "rollout status is only available for RollingUpdate strategy type")
      end
      if (st.observedGeneration or 0) == 0 or gen > st.observedGeneration then
        return "Waiting for statefulset spec update to be observed...", false
      end
      local want = spec.replicas or 1
      if (st.readyReplicas or 0) < want then
        return ("Waiting for %d pods to be ready..."):format(want - (st.readyReplicas or 0)), false
      end
      local partition = spec.updateStrategy.rollingUpdate and spec.updateStrategy.rollingUpdate.partition
      if partition and partition > 0 then
        if (st.updatedReplicas or 0) < want - partition then
          return ("Waiting for partitioned roll out to finish: %d out of %d new pods have been updated..."):format(st.updatedReplicas or 0, want - partition), false
        end
        return ("partitioned roll out complete: %d new pods have been updated..."):format(st.updatedReplicas or 0), true
      end
      if st.updateRevision ~= st.currentRevision then
        return ("waiting for statefulset rolling update to complete %d pods at revision %s..."):format(st.updatedReplicas or 0, tostring(st.updateRevision)), false
      end
      return ("statefulset rolling update complete %d pods at revision %s..."):format(st.currentReplicas or 0, tostring(st.currentRevision)), true
    end
    return nil, err("rollout", "no status viewer for " .. tostring(kind))
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

  -- ---- logs ----

  -- A followed stream mostly idles between lines: a 4 KB receive buffer instead of curl's 16 KB
  -- keeps a thousand of them small, and measured no slower on a server that outpaces us.
  local FOLLOW_BUFFER = 4096

  local function log_query(opts, since_time)
    return {
      container = opts.container, follow = opts.follow and "true" or nil, previous = opts.previous and "true" or nil,
      sinceSeconds = (not since_time) and opts.since or nil, sinceTime = since_time or opts.since_time,
      tailLines = (not since_time) and opts.tail or nil, timestamps = "true", limitBytes = opts.limit_bytes,
    }
  end

  --- Lines of a container's log: for line, ts in k:logs(pod, {container=, follow=, since=,
  --- since_time=, tail=, previous=, timestamps=}). A follow that ends while the container
  --- still runs (rotation, an idle cut, an apiserver restart) reopens with sinceTime and
  --- drops the lines already seen. state.err holds an error that ended the iteration;
  --- state.gap is set if lines may have been lost between two streams.
  function Client:logs(pod, opts)
    opts = opts or {}
    local ns = opts.namespace or self.namespace
    local path = ("/api/v1/namespaces/%s/pods/%s/log"):format(ns, pod)
    local state = { reconnects = 0 }
    local stream, lines
    local last_ts, seen_at_last = nil, 0
    local skipping_ts, skip_count = nil, 0

    local function open()
      local head, e = self:request { path = path, query = log_query(opts, last_ts), stream = true, verb = "get",
        resource = "pods/log", name = pod, namespace = ns, timeout = 0,
        buffer_size = opts.buffer_size or (opts.follow and FOLLOW_BUFFER or nil) }
      if not head then return nil, e end
      stream = head.stream
      lines = http.lines(stream)
      skipping_ts, skip_count = last_ts, seen_at_last
      return true
    end

    local function container_running()
      local p = self:get("pods", pod, { namespace = ns })
      if not p then return false end
      for _, c in ipairs((p.status or {}).containerStatuses or {}) do
        if (not opts.container or c.name == opts.container) and c.state and c.state.running then return true end
      end
      return false
    end

    state.close = function()
      state.closed = true
      if stream then stream:close() stream = nil end
    end

    return function()
      while not state.closed do
        if not stream then
          local ok, e = open()
          if not ok then state.err = e return nil end
        end
        local line = lines()
        if not line then
          stream:close()
          stream = nil
          if not opts.follow then return nil end
          if not container_running() then return nil end
          state.reconnects = state.reconnects + 1
          if not last_ts then state.gap = true end
          -- Reopen at once after a stream that delivered lines (a rotation cut it: lines
          -- written meanwhile go to the new file, which a second rotation would take out of
          -- reach); back off only while reopening yields nothing.
          if last_ts == state.last_reopen_ts then
            state.idle_reopens = (state.idle_reopens or 0) + 1
            if state.idle_reopens > (opts.max_reconnects or 100) then
              state.err = err("log_stream", "the log stream keeps ending while the container runs")
              return nil
            end
            vq.sleep(math.min(0.05 * state.idle_reopens, 2))
          else
            state.idle_reopens = 0
          end
          state.last_reopen_ts = last_ts
        else
          local ts, text = line:match("^(%S+) (.*)$")
          if not ts then ts, text = line:match("^(%S+)$"), "" end
          if ts then
            if skipping_ts then
              if ts < skipping_ts or (ts == skipping_ts and skip_count > 0) then
                if ts == skipping_ts then skip_count = skip_count - 1 end
                goto continue
              end
              skipping_ts = nil
            end
            if ts == last_ts then seen_at_last = seen_at_last + 1 else last_ts, seen_at_last = ts, 1 end
            if opts.timestamps then return ts .. " " .. text, ts end
            return text, ts
          end
          return line
        end
        ::continue::
      end
    end, state, nil, kube.closing(state)
  end

  -- ---- many pods' logs at once ----

  local COLOURS = { "\27[36m", "\27[33m", "\27[32m", "\27[35m", "\27[34m", "\27[91m", "\27[92m", "\27[93m" }

  --- Follow many containers (what stern does): k:follow{namespace=, selector= or pattern=,
  --- container=, grep=, since=, concurrency=, on_line=function(line, pod, container)}.
  --- Pods that appear later are picked up from the watch; a stream that ends while its
  --- container runs is reopened without losing or repeating lines (k:logs). Returns a
  --- follower with :lines() (iterator of {pod, container, text}), :stop().
  function Client:follow(opts)
    opts = opts or {}
    local ns = opts.namespace or self.namespace
    local out = vq.queue(opts.buffer or 10000)
    local slots = vq.queue(opts.concurrency or 1000)
    for _ = 1, opts.concurrency or 1000 do slots:put(true) end
    local followed, colour_of, ncolours = {}, {}, 0 -- "pod/container" -> its task
    local follower = { stopped = false }
    local grep = opts.grep

    local function wanted(pod)
      if opts.pattern and not pod.metadata.name:find(opts.pattern) then return false end
      return not pod.metadata.deletionTimestamp
    end

    -- A stream's task keeps only the names it needs, not the watched Pod object.
    local function follow_container(name, c)
      local key = name .. "/" .. c
      if followed[key] then return end
      if not colour_of[name] then
        ncolours = ncolours + 1
        colour_of[name] = COLOURS[(ncolours - 1) % #COLOURS + 1]
      end
      local colour = colour_of[name]
      followed[key] = vq.spawn(function()
        slots:get()
        local iter, st, _, closer = self:logs(name, { namespace = ns, container = c, follow = true, since = opts.since,
          buffer_size = opts.buffer_size })
        local stream <close> = closer
        for text in iter do
          if not grep or text:find(grep) then
            if opts.on_line then opts.on_line(text, name, c)
            else out:put { pod = name, container = c, text = text, colour = colour } end
          end
          if follower.stopped then st.close() break end
        end
        slots:put(true)
        followed[key] = nil
      end)
    end

    local function consider(pod)
      if not wanted(pod) then return end
      local running = {}
      for _, cs in ipairs((pod.status or {}).containerStatuses or {}) do
        if cs.state and (cs.state.running or cs.state.terminated) then running[cs.name] = true end
      end
      for _, c in ipairs((pod.spec or {}).containers or {}) do
        if (not opts.container or c.name == opts.container) and running[c.name] then follow_container(pod.metadata.name, c.name) end
      end
    end

    local watcher = vq.spawn(function()
      local events, st, _, closer = self:watch("pods", { namespace = ns, labels = opts.selector })
      local watch <close> = closer
      follower.watch_state = st
      for ev in events do
        if follower.stopped then break end
        if ev.type ~= "DELETED" then consider(ev.object) end
      end
    end)

    function follower:stop()
      self.stopped = true
      if self.watch_state then self.watch_state.close() end
      watcher:cancel()
      for _, t in pairs(followed) do t:cancel() end
      out:close()
    end

    --- Lines as they come; each {pod, container, text, colour}.
    function follower:lines()
      return function()
        local item = out:get()
        return item
      end
    end

    --- "[pod/container] text", coloured per pod when the console has colour.
    function follower.format(item, colour)
      local prefix = ("[%s/%s]"):format(item.pod, item.container)
      if colour then prefix = item.colour .. prefix .. "\27[0m" end
      return prefix .. " " .. item.text
    end
    return follower
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
  require("vq.kube.exec")(kube, Client)
end
