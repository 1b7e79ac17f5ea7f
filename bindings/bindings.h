/* The C modules the host registers (each bindings/x.c ends with its luaopen). */
#ifndef VQ_BINDINGS_H
#define VQ_BINDINGS_H

#include <lua.h>

int luaopen_vq_core_json(lua_State *L);
int luaopen_vq_core_yaml(lua_State *L);
int luaopen_vq_core_log(lua_State *L);
int luaopen_vq_core_proc(lua_State *L);
int luaopen_vq_core_base64(lua_State *L);

struct vq_runtime;
/* Colour, level and run id from the runtime's options. */
void vq_log_init(struct vq_runtime *rt);

/* Replace the global print with one that writes through the log (and its redaction). */
void vq_log_install_print(lua_State *L);

#endif
