-- The simulator's controllers and kubelet, driven as a runbook drives a cluster: objects
-- written through the HTTP API and real kubectl, and kubectl's rollout status, wait, get
-- and describe answering as they do against a real cluster.
local vq = require "vq"
local json = require "json"
local http = require "vq.http"
local cluster = require "spec.support.cluster"

local SPEED = 0.02
local NS = "apps"

local sim

-- ---- helpers ----

local eventually, ready = cluster.eventually, cluster.ready

local function kubectl(args)
  return cluster.run_kubectl(sim, args, { request_timeout = "20s", timeout = 90 })
end

local function ok_kubectl(args, opts)
  return (cluster.kubectl(sim, args, { stdin = opts and opts.stdin, timeout = 90 }))
end

local function api(method, path, body)
  local r = assert(http.request { method = method, url = sim.url .. path, json = body,
    headers = { Authorization = "Bearer " .. sim.token } })
  return r
end

local function pod(name, ns) return sim:get("pods", ns or NS, name) end

local function condition(obj, typ)
  for _, c in ipairs(obj and obj.status and obj.status.conditions or {}) do
    if c.type == typ then return c end
  end
end

local function events_for(name, reason)
  return sim:list("events", nil, function(e)
    return e.involvedObject.name == name and (not reason or e.reason == reason)
  end)
end

