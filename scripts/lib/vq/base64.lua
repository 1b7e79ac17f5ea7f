-- Base64 (RFC 4648): encode(bytes) -> padded text; decode(text) -> bytes, or nil, err for
-- anything but the alphabet, whitespace and (optional) padding.
local core = require "vq.core.base64"

return { encode = core.encode, decode = core.decode }
