-- The kube client against a real kube-apiserver (../shared/realk8s). Runs when it is up
-- (REALK8S_STATE, default /tmp/realk8s) and says it is skipped when it is not: CI has none.
local vq = require "vq"
local kube = require "vq.kube"

local STATE = os.getenv("REALK8S_STATE") or "/tmp/realk8s"
local clients = {}
local skip_reason

local function reachable(kc)
  local f = io.open(kc)
  if not f then return nil, kc .. " not found" end
  f:close()
  local k, e = kube.connect { kubeconfig = kc, timeout = 3 }
  if not k then return nil, e.message end
  local v, ve = k:version()
  if not v then return nil, ve.message end
  return k
end

setup(function()
  local k, why = reachable(STATE .. "/kubeconfig")
  if not k then skip_reason = "realk8s is not running (" .. why .. "): start it with ../shared/realk8s/start.sh" return end
  clients.cert = k
  clients.token = assert(reachable(STATE .. "/kubeconfig-token"))
end)

local function each_client(name, fn)
  for _, auth in ipairs { "cert", "token" } do
    it(name .. " (" .. auth .. " kubeconfig)", function()
      if skip_reason then pending(skip_reason) return end
      fn(clients[auth], auth)
    end)
  end
end

-- one namespace per run and auth: runs on the shared server never collide
local RUN = ("%x"):format(math.random(0, 0xffffff))
local function ns_name(auth) return "vqlua-real-" .. auth .. "-" .. RUN end

describe("against a real kube-apiserver", function()
  each_client("reports the server version", function(k)
    assert.matches("^v1%.26", k:version().gitVersion)
  end)

  each_client("creates a namespace and a Deployment, scales and waits, rolls out", function(k, auth)
    local ns = ns_name(auth)
    k:delete("ns", ns, { wait = true, timeout = 60 })
    assert(k:create { apiVersion = "v1", kind = "Namespace", metadata = { name = ns } })
    assert(k:create { apiVersion = "apps/v1", kind = "Deployment", metadata = { name = "web", namespace = ns },
      spec = { replicas = 2, selector = { matchLabels = { app = "web" } },
        template = { metadata = { labels = { app = "web" } }, spec = { containers = { { name = "web", image = "nginx:1.25" } } } } } })
    assert(k:rollout_status("deploy/web", { namespace = ns, timeout = 60, on_progress = function() end }))
    assert(k:scale("deploy/web", 3, { namespace = ns, ready = true, timeout = 60 }))
    assert.are.equal(3, #assert(k:list("pods", { namespace = ns, labels = "app=web" })))
    assert(k:rollout_restart("deploy/web", { namespace = ns }))
    assert.matches("successfully rolled out", assert(k:rollout_status("deploy/web", { namespace = ns, timeout = 90, on_progress = function() end })))
  end)

  each_client("pages through a list and watches changes", function(k, auth)
    local ns = ns_name(auth)
    for i = 1, 7 do
      assert(k:create { apiVersion = "v1", kind = "ConfigMap", metadata = { name = "page" .. i, namespace = ns, labels = { p = "1" } } })
    end
    assert.are.equal(7, #assert(k:list("cm", { namespace = ns, labels = "p=1", page_size = 3 })))
    local events, state = k:watch("cm", { namespace = ns, labels = "p=1" })
    vq.spawn(function() vq.sleep(0.2) k:delete("cm", "page1", { namespace = ns }) end)
    local deleted
    for ev in events do if ev.type == "DELETED" then deleted = ev.object.metadata.name break end end
    state.close()
    assert.are.equal("page1", deleted)
  end)

  each_client("applies server-side: conflict named, then forced", function(k, auth)
    local ns = ns_name(auth)
    local cm = { apiVersion = "v1", kind = "ConfigMap", metadata = { name = "ssa", namespace = ns }, data = { x = "1" } }
    assert(k:apply(cm, { field_manager = "someone-else" }))
    cm.data.x = "2"
    local obj, e = k:apply(cm)
    assert.is_nil(obj)
    assert.are.equal(409, e.code)
    assert.are.equal("someone-else", e.conflicts[1].manager)
    assert.are.equal("2", assert(k:apply(cm, { force = true })).data.x)
  end)

  each_client("runs a Job from a CronJob and reads its log", function(k, auth)
    local ns = ns_name(auth)
    assert(k:create { apiVersion = "batch/v1", kind = "CronJob", metadata = { name = "mongobackup", namespace = ns },
      spec = { schedule = "0 3 * * *", jobTemplate = { spec = { template = { spec = { restartPolicy = "Never",
        containers = { { name = "backup", image = "busybox" } } } } } } } })
    local job = assert(k:create_job_from_cronjob("mongobackup", { namespace = ns }))
    assert(k:wait_job(job.metadata.name, { namespace = ns, timeout = 60 }))
    local pod = assert(k:list("pods", { namespace = ns, labels = "job-name=" .. job.metadata.name }))[1]
    local lines = {}
    for line in k:logs(pod.metadata.name, { namespace = ns, tail = 3 }) do lines[#lines + 1] = line end
    assert.are.equal(3, #lines)
  end)

  each_client("follows a log and resumes without repeating a line", function(k, auth)
    local ns = ns_name(auth)
    local pod = assert(k:list("pods", { namespace = ns, labels = "app=web" }))[1]
    local seen, last = 0, nil
    local iter, state = k:logs(pod.metadata.name, { namespace = ns, follow = true, tail = 1 })
    vq.timeout(2.5, function()
      for line in iter do
        local n = tonumber(line:match("line (%d+)"))
        if last and n then assert.are.equal(last + 1, n) end
        last = n or last
        seen = seen + 1
      end
    end)
    state.close()
    assert.is_true(seen >= 5, "only " .. seen .. " lines")
  end)

  each_client("gives a missing object's Status as the error", function(k)
    local obj, e = k:get("pods", "does-not-exist", { namespace = "default" })
    assert.is_nil(obj)
    assert.are.equal(404, e.code)
    assert.are.equal("NotFound", e.reason)
  end)

  each_client("taints and untaints a node", function(k, auth)
    local node = assert(k:list("nodes"))[1].metadata.name
    assert(k:taint(node, "vqlua.io/" .. auth, "x", "NoSchedule"))
    assert(k:untaint(node, "vqlua.io/" .. auth, "NoSchedule"))
  end)

  each_client("deletes the namespace and waits until it is gone", function(k, auth)
    assert(k:delete("ns", ns_name(auth), { wait = true, timeout = 120 }))
  end)
end)
