/* libFuzzer target: any bytes as a kubeconfig must give settings or a clear error, never a
 * crash, a hang or a sanitizer report. Build: cmake -DVQ_FUZZ=ON with clang. */
#include <stddef.h>
#include <stdint.h>

#include <lauxlib.h>

#include "vq.h"

/* A fuzzer calls this function millions of times: one runtime for the whole run. */
static vq_runtime *runtime;

static const char harness[] =
  "local config = require 'vq.kube.config'\n"
  "local text = ...\n"
  "local cfg = config.parse(text, 'fuzz.yaml')\n"
  "if cfg then config.from_config(cfg, {}) end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!runtime) runtime = vq_new(&(vq_options){.color = -1});
  lua_State *L = vq_lua(runtime);
  if (luaL_loadbuffer(L, harness, sizeof harness - 1, "=harness") != LUA_OK) __builtin_trap();
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    /* a Lua error on bad input is a bug too: the contract is nil, err */
    const char *msg = lua_tostring(L, -1);
    fprintf(stderr, "kubeconfig raised: %s\n", msg ? msg : "?");
    __builtin_trap();
  }
  lua_settop(L, 0);
  return 0;
}
