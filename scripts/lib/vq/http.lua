-- vq.http: requests on the one transport (bindings/http.c), with client-go's retry rules,
-- a client-side rate limiter, JSON in and out, and line iteration over streamed bodies.
local core = require "vq.core.http"
local vq = require "vq"

local http = {}

http.MAX_RETRIES = 10

local function json() return require "json" end

-- client-go (rest/with_retry.go): 429 and 5xx are retried only when the server says when
-- (Retry-After, in seconds); the wait is the larger of that and our backoff.
local function retry_after(resp)
  if resp.status ~= 429 and resp.status < 500 then return nil end
  local v = resp.headers and resp.headers["retry-after"]
  local seconds = v and tonumber(v:match("^%s*(%d+)%s*$"))
  return seconds
end

-- client-go (rest/request.go): a connection reset or premature EOF is retried for GET only,
-- after one second.
local RETRYABLE_TRANSPORT = { connection = true }
local function transport_retryable(opts, err)
  return (opts.method or "GET") == "GET" and RETRYABLE_TRANSPORT[err.code]
end

--- A token bucket: qps tokens a second, at most burst at once. take() waits for one.
function http.rate_limiter(qps, burst)
  local limiter = { qps = qps, burst = burst, tokens = burst, stamp = vq.now() }
  function limiter:take()
    if self.qps <= 0 then return end
    local now = vq.now()
    self.tokens = math.min(self.burst, self.tokens + (now - self.stamp) * self.qps)
    self.stamp = now
    if self.tokens < 1 then
      local wait = (1 - self.tokens) / self.qps
      self.tokens = 0
      self.stamp = now + wait
      vq.sleep(wait)
      return
    end
    self.tokens = self.tokens - 1
  end
  return limiter
end

local function prepare(opts)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  if opts.json ~= nil then
    o.body = json().encode(opts.json)
    local h = {}
    for k, v in pairs(opts.headers or {}) do h[k] = v end
    h["Content-Type"] = h["Content-Type"] or "application/json"
    o.headers = h
  end
  return o
end

local function decode_json(resp)
  local ct = resp.headers and resp.headers["content-type"] or ""
  if ct:find("json", 1, true) and resp.body and #resp.body > 0 then
    local value, err = json().decode(resp.body)
    if value == nil and err then resp.json_error = err else resp.json = value end
  end
  return resp
end

--- One attempt after another under client-go's rules; attempt() returns resp or nil, err.
--- on_retry(n, wait, why) is told before each wait.
function http.with_retry(opts, attempt)
  local max = opts.retries or http.MAX_RETRIES
  local n = 0
  while true do
    if opts.limiter then opts.limiter:take() end
    local resp, err = attempt()
    local wait, why
    if resp then
      local after = retry_after(resp)
      if not after then return resp end
      wait, why = after, ("HTTP %d"):format(resp.status)
    elseif transport_retryable(opts, err) then
      wait, why = 1, err.message
    else
      return nil, err
    end
    n = n + 1
    if n > max then return resp, err end
    local backoff = opts.backoff and opts.backoff(n) or 0
    wait = math.max(wait, backoff)
    if opts.on_retry then opts.on_retry(n, wait, why) end
    vq.sleep(wait)
  end
end

--- request{method=, url=, headers=, body= or json=, timeout=, retries=, ca_file=, ...}
--- → response {status, headers, body, json} | nil, err. Statuses are not errors.
function http.request(opts)
  local o = prepare(opts)
  local resp, err = http.with_retry(o, function() return core.request(o) end)
  if not resp then
    err.url = opts.url
    err.method = opts.method or "GET"
    return nil, err
  end
  return decode_json(resp)
end

for _, m in ipairs { "get", "post", "put", "patch", "delete" } do
  http[m] = function(url, opts)
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    o.url, o.method = url, m:upper()
    return http.request(o)
  end
end

--- Open a streamed response: head {status, headers, stream} | nil, err.
function http.stream(opts)
  local o = prepare(opts)
  local head, err = http.with_retry(o, function() return core.stream(o) end)
  if not head then
    err.url = opts.url
    return nil, err
  end
  return head
end

--- Iterate a stream's body line by line (without the newline). The last line is given
--- even without a newline. A transport error ends the loop and is kept in state.err.
function http.lines(stream)
  local pending, pos, state = "", 1, {}
  return function()
    while true do
      local nl = pending:find("\n", pos, true)
      if nl then
        local line = pending:sub(pos, nl - 1)
        pos = nl + 1
        if line:sub(-1) == "\r" then line = line:sub(1, -2) end
        return line
      end
      pending = pending:sub(pos)
      pos = 1
      local chunk, err = stream:read()
      if not chunk then
        state.err = err
        if #pending > 0 then
          local line = pending
          pending = ""
          return line
        end
        return nil
      end
      pending = pending .. chunk
    end
  end, state
end

http.versions = core.versions

return http
