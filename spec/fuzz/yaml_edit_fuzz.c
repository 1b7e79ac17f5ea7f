/* libFuzzer target: any bytes through yaml.edit / insert / append / delete / rename /
 * uncomment with a few paths and values must give a text or nil, err: never a raise, a hang
 * or a sanitizer report (in yaml.lua's splicing or in bindings/yaml_edit.c's byte offsets).
 * The first three bytes pick the path, the value and the operation. */
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
  "local yaml = require 'vq.yaml'\n"
  "local text = ...\n"
  "local b1, b2, b3 = text:byte(1, 3)\n"
  "b1, b2, b3 = b1 or 0, b2 or 0, b3 or 0\n"
  "local paths = {'vantiq.image.tag', 'vantiq', 'a', 'a.b', 'spec.containers.1.image', 'x.1',\n"
  "  '', {'metadata', 'annotations', 'a.b'}, 'vantiq.mongodb.backup', 'b.c.d'}\n"
  "local values = {'v', 42, 1.5, true, false, yaml.null, 'multi\\nline', '', ' lead', 'no', '# not',\n"
  "  yaml.mapping{a = 1}, yaml.sequence{1, 'x'}, yaml.mapping{}, '\\u{65e5}\\u{672c}'}\n"
  "local path = paths[b1 % #paths + 1]\n"
  "local value = values[b2 % #values + 1]\n"
  "local opts = {replace = b3 & 8 ~= 0, block = b3 & 16 ~= 0, file = 'fuzz.yaml'}\n"
  "local op = b3 % 6\n"
  "local out\n"
  "if op == 0 then out = yaml.edit(text, path, value, opts)\n"
  "elseif op == 1 then out = yaml.insert(text, path, 'k', value, opts)\n"
  "elseif op == 2 then out = yaml.delete(text, path, opts)\n"
  "elseif op == 3 then out = yaml.uncomment(text, path == '' and 'a' or path, opts)\n"
  "elseif op == 4 then out = yaml.append(text, path, value, opts)\n"
  "else out = yaml.rename(text, path, 'renamed', opts) end\n"
  "if out then assert(yaml.decode_all(out), 'an edit gives a text that parses') end\n";

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
    fprintf(stderr, "yaml edit raised: %s\n", msg ? msg : "?");
    __builtin_trap();
  }
  lua_settop(L, 0);
  /* What the run allocated is freed within the run, so that libFuzzer's leak check (run
   * when mallocs outnumber frees) has nothing to look at. */
  lua_gc(L, LUA_GCCOLLECT);
  return 0;
}
