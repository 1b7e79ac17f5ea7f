local base64 = require "vq.base64"

describe("base64", function()
  it("encodes and decodes RFC 4648's test vectors", function()
    local vectors = { [""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==",
      fooba = "Zm9vYmE=", foobar = "Zm9vYmFy" }
    for plain, encoded in pairs(vectors) do
      assert.are.equal(encoded, base64.encode(plain))
      assert.are.equal(plain, base64.decode(encoded))
    end
  end)

  it("round-trips every byte value and every length's tail", function()
    local all = {}
    for i = 0, 255 do all[#all + 1] = string.char(i) end
    all = table.concat(all)
    for n = 0, 64 do
      local s = all:sub(1, n) .. all:sub(256 - n)
      assert.are.equal(s, base64.decode(base64.encode(s)))
    end
  end)

  it("agrees with the openssl command on certificate-sized data", function()
    local run = require("spec.support.run").run
    local s = {}
    for i = 1, 3000 do s[i] = string.char((i * 7919) % 256) end
    s = table.concat(s)
    local encoded = base64.encode(s)
    assert.are.equal(s, run { "openssl", "base64", "-d", "-A", stdin = encoded }.stdout)
    -- openssl's own, with line breaks every 64 characters, as PEM and kubectl's output have them
    local wrapped = run { "openssl", "base64", "-e", stdin = s }.stdout
    assert.matches("\n", wrapped)
    assert.are.equal(s, base64.decode(wrapped))
    assert.are.equal(s, base64.decode(encoded:gsub(("."):rep(64), "%0\n")))
  end)

  it("takes text without padding, as operators paste keys", function()
    assert.are.equal("fooba", base64.decode("Zm9vYmE"))
    assert.are.equal("foob", base64.decode("Zm9vYg"))
  end)

  it("names the position of what is not base64", function()
    local v, err = base64.decode("Zm9v\nYm$F")
    assert.is_nil(v)
    assert.are.equal("base64", err.code)
    assert.are.equal(8, err.position)
    assert.matches("unexpected character at character 8", err.message)
    for _, bad in ipairs { "Zm9vY", "Zg=", "Zg===", "Z===", "Zg==Zg==", "=Zg=", "Zm9v-_" } do
      local value, e = base64.decode(bad)
      assert.is_nil(value, bad)
      assert.are.equal("base64", e.code, bad)
    end
  end)
end)
