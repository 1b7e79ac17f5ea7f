-- Base64 (RFC 4648, with padding), as Kubernetes writes Secret data and kubeconfigs
-- write certificate data.
local M = {}

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

function M.encode(s)
  return ((s:gsub(".", function(c)
    local b, out = c:byte(), ""
    for i = 8, 1, -1 do out = out .. ((b >> (i - 1)) & 1) end
    return out
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(bits)
    if #bits < 6 then return "" end
    local n = tonumber(bits, 2)
    return B64:sub(n + 1, n + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1])
end

function M.decode(s)
  s = s:gsub("[^%w%+/=]", "")
  return (s:gsub(".", function(c)
    if c == "=" then return "" end
    local n = B64:find(c, 1, true) - 1
    local out = ""
    for i = 6, 1, -1 do out = out .. ((n >> (i - 1)) & 1) end
    return out
  end):gsub("%d%d%d?%d?%d?%d?%d?%d?", function(bits)
    if #bits ~= 8 then return "" end
    return string.char(tonumber(bits, 2))
  end))
end


return M
