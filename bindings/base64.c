/* vq.core.base64: RFC 4648 base64, as Kubernetes writes Secret data and kubeconfigs
 * write certificate data.
 *   encode(bytes) -> text (padded)
 *   decode(text) -> bytes | nil, err   -- whitespace skipped, padding optional (as
 *                                          operators paste keys), anything else an error
 *                                          naming its 1-based position
 * In C because the simulator decodes Secrets on every pod start and runbooks decode
 * certificates and licenses; OpenSSL has a codec, but the core must not load libcrypto. */
#include <lauxlib.h>

#include "bindings.h"
#include "vq.h"

static const char ALPHABET[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

enum { SKIP = 64, PAD = 65, BAD = 66 };

static unsigned char value_of(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return (unsigned char)(c - 'A');
  if (c >= 'a' && c <= 'z') return (unsigned char)(c - 'a' + 26);
  if (c >= '0' && c <= '9') return (unsigned char)(c - '0' + 52);
  if (c == '+') return 62;
  if (c == '/') return 63;
  if (c == '=') return PAD;
  if (c == ' ' || c == '\t' || c == '\r' || c == '\n') return SKIP;
  return BAD;
}

static int l_encode(lua_State *L) {
  size_t len;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, (len + 2) / 3 * 4);
  size_t o = 0, i = 0;
  for (; i + 2 < len; i += 3) {
    unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
    out[o++] = ALPHABET[v >> 18 & 63];
    out[o++] = ALPHABET[v >> 12 & 63];
    out[o++] = ALPHABET[v >> 6 & 63];
    out[o++] = ALPHABET[v & 63];
  }
  if (i < len) {
    unsigned v = (unsigned)s[i] << 16 | (i + 1 < len ? (unsigned)s[i + 1] << 8 : 0);
    out[o++] = ALPHABET[v >> 18 & 63];
    out[o++] = ALPHABET[v >> 12 & 63];
    out[o++] = i + 1 < len ? ALPHABET[v >> 6 & 63] : '=';
    out[o++] = '=';
  }
  luaL_pushresultsize(&b, o);
  return 1;
}

static int decode_error(lua_State *L, size_t pos, const char *what) {
  vq_push_error(L, "base64", "not valid base64: %s at character %d", what, (int)pos);
  lua_pushinteger(L, (lua_Integer)pos);
  lua_setfield(L, -2, "position");
  return 2;
}

static int l_decode(lua_State *L) {
  size_t len;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, len / 4 * 3 + 3);
  size_t o = 0, pads = 0;
  unsigned acc = 0, n = 0; /* n: 6-bit groups in acc */
  for (size_t i = 0; i < len; i++) {
    unsigned char v = value_of(s[i]);
    if (v == SKIP) continue;
    if (v == BAD) return decode_error(L, i + 1, "unexpected character");
    if (v == PAD) {
      if (n < 2 || n + ++pads > 4) return decode_error(L, i + 1, "misplaced '='");
      continue;
    }
    if (pads) return decode_error(L, i + 1, "data after '='");
    acc = acc << 6 | v;
    if (++n == 4) {
      out[o++] = (unsigned char)(acc >> 16);
      out[o++] = (unsigned char)(acc >> 8);
      out[o++] = (unsigned char)acc;
      acc = n = 0;
    }
  }
  if (n == 1) return decode_error(L, len, "truncated");
  if (pads && n + pads != 4) return decode_error(L, len, "missing '='");
  if (n >= 2) out[o++] = (unsigned char)(acc >> (n == 2 ? 4 : 10));
  if (n == 3) out[o++] = (unsigned char)(acc >> 2);
  luaL_pushresultsize(&b, o);
  return 1;
}

int luaopen_vq_core_base64(lua_State *L) {
  static const luaL_Reg functions[] = {{"encode", l_encode}, {"decode", l_decode}, {NULL, NULL}};
  luaL_newlib(L, functions);
  return 1;
}
