/* libFuzzer target: any bytes as a cluster.properties must parse to properties or a clear
 * error, and every edit (set, uncomment, delete) must give a text that reads back as meant
 * or nil, err: never a raise, a hang or a sanitizer report. The first bytes pick the key
 * and the value, so that the fuzzer steers the edits too. */
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
  "local props = require 'vq.properties'\n"
  "local text = ...\n"
  "local map, entries = props.parse(text, {file = 'fuzz.properties'})\n"
  "if not map then assert(entries.line and entries.file, 'an error names its line') return end\n"
  "local keys = {'requiredRemote', 'provider', 'a b', 'k=v', '#x', '\\u{65e5}'}\n"
  "if entries[1] then keys[#keys + 1] = entries[1].key; keys[#keys + 1] = entries[#entries].key end\n"
  "local values = {'false', ' lead', 'x\\ny\\\\', '=v', '\\u{65e5}\\u{672c}', '', 'a \\\\'}\n"
  "local b1, b2 = text:byte(1, 2)\n"
  "local key = keys[(b1 or 0) % #keys + 1]\n"
  "local value = values[(b2 or 0) % #values + 1]\n"
  "local out = props.set(text, key, value)\n"
  "if out then assert(props.get(out, key) == value, 'set reads back') end\n"
  "out = props.uncomment(text, key, (b1 or 0) % 2 == 0 and value or nil)\n"
  "if out then assert(props.get(out, key) ~= nil, 'uncomment sets the key') end\n"
  "out = props.delete(text, key)\n"
  "if out then assert(props.get(out, key) == nil, 'delete removes the key') end\n";

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
    fprintf(stderr, "properties raised: %s\n", msg ? msg : "?");
    __builtin_trap();
  }
  lua_settop(L, 0);
  /* What the run allocated is freed within the run, so that libFuzzer's leak check (run
   * when mallocs outnumber frees) has nothing to look at. */
  lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
