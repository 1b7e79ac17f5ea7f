/* The one way the fuzz targets run Lua code: each target is a harness chunk that takes the
 * input as its argument and must never raise; nil, err is the contract for bad input.
 * Include once per target. */
#ifndef VQ_FUZZ_HARNESS_H
#define VQ_FUZZ_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <lauxlib.h>

#include "vq.h"

/* A fuzzer calls its target millions of times: one runtime for the whole run. */
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

/* Run the harness chunk with the input; trap (a finding) when it raises. */
static int fuzz_lua(const char *harness, size_t len, const char *what, const uint8_t *data, size_t size) {
  if (!runtime) runtime = vq_new(&(vq_options){.color = -1});
  lua_State *L = vq_lua(runtime);
  if (luaL_loadbuffer(L, harness, len, "=harness") != LUA_OK) __builtin_trap();
  lua_pushlstring(L, (const char *)data, size);
  previous_line = 0;
  lua_sethook(L, count_line, LUA_MASKLINE, 0);
  int status = lua_pcall(L, 1, 0, 0);
  lua_sethook(L, NULL, 0, 0);
  if (status != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "%s raised: %s\n", what, msg ? msg : "?");
    __builtin_trap();
  }
  lua_settop(L, 0);
  /* What the run allocated is freed within the run, so that libFuzzer's leak check (run
   * when mallocs outnumber frees) has nothing to look at. */
  lua_gc(L, LUA_GCCOLLECT);
  return 0;
}

#endif
