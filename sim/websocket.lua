-- RFC 6455 as a server speaks it over sim.http's upgraded connection: the handshake's
-- accept key (SHA-1, here in Lua: the host has no digest to lend), reading masked and
-- fragmented client frames, and writing unmasked ones.
local util = require "sim.util"

local M = {}

M.GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
M.OP = { CONTINUATION = 0, TEXT = 1, BINARY = 2, CLOSE = 8, PING = 9, PONG = 10 }
M.MAX_PAYLOAD = 64 * 1024 * 1024

local M32 = 0xffffffff

local function rol(x, n) return ((x << n) | (x >> (32 - n))) & M32 end

local function sha1_block(h, msg, at)
  local w = { string.unpack(">I4I4I4I4I4I4I4I4I4I4I4I4I4I4I4I4", msg, at) }
  for i = 17, 80 do w[i] = rol(w[i - 3] ~ w[i - 8] ~ w[i - 14] ~ w[i - 16], 1) end
  local a, b, c, d, e = h[1], h[2], h[3], h[4], h[5]
  for i = 1, 80 do
    local f, k
    if i <= 20 then f, k = (b & c) | (~b & d), 0x5A827999
    elseif i <= 40 then f, k = b ~ c ~ d, 0x6ED9EBA1
    elseif i <= 60 then f, k = (b & c) | (b & d) | (c & d), 0x8F1BBCDC
    else f, k = b ~ c ~ d, 0xCA62C1D6 end
    a, b, c, d, e = (rol(a, 5) + (f & M32) + e + k + w[i]) & M32, a, rol(b, 30), c, d
  end
  h[1], h[2], h[3], h[4], h[5] = (h[1] + a) & M32, (h[2] + b) & M32, (h[3] + c) & M32, (h[4] + d) & M32, (h[5] + e) & M32
end

--- SHA-1 of a string, as 20 raw bytes.
function M.sha1(s)
  local h = { 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0 }
  local msg = s .. "\128" .. ("\0"):rep((55 - #s) % 64) .. string.pack(">I8", #s * 8)
  for at = 1, #msg, 64 do sha1_block(h, msg, at) end
  return string.pack(">I4I4I4I4I4", h[1], h[2], h[3], h[4], h[5])
end

--- Sec-WebSocket-Accept for a client's Sec-WebSocket-Key.
function M.accept_key(key) return util.base64(M.sha1(key .. M.GUID)) end

-- XOR a payload with its 4-byte mask, eight bytes at a time.
local function unmask(data, mask)
  local key4 = string.unpack("<I4", mask)
  local key = key4 | (key4 << 32)
  local out, n = {}, #data
  local words = n // 8
  local pack, unpack = string.pack, string.unpack
  for i = 1, words do
    out[i] = pack("<i8", unpack("<i8", data, i * 8 - 7) ~ key)
  end
  for i = words * 8 + 1, n do
    out[#out + 1] = string.char(data:byte(i) ~ mask:byte((i - 1) % 4 + 1))
  end
  return table.concat(out)
end
M.unmask = unmask

local function read_length(conn, len)
  if len == 126 then
    local b, err = conn:read_exactly(2)
    if not b then return nil, err end
    return (string.unpack(">I2", b))
  elseif len == 127 then
    local b, err = conn:read_exactly(8)
    if not b then return nil, err end
    return (string.unpack(">I8", b))
  end
  return len
end

--- One frame from the connection: {fin =, op =, payload =}, or nil, err.
function M.read_frame(conn)
  local head, err = conn:read_exactly(2)
  if not head then return nil, err end
  local b1, b2 = head:byte(1, 2)
  local len
  len, err = read_length(conn, b2 & 0x7f)
  if not len then return nil, err end
  if len > M.MAX_PAYLOAD then return nil, "frame too large" end
  local mask
  if b2 & 0x80 ~= 0 then
    mask, err = conn:read_exactly(4)
    if not mask then return nil, err end
  end
  local payload = ""
  if len > 0 then
    payload, err = conn:read_exactly(len)
    if not payload then return nil, err end
  end
  if mask then payload = unmask(payload, mask) end
  return { fin = b1 & 0x80 ~= 0, op = b1 & 0x0f, payload = payload }
end

--- The next data message (fragments joined): op, payload, or nil, err. Control frames
--- in between go to on_control(frame); it returns true to end reading (a close).
function M.read_message(conn, on_control)
  local op, parts
  while true do
    local f, err = M.read_frame(conn)
    if not f then return nil, err end
    if f.op >= 8 then
      if on_control(f) then return nil, "closed" end
    elseif f.op == M.OP.CONTINUATION then
      if not parts then return nil, "continuation without a first frame" end
      parts[#parts + 1] = f.payload
      if f.fin then return op, table.concat(parts) end
    elseif f.fin then
      return f.op, f.payload
    else
      op, parts = f.op, { f.payload }
    end
  end
end

--- A server frame (unmasked).
function M.frame(op, payload, fin)
  local b1 = (fin == false and 0 or 0x80) | op
  local n = #payload
  if n < 126 then return string.pack(">BB", b1, n) .. payload end
  if n < 65536 then return string.pack(">BBI2", b1, 126, n) .. payload end
  return string.pack(">BBI8", b1, 127, n) .. payload
end

function M.close_frame(code, reason)
  return M.frame(M.OP.CLOSE, string.pack(">I2", code or 1000) .. (reason or ""))
end

--- The headers of a 101 answer to a client's handshake, or nil, message.
function M.handshake_headers(req, protocol)
  local key = req.headers["sec-websocket-key"]
  if not key or key == "" then return nil, "missing Sec-WebSocket-Key" end
  local h = { Upgrade = "websocket", Connection = "Upgrade", ["Sec-WebSocket-Accept"] = M.accept_key(key) }
  if protocol and protocol ~= "" then h["Sec-WebSocket-Protocol"] = protocol end
  return h
end

function M.is_upgrade(req)
  return (req.headers.upgrade or ""):lower():find("websocket", 1, true) ~= nil
end

return M
