/* The embedding example: a C program hosts the runtime, registers a module of its own
 * with a primitive that waits the vq way, runs Lua that uses it, and tears down. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "check.h"
#include "vq.h"


/* host.after(ms, value): waits ms on the loop, then returns value. */
typedef struct after_req {
  vq_wait wait;
  uv_timer_t timer;
  lua_Integer value;
} after_req;

static void after_free(uv_handle_t *h) { free(h->data); }

static void after_cancel(vq_wait *w) {
  after_req *r = (after_req *)w;
  uv_close((uv_handle_t *)&r->timer, after_free);
}

static void after_fired(uv_timer_t *timer) {
  after_req *r = timer->data;
  lua_pushinteger(vq_wait_thread(&r->wait), r->value);
  vq_wait_done(&r->wait, 1);
  uv_close((uv_handle_t *)timer, after_free);
}

static int l_after(lua_State *L) {
  lua_Integer ms = luaL_checkinteger(L, 1);
  lua_Integer value = luaL_checkinteger(L, 2);
  vq_wait_check(L);
  after_req *r = calloc(1, sizeof *r);
  if (!r) return luaL_error(L, "out of memory");
  r->value = value;
  vq_wait_begin(L, &r->wait, after_cancel);
  uv_timer_init(vq_loop(vq_from_lua(L)), &r->timer);
  r->timer.data = r;
  uv_timer_start(&r->timer, after_fired, (uint64_t)ms, 0);
  return vq_wait_yield(L, &r->wait);
}

static int luaopen_host(lua_State *L) {
  static const luaL_Reg fns[] = {{"after", l_after}, {NULL, NULL}};
  luaL_newlib(L, fns);
  return 1;
}

static lua_Integer global_integer(vq_runtime *rt, const char *name) {
  lua_State *L = vq_lua(rt);
  lua_getglobal(L, name);
  lua_Integer v = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

int main(void) {
  vq_runtime *rt = vq_new(&(vq_options){.color = -1});
  CHECK(rt != NULL);
  vq_register(rt, "host", luaopen_host);

  /* A primitive of the embedder's waits without blocking: two tasks overlap. */
  int status = vq_run_string(rt,
    "local host, vq = require 'host', require 'vq'\n"
    "local t0 = vq.now()\n"
    "local a = vq.spawn(host.after, 50, 1)\n"
    "local b = vq.spawn(host.after, 50, 2)\n"
    "total = a:wait() + b:wait()\n"
    "elapsed_ms = math.floor((vq.now() - t0) * 1000)\n", "=embed");
  CHECK(status == 0);
  CHECK(global_integer(rt, "total") == 3);
  CHECK(global_integer(rt, "elapsed_ms") < 95);

  /* Called outside a task, the primitive is a clear error, not a hang. */
  lua_State *L = vq_lua(rt);
  lua_getglobal(L, "require");
  lua_pushstring(L, "host");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "after");
  lua_pushinteger(L, 1);
  lua_pushinteger(L, 1);
  CHECK(lua_pcall(L, 2, 0, 0) != LUA_OK);
  CHECK(strstr(lua_tostring(L, -1), "must run in a task") != NULL);
  lua_settop(L, 0);

  /* An error comes back as a non-zero status, and the runtime stays usable. */
  CHECK(vq_run_string(rt, "error('expected failure')", "=embed") == 1);
  CHECK(vq_run_string(rt, "ok_after_error = 1", "=embed") == 0);
  CHECK(global_integer(rt, "ok_after_error") == 1);

  /* Closing with a task still waiting cancels it and frees everything (ASan checks). */
  lua_getglobal(L, "require");
  lua_pushstring(L, "vq");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "sleep");
  lua_pushnumber(L, 60);
  vq_spawn(L, 1);
  lua_settop(L, 0);
  vq_step(rt, UV_RUN_NOWAIT);
  vq_close(rt);

  if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
  else printf("embed: all checks passed\n");
  return failures ? 1 : 0;
}
