/* Module registration: every C binding opens as vq.core.<name>; json, yaml, log and uv
 * are also reachable by their short names, as the Lua layer vq.<name> presents them. */
#include <lauxlib.h>

#include "internal.h"
#include "bindings.h"

static const struct { const char *name; lua_CFunction open; } core_modules[] = {
  {"vq.core.sched", luaopen_vq_core_sched},
  {"vq.core.json", luaopen_vq_core_json},
  {"vq.core.yaml", luaopen_vq_core_yaml},
  {"vq.core.log", luaopen_vq_core_log},
  {"vq.core.proc", luaopen_vq_core_proc},
  {"vq.core.base64", luaopen_vq_core_base64},
};

/* require "json" is require "vq.json", and so on. */
static int open_short_name(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  lua_getglobal(L, "require");
  lua_pushfstring(L, "vq.%s", name);
  lua_call(L, 1, 1);
  return 1;
}

void vq_open_modules(vq_runtime *rt) {
  for (size_t i = 0; i < sizeof core_modules / sizeof *core_modules; i++)
    vq_register(rt, core_modules[i].name, core_modules[i].open);
  static const char *const short_names[] = {"json", "yaml", "log"};
  for (size_t i = 0; i < sizeof short_names / sizeof *short_names; i++)
    vq_register(rt, short_names[i], open_short_name);
  vq_log_init(rt);
  vq_log_install_print(rt->L);
}
