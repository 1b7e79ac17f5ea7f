/* libFuzzer target: any bytes as a certificate chain or a private key (what renew_ssl reads
 * from the operator's download) must give certificates, a key or a clear error: never a
 * raise, a leak of an OpenSSL object, a hang or a sanitizer report. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <lauxlib.h>

#include "vq.h"

static vq_runtime *runtime;

/* libFuzzer sees only instrumented C, not the Lua code under test: a line hook marks each
 * (previous line, line) pair of Lua in libFuzzer's extra counters, so that it keeps the
 * inputs that reach new Lua code too. */
__attribute__((section("__libfuzzer_extra_counters"))) static uint8_t lua_edges[1 << 16];
static uintptr_t previous_line;

/* By the chunk's name, not its address: the harness chunk is loaded again every run. */
static uint32_t name_hash(const char *s) {
  uint32_t h = 2166136261u;
  while (*s) h = (h ^ (uint8_t)*s++) * 16777619u;
  return h;
}

static void count_line(lua_State *L, lua_Debug *ar) {
  if (!lua_getinfo(L, "S", ar)) return;
  uintptr_t here = name_hash(ar->source) ^ (uintptr_t)ar->currentline * 2654435761u;
  lua_edges[(here ^ previous_line) & (sizeof lua_edges - 1)] = 1; /* reached, not how often */
  previous_line = here >> 1;
}

static const char harness[] =
  "local tls = require 'vq.tls'\n"
  "local text = ...\n"
  "local certs, err = tls.parse_chain(text, 'fuzz.crt')\n"
  "if not certs then assert(err.message, 'an error says why') end\n"
  "local key = tls.parse_key(text, {name = 'fuzz.key'})\n"
  "if key then\n"
  "  for _, c in ipairs(certs or {}) do tls.key_matches(key, c) end\n"
  "  key:close()\n"
  "end\n"
  "-- a passphrase costs a key derivation: only where there is something to decrypt\n"
  "if text:find('ENCRYPTED', 1, true) then\n"
  "  local enc = tls.parse_key(text, {name = 'fuzz.key', passphrase = 'pem-test-passphrase'})\n"
  "  if enc then enc:close() end\n"
  "end\n"
  "if certs and #certs > 0 then\n"
  "  tls.check_chain(certs, {host = 'pem-test.example.test', at = 1700000000})\n"
  "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!runtime) runtime = vq_new(&(vq_options){.color = -1});
  lua_State *L = vq_lua(runtime);
  if (luaL_loadbuffer(L, harness, sizeof harness - 1, "=harness") != LUA_OK) __builtin_trap();
  lua_pushlstring(L, (const char *)data, size);
  previous_line = 0;
  lua_sethook(L, count_line, LUA_MASKLINE, 0);
  int status = lua_pcall(L, 1, 0, 0);
  lua_sethook(L, NULL, 0, 0);
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "pem raised: %s\n", msg ? msg : "?");
    __builtin_trap();
  }
  lua_settop(L, 0);
  /* What the run allocated is freed within the run, so that libFuzzer's leak check (run
   * when mallocs outnumber frees) has nothing to look at. */
  lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
