-- A small HTTP/1.1 server on luv TCP: keep-alive, Content-Length and chunked request
-- bodies, chunked streaming responses with back-pressure, and connection upgrades (for
-- exec's WebSocket). Kept to what kubectl, curl and our client send. Each request runs
-- its handler in a task, so a handler may wait (follow a log, sleep for a controller).
local uv = require "uv"
local vq = require "vq"
local time = require "vq.time"

local M = {}

local REASONS = {
  [101] = "Switching Protocols", [200] = "OK", [201] = "Created", [202] = "Accepted",
  [204] = "No Content", [304] = "Not Modified", [400] = "Bad Request",
  [401] = "Unauthorized", [403] = "Forbidden", [404] = "Not Found",
  [405] = "Method Not Allowed", [406] = "Not Acceptable", [409] = "Conflict",
  [410] = "Gone", [413] = "Payload Too Large", [415] = "Unsupported Media Type",
  [422] = "Unprocessable Entity", [429] = "Too Many Requests",
  [500] = "Internal Server Error", [502] = "Bad Gateway", [503] = "Service Unavailable",
  [504] = "Gateway Timeout",
}

local MAX_HEAD = 64 * 1024
local MAX_BODY = 64 * 1024 * 1024
local HIGH_WATER = 256 * 1024

-- ---- a connection: bytes in, requests out ----

local Conn = {}
Conn.__index = Conn

local function new_conn(server, sock)
  local c = setmetatable({
    server = server, sock = sock, buf = "", closed = false,
    readable = vq.event(), drained = vq.event(), id = server.next_conn,
  }, Conn)
  server.next_conn = server.next_conn + 1
  c.drained:set()
  return c
end

function Conn:start_reading()
  self.sock:read_start(function(err, chunk)
    if err or not chunk then
      self.eof = true
    else
      self.buf = self.buf .. chunk
      if #self.buf > MAX_HEAD + MAX_BODY then self.sock:read_stop() end
    end
    self.readable:set()
  end)
end

-- Wait until the buffer has more than it had, or the peer is gone. False at EOF.
function Conn:fill()
  if self.eof or self.closed then return false end
  self.readable:clear()
  self.readable:wait()
  return true
end

function Conn:read_until(pattern)
  while true do
    local s, e = self.buf:find(pattern, 1, true)
    if s then
      local head = self.buf:sub(1, s - 1)
      self.buf = self.buf:sub(e + 1)
      return head
    end
    if #self.buf > MAX_HEAD then return nil, "head too large" end
    if self.eof or not self:fill() then return nil, "eof" end
  end
end

function Conn:read_exactly(n)
  while #self.buf < n do
    if self.eof or not self:fill() then return nil, "eof" end
  end
  local data = self.buf:sub(1, n)
  self.buf = self.buf:sub(n + 1)
  return data
end

function Conn:read_chunked()
  local parts = {}
  local total = 0
  while true do
    local line, e = self:read_until("\r\n")
    if not line then return nil, e end
    local size = tonumber(line:match("^%x+"), 16)
    if not size then return nil, "bad chunk size" end
    if size == 0 then
      self:read_until("\r\n") -- no trailers expected
      return table.concat(parts)
    end
    total = total + size
    if total > MAX_BODY then return nil, "body too large" end
    parts[#parts + 1] = self:read_exactly(size)
    self:read_until("\r\n")
  end
end

function Conn:write(data)
  if self.closed then return nil, "closed" end
  self.sock:write(data, function(err)
    if err then self.closed = true end
    if self.sock:get_write_queue_size() < HIGH_WATER then self.drained:set() end
  end)
  -- Back-pressure: a fast producer (a log stream) waits while the peer is slow.
  if self.sock:get_write_queue_size() >= HIGH_WATER then
    self.drained:clear()
    self.drained:wait()
  end
  return not self.closed
end

function Conn:close()
  if self.closed then return end
  self.closed = true
  self.readable:set()
  self.drained:set()
  if not self.sock:is_closing() then
    self.sock:read_stop()
    self.sock:shutdown(function() if not self.sock:is_closing() then self.sock:close() end end)
  end
end

-- ---- requests ----

local function parse_head(head)
  local lines = {}
  for line in head:gmatch("[^\r\n]+") do lines[#lines + 1] = line end
  local method, target, version = (lines[1] or ""):match("^(%u+) (%S+) HTTP/(%d%.%d)$")
  if not method then return nil end
  local headers = {}
  for i = 2, #lines do
    local k, v = lines[i]:match("^([^:]+):%s*(.-)%s*$")
    if not k then return nil end
    k = k:lower()
    headers[k] = headers[k] and (headers[k] .. ", " .. v) or v
  end
  local path, query = target:match("^([^?]*)%??(.*)$")
  return { method = method, target = target, path = path, query_string = query,
           version = version, headers = headers }
end

local function unescape(s)
  return (s:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end
M.unescape = unescape

--- The query string as a table; repeated keys keep the last value, all of them in .all.
function M.parse_query(qs)
  local q, all = {}, {}
  for pair in (qs or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k, v = unescape(k), unescape(v)
    q[k] = v
    all[k] = all[k] or {}
    table.insert(all[k], v)
  end
  return q, all
end

local Response = {}
Response.__index = Response

-- The server's Date, formatted once a second (every answer carries it).
local function server_date(server)
  local t = math.floor(server.now())
  if t ~= server.date_at then server.date_at, server.date = t, time.http_date(t) end
  return server.date
end

-- Every answer carries the server's Date, as Go's net/http writes it.
local function header_block(server, status, headers)
  headers.Date = headers.Date or server_date(server)
  local out = { ("HTTP/1.1 %d %s\r\n"):format(status, REASONS[status] or "Status") }
  for k, v in pairs(headers) do out[#out + 1] = k .. ": " .. v .. "\r\n" end
  out[#out + 1] = "\r\n"
  return table.concat(out)
end

--- Send a whole response.
function Response:send(status, body, headers)
  assert(not self.started, "response already started")
  self.started, self.finished = true, true
  headers = headers or {}
  body = body or ""
  headers["Content-Length"] = tostring(#body)
  if self.close_after then headers["Connection"] = "close" end
  self.status = status
  return self.conn:write(header_block(self.conn.server, status, headers) .. (self.req.method == "HEAD" and "" or body))
end

--- Start a chunked response; then write() chunks and finish().
function Response:start(status, headers)
  assert(not self.started, "response already started")
  self.started = true
  self.chunked = true
  self.status = status
  headers = headers or {}
  headers["Transfer-Encoding"] = "chunked"
  return self.conn:write(header_block(self.conn.server, status, headers))
end

function Response:write(data)
  if #data == 0 then return not self.conn.closed end
  return self.conn:write(("%x\r\n"):format(#data) .. data .. "\r\n")
end

function Response:finish()
  if self.finished then return end
  self.finished = true
  if self.chunked then self.conn:write("0\r\n\r\n") end
end

--- Switch protocols: the handler gets the raw connection (read_exactly, write, close).
function Response:upgrade(headers)
  assert(not self.started, "response already started")
  self.started, self.finished, self.upgraded = true, true, true
  self.conn:write(header_block(self.conn.server, 101, headers))
  return self.conn
end

--- True while the client is still there (a follow stops when it leaves).
function Response:connected() return not self.conn.closed and not self.conn.eof end

local function read_request(conn)
  local head, e = conn:read_until("\r\n\r\n")
  if not head then return nil, e end
  local req = parse_head(head)
  if not req then return nil, "bad request" end
  local te = req.headers["transfer-encoding"]
  local len = tonumber(req.headers["content-length"] or "0")
  local body
  if te and te:lower():find("chunked") then
    body, e = conn:read_chunked()
  elseif len and len > 0 then
    if len > MAX_BODY then return nil, "body too large" end
    body, e = conn:read_exactly(len)
  else
    body = ""
  end
  if not body then return nil, e end
  req.body = body
  req.query, req.query_all = M.parse_query(req.query_string)
  req.conn_id = conn.id
  return req
end

local function serve_conn(server, conn)
  conn:start_reading()
  while not conn.closed do
    local req, e = read_request(conn)
    if not req then
      if e == "bad request" or e == "head too large" or e == "body too large" then
        conn:write(header_block(server, e == "bad request" and 400 or 413, { ["Content-Length"] = "0", Connection = "close" }))
      end
      break
    end
    local res = setmetatable({ conn = conn, req = req }, Response)
    local conn_hdr = (req.headers.connection or ""):lower()
    res.close_after = conn_hdr:find("close") ~= nil or (req.version == "1.0" and not conn_hdr:find("keep%-alive"))
    server.requests = server.requests + 1
    local ok, err = pcall(server.handler, req, res)
    if not ok then
      if server.on_error then server.on_error(err, req) end
      if not res.started then
        res:send(500, tostring(err), { ["Content-Type"] = "text/plain" })
      else
        conn:close()
      end
    elseif not res.started then
      res:send(204)
    elseif not res.finished then
      res:finish()
    end
    if res.upgraded or res.close_after then break end
  end
  server.conns[conn] = nil
  conn:close()
end

--- serve{host =, port = 0, handler = function(req, res) end} -> server (server.port set)
function M.serve(opts)
  local server = {
    handler = assert(opts.handler), on_error = opts.on_error, now = opts.now or os.time,
    conns = {}, requests = 0, next_conn = 1,
  }
  local tcp = uv.new_tcp()
  assert(tcp:bind(opts.host or "127.0.0.1", opts.port or 0))
  server.port = tcp:getsockname().port
  server.host = opts.host or "127.0.0.1"
  assert(tcp:listen(256, function(err)
    if err then return end
    local sock = uv.new_tcp()
    if not tcp:accept(sock) then sock:close() return end
    sock:nodelay(true)
    local conn = new_conn(server, sock)
    server.conns[conn] = true
    vq.spawn(serve_conn, server, conn)
  end))
  server.tcp = tcp
  --- Drop every open connection (a fault scenario: the apiserver restarts).
  function server.drop_connections()
    for conn in pairs(server.conns) do
      if not conn.sock:is_closing() then conn.sock:close() end
      conn.closed = true
      conn.readable:set()
      conn.drained:set()
    end
  end
  function server.close()
    server.drop_connections()
    if not tcp:is_closing() then tcp:close() end
  end
  return server
end

return M
