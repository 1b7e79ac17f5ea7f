/* Error tables: {code=, message=, ...} with a readable tostring. */
#include <stdarg.h>
#include <stdio.h>

#include <lauxlib.h>

#include "internal.h"

#define ERROR_MT "vq.error"

static int error_tostring(lua_State *L) {
  lua_getfield(L, 1, "message");
  lua_getfield(L, 1, "code");
  const char *message = lua_tostring(L, -2);
  const char *code = lua_tostring(L, -1); /* a number converts: "not found (404)" */
  if (message && code) lua_pushfstring(L, "%s (%s)", message, code);
  else if (message) lua_pushstring(L, message);
  else lua_pushfstring(L, "error %s", code ? code : "?");
  return 1;
}

void vq_error_init(lua_State *L) {
  if (luaL_newmetatable(L, ERROR_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
}

static void push_error_va(lua_State *L, const char *code, const char *fmt, va_list ap) {
  lua_createtable(L, 0, 4);
  lua_pushstring(L, code);
  lua_setfield(L, -2, "code");
  lua_pushvfstring(L, fmt, ap);
  lua_setfield(L, -2, "message");
  luaL_setmetatable(L, ERROR_MT);
}

void vq_push_error_table(lua_State *L, const char *code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  push_error_va(L, code, fmt, ap);
  va_end(ap);
}

int vq_push_error(lua_State *L, const char *code, const char *fmt, ...) {
  va_list ap;
  lua_pushnil(L);
  va_start(ap, fmt);
  push_error_va(L, code, fmt, ap);
  va_end(ap);
  return 2;
}

const char *vq_describe_error(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (lua_istable(L, idx)) {
    luaL_tolstring(L, idx, NULL);
    lua_getfield(L, idx, "traceback");
    if (lua_isstring(L, -1)) {
      lua_pushliteral(L, "\n");
      lua_insert(L, -2);
      lua_concat(L, 3);
    } else {
      lua_pop(L, 1);
    }
    return lua_tostring(L, -1);
  }
  return luaL_tolstring(L, idx, NULL);
}

/* A message handler for lua_pcall: the message with a traceback. */
int vq_traceback_handler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = vq_describe_error(L, 1);
  luaL_traceback(L, L, msg, 1);
  return 1;
}
