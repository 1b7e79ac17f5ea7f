/* What the C tests share: CHECK, which counts failures and goes on, and running Lua code
 * while its allocations fail one after another. */
#ifndef VQ_SPEC_CHECK_H
#define VQ_SPEC_CHECK_H

#include <stdio.h>

#include <lauxlib.h>

static int failures;
#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);    \
      failures++;                                                                \
    }                                                                            \
  } while (0)

/* Calls the global table module's function fn with the nargs values on top; 0 (and the
 * message printed) when it raised. */
static inline int call_field(lua_State *L, const char *module, const char *fn, int nargs, int nresults) {
  lua_getglobal(L, module);
  lua_getfield(L, -1, fn);
  lua_remove(L, -2);
  lua_insert(L, -(nargs + 1));
  if (lua_pcall(L, nargs, nresults, 0) != LUA_OK) {
    fprintf(stderr, "%s.%s raised: %s\n", module, fn, lua_tostring(L, -1));
    lua_pop(L, 1);
    return 0;
  }
  return 1;
}

/* Calls the global function fn with the bytes as its argument; a raise is a failure
 * (printed with the round it happened in). */
static inline void call_with_bytes(lua_State *L, const char *fn, const char *bytes, size_t len, int round) {
  lua_getglobal(L, fn);
  lua_pushlstring(L, bytes, len);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "mutation %d: %s\n", round, lua_tostring(L, -1));
    lua_pop(L, 1);
    failures++;
  }
}

typedef struct limit {
  lua_Alloc alloc;
  void *ud;
  long remaining; /* growing allocations left; < 0 means no limit */
} limit;

static inline void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  limit *lim = ud;
  int grows = nsize > 0 && (ptr == NULL || nsize > osize);
  if (grows && lim->remaining >= 0) {
    if (lim->remaining == 0) return NULL;
    lim->remaining--;
  }
  return lim->alloc(lim->ud, ptr, osize, nsize);
}

/* Calls the global function fn with its first growing allocation failing, then its second,
 * and so on until a run gets through: what the code held must be freed each time (ASan's
 * leak checker says so). Returns how many runs failed first, or -1 if none got through. */
static inline long fail_each_allocation(lua_State *L, const char *fn) {
  limit lim;
  lim.alloc = lua_getallocf(L, &lim.ud);
  lim.remaining = -1;
  lua_setallocf(L, limited_alloc, &lim);
  long failed = -1;
  for (long n = 0; n < 100000 && failed < 0; n++) {
    lua_gc(L, LUA_GCCOLLECT);
    lua_getglobal(L, fn);
    lim.remaining = n;
    int status = lua_pcall(L, 0, 0, 0);
    lim.remaining = -1;
    if (status == LUA_OK) failed = n;
    else lua_pop(L, 1);
  }
  lua_gc(L, LUA_GCCOLLECT);
  lua_setallocf(L, lim.alloc, lim.ud);
  return failed;
}

#endif
