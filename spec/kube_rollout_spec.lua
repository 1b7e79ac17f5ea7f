-- kubectl's rollout status messages and verdicts (polymorphichelpers/rollout_status.go),
-- kind by kind, as k:rollout_status reports them.
local kube = require "vq.kube"

local function obj(spec, status, generation)
  return { metadata = { name = "web", generation = generation or 1 }, spec = spec, status = status }
end

local function state(kind, ...) return table.pack(kube.rollout_state(kind, obj(...))) end

describe("rollout_state", function()
  it("follows a Deployment as kubectl does", function()
    assert.are.same({ "Waiting for deployment spec update to be observed...", false, n = 2 },
      state("Deployment", { replicas = 3 }, { observedGeneration = 1 }, 2))
    assert.are.same({ 'Waiting for deployment "web" rollout to finish: 1 out of 3 new replicas have been updated...', false, n = 2 },
      state("Deployment", { replicas = 3 }, { observedGeneration = 1, updatedReplicas = 1 }))
    assert.are.same({ 'Waiting for deployment "web" rollout to finish: 1 old replicas are pending termination...', false, n = 2 },
      state("Deployment", { replicas = 3 }, { observedGeneration = 1, updatedReplicas = 3, replicas = 4 }))
    assert.are.same({ 'Waiting for deployment "web" rollout to finish: 2 of 3 updated replicas are available...', false, n = 2 },
      state("Deployment", { replicas = 3 }, { observedGeneration = 1, updatedReplicas = 3, replicas = 3, availableReplicas = 2 }))
    assert.are.same({ 'deployment "web" successfully rolled out', true, n = 2 },
      state("Deployment", { replicas = 3 }, { observedGeneration = 1, updatedReplicas = 3, replicas = 3, availableReplicas = 3 }))
    local r = state("Deployment", { replicas = 3 }, { observedGeneration = 1,
      conditions = { { type = "Progressing", reason = "ProgressDeadlineExceeded" } } })
    assert.is_nil(r[1])
    assert.are.equal('deployment "web" exceeded its progress deadline', r[2].message)
  end)

  it("follows a DaemonSet as kubectl does", function()
    local rolling = { updateStrategy = { type = "RollingUpdate" } }
    assert.are.equal("rollout status is only available for RollingUpdate strategy type",
      state("DaemonSet", { updateStrategy = { type = "OnDelete" } }, {})[2].message)
    assert.are.same({ "Waiting for daemon set spec update to be observed...", false, n = 2 }, state("DaemonSet", rolling, {}, 1))
    assert.are.same({ 'Waiting for daemon set "web" rollout to finish: 1 out of 3 new pods have been updated...', false, n = 2 },
      state("DaemonSet", rolling, { observedGeneration = 1, desiredNumberScheduled = 3, updatedNumberScheduled = 1 }))
    assert.are.same({ 'Waiting for daemon set "web" rollout to finish: 2 of 3 updated pods are available...', false, n = 2 },
      state("DaemonSet", rolling, { observedGeneration = 1, desiredNumberScheduled = 3, updatedNumberScheduled = 3, numberAvailable = 2 }))
    assert.are.same({ 'daemon set "web" successfully rolled out', true, n = 2 },
      state("DaemonSet", rolling, { observedGeneration = 1, desiredNumberScheduled = 3, updatedNumberScheduled = 3, numberAvailable = 3 }))
  end)

  it("follows a StatefulSet as kubectl does, partitions included", function()
    local rolling = { replicas = 3, updateStrategy = { type = "RollingUpdate" } }
    assert.are.same({ "Waiting for statefulset spec update to be observed...", false, n = 2 }, state("StatefulSet", rolling, {}))
    assert.are.same({ "Waiting for 2 pods to be ready...", false, n = 2 },
      state("StatefulSet", rolling, { observedGeneration = 1, readyReplicas = 1 }))
    assert.are.same({ "waiting for statefulset rolling update to complete 1 pods at revision web-2...", false, n = 2 },
      state("StatefulSet", rolling, { observedGeneration = 1, readyReplicas = 3, updatedReplicas = 1, updateRevision = "web-2", currentRevision = "web-1" }))
    assert.are.same({ "statefulset rolling update complete 3 pods at revision web-2...", true, n = 2 },
      state("StatefulSet", rolling, { observedGeneration = 1, readyReplicas = 3, currentReplicas = 3, updateRevision = "web-2", currentRevision = "web-2" }))
    local part = { replicas = 3, updateStrategy = { type = "RollingUpdate", rollingUpdate = { partition = 2 } } }
    assert.are.same({ "Waiting for partitioned roll out to finish: 0 out of 1 new pods have been updated...", false, n = 2 },
      state("StatefulSet", part, { observedGeneration = 1, readyReplicas = 3 }))
    assert.are.same({ "partitioned roll out complete: 1 new pods have been updated...", true, n = 2 },
      state("StatefulSet", part, { observedGeneration = 1, readyReplicas = 3, updatedReplicas = 1 }))
  end)

  it("has no viewer for other kinds", function()
    assert.matches("no status viewer for ReplicaSet", state("ReplicaSet", {}, {})[2].message)
  end)
end)
