-- vq.kube: a Kubernetes client for runbooks, on the one HTTP transport.
--
--   local kube = require "vq.kube"
--   local k = assert(kube.connect())                  -- or {kubeconfig=, context=, namespace=}
--   local pods = k:list("pods", {namespace = "vantiq", labels = "app=vantiq"})
--   local sts = k:get("sts", "vantiq")
--   k:scale("sts/vantiq", 1, {wait = true})
--
-- Every call returns its result or nil, err; err = {code = <HTTP status or a transport
-- code>, reason =, message =, verb =, resource =, name =, namespace =}.
local vq = require "vq"
local http = require "vq.http"
local core_http = require "vq.core.http"
local json = require "json"
local log = require "log"
local config = require "vq.kube.config"
local types = require "vq.kube.types"

local kube = {}
local Client = {}
Client.__index = Client

kube.Client = Client
-- kubectl's client-go settings (QPS 50, burst 300): client-go's bare 5/10 are meant for
-- controllers, and would make a 30-step runbook slower than 30 separate kubectl runs.
kube.DEFAULT_QPS, kube.DEFAULT_BURST = 50, 300

local function err(code, message, details)
  return vq.error(code, message, details)
end

-- Iterators over streams return a fourth value that Lua 5.4's generic for closes when the
-- loop ends, breaks or unwinds (a cancelled task): the stream never outlives its loop.
local closing_mt = { __close = function(state) if state.close then state.close() end end }
function kube.closing(state) return setmetatable(state, closing_mt) end

-- ---- resource names ----

