-- A real nginx on loopback for specs: TLS servers selected by SNI, on free ports, in a
-- temporary prefix that stop() removes.
--
--   local nginx = require "spec.support.nginx"
--   local n = nginx.start { servers = {
--     { server_name = "a.example.test", cert = "chain.crt", key = "a.key" },
--     { server_name = "b.example.test", cert = "b.crt", key = "b.key", port = 8443 },
--   } }
--   ... n.port (the port of servers that named none), n.ports, n.dir ...
--   n:stop()            -- also on <close>
--
-- A server: cert and key (paths), server_name, port (default: one free port shared by
-- every server that gives none, so SNI picks among them), default (the server for
-- unknown names; else the first on its port), protocols (default "TLSv1.2 TLSv1.3"),
-- body (what / returns), extra (more directives for the server block).
local uv = require "luv"
local vq = require "vq"

local M = {}

M.binary = os.getenv("NGINX") or "/usr/sbin/nginx"
M.start_timeout = 10

local free_port = require("sim.util").free_port

local write_file = require("sim.gradlew.files").write

local remove_tree = require("sim.util").remove_tree

-- nginx would expand variables in a string: a spec's paths and bodies have no "$".
local function nginx_string(s)
  s = tostring(s)
  assert(not s:find("$", 1, true), "nginx.start: no $ in paths and bodies, please")
  return '"' .. s:gsub('[\\"]', "\\%0") .. '"'
end

local function server_block(s, port, is_default)
  local lines = {
    "  server {",
    ("    listen 127.0.0.1:%d ssl%s;"):format(port, is_default and " default_server" or ""),
    ("    server_name %s;"):format(s.server_name or "_"),
    ("    ssl_certificate %s;"):format(nginx_string(s.cert)),
    ("    ssl_certificate_key %s;"):format(nginx_string(s.key)),
    ("    ssl_protocols %s;"):format(s.protocols or "TLSv1.2 TLSv1.3"),
    ("    location / { return 200 %s; }"):format(nginx_string(s.body or "ok\n")),
  }
  if s.extra then lines[#lines + 1] = "    " .. s.extra end
  lines[#lines + 1] = "  }"
  return table.concat(lines, "\n")
end

-- Which server of each port answers names no server_name matches.
local function defaults_by_port(servers, ports)
  local chosen = {}
  for i, s in ipairs(servers) do
    if s.default then chosen[ports[i]] = i end
  end
  for i in ipairs(servers) do
    chosen[ports[i]] = chosen[ports[i]] or i
  end
  return chosen
end

local function config(dir, servers, ports)
  local chosen = defaults_by_port(servers, ports)
  local blocks = {}
  for i, s in ipairs(servers) do
    assert(s.cert and s.key, "nginx.start: every server needs cert and key")
    blocks[#blocks + 1] = server_block(s, ports[i], chosen[ports[i]] == i)
  end
  local temp = {}
  for _, what in ipairs { "client_body", "proxy", "fastcgi", "uwsgi", "scgi" } do
    temp[#temp + 1] = ("  %s_temp_path %s;"):format(what, nginx_string(dir .. "/" .. what))
  end
  return table.concat({
    uv.getuid() == 0 and "user root;" or "",
    "worker_processes 1;",
    "events { worker_connections 64; }",
    "http {",
    "  access_log off;",
    table.concat(temp, "\n"),
    table.concat(blocks, "\n"),
    "}",
    "",
  }, "\n")
end

local function can_connect(port)
  local tcp = uv.new_tcp()
  local done, ok = vq.event(), false
  tcp:connect("127.0.0.1", port, function(err)
    ok = not err
    done:set()
  end)
  done:wait(1)
  tcp:close()
  return ok
end

local Instance = {}
Instance.__index = Instance
Instance.__close = function(self) self:stop() end

--- What nginx wrote on stderr so far.
function Instance:stderr() return table.concat(self._stderr) end

--- Stop nginx (SIGTERM, then SIGKILL after 5 s), wait for it, remove its prefix.
function Instance:stop()
  if self._stopped then return end
  self._stopped = true
  if not self._exited:is_set() then
    uv.process_kill(self._handle, "sigterm")
    if not self._exited:wait(5) then
      uv.process_kill(self._handle, "sigkill")
      self._exited:wait(5)
    end
  end
  if not self._stderr_closed:is_set() then self._stderr_closed:wait(1) end
  remove_tree(self.dir)
end

local function spawn(dir)
  local stderr = uv.new_pipe(false)
  local inst = setmetatable({ dir = dir, _stderr = {}, _exited = vq.event(),
                              _stderr_closed = vq.event() }, Instance)
  local handle, pid = uv.spawn(M.binary, {
    args = { "-p", dir, "-c", dir .. "/nginx.conf", "-e", "stderr",
             "-g", ("daemon off; pid %s/nginx.pid; error_log stderr;"):format(dir) },
    stdio = { nil, nil, stderr },
  }, function(code, signal)
    inst.status, inst.signal = code, signal
    inst._handle:close()
    inst._exited:set()
  end)
  if not handle then
    stderr:close()
    error("cannot run " .. M.binary .. ": " .. tostring(pid))
  end
  inst._handle, inst.pid = handle, pid
  stderr:read_start(function(err, chunk)
    if chunk and not err then
      inst._stderr[#inst._stderr + 1] = chunk
    else
      stderr:close()
      inst._stderr_closed:set()
    end
  end)
  return inst
end

-- Ready once every port accepts connections; false if nginx gave up first.
local function wait_ready(inst, ports)
  local deadline = vq.now() + M.start_timeout
  for port in pairs(ports) do
    while not can_connect(port) do
      if inst._exited:is_set() or vq.now() > deadline then return false end
      vq.sleep(0.02)
    end
  end
  return true
end

local function try_start(opts)
  local dir = assert(uv.fs_mkdtemp("/tmp/vq-nginx-XXXXXX"))
  local shared = free_port()
  local ports, distinct = {}, {}
  for i, s in ipairs(opts.servers) do
    ports[i] = s.port or shared
    distinct[ports[i]] = true
  end
  local ok, text = pcall(config, dir, opts.servers, ports)
  if not ok then
    remove_tree(dir)
    error(text, 0)
  end
  write_file(dir .. "/nginx.conf", text)
  local inst = spawn(dir)
  if wait_ready(inst, distinct) then
    inst.port, inst.ports = shared, ports
    return inst
  end
  local why = inst:stderr()
  inst:stop()
  return nil, why, why:find("Address already in use", 1, true) ~= nil
end

--- start{servers = {...}} -> instance (see the top of this file). Raises if nginx does not
--- come up, with what it said.
function M.start(opts)
  assert(opts and opts.servers and #opts.servers > 0, "nginx.start needs servers")
  local why
  for _ = 1, 3 do -- a free port can be taken before nginx binds it
    local inst, err, port_taken = try_start(opts)
    if inst then return inst end
    why = err
    if not port_taken then break end
  end
  error("nginx did not start: " .. (why or "?"), 2)
end

return M