local function pods_of(prefix)
  return sim:list("pods", NS, function(p) return p.metadata.name:sub(1, #prefix) == prefix end)
end

local function program(container, name)
  return { ["sim.vqlua.io/program." .. container] = name }
end

local function sts_manifest(name, replicas, image, extra)
  local m = {
    apiVersion = "apps/v1", kind = "StatefulSet",
    metadata = { name = name, namespace = NS },
    spec = {
      replicas = replicas, serviceName = name, selector = { matchLabels = { app = name } },
      template = { metadata = { labels = { app = name } },
                   spec = { containers = { { name = "app", image = image,
                                             resources = { requests = { cpu = "100m", memory = "128Mi" } } } } } },
    },
  }
  for k, v in pairs(extra or {}) do m.spec[k] = v end
  return m
end

-- ---- the cluster ----

setup(function()
  sim = cluster.start { speed = SPEED, modules = { "sim.auth", "sim.core", "sim.controllers" }, namespace = NS }
  assert(sim:create("namespaces", { metadata = { name = NS } }))
  for i = 1, 3 do
    assert(sim:create("nodes", { metadata = { name = "node-" .. i, labels = { ["node-role.kubernetes.io/worker"] = "" } },
      status = { capacity = { cpu = "4", memory = "16Gi", pods = "110" }, allocatable = { cpu = "4", memory = "16Gi", pods = "110" } } }))
  end
  assert(sim:create("storageclasses.storage.k8s.io", {
    metadata = { name = "standard", annotations = { ["storageclass.kubernetes.io/is-default-class"] = "true" } },
    provisioner = "disk.csi.example.com", reclaimPolicy = "Delete", volumeBindingMode = "WaitForFirstConsumer" }))
  eventually(function()
    local n = sim:get("nodes", nil, "node-3")
    return condition(n, "Ready") ~= nil
  end, 10, "nodes registered")
end)

teardown(function() if sim then cluster.finish(sim) end end)

-- ---- StatefulSets ----

describe("a StatefulSet", function()
  local created_order, ready_before = {}, {}

  it("comes up in order, one pod after its predecessor is Running and Ready", function()
    sim.store:on_change(function(ev)
      if ev.key == "pods" and ev.type == "ADDED" and ev.object.metadata.name:match("^web%-%d$") then
        local name = ev.object.metadata.name
        created_order[#created_order + 1] = name
        local ord = tonumber(name:match("(%d+)$"))
        ready_before[name] = ord == 0 or ready(pod("web-" .. (ord - 1)))
      end
    end)
    local manifest = sts_manifest("web", 3, "nginx:1.25", {
      volumeClaimTemplates = { { metadata = { name = "data" },
        spec = { accessModes = { "ReadWriteOnce" }, resources = { requests = { storage = "1Gi" } } } } },
    })
    local r = api("POST", "/apis/apps/v1/namespaces/" .. NS .. "/statefulsets", manifest)
    assert.are.equal(201, r.status)
    local out = ok_kubectl { "rollout", "status", "sts/web", "--timeout=60s" }
    -- the apiserver defaults rollingUpdate.partition to 0, so kubectl reports a partitioned roll out
    assert.matches("partitioned roll out complete: 3 new pods have been updated", out)
    -- a web-N created before web-(N-1) was ready would break OrderedReady; recreations
    -- of the same name later are not first creations
    assert.are.same({ "web-0", "web-1", "web-2" }, { created_order[1], created_order[2], created_order[3] })
    for _, name in ipairs { "web-0", "web-1", "web-2" } do assert.is_true(ready_before[name], name) end
  end)

  it("gives its pods identity labels, an owner and their claims", function()
    local sts = sim:get("statefulsets.apps", NS, "web")
    local p = pod("web-1")
    local labels = p.metadata.labels
    assert.are.equal("web-1", labels["statefulset.kubernetes.io/pod-name"])
    assert.are.equal("1", labels["apps.kubernetes.io/pod-index"])
    assert.are.equal(sts.status.updateRevision, labels["controller-revision-hash"])
    local ref = p.metadata.ownerReferences[1]
    assert.are.same({ "StatefulSet", "web", sts.metadata.uid, true, true },
      { ref.kind, ref.name, ref.uid, ref.controller, ref.blockOwnerDeletion })
    assert.truthy(sim:get("controllerrevisions.apps", NS, sts.status.updateRevision))
    local claim = sim:get("persistentvolumeclaims", NS, "data-web-1")
    assert.are.equal("Bound", claim.status.phase)
    assert.are.equal("Bound", sim:get("persistentvolumes", nil, claim.spec.volumeName).status.phase)
    assert.are.equal("Running", p.status.phase)
    assert.matches("^10%.244%.%d+%.%d+$", p.status.podIP)
    assert.are.equal("Burstable", p.status.qosClass)
    local cs = p.status.containerStatuses[1]
    assert.is_true(cs.ready and cs.started)
    assert.matches("^containerd://%x+$", cs.containerID)
    assert.matches("^docker.io/library/nginx@sha256:%x+$", cs.imageID)
    assert.truthy(cs.state.running.startedAt)
    local st = sts.status
    assert.are.same({ 3, 3, 3, 3, 3, st.updateRevision, sts.metadata.generation },
      { st.replicas, st.readyReplicas, st.currentReplicas, st.updatedReplicas, st.availableReplicas, st.currentRevision, st.observedGeneration })
  end)

  it("scales down from the highest ordinal, keeping the claims", function()
    ok_kubectl { "scale", "sts/web", "--replicas=2" }
    eventually(function() return pod("web-2") == nil end, 20, "web-2 gone")
    assert.truthy(pod("web-0"))
    assert.truthy(pod("web-1"))
    assert.truthy(sim:get("persistentvolumeclaims", NS, "data-web-2"))
    ok_kubectl { "rollout", "status", "sts/web", "--timeout=60s" }
    assert.are.equal(1, #events_for("web", "SuccessfulDelete"))
  end)

  it("rolls a new image out highest ordinal first, and rollout status waits for the end", function()
    local deleted = {}
    sim.store:on_change(function(ev)
      if ev.key == "pods" and ev.type == "DELETED" and ev.object.metadata.name:match("^web%-%d$") then
        deleted[#deleted + 1] = ev.object.metadata.name
      end
    end)
    ok_kubectl { "set", "image", "sts/web", "app=nginx:1.26" }
    local out = ok_kubectl { "rollout", "status", "sts/web", "--timeout=60s" }
    assert.matches("roll out complete: 2 new pods have been updated", out)
    assert.are.same({ "web-1", "web-0" }, deleted)
    local sts = sim:get("statefulsets.apps", NS, "web")
    assert.are.equal(sts.status.currentRevision, sts.status.updateRevision)
    for _, p in ipairs(pods_of("web-")) do
      assert.are.equal("nginx:1.26", p.spec.containers[1].image)
      assert.are.equal(sts.status.updateRevision, p.metadata.labels["controller-revision-hash"])
    end
  end)

  it("holds a rollout behind a pod that never gets ready until that pod is deleted", function()
    ok_kubectl { "patch", "sts/web", "-p", json.encode { spec = { template = { metadata = { annotations = program("app", "crash") } } } } }
    eventually(function()
      local p = pod("web-1")
      local cs = p and p.status.containerStatuses and p.status.containerStatuses[1]
      return cs and cs.restartCount >= 2 and cs.state.waiting and cs.state.waiting.reason == "CrashLoopBackOff"
    end, 30, "web-1 in CrashLoopBackOff")
    local stuck = kubectl { "rollout", "status", "sts/web", "--timeout=2s" }
    assert.are_not.equal(0, stuck.status)
    local broken = sim:get("statefulsets.apps", NS, "web").status.updateRevision
    -- the fix: a template that works again; still the controller waits for web-1
    ok_kubectl { "patch", "sts/web", "--type=json", "-p",
      '[{"op":"remove","path":"/spec/template/metadata/annotations"}]' }
    vq.sleep(0.5)
    assert.are.equal(broken, pod("web-1").metadata.labels["controller-revision-hash"])
    assert.are_not.equal(0, kubectl({ "rollout", "status", "sts/web", "--timeout=1s" }).status)
    ok_kubectl { "delete", "pod", "web-1", "--wait=false" }
    local out = ok_kubectl { "rollout", "status", "sts/web", "--timeout=60s" }
    assert.matches("roll out complete: 2 new pods have been updated", out)
    local sts = sim:get("statefulsets.apps", NS, "web")
    assert.are_not.equal(broken, sts.status.updateRevision)
    assert.are.equal(sts.status.updateRevision, pod("web-1").metadata.labels["controller-revision-hash"])
  end)
end)

-- ---- Deployments ----

describe("a Deployment", function()
  it("rolls out, restarts with kubectl rollout restart and reports it done", function()
    ok_kubectl { "create", "deployment", "api", "--image=nginx:1.25", "--replicas=3" }
    ok_kubectl { "rollout", "status", "deploy/api", "--timeout=60s" }
    local first = sim:list("replicasets.apps", NS, function(rs) return rs.metadata.name:match("^api%-") end)
    assert.are.equal(1, #first)
    ok_kubectl { "rollout", "restart", "deploy/api" }
    local out = ok_kubectl { "rollout", "status", "deploy/api", "--timeout=60s" }
    assert.matches('deployment "api" successfully rolled out', out)
    local d = sim:get("deployments.apps", NS, "api")
    assert.are.same({ 3, 3, 3, 3 }, { d.status.replicas, d.status.updatedReplicas, d.status.readyReplicas, d.status.availableReplicas })
    assert.are.equal("NewReplicaSetAvailable", condition(d, "Progressing").reason)
    assert.are.equal("True", condition(d, "Available").status)
    assert.are.equal("2", d.metadata.annotations["deployment.kubernetes.io/revision"])
    local rss = sim:list("replicasets.apps", NS, function(rs) return rs.metadata.name:match("^api%-") end)
    assert.are.equal(2, #rss)
    local old = sim:get("replicasets.apps", NS, first[1].metadata.name)
    assert.are.equal(0, old.spec.replicas)
    local active = sim:list("pods", NS, function(p) return p.metadata.name:match("^api%-") and not p.metadata.deletionTimestamp end)
    eventually(function()
      active = sim:list("pods", NS, function(p) return p.metadata.name:match("^api%-") end)
      return #active == 3
    end, 20, "old pods gone")
    for _, p in ipairs(active) do assert.are_not.equal(old.metadata.labels["pod-template-hash"], p.metadata.labels["pod-template-hash"]) end
    assert.truthy(#events_for("api", "ScalingReplicaSet") >= 3)
  end)
end)

describe("kubectl rollout undo", function()
  it("brings a Deployment back to its earlier ReplicaSet instead of making a new one", function()
    local before = sim:list("replicasets.apps", NS, function(rs) return rs.metadata.name:match("^api%-") end)
    ok_kubectl { "rollout", "undo", "deploy/api" }
    ok_kubectl { "rollout", "status", "deploy/api", "--timeout=60s" }
    local after = sim:list("replicasets.apps", NS, function(rs) return rs.metadata.name:match("^api%-") end)
    assert.are.equal(#before, #after)
    assert.are.equal("3", sim:get("deployments.apps", NS, "api").metadata.annotations["deployment.kubernetes.io/revision"])
  end)

  it("brings a StatefulSet back to an earlier revision", function()
    -- the fixed template equals the 1.26 one, so that revision was reused and renumbered
    local history = ok_kubectl { "rollout", "history", "sts/web" }
    assert.matches("\n1 .*\n3 .*\n4 ", history)
    local revisions = #sim:list("controllerrevisions.apps", NS, function(r) return r.metadata.name:match("^web%-") end)
    ok_kubectl { "rollout", "undo", "sts/web", "--to-revision=1" }
    ok_kubectl { "rollout", "status", "sts/web", "--timeout=60s" }
    assert.are.equal(revisions, #sim:list("controllerrevisions.apps", NS, function(r) return r.metadata.name:match("^web%-") end))
    for _, p in ipairs(pods_of("web-")) do assert.are.equal("nginx:1.25", p.spec.containers[1].image) end
  end)
end)

describe("a Service", function()
  it("gets Endpoints of its ready pods, named target ports resolved", function()
    assert(sim:create("services", { metadata = { name = "web", namespace = NS },
      spec = { selector = { app = "web" }, ports = { { name = "http", port = 80, targetPort = "http" } } } }))
    local copy = require("sim.util").copy(sim:get("statefulsets.apps", NS, "web"))
    copy.spec.template.spec.containers[1].ports = { { name = "http", containerPort = 8080 } }
    sim:update("statefulsets.apps", copy)
    ok_kubectl { "rollout", "status", "sts/web", "--timeout=60s" }
    local ep = eventually(function()
      local e = sim:get("endpoints", NS, "web")
      local s = e and e.subsets and e.subsets[1]
      return s and s.addresses and #s.addresses == 2 and s.ports[1].port == 8080 and e
    end, 20, "endpoints of both pods")
    assert.are.equal("Pod", ep.subsets[1].addresses[1].targetRef.kind)
    local out = ok_kubectl { "describe", "service", "web" }
    assert.matches("Endpoints:%s+10%.244%.%d+%.%d+:8080,10%.244%.%d+%.%d+:8080", out)
  end)
end)

-- ---- DaemonSets ----

describe("a DaemonSet", function()
  it("runs one pod per node it tolerates", function()
    local node = sim:get("nodes", nil, "node-3")
    local copy = require("sim.util").copy(node)
    copy.spec = copy.spec or {}
    copy.spec.taints = { { key = "dedicated", value = "db", effect = "NoSchedule" } }
    sim:update("nodes", copy)
    local r = api("POST", "/apis/apps/v1/namespaces/" .. NS .. "/daemonsets", {
      metadata = { name = "agent" },
      spec = { selector = { matchLabels = { app = "agent" } },
               template = { metadata = { labels = { app = "agent" } }, spec = { containers = { { name = "agent", image = "telegraf:1.30" } } } } } })
    assert.are.equal(201, r.status)
    ok_kubectl { "rollout", "status", "ds/agent", "--timeout=60s" }
    local ds = sim:get("daemonsets.apps", NS, "agent")
    assert.are.same({ 2, 2, 2, 2 }, { ds.status.desiredNumberScheduled, ds.status.currentNumberScheduled, ds.status.numberReady, ds.status.updatedNumberScheduled })
    local nodes = {}
    for _, p in ipairs(pods_of("agent-")) do nodes[p.spec.nodeName] = true end
    assert.are.same({ ["node-1"] = true, ["node-2"] = true }, nodes)
    copy = require("sim.util").copy(sim:get("nodes", nil, "node-3"))
    copy.spec.taints = nil
    sim:update("nodes", copy)
    eventually(function() return #pods_of("agent-") == 3 end, 20, "a third agent")
    ok_kubectl { "rollout", "status", "ds/agent", "--timeout=60s" }
  end)
end)

-- ---- Jobs and CronJobs ----

describe("a Job", function()
  local cronjob = [[
apiVersion: batch/v1
kind: CronJob
metadata:
  name: backup
spec:
  schedule: "0 3 * * *"
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        metadata:
          annotations:
            sim.vqlua.io/program.backup: job
        spec:
          restartPolicy: OnFailure
          containers:
          - name: backup
            image: busybox:1.36
]]

  it("made from a CronJob with kubectl create job --from completes, and kubectl wait sees it", function()
    ok_kubectl({ "apply", "--validate=false", "-f", "-" }, { stdin = cronjob })
    ok_kubectl { "create", "job", "backup-manual", "--from=cronjob/backup" }
    ok_kubectl { "wait", "--for=condition=complete", "job/backup-manual", "--timeout=60s" }
    local job = sim:get("jobs.batch", NS, "backup-manual")
    assert.are.equal(1, job.status.succeeded)
    assert.truthy(job.status.completionTime and job.status.startTime)
    assert.is_nil(job.status.active)
    local p = sim:list("pods", NS, function(x) return (x.metadata.labels or {})["job-name"] == "backup-manual" end)[1]
    assert.are.equal("Succeeded", p.status.phase)
    assert.is_false(ready(p))
    assert.are.equal("backup-manual", p.metadata.labels["batch.kubernetes.io/job-name"])
    assert.are.same({}, p.metadata.finalizers or {})
    local out = ok_kubectl { "get", "pods", "-l", "job-name=backup-manual", "--no-headers" }
    assert.matches("0/1%s+Completed", out)
    eventually(function() return #events_for("backup", "SawCompletedJob") == 1 end, 10, "SawCompletedJob")
    eventually(function() return sim:get("cronjobs.batch", NS, "backup").status.lastSuccessfulTime end, 10, "lastSuccessfulTime")
  end)

  it("keeps only successfulJobsHistoryLimit finished Jobs of a CronJob", function()
    ok_kubectl { "create", "job", "backup-second", "--from=cronjob/backup" }
    ok_kubectl { "wait", "--for=condition=complete", "job/backup-second", "--timeout=60s" }
    eventually(function() return sim:get("jobs.batch", NS, "backup-manual") == nil end, 20, "the older job deleted")
    assert.truthy(sim:get("jobs.batch", NS, "backup-second"))
  end)

  it("that keeps failing ends Failed with BackoffLimitExceeded", function()
    local r = api("POST", "/apis/batch/v1/namespaces/" .. NS .. "/jobs", {
      metadata = { name = "migrate" },
      spec = { backoffLimit = 1, template = { metadata = { annotations = program("migrate", "crash") },
        spec = { restartPolicy = "Never", containers = { { name = "migrate", image = "busybox:1.36" } } } } } })
    assert.are.equal(201, r.status)
    ok_kubectl { "wait", "--for=condition=failed", "job/migrate", "--timeout=60s" }
    local job = sim:get("jobs.batch", NS, "migrate")
    local failed = condition(job, "Failed")
    assert.are.equal("BackoffLimitExceeded", failed.reason)
    assert.are.equal("Job has reached the specified backoff limit", failed.message)
    assert.are.equal(2, job.status.failed)
    assert.is_nil(condition(job, "Complete"))
    local pods = sim:list("pods", NS, function(x) return (x.metadata.labels or {})["job-name"] == "migrate" end)
    assert.are.equal(2, #pods)
    for _, p in ipairs(pods) do assert.are.equal("Failed", p.status.phase) end
    assert.are.equal(1, #events_for("migrate", "BackoffLimitExceeded"))
  end)

  it("of a CronJob starts on its schedule as the clock passes it", function()
    ok_kubectl { "create", "cronjob", "tick", "--image=busybox:1.36", "--schedule=*/5 * * * *" }
    sim.clock:advance(600)
    local job = eventually(function()
      return sim:list("jobs.batch", NS, function(j) return j.metadata.name:match("^tick%-%d+$") end)[1]
    end, 10, "a scheduled job")
    local scheduled = job.metadata.annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"]
    assert.matches(":[0-5][05]:00Z$", scheduled)
    assert.are.equal("CronJob", job.metadata.ownerReferences[1].kind)
    eventually(function() return sim:get("cronjobs.batch", NS, "tick").status.lastScheduleTime == scheduled end, 10, "lastScheduleTime")
    ok_kubectl { "patch", "cronjob/tick", "-p", '{"spec":{"suspend":true}}' }
  end)
end)

-- ---- the kubelet ----

describe("the kubelet", function()
  it("restarts a crashing container with back-off: CrashLoopBackOff and RESTARTS in kubectl get", function()
    assert(sim:create("pods", { metadata = { name = "crasher", namespace = NS, annotations = program("app", "crash") },
      spec = { containers = { { name = "app", image = "example/app:2" } } } }))
    eventually(function()
      local cs = pod("crasher").status.containerStatuses
      return cs and cs[1].restartCount >= 2 and cs[1].state.waiting ~= nil
    end, 30, "crash loop")
    local out = ok_kubectl { "get", "pod", "crasher", "--no-headers" }
    local status, restarts = out:match("^crasher%s+0/1%s+(%S+)%s+(%d+)")
    assert.are.equal("CrashLoopBackOff", status)
    assert.truthy(tonumber(restarts) >= 2)
    local cs = pod("crasher").status.containerStatuses[1]
    assert.are.equal(1, cs.lastState.terminated.exitCode)
    assert.are.equal("Error", cs.lastState.terminated.reason)
    assert.matches("^back%-off %d+s restarting failed container=app pod=crasher_apps%(", cs.state.waiting.message)
    local backoff = events_for("crasher", "BackOff")[1]
    assert.are.equal("Warning", backoff.type)
    assert.are.equal("spec.containers{app}", backoff.involvedObject.fieldPath)
    assert.matches("^Back%-off restarting failed container app in pod crasher_apps%(", backoff.message)
    assert.are.equal("Running", pod("crasher").status.phase)
  end)

  it("runs init containers first and reports them", function()
    assert(sim:create("pods", { metadata = { name = "with-init", namespace = NS, annotations = program("setup", "job") },
      spec = { initContainers = { { name = "setup", image = "busybox:1.36" } },
               containers = { { name = "app", image = "nginx:1.25" } } } }))
    eventually(function() return ready(pod("with-init")) end, 20, "ready")
    local p = pod("with-init")
    assert.are.equal(0, p.status.initContainerStatuses[1].state.terminated.exitCode)
    assert.are.equal("Completed", p.status.initContainerStatuses[1].state.terminated.reason)
    local init_done = require("sim.util").parse_time(p.status.initContainerStatuses[1].state.terminated.finishedAt)
    local app_started = require("sim.util").parse_time(p.status.containerStatuses[1].state.running.startedAt)
    assert.truthy(app_started >= init_done)
    local reasons = {}
    for _, e in ipairs(events_for("with-init")) do reasons[#reasons + 1] = e.reason .. ":" .. (e.involvedObject.fieldPath or "") end
    local text = table.concat(reasons, " ")
    assert.matches("Scheduled:", text)
    assert.matches("Started:spec.initContainers{setup}", text)
    assert.matches("Started:spec.containers{app}", text)
  end)

  it("gives a program its context and the logs their lines", function()
    local seen, lines = nil, {}
    sim.logs = {
      -- other tests' pods go on logging meanwhile: keep the probe's lines only
      start = function(_, ns, p, c, n) if p == "probe" then lines[#lines + 1] = ("start %s/%s/%s #%d"):format(ns, p, c, n) end end,
      write = function(_, ns, p, c, line) if p == "probe" then lines[#lines + 1] = ("%s/%s/%s %s"):format(ns, p, c, line) end end,
      stop = function(_, ns, p, c) if p == "probe" then lines[#lines + 1] = ("stop %s/%s/%s"):format(ns, p, c) end end,
    }
    sim.programs["spec-probe"] = function(ctx)
      seen = ctx
      ctx:log("hello " .. ctx.env.GREETING .. " " .. ctx.env.POD)
      ctx:ready(true)
      ctx:sleep(1)
      ctx:exit(3, "Custom")
    end
    assert(sim:create("configmaps", { metadata = { name = "greeting", namespace = NS }, data = { text = "world" } }))
    assert(sim:create("pods", { metadata = { name = "probe", namespace = NS, annotations = program("main", "spec-probe") },
      spec = { restartPolicy = "Never", containers = { { name = "main", image = "example/probe:1", args = { "--flag" },
        env = { { name = "GREETING", valueFrom = { configMapKeyRef = { name = "greeting", key = "text" } } },
                { name = "POD", valueFrom = { fieldRef = { fieldPath = "metadata.name" } } } } } } } }))
    eventually(function() return pod("probe").status.phase == "Failed" end, 20, "the program's exit")
    sim.logs = nil
    assert.are.equal("probe", seen.name)
    assert.are.equal(NS, seen.namespace)
    assert.are.equal("main", seen.container.name)
    assert.are.same({ "--flag" }, seen.args)
    assert.are.equal(0, seen.restart_count)
    assert.are.equal(seen.pod.metadata.name, "probe")
    assert.are.same({ "start apps/probe/main #0", "apps/probe/main hello world probe", "stop apps/probe/main" }, lines)
    local t = pod("probe").status.containerStatuses[1].state.terminated
    assert.are.same({ 3, "Custom" }, { t.exitCode, t.reason })
  end)

  it("takes over a pod a world seeded as running, without starting it again", function()
    local started = "2026-01-01T00:00:00Z"
    assert(sim:create("pods", { metadata = { name = "seeded", namespace = NS, annotations = program("app", "crash") },
      spec = { nodeName = "node-1", containers = { { name = "app", image = "example/app:1" } } },
      status = { phase = "Running", podIP = "10.244.1.200", hostIP = "10.0.0.11", startTime = started,
        conditions = { { type = "Ready", status = "True" } },
        containerStatuses = { { name = "app", image = "example/app:1", imageID = "", containerID = "containerd://abc",
          ready = true, started = true, restartCount = 4, state = { running = { startedAt = started } }, lastState = {} } } } }))
    -- its program (crash) ends the adopted container; the kubelet restarts it by its policy
    local cs = eventually(function()
      local c = pod("seeded").status.containerStatuses[1]
      return c.restartCount >= 5 and c
    end, 20, "the adopted container restarted")
    assert.are.equal("containerd://abc", cs.lastState.terminated.containerID)
    assert.are.equal("10.244.1.200", pod("seeded").status.podIP)
    assert.are.equal(0, #events_for("seeded", "Scheduled"))
    ok_kubectl { "delete", "pod", "seeded", "--timeout=30s" }
  end)

  it("backs off pulling an image a scenario makes unpullable, and starts once it pulls", function()
    local broken = true
    sim.image_pull_error = function(image)
      if broken and image == "example/missing:9" then return "rpc error: code = NotFound desc = failed to pull and unpack image" end
    end
    assert(sim:create("pods", { metadata = { name = "puller", namespace = NS },
      spec = { containers = { { name = "app", image = "example/missing:9" } } } }))
    eventually(function()
      local cs = pod("puller").status.containerStatuses
      return cs and cs[1].state.waiting and cs[1].state.waiting.reason == "ImagePullBackOff"
    end, 20, "ImagePullBackOff")
    -- the kubelet alternates between the two while it backs off: kubectl may see either
    local line = ok_kubectl { "get", "pod", "puller", "--no-headers" }
    assert.truthy(line:match("^puller%s+0/1%s+ImagePullBackOff") or line:match("^puller%s+0/1%s+ErrImagePull"), line)
    local failed = events_for("puller", "Failed")
    assert.truthy(#failed >= 2)
    broken = false
    eventually(function() return ready(pod("puller")) end, 30, "pulled at last")
    sim.image_pull_error = nil
  end)

  it("holds a container whose config map is missing in CreateContainerConfigError", function()
    assert(sim:create("pods", { metadata = { name = "configless", namespace = NS },
      spec = { containers = { { name = "app", image = "nginx:1.25",
        env = { { name = "MODE", valueFrom = { configMapKeyRef = { name = "settings", key = "mode" } } } } } } } }))
    eventually(function()
      local cs = pod("configless").status.containerStatuses
      return cs and cs[1].state.waiting and cs[1].state.waiting.reason == "CreateContainerConfigError"
    end, 20, "CreateContainerConfigError")
    assert.are.equal('configmap "settings" not found', pod("configless").status.containerStatuses[1].state.waiting.message)
    assert(sim:create("configmaps", { metadata = { name = "settings", namespace = NS }, data = { mode = "fast" } }))
    eventually(function() return ready(pod("configless")) end, 20, "started once the config map exists")
  end)

  it("leaves a pod Pending with FailedScheduling when no node fits", function()
    assert(sim:create("pods", { metadata = { name = "picky", namespace = NS },
      spec = { nodeSelector = { disktype = "ssd" }, containers = { { name = "app", image = "nginx:1.25" } } } }))
    local ev = eventually(function() return events_for("picky", "FailedScheduling")[1] end, 10, "FailedScheduling")
    assert.are.equal("0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.", ev.message)
    assert.are.equal("Warning", ev.type)
    assert.are.equal("default-scheduler", ev.source.component)
    local cond = condition(pod("picky"), "PodScheduled")
    assert.are.same({ "False", "Unschedulable" }, { cond.status, cond.reason })
    assert.matches("^picky%s+0/1%s+Pending", ok_kubectl { "get", "pod", "picky", "--no-headers" })
    ok_kubectl { "label", "node", "node-2", "disktype=ssd" }
    eventually(function() return ready(pod("picky")) end, 20, "scheduled once a node fits")
    assert.are.equal("node-2", pod("picky").spec.nodeName)
  end)

  it("keeps a pod off nodes its bound volume cannot reach", function()
    assert(sim:create("persistentvolumes", { metadata = { name = "zonal" },
      spec = { capacity = { storage = "5Gi" }, accessModes = { "ReadWriteOnce" }, storageClassName = "",
               csi = { driver = "disk.csi.example.com", volumeHandle = "vol-1" },
               nodeAffinity = { required = { nodeSelectorTerms = { { matchExpressions = {
                 { key = "topology.kubernetes.io/zone", operator = "In", values = { "zone-9" } } } } } } } } }))
    assert(sim:create("persistentvolumeclaims", { metadata = { name = "zonal", namespace = NS },
      spec = { storageClassName = "", accessModes = { "ReadWriteOnce" }, resources = { requests = { storage = "5Gi" } } } }))
    eventually(function() return sim:get("persistentvolumeclaims", NS, "zonal").status.phase == "Bound" end, 10, "static binding")
    assert(sim:create("pods", { metadata = { name = "zonal", namespace = NS },
      spec = { containers = { { name = "app", image = "nginx:1.25" } },
               volumes = { { name = "data", persistentVolumeClaim = { claimName = "zonal" } } } } }))
    local ev = eventually(function() return events_for("zonal", "FailedScheduling")[1] end, 10, "FailedScheduling")
    assert.matches("^0/3 nodes are available: 3 node%(s%) had volume node affinity conflict%.", ev.message)
    ok_kubectl { "delete", "pod", "zonal", "--timeout=30s" }
  end)

  it("finds the default ServiceAccount in every namespace", function()
    assert.truthy(sim:get("serviceaccounts", NS, "default"))
    assert.truthy(sim:get("serviceaccounts", "kube-system", "default"))
  end)

  it("counts the same event again instead of writing a new one", function()
    local p = pod("picky")
    sim.event(p, "Normal", "Probe", "same thing", "spec")
    sim.event(p, "Normal", "Probe", "same thing", "spec")
    local list = events_for("picky", "Probe")
    assert.are.equal(1, #list)
    assert.are.equal(2, list[1].count)
    assert.matches("^picky%.%x+$", list[1].metadata.name)
  end)

  it("is described by kubectl describe pod and describe node", function()
    local out = ok_kubectl { "describe", "pod", "web-0" }
    assert.matches("Status:%s+Running", out)
    assert.matches("Controlled By:%s+StatefulSet/web", out)
    assert.matches("Normal%s+Scheduled", out)
    assert.matches("Normal%s+Started", out)
    assert.matches("QoS Class:%s+Burstable", out)
    local node = pod("web-0").spec.nodeName
    out = ok_kubectl { "describe", "node", node }
    assert.matches("Allocated resources:", out)
    assert.matches("cpu%s+%d+m %(%d+%%%)", out)
    assert.matches("Ready%s+True", out)
    assert.matches("RegisteredNode", out)
    assert.matches("Non%-terminated Pods:", out)
  end)

  it("marks the pods of a NotReady node not ready and taints the node", function()
    local p = pod("picky")
    sim.set_node_ready("node-2", false)
    eventually(function() return not ready(pod("picky")) end, 10, "pod not ready")
    local n = eventually(function()
      local node = sim:get("nodes", nil, "node-2")
      return node.spec.taints and node
    end, 10, "taints")
    local keys = {}
    for _, t in ipairs(n.spec.taints) do keys[#keys + 1] = t.key .. ":" .. t.effect end
    assert.are.same({ "node.kubernetes.io/not-ready:NoSchedule", "node.kubernetes.io/not-ready:NoExecute" }, keys)
    assert.matches("NotReady", ok_kubectl { "get", "node", "node-2", "--no-headers" })
    sim.set_node_ready("node-2", true)
    eventually(function() return ready(pod("picky")) end, 10, "ready again")
    eventually(function() return sim:get("nodes", nil, "node-2").spec.taints == nil end, 10, "taints removed")
    assert.are.equal(p.metadata.uid, pod("picky").metadata.uid)
  end)

  it("stops a deleted pod's containers before it goes", function()
    ok_kubectl { "delete", "pod", "picky", "--timeout=30s" }
    assert.is_nil(pod("picky"))
    assert.are.equal(1, #events_for("picky", "Killing"))
  end)
end)

-- ---- volumes ----

describe("a PersistentVolumeClaim", function()
  it("stays Terminating while a pod uses it and goes once the pod is gone", function()
    ok_kubectl({ "apply", "--validate=false", "-f", "-" }, { stdin = [[
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: scratch
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 2Gi
---
apiVersion: v1
kind: Pod
metadata:
  name: user
spec:
  containers:
  - name: app
    image: nginx:1.25
    volumeMounts:
    - name: scratch
      mountPath: /scratch
  volumes:
  - name: scratch
    persistentVolumeClaim:
      claimName: scratch
]] })
    ok_kubectl { "wait", "--for=condition=ready", "pod/user", "--timeout=60s" }
    local claim = sim:get("persistentvolumeclaims", NS, "scratch")
    assert.are.equal("Bound", claim.status.phase)
    local volume = claim.spec.volumeName
    ok_kubectl { "delete", "pvc", "scratch", "--wait=false" }
    vq.sleep(0.3)
    assert.matches("^scratch%s+Terminating", ok_kubectl { "get", "pvc", "scratch", "--no-headers" })
    ok_kubectl { "delete", "pod", "user" }
    eventually(function() return sim:get("persistentvolumeclaims", NS, "scratch") == nil end, 20, "the claim gone")
    -- a provisioned volume with reclaimPolicy Delete follows its claim
    eventually(function() return sim:get("persistentvolumes", nil, volume) == nil end, 20, "the volume gone")
  end)
end)

-- ---- deletion and the other policies ----

describe("deleting", function()
  it("a Parallel StatefulSet starts its pods together and its deletion takes the pods, not the claims", function()
    local manifest = sts_manifest("cache", 3, "redis:7", {
      podManagementPolicy = "Parallel",
      volumeClaimTemplates = { { metadata = { name = "data" },
        spec = { accessModes = { "ReadWriteOnce" }, resources = { requests = { storage = "1Gi" } } } } },
    })
    assert.are.equal(201, api("POST", "/apis/apps/v1/namespaces/" .. NS .. "/statefulsets", manifest).status)
    -- all three exist before any is ready
    local all = eventually(function() return #pods_of("cache-") == 3 and pods_of("cache-") end, 10, "three pods")
    local ready_count = 0
    for _, p in ipairs(all) do if ready(p) then ready_count = ready_count + 1 end end
    assert.are.equal(0, ready_count)
    ok_kubectl { "rollout", "status", "sts/cache", "--timeout=60s" }
    ok_kubectl { "delete", "sts", "cache", "--timeout=30s" }
    eventually(function() return #pods_of("cache-") == 0 end, 20, "pods gone")
    for i = 0, 2 do assert.truthy(sim:get("persistentvolumeclaims", NS, "data-cache-" .. i)) end
  end)

  it("a Job takes its pods along, finalizers and all", function()
    assert.are.equal(201, api("POST", "/apis/batch/v1/namespaces/" .. NS .. "/jobs", {
      metadata = { name = "long" },
      spec = { template = { spec = { restartPolicy = "Never", containers = { { name = "long", image = "busybox:1.36" } } } } } }).status)
    local p = eventually(function()
      local list = sim:list("pods", NS, function(x) return (x.metadata.labels or {})["job-name"] == "long" end)
      return list[1] and ready(list[1]) and list[1]
    end, 20, "the job's pod running")
    assert.are.same({ "batch.kubernetes.io/job-tracking" }, p.metadata.finalizers)
    ok_kubectl { "delete", "job", "long", "--timeout=30s" }
    eventually(function() return pod(p.metadata.name) == nil end, 20, "the pod gone")
  end)
end)

-- ---- scheduling rules and node maintenance ----

describe("node maintenance", function()
  it("keeps replicas with a required anti-affinity apart, Pending when nodes run out", function()
    local manifest = sts_manifest("zk", 4, "zookeeper:3.9", { podManagementPolicy = "Parallel" })
    manifest.spec.template.spec.affinity = { podAntiAffinity = { requiredDuringSchedulingIgnoredDuringExecution = {
      { labelSelector = { matchLabels = { app = "zk" } }, topologyKey = "kubernetes.io/hostname" } } } }
    assert.are.equal(201, api("POST", "/apis/apps/v1/namespaces/" .. NS .. "/statefulsets", manifest).status)
    local ev = eventually(function() return events_for("zk-3", "FailedScheduling")[1] end, 20, "zk-3 unschedulable")
    assert.matches("^0/3 nodes are available: 3 node%(s%) didn't match pod anti%-affinity rules%.", ev.message)
    local nodes = {}
    for i = 0, 2 do
      local p = eventually(function() return pod("zk-" .. i) and pod("zk-" .. i).spec.nodeName and pod("zk-" .. i) end, 20, "zk placed")
      nodes[p.spec.nodeName] = true
    end
    assert.are.same({ ["node-1"] = true, ["node-2"] = true, ["node-3"] = true }, nodes)
    ok_kubectl { "scale", "sts/zk", "--replicas=3" }
    eventually(function() return pod("zk-3") == nil end, 20, "zk-3 gone")
  end)

  it("drains a node through evictions, within a PodDisruptionBudget", function()
    ok_kubectl({ "apply", "--validate=false", "-f", "-" }, { stdin = [[
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: zk
spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      app: zk
]] })
    ok_kubectl { "rollout", "status", "sts/zk", "--timeout=60s" }
    local pdb = eventually(function()
      local b = sim:get("poddisruptionbudgets.policy", NS, "zk")
      return b.status and b.status.currentHealthy == 3 and b
    end, 10, "budget status")
    assert.are.same({ 3, 2, 1 }, { pdb.status.expectedPods, pdb.status.desiredHealthy, pdb.status.disruptionsAllowed })
    local victim = pod("zk-0").spec.nodeName
    -- a second eviction in the same budget waits until the first pod is back
    local other = pod("zk-1")
    ok_kubectl { "drain", victim, "--ignore-daemonsets", "--delete-emptydir-data", "--force", "--timeout=60s" }
    assert.is_true(sim:get("nodes", nil, victim).spec.unschedulable)
    for _, p in ipairs(sim:list("pods", NS)) do
      if p.spec.nodeName == victim then
        local ref = p.metadata.ownerReferences and p.metadata.ownerReferences[1]
        assert.truthy(ref and ref.kind == "DaemonSet" or p.metadata.deletionTimestamp, p.metadata.name .. " left on the drained node")
      end
    end
    local r = api("POST", ("/api/v1/namespaces/%s/pods/%s/eviction"):format(NS, other.metadata.name),
      { apiVersion = "policy/v1", kind = "Eviction", metadata = { name = other.metadata.name, namespace = NS } })
    assert.are.equal(429, r.status)
    assert.are.equal("Cannot evict pod as it would violate the pod's disruption budget.", r.json.message)
    ok_kubectl { "uncordon", victim }
    ok_kubectl { "rollout", "status", "sts/zk", "--timeout=60s" }
  end)

  it("restarts a container whose image changed in the pod", function()
    local p = pod("zk-1")
    ok_kubectl { "set", "image", "pod/zk-1", "app=zookeeper:3.9.2" }
    eventually(function()
      local cs = pod("zk-1").status.containerStatuses[1]
      return cs.image == "zookeeper:3.9.2" and cs.ready and cs.restartCount == 1
    end, 20, "the container on its new image")
    assert.are.equal(p.metadata.uid, pod("zk-1").metadata.uid)
    local killing = events_for("zk-1", "Killing")[1]
    assert.are.equal("Container app definition changed, will be restarted", killing.message)
  end)
end)