-- Names as kubectl accepts them; the first type listed wins a shared name (core events
-- before events.k8s.io's, which stays reachable as events.events.k8s.io).
local by_name = {}
for _, t in ipairs(types.list) do
  by_name[t.key] = t
  for _, n in ipairs { t.plural, t.singular, t.kind:lower(), t.kind } do
    if by_name[n] == nil then by_name[n] = t end
  end
  for _, s in ipairs(t.short) do by_name[s] = by_name[s] or t end
end

-- Built-in types by "group/Kind" (the core group is ""), for objects.
local by_group_kind = {}
for _, t in ipairs(types.list) do
  local key = t.group .. "/" .. t.kind
  by_group_kind[key] = by_group_kind[key] or t
end

-- The type at another version of its group (an object written for v1beta1 goes to
-- v1beta1's path, as kubectl sends it).
local function at_version(t, version)
  if t.version == version then return t end
  local copy = {}
  for k, v in pairs(t) do copy[k] = v end
  copy.version = version
  return types.def(copy)
end

-- The type of an object by its apiVersion and kind: a CRD's kind may also be a built-in
-- kind (a Lease of example.com is no coordination.k8s.io Lease).
local function type_of_object(self, obj)
  if type(obj.kind) ~= "string" or type(obj.apiVersion) ~= "string" then
    return nil, err("invalid", "the object needs apiVersion and kind")
  end
  local group, version = obj.apiVersion:match("^(.+)/([^/]+)$")
  if not group then group, version = "", obj.apiVersion end
  local key = group .. "/" .. obj.kind
  local t = by_group_kind[key] or self.discovered[key]
  if not t then
    local ok, e = self:discover(self.discovery_done)
    if not ok then return nil, e end
    t = self.discovered[key] or self:crd_type(key)
  end
  if not t then
    return nil, err("unknown_resource", ('no matches for kind "%s" in version "%s"'):format(obj.kind, obj.apiVersion))
  end
  return at_version(t, version)
end

--- Split "sts/vantiq" into ("sts", "vantiq"); a plain name stays whole.
local function split_ref(ref)
  local res, name = ref:match("^([^/]+)/(.+)$")
  if res then return res, name end
  return ref
end

--- The type for a name as kubectl accepts it (pods, po, Pod, sts, statefulsets.apps, …),
--- from the built-in table, else from the server's discovery (CRDs). A name discovery
--- does not know asks again (as kubectl does): a CRD may have been created since.
function Client:resource(name)
  local function known() return by_name[name] or by_name[name:lower()] or self.discovered[name] or self.discovered[name:lower()] end
  local t = known()
  if t then return t end
  local ok, e = self:discover(self.discovery_done)
  if not ok then return nil, e end
  t = known() or self:crd_type(name)
  if t then return t end
  local msg = ('the server doesn\'t have a resource type "%s"'):format(name)
  if self.discovery_failed and #self.discovery_failed > 0 then
    msg = msg .. " (discovery could not read " .. table.concat(self.discovery_failed, "; ") .. ")"
  end
  return nil, err("unknown_resource", msg, { failed_groups = self.discovery_failed })
end

-- ---- connecting ----

local function tls_options(s)
  local o = { ca_file = s.ca_file, ca_data = s.ca_data, insecure = s.insecure, proxy = s.proxy,
              cert_file = s.cert_file, key_file = s.key_file, cert_data = s.cert_data, key_data = s.key_data }
  if s.tls_server_name then
    -- name the server by tls-server-name (SNI, verification) while connecting to the URL's host
    local scheme, host, port = s.server:match("^(https?)://([^/:]+):?(%d*)")
    port = port ~= "" and port or (scheme == "https" and "443" or "80")
    o.connect_to = ("%s:%s:%s:%s"):format(s.tls_server_name, port, host, port)
    o.base = s.server:gsub("^(https?://)[^/:]+", "%1" .. s.tls_server_name)
  end
  return o
end

--- connect{kubeconfig=, context=, namespace=, qps=, burst=, dry_run=, timeout=} -> client | nil, err
function kube.connect(opts)
  opts = opts or {}
  local s, e = config.resolve(opts)
  if not s then return nil, e end
  local self = setmetatable({
    settings = s, namespace = s.namespace, context = s.context, server = s.server,
    tls = tls_options(s), discovered = {},
    limiter = http.rate_limiter(opts.qps or kube.DEFAULT_QPS, opts.burst or kube.DEFAULT_BURST),
    dry_run = opts.dry_run == nil and (vq.options.dry_run == true) or opts.dry_run,
    timeout = opts.timeout or 60, field_manager = opts.field_manager or "vqlua",
    user_agent = "vqlua/" .. (opts.version or "0.1"),
  }, Client)
  return self
end

-- Credentials never print: the client shows where it points, nothing else.
function Client:__tostring()
  return ("kube client (context %s, server %s, namespace %s)"):format(self.context or "?", self.server, self.namespace)
end

-- ---- auth ----

function Client:credentials()
  local s = self.settings
  if s.exec then
    local c = self.exec_cred
    if not c or (c.expires and c.expires - 10 < os.time()) then
      local cred, e = config.run_exec(s)
      if not cred then return nil, e end
      self.exec_cred = cred
      c = cred
    end
    return { token = c.token, cert_data = c.cert_data, key_data = c.key_data }
  end
  if s.token_file then
    local f = io.open(s.token_file, "rb")
    if not f then return nil, err("kubeconfig", "cannot read tokenFile " .. s.token_file) end
    local tok = f:read("a"):gsub("%s+$", "")
    f:close()
    log.secret(tok)
    return { token = tok }
  end
  return { token = s.token }
end

-- ---- requests ----

local function query_string(q)
  if not q then return "" end
  local keys = {}
  for k in pairs(q) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  local function esc(v)
    return (tostring(v):gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
  end
  for _, k in ipairs(keys) do
    local v = q[k]
    if type(v) == "table" then
      for _, x in ipairs(v) do parts[#parts + 1] = esc(k) .. "=" .. esc(x) end
    elseif v ~= nil and v ~= false then
      parts[#parts + 1] = esc(k) .. "=" .. esc(v == true and "true" or v)
    end
  end
  return #parts > 0 and ("?" .. table.concat(parts, "&")) or ""
end
kube.query_string = query_string

--- Status object → err.
local function status_error(resp, o)
  local st = resp.json
  local e = err(resp.status, (type(st) == "table" and st.message) or (resp.body ~= "" and resp.body) or ("HTTP " .. resp.status), {
    reason = type(st) == "table" and st.reason or nil,
    details = type(st) == "table" and st.details or nil,
    status = resp.status,
    verb = o.verb, resource = o.resource, name = o.name, namespace = o.namespace,
  })
  if type(st) == "table" and st.retryAfterSeconds then e.retry_after = st.retryAfterSeconds end
  return e
end

function Client:transport_options(o, creds)
  local headers = { Accept = o.accept or "application/json", ["User-Agent"] = self.user_agent }
  for k, v in pairs(o.headers or {}) do headers[k] = v end
  if creds.token then headers.Authorization = "Bearer " .. creds.token end
  local base = self.tls.base or self.server
  local t = {
    method = o.method or "GET", url = base .. o.path .. query_string(o.query), headers = headers,
    body = o.body, timeout = o.timeout or (o.stream and 0 or self.timeout), buffer = o.buffer, buffer_size = o.buffer_size,
    retries = o.retries, limiter = self.limiter, on_retry = o.on_retry,
  }
  for k, v in pairs(self.tls) do if k ~= "base" then t[k] = v end end
  if creds.cert_data then t.cert_data, t.key_data, t.cert_file, t.key_file = creds.cert_data, creds.key_data, nil, nil end
  return t
end

--- The raw request: o = {method, path, query, body (string) or json, headers, stream,
--- verb, resource, name, namespace}. Returns the decoded JSON (or text), or nil, err;
--- with o.stream, the response head with its stream.
function Client:request(o)
  if o.json ~= nil then
    o.body = json.encode(o.json)
    o.headers = o.headers or {}
    o.headers["Content-Type"] = o.headers["Content-Type"] or "application/json"
  end
  local creds, ce = self:credentials()
  if not creds then return nil, ce end
  local t = self:transport_options(o, creds)
  local resp, e
  if o.stream then resp, e = http.stream(t) else resp, e = http.request(t) end
  if not resp then
    e.verb, e.resource, e.name, e.namespace = o.verb, o.resource, o.name, o.namespace
    return nil, e
  end
  -- An expired exec credential: run the plugin again, once.
  if resp.status == 401 and self.settings.exec and not o.reauthed then
    if resp.stream then resp.stream:close() end
    self.exec_cred = nil
    o.reauthed = true
    return self:request(o)
  end
  if o.stream then
    if resp.status >= 300 then
      local body = {}
      while true do
        local chunk = resp.stream:read()
        if not chunk then break end
        body[#body + 1] = chunk
      end
      resp.stream:close()
      resp.body = table.concat(body)
      resp.json = json.decode(resp.body)
      return nil, status_error(resp, o)
    end
    return resp
  end
  if resp.status >= 300 then return nil, status_error(resp, o) end
  if resp.json ~= nil then return resp.json end
  if o.raw then return resp.body end
  return resp.body ~= "" and (json.decode(resp.body) or resp.body) or true
end

-- ---- paths ----

function Client:path(t, ns, name, sub)
  local p = t.group == "" and ("/api/" .. t.version) or ("/apis/" .. t.group .. "/" .. t.version)
  if t.namespaced and ns then p = p .. "/namespaces/" .. ns end
  p = p .. "/" .. t.plural
  if name then p = p .. "/" .. name end
  if sub then p = p .. "/" .. sub end
  return p
end

-- Namespace for a call: opts.namespace, else the context's; all_namespaces lists across.
function Client:ns_for(t, opts)
  if not t.namespaced then return nil end
  if opts and opts.all_namespaces then return nil end
  return (opts and opts.namespace) or self.namespace
end

local function ref_args(self, res, name, opts)
  if type(name) == "table" and opts == nil then opts, name = name, nil end
  local r, n = split_ref(res)
  if n then name = n end
  local t, e = self:resource(r)
  if not t then return nil, e end
  return t, name, opts or {}
end

-- ---- reading ----

function Client:get(res, name, opts)
  local t, n, o = ref_args(self, res, name, opts)
  if not t then return nil, n end
  local ns = self:ns_for(t, o)
  return self:request { path = self:path(t, ns, n, o.subresource), verb = "get", resource = t.plural, name = n, namespace = ns }
end

local function list_query(opts, extra)
  local q = { labelSelector = opts.labels, fieldSelector = opts.fields, limit = opts.limit,
              resourceVersion = opts.resource_version, resourceVersionMatch = opts.resource_version_match }
  for k, v in pairs(extra or {}) do q[k] = v end
  return q
end

--- Every page of a list: calls fn(items, list) per page; constant memory per page.
function Client:pages(res, opts, fn)
  local t, _, o = ref_args(self, res, nil, opts)
  if not t then return nil, _ end
  local ns = self:ns_for(t, o)
  local cont
  local list
  repeat
    local e
    list, e = self:request { path = self:path(t, ns), query = list_query(o, { limit = o.page_size or o.limit or 500, ["continue"] = cont }),
                             verb = "list", resource = t.plural, namespace = ns }
    if not list then return nil, e end
    local stop = fn(list.items or {}, list)
    cont = list.metadata and list.metadata["continue"]
    if cont == "" then cont = nil end
    if o.limit or stop == false then break end
  until not cont
  return list
end

--- All items (transparent limit/continue), and the list's metadata (resourceVersion).
function Client:list(res, opts)
  local all = setmetatable({}, json.array_mt)
  local last, e = self:pages(res, opts, function(items)
    for _, it in ipairs(items) do all[#all + 1] = it end
  end)
  if not last then return nil, e end
  return all, last.metadata
end

--- Iterate a large list page by page in constant memory: for obj in k:each("pods") do.
function Client:each(res, opts)
  local t, _, o = ref_args(self, res, nil, opts)
  if not t then error(_) end
  local ns = self:ns_for(t, o)
  local items, i, cont, done = {}, 0, nil, false
  local state = {}
  return function()
    while true do
      i = i + 1
      if items[i] then
        local it = items[i]
        items[i] = nil
        return it
      end
      if done then return nil end
      local list, e = self:request { path = self:path(t, ns), query = list_query(o, { limit = o.page_size or 500, ["continue"] = cont }),
                                     verb = "list", resource = t.plural, namespace = ns }
      if not list then state.err = e return nil end
      items, i = list.items or {}, 0
      cont = list.metadata and list.metadata["continue"]
      if not cont or cont == "" then done = true end
    end
  end, state
end

-- ---- watching ----

-- client-go's reflector backoff: 800 ms doubling to 30 s, reset after a healthy stream.
local function backoff(n) return math.min(0.8 * 2 ^ (n - 1), 30) end

-- A watch that outlives its streams: a resourceVersion that expired (an ERROR event with
-- a 410 Status, or HTTP 410) is re-listed into the events that bring the caller up to
-- date, a dropped connection resumes from the last version, failures back off as
-- client-go's reflector does.
local Watch = {}
Watch.__index = Watch

local function object_key(obj) return obj.metadata.uid or ((obj.metadata.namespace or "") .. "/" .. obj.metadata.name) end

function Watch:relist()
  local o, known = self.o, self.known
  local items, meta = self.client:list(self.t.key, { namespace = self.ns, labels = o.labels, fields = o.fields, all_namespaces = o.all_namespaces })
  if not items then return nil, meta end
  local seen = {}
  for _, obj in ipairs(items) do
    local k = object_key(obj)
    seen[k] = true
    if known[k] ~= obj.metadata.resourceVersion then
      self.pending[#self.pending + 1] = { type = known[k] and "MODIFIED" or "ADDED", object = obj, relisted = self.listed }
      known[k] = obj.metadata.resourceVersion
    end
  end
  for k in pairs(known) do
    if not seen[k] then
      self.pending[#self.pending + 1] = { type = "DELETED", object = { metadata = { uid = k } }, relisted = true }
      known[k] = nil
    end
  end
  self.rv, self.listed = meta.resourceVersion, true
  return true
end

function Watch:open()
  local o = self.o
  local q = list_query(o, { watch = "true", resourceVersion = self.rv, allowWatchBookmarks = o.bookmarks ~= false and "true" or nil,
                            timeoutSeconds = o.server_timeout or 300 })
  q.limit = nil
  local head, e = self.client:request { path = self.client:path(self.t, self.ns), query = q, stream = true, verb = "watch",
    resource = self.t.plural, namespace = self.ns }
  if not head then return nil, e end
  self.stream = head.stream
  self.lines, self.lines_state = http.lines(head.stream)
  return true
end

function Watch:close_stream()
  if self.stream then self.stream:close() self.stream = nil end
end

-- After a failure: true to try again (after the backoff), false to give up (state.err
-- says why). Only failures to list or to open count against max_failures.
function Watch:retry(e)
  self.failures = self.failures + 1
  if e and self.failures > (self.o.max_failures or 8) then self.state.err = e return false end
  local ok, se = vq.sleep(backoff(self.failures))
  if not ok then self.state.err = se end
  return ok and true or false
end

-- Open a stream (re-listing first when there is no version to resume from): whether to
-- go on.
function Watch:connect()
  if self.rv == nil then
    local ok, e = self:relist()
    if not ok then return self:retry(e) end
    if #self.pending > 0 then return true end
  end
  local ok, e = self:open()
  if ok then return true end
  if e.code == 410 then self.rv = nil return true end
  return self:retry(e)
end

-- The next line, or nil and true when the watch's own timeout ran out.
function Watch:next_line()
  if not self.deadline then return self.lines() end
  local r = table.pack(vq.timeout(math.max(0, self.deadline - vq.now()), self.lines))
  if r[1] == nil and r[2] and r[2].code == "timeout" then self:close_stream() return nil, true end
  return r[1]
end

-- What a decoded event means: the event for the caller, or nil and whether to go on.
function Watch:event(ev)
  if ev.type == "ERROR" then
    self:close_stream()
    if (ev.object or {}).code == 410 then self.rv = nil return nil, true end
    return nil, self:retry(nil)
  elseif ev.type == "BOOKMARK" then
    self.rv = ev.object.metadata.resourceVersion
    if self.o.yield_bookmarks then return ev end
    return nil, true
  end
  self.failures = 0
  self.rv = ev.object.metadata.resourceVersion
  local k = object_key(ev.object)
  if ev.type == "DELETED" then self.known[k] = nil else self.known[k] = self.rv end
  return ev
end

-- The next event from the open stream, or nil and whether to go on.
function Watch:read()
  local line, out_of_time = self:next_line()
  if out_of_time then return nil, false end
  if not line then
    self:close_stream() -- the server ended the watch or the connection dropped: resume from rv
    local le = self.lines_state and self.lines_state.err
    if le and (le.code == "timeout" or le.code == "cancelled") then self.state.err = le return nil, false end
    return nil, true
  end
  local ev = line ~= "" and json.decode(line)
  if type(ev) ~= "table" then return nil, true end
  return self:event(ev)
end

function Watch:next()
  while not self.state.closed do
    if #self.pending > 0 then return table.remove(self.pending, 1) end
    if self.deadline and vq.now() >= self.deadline then return nil end
    local ev, go_on
    if self.stream then ev, go_on = self:read() else go_on = self:connect() end
    if ev then return ev end
    if not go_on then return nil end
  end
end

--- Watch a type. opts: namespace, labels, fields, resource_version (default: list first
--- and watch from there), bookmarks (default true), timeout. Returns an iterator of
--- events {type, object}; a dropped connection resumes from the last version, an expired
--- one (410) re-lists and yields what changed while away as ADDED, MODIFIED and DELETED
--- events marked relisted, as the reflector does.
function Client:watch(res, opts)
  local t, e, o = ref_args(self, res, nil, opts)
  if not t then error(e) end
  local w = setmetatable({ client = self, t = t, o = o, ns = self:ns_for(t, o), rv = o.resource_version,
    listed = o.resource_version ~= nil, -- a list from here on re-lists what the caller had
    known = {}, pending = {}, failures = 0, state = { closed = false },
    deadline = o.timeout and (vq.now() + o.timeout) }, Watch) -- known: uid -> resourceVersion
  function w.state.close()
    w.state.closed = true
    w:close_stream()
  end
  return function() return w:next() end, w.state, nil, kube.closing(w.state)
end

-- ---- writing ----

function Client:mutating_query(q)
  q = q or {}
  if self.dry_run then q.dryRun = "All" end
  return q
end

function Client:audit(verb, t, name, ns, started, ok, e, extra)
  local fields = { verb = verb, resource = t.plural, group = t.group ~= "" and t.group or nil, name = name, namespace = ns,
    outcome = ok and "ok" or "failed", code = (not ok and e) and e.code or nil, duration_ms = math.floor((vq.now() - started) * 1000),
    dry_run = self.dry_run or nil, context = self.context }
  for k, v in pairs(extra or {}) do fields[k] = v end
  log.audit("kube." .. verb, fields)
  if self.dry_run and ok then log.info("dry run: would %s %s/%s%s", verb, t.plural, name or "", ns and (" in " .. ns) or "") end
end

function Client:mutate(verb, t, ns, name, o)
  local started = vq.now()
  local result, e = self:request(o)
  self:audit(verb, t, name, ns, started, result ~= nil, e, o.audit)
  return result, e
end

function Client:create(obj, opts)
  opts = opts or {}
  local t, e = type_of_object(self, obj)
  if not t then return nil, e end
  local ns = t.namespaced and (obj.metadata.namespace or opts.namespace or self.namespace) or nil
  return self:mutate("create", t, ns, obj.metadata.name or obj.metadata.generateName, {
    method = "POST", path = self:path(t, ns), query = self:mutating_query { fieldManager = opts.field_manager },
    json = obj, verb = "create", resource = t.plural, namespace = ns, name = obj.metadata.name })
end

function Client:replace(obj, opts)
  opts = opts or {}
  local t, e = type_of_object(self, obj)
  if not t then return nil, e end
  local ns = t.namespaced and (obj.metadata.namespace or opts.namespace or self.namespace) or nil
  return self:mutate("update", t, ns, obj.metadata.name, {
    method = "PUT", path = self:path(t, ns, obj.metadata.name, opts.subresource), query = self:mutating_query(),
    json = obj, verb = "update", resource = t.plural, namespace = ns, name = obj.metadata.name })
end

local PATCH_TYPES = {
  merge = "application/merge-patch+json", strategic = "application/strategic-merge-patch+json",
  json = "application/json-patch+json", apply = "application/apply-patch+yaml",
}

--- patch(res, name, patch, opts) or patch("res/name", patch, opts); opts: type =
--- "merge" (default) | "strategic" | "json", namespace=, subresource=.
function Client:patch(res, name, p, opts)
  if res:find("/", 1, true) then name, p, opts = nil, name, p end
  local t, n, o = ref_args(self, res, name, opts or {})
  if not t then return nil, n end
  local ns = self:ns_for(t, o)
  local ptype = o.type or "merge"
  return self:mutate("patch", t, ns, n, {
    method = "PATCH", path = self:path(t, ns, n, o.subresource), query = self:mutating_query { fieldManager = o.field_manager },
    body = type(p) == "string" and p or json.encode(p), headers = { ["Content-Type"] = PATCH_TYPES[ptype] or ptype },
    verb = "patch", resource = t.plural, namespace = ns, name = n, audit = { patch_type = ptype } })
end

--- Server-side apply: apply(obj, {force=, field_manager=}). A conflict is an error whose
--- message names the other managers and fields; force only when asked.
function Client:apply(obj, opts)
  opts = opts or {}
  local t, e = type_of_object(self, obj)
  if not t then return nil, e end
  local ns = t.namespaced and (obj.metadata.namespace or opts.namespace or self.namespace) or nil
  local q = self:mutating_query { fieldManager = opts.field_manager or self.field_manager, force = opts.force and "true" or nil }
  local result, ae = self:mutate("apply", t, ns, obj.metadata.name, {
    method = "PATCH", path = self:path(t, ns, obj.metadata.name), query = q, body = json.encode(obj),
    headers = { ["Content-Type"] = "application/apply-patch+yaml" }, verb = "apply", resource = t.plural,
    namespace = ns, name = obj.metadata.name })
  if not result and ae.code == 409 then
    ae.conflicts = {}
    for _, c in ipairs(ae.details and ae.details.causes or {}) do
      ae.conflicts[#ae.conflicts + 1] = { field = c.field, message = c.message, manager = c.message and c.message:match('conflict with "([^"]+)"') }
    end
  end
  return result, ae
end

--- delete(res, name, {propagation=, grace=, wait=, timeout=})
function Client:delete(res, name, opts)
  local t, n, o = ref_args(self, res, name, opts)
  if not t then return nil, n end
  local ns = self:ns_for(t, o)
  local before = o.wait and self:get(t.key, n, { namespace = ns })
  local result, e = self:mutate("delete", t, ns, n, {
    method = "DELETE", path = self:path(t, ns, n), query = self:mutating_query { propagationPolicy = o.propagation, gracePeriodSeconds = o.grace },
    verb = "delete", resource = t.plural, namespace = ns, name = n })
  if not result then return nil, e end
  if o.wait and before and not self.dry_run then
    local uid = before.metadata.uid
    local gone, we = self:wait_for(t.key, n, function(obj) return obj == nil or obj.metadata.uid ~= uid end,
      { namespace = ns, timeout = o.timeout or 120, allow_missing = true })
    if not gone then return nil, we end
  end
  return result
end

-- ---- waiting ----

--- Wait until pred(obj) is true for res/name (obj nil once deleted, with allow_missing).
--- Watch-based: no polling. Returns the object (or true when gone), or nil, err (timeout).
function Client:wait_for(res, name, pred, opts)
  local t, n, o = ref_args(self, res, name, opts)
  if not t then return nil, n end
  local ns = self:ns_for(t, o)
  local timeout = o.timeout or 300
  local function check(obj)
    local ok, v = pcall(pred, obj)
    if not ok then error(v, 0) end
    return v
  end
  local function run()
    local obj, e = self:get(t.key, n, { namespace = ns })
    if not obj and not (e.code == 404 and o.allow_missing) then return nil, e end
    if check(obj) then return obj or true end
    local events, state, _, closer = self:watch(t.key, { namespace = ns, fields = "metadata.name=" .. n,
      resource_version = obj and obj.metadata.resourceVersion or nil })
    local watch <close> = closer
    for ev in events do
      local cur = ev.type ~= "DELETED" and ev.object or nil
      if o.on_change then o.on_change(cur) end
      if check(cur) then state.close() return cur or true end
    end
    return nil, state.err or err("watch_ended", "the watch ended")
  end
  local r1, r2 = vq.timeout(timeout, run)
  if r1 == nil and r2 and r2.code == "timeout" then
    return nil, err("timeout", ("timed out after %gs waiting for %s/%s"):format(timeout, t.plural, n), { resource = t.plural, name = n, namespace = ns })
  end
  return r1, r2
end

require("vq.kube.discovery")(kube, Client)
require("vq.kube.ops")(kube, Client)

return kube
