-- The simulator: a Kubernetes API server of a Vantiq installation, on this process's loop.
--
--   local sim = require("sim").start { port = 0, scenarios = {"telegraf-rbac"}, world = "production" }
--   sim.url, sim.kubeconfig_path, sim.store ...; sim:stop()
local vq = require "vq"
local json = require "json"
local http = require "sim.http"
local store_mod = require "sim.store"
local api_mod = require "sim.api"
local clock_mod = require "sim.clock"
local resources = require "sim.resources"

local M = {}
local Sim = {}
Sim.__index = Sim

M.DEFAULT_VERSION = "v1.30.6"

--- The minor version the server reports (27 for v1.27.16): what it prints and defaults differ by it.
function Sim:minor()
  return tonumber(self.version:match("^v%d+%.(%d+)")) or 30
end

--- The type descriptor for a resource key ("pods", "statefulsets.apps", a custom resource's).
function Sim:type(key) return self.types:get(key) end

--- Create an object directly in the store (seeding, controllers): defaults filled as the
--- apiserver does on create. Returns the stored object or nil, status.
function Sim:create(key, obj)
  local t = assert(self:type(key), key)
  local admitted, status = self.api:admit_create(t, obj.metadata and obj.metadata.namespace, obj)
  if not admitted then return nil, status end
  if self.store:get(resources.store_key(t), admitted.metadata.namespace, admitted.metadata.name) then
    return nil, { code = 409, message = key .. " " .. admitted.metadata.name .. " already exists" }
  end
  return self.store:put(resources.store_key(t), admitted, "ADDED")
end

function Sim:get(key, ns, name)
  return self.store:get(resources.store_key(self:type(key)), ns, name)
end

function Sim:list(key, ns, fn)
  return self.store:list(resources.store_key(self:type(key)), ns, fn)
end

--- Replace an object with a changed copy (controllers): obj is a copy of the stored one.
function Sim:update(key, obj, opts)
  opts = opts or {}
  obj.metadata.resourceVersion = nil
  return self.api:replace(self:type(key), obj.metadata.namespace, obj.metadata.name, obj, opts)
end

function Sim:update_status(key, obj)
  return self:update(key, obj, { part = "status" })
end

function Sim:delete(key, obj, opts)
  return self.api:remove(self:type(key), obj, opts)
end

-- A scenario's broken pod never becomes ready: it is settled once it fails steadily.
local STEADY_FAILURES = { CrashLoopBackOff = true, ImagePullBackOff = true, ErrImagePull = true,
                          CreateContainerConfigError = true, InvalidImageName = true }

local function steadily_failing(pod)
  for _, list in ipairs { pod.status and pod.status.containerStatuses or {}, pod.status and pod.status.initContainerStatuses or {} } do
    for _, c in ipairs(list) do
      local w = c.state and c.state.waiting
      if w and STEADY_FAILURES[w.reason] then return true end
    end
  end
  for _, c in ipairs(pod.status and pod.status.conditions or {}) do
    if c.type == "PodScheduled" and c.status == "False" then return true end
  end
  return false
end

local function pod_settled(pod)
  if pod.status and (pod.status.phase == "Succeeded" or pod.status.phase == "Failed") then return true end
  if steadily_failing(pod) then return true end
  for _, c in ipairs(pod.status and pod.status.conditions or {}) do
    if c.type == "Ready" then return c.status == "True" end
  end
  return false
end

local function workload_settled(self, obj)
  local want, st = (obj.spec or {}).replicas, obj.status or {}
  if want == nil then return true end
  if (st.observedGeneration or 0) < (obj.metadata.generation or 0) then return false end
  if (st.readyReplicas or 0) == want then return true end
  -- held back by a pod of its own that fails steadily (an OrderedReady set stops there)
  for _, pod in ipairs(self:list("pods", obj.metadata.namespace)) do
    if pod.metadata.name:sub(1, #obj.metadata.name + 1) == obj.metadata.name .. "-" and steadily_failing(pod) then
      return true
    end
  end
  return false
end

--- True when every pod is ready or finished and every workload has its replicas ready:
--- the steady state a rehearsal starts from.
function Sim:settled()
  for _, pod in ipairs(self:list("pods")) do
    if not pod_settled(pod) then return false end
  end
  for _, key in ipairs { "statefulsets.apps", "deployments.apps" } do
    for _, obj in ipairs(self:list(key)) do
      if not workload_settled(self, obj) then return false end
    end
  end
  return true
end

--- Wait (on store changes, not by polling) until settled(); false after timeout seconds.
function Sim:settle(timeout)
  if self:settled() then return true end
  local ev = vq.event()
  self.store:on_change(function() if not ev:is_set() and self:settled() then ev:set() end end)
  return ev:wait(timeout) == true
end

--- Write a kubeconfig for this server and return its path.
function Sim:write_kubeconfig(path, opts)
  opts = opts or {}
  local lines = {
    "apiVersion: v1",
    "kind: Config",
    "clusters:",
    "- name: vqsim",
    "  cluster:",
    "    server: " .. (opts.server or self.url),
    "contexts:",
    "- name: vqsim",
    "  context:",
    "    cluster: vqsim",
    "    user: vqsim-admin",
    "    namespace: " .. (opts.namespace or self.world_info and self.world_info.namespace or "default"),
    "current-context: vqsim",
    "users:",
    "- name: vqsim-admin",
    "  user:",
    "    token: " .. self.token,
    "",
  }
  local f = assert(io.open(path, "w"))
  f:write(table.concat(lines, "\n"))
  f:close()
  os.execute("chmod 600 '" .. path:gsub("'", "'\\''") .. "'")
  require("log").secret(self.token)
  return path
end

--- Run fn when the simulator stops (a module closing its handles, stopping a child).
function Sim:on_stop(fn)
  self.stoppers[#self.stoppers + 1] = fn
end

function Sim:stop()
  for _, t in ipairs(self.tasks) do t:cancel() end
  local stoppers = self.stoppers
  self.stoppers = {}
  for i = #stoppers, 1, -1 do
    local ok, err = pcall(stoppers[i])
    if not ok then require("log").error("sim: stopping: %s", tostring(err)) end
  end
  if self.server then self.server.close() end
  self.stopped = true
end

--- Run fn as a background task of the simulator (a controller); stopped with it.
function Sim:spawn(fn, ...)
  local t = vq.spawn(fn, ...)
  self.tasks[#self.tasks + 1] = t
  return t
end

--- Sleep for a simulated delay, scaled by the speed setting (fast mode for specs).
function Sim:delay(seconds)
  return vq.sleep(seconds * self.speed)
end

function M.start(opts)
  opts = opts or {}
  local self = setmetatable({
    version = opts.version or M.DEFAULT_VERSION,
    clock = clock_mod.new(opts.clock_offset),
    store = store_mod.new { window = opts.window },
    types = resources.registry(),
    speed = opts.speed or 1,
    bookmark_interval = opts.bookmark_interval or 1,
    -- the AggregatedDiscoveryEndpoint feature gate (on by default from 1.27)
    aggregated_discovery = opts.aggregated_discovery ~= false,
    crd_publish_delay = opts.crd_publish_delay, -- see sim/crd.lua
    tasks = {}, stoppers = {},
    admission = {}, subresources = {}, create_handlers = {}, convert = {}, extra_routes = {},
    token = opts.token or ("vqsim-" .. require("sim.util").random_suffix(24)),
    scenarios = {},
  }, Sim)
  self.api = api_mod.new(self)
  -- a module failing (a misspelt scenario) must not leave the others' tasks running
  local ok, err = pcall(function()
    for _, mod in ipairs(opts.modules or M.default_modules()) do
      local m = type(mod) == "string" and require(mod) or mod
      if m.install then m.install(self, opts) end
    end
  end)
  if not ok then
    self:stop()
    error(err, 0)
  end
  self.server = http.serve {
    host = "127.0.0.1", port = opts.port or 0,
    handler = function(req, res) return self.api:handle(req, res) end,
    now = function() return self.clock:now() end, -- a skewed simulator dates its answers so
    on_error = function(err, req)
      require("log").error("sim: %s %s: %s", req.method, req.target, tostring(err))
    end,
  }
  self.port = self.server.port
  self.url = "http://127.0.0.1:" .. self.port
  for _, mod in ipairs(opts.modules or M.default_modules()) do
    local m = type(mod) == "string" and require(mod) or mod
    if m.started then m.started(self, opts) end
  end
  return self
end

--- The modules that make up the simulator, in order: each may install admission hooks,
--- subresources, controllers, the world and scenarios.
function M.default_modules()
  local mods = {}
  for _, name in ipairs { "sim.auth", "sim.core", "sim.openapi", "sim.controllers", "sim.logs", "sim.exec", "sim.proxy",
                          "sim.world", "sim.scenarios", "sim.edge" } do
    if package.searchpath(name, package.path) then mods[#mods + 1] = name end
  end
  return mods
end

M.json = json
return M
