-- DNS messages (RFC 1035): parse a query, build a response with name compression. Bounded
-- and defensive: a malformed packet is an error value, never an exception.
local M = {}

M.TYPE = { A = 1, NS = 2, CNAME = 5, SOA = 6, PTR = 12, MX = 15, TXT = 16, AAAA = 28, OPT = 41, ANY = 255 }
M.CLASS = { IN = 1, CH = 3, ANY = 255 }
M.RCODE = { NOERROR = 0, FORMERR = 1, SERVFAIL = 2, NXDOMAIN = 3, NOTIMP = 4, REFUSED = 5 }

local MAX_PACKET = 4096
local MAX_JUMPS = 32

local function u16(s, pos)
  if pos + 1 > #s then return nil end
  return (s:byte(pos) << 8) | s:byte(pos + 1)
end

local function u32(s, pos)
  local hi, lo = u16(s, pos), u16(s, pos + 2)
  return hi and lo and ((hi << 16) | lo)
end

--- Read a (possibly compressed) name at pos: name, position after it; or nil, error.
function M.read_name(s, pos)
  local labels, total, jumps, after = {}, 0, 0, nil
  while true do
    local len = s:byte(pos)
    if not len then return nil, "name runs past the packet" end
    if len == 0 then
      return table.concat(labels, "."), after or pos + 1
    elseif len & 0xC0 == 0xC0 then
      local ptr = u16(s, pos)
      if not ptr then return nil, "truncated pointer" end
      ptr = (ptr & 0x3FFF) + 1
      -- pointers go backwards only: no loops
      if ptr >= pos or jumps >= MAX_JUMPS then return nil, "bad compression pointer" end
      after = after or pos + 2
      jumps = jumps + 1
      pos = ptr
    elseif len & 0xC0 ~= 0 then
      return nil, "unsupported label type"
    else
      local label = s:sub(pos + 1, pos + len)
      if #label ~= len then return nil, "label runs past the packet" end
      total = total + len + 1
      if total > 255 then return nil, "name too long" end
      labels[#labels + 1] = label
      pos = pos + len + 1
    end
  end
end

local function read_header(s)
  if #s < 12 then return nil, "short header" end
  local flags = u16(s, 3)
  return {
    id = u16(s, 1), qr = flags >> 15, opcode = (flags >> 11) & 0xF, aa = (flags >> 10) & 1,
    tc = (flags >> 9) & 1, rd = (flags >> 8) & 1, ra = (flags >> 7) & 1, rcode = flags & 0xF,
    qdcount = u16(s, 5), ancount = u16(s, 7), nscount = u16(s, 9), arcount = u16(s, 11),
  }
end

local function read_question(s, pos)
  local name, after = M.read_name(s, pos)
  if not name then return nil, after end
  local qtype, qclass = u16(s, after), u16(s, after + 2)
  if not qclass then return nil, "truncated question" end
  return { name = name, type = qtype, class = qclass }, after + 4
end

local function read_rdata(s, rtype, pos, len)
  if rtype == M.TYPE.A and len == 4 then
    return ("%d.%d.%d.%d"):format(s:byte(pos, pos + 3))
  elseif rtype == M.TYPE.CNAME or rtype == M.TYPE.NS or rtype == M.TYPE.PTR then
    return (M.read_name(s, pos))
  end
  return s:sub(pos, pos + len - 1)
end

local function read_record(s, pos)
  local name, after = M.read_name(s, pos)
  if not name then return nil, after end
  local rtype, class, ttl, len = u16(s, after), u16(s, after + 2), u32(s, after + 4), u16(s, after + 8)
  if not len or after + 10 + len - 1 > #s then return nil, "truncated record" end
  return { name = name, type = rtype, class = class, ttl = ttl, data = read_rdata(s, rtype, after + 10, len) },
         after + 10 + len
end

--- Parse a message: {id, qr, opcode, ..., questions = {...}, answers = {...}} or
--- nil, error, header (the header when it could be read, to answer FORMERR).
function M.parse(s)
  if type(s) ~= "string" or #s > MAX_PACKET then return nil, "bad packet size" end
  local msg, err = read_header(s)
  if not msg then return nil, err end
  local pos = 13
  msg.questions, msg.answers = {}, {}
  for _ = 1, msg.qdcount do
    local q
    q, pos = read_question(s, pos)
    if not q then return nil, pos, msg end
    msg.questions[#msg.questions + 1] = q
  end
  for _ = 1, msg.ancount do
    local rr
    rr, pos = read_record(s, pos)
    if not rr then return nil, pos, msg end
    msg.answers[#msg.answers + 1] = rr
  end
  return msg
end

-- ---- building ----

-- Writes names with compression: a suffix already written is a pointer to it.
local function name_writer()
  local offsets = {}
  return function(name, at)
    local labels = {}
    for l in name:gmatch("[^.]+") do labels[#labels + 1] = l end
    local parts = {}
    for i = 1, #labels do
      local suffix = table.concat(labels, ".", i):lower()
      local ptr = offsets[suffix]
      if ptr then
        parts[#parts + 1] = string.pack(">I2", 0xC000 | ptr)
        return table.concat(parts)
      end
      if at < 0x3FFF then offsets[suffix] = at end
      local l = labels[i]:sub(1, 63)
      parts[#parts + 1] = string.char(#l) .. l
      at = at + #l + 1
    end
    parts[#parts + 1] = "\0"
    return table.concat(parts)
  end
end

local function ipv4(addr)
  local a, b, c, d = addr:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  return string.char(tonumber(a) & 255, tonumber(b) & 255, tonumber(c) & 255, tonumber(d) & 255)
end

--- Build a message. msg: {id, qr, opcode, aa, rd, ra, rcode, questions = {{name, type,
--- class}}, answers = {{name, type, class, ttl, data}}} (data: an IPv4 address for A, a
--- name for CNAME). Returns the bytes.
function M.build(msg)
  local flags = ((msg.qr or 1) << 15) | ((msg.opcode or 0) << 11) | ((msg.aa or 0) << 10)
              | ((msg.tc or 0) << 9) | ((msg.rd or 0) << 8) | ((msg.ra or 0) << 7) | (msg.rcode or 0)
  local questions, answers = msg.questions or {}, msg.answers or {}
  local out = { string.pack(">I2I2I2I2I2I2", msg.id or 0, flags, #questions, #answers, 0, 0) }
  local size = 12
  local write_name = name_writer()
  local function add(bytes) out[#out + 1] = bytes size = size + #bytes end
  for _, q in ipairs(questions) do
    add(write_name(q.name, size))
    add(string.pack(">I2I2", q.type, q.class or 1))
  end
  for _, rr in ipairs(answers) do
    add(write_name(rr.name, size))
    add(string.pack(">I2I2I4", rr.type, rr.class or 1, rr.ttl or 60))
    local rdata
    if rr.type == M.TYPE.A then
      rdata = ipv4(rr.data)
    elseif rr.type == M.TYPE.CNAME then
      rdata = write_name(rr.data, size + 2)
    else
      rdata = rr.data or ""
    end
    add(string.pack(">I2", #rdata) .. rdata)
  end
  return table.concat(out)
end

--- A query for name and type (a number or a TYPE name), recursion desired.
function M.query(name, qtype, id)
  return M.build { id = id or math.random(0, 0xFFFF), qr = 0, rd = 1,
                   questions = { { name = name, type = M.TYPE[qtype] or qtype, class = 1 } } }
end

return M
