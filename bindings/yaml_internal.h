/* What bindings/yaml.c and bindings/yaml_edit.c, one module in two files, share. */
#ifndef VQ_YAML_INTERNAL_H
#define VQ_YAML_INTERNAL_H

#include <stddef.h>

#include <lua.h>
#include <yaml.h>

typedef struct vq_yaml_parser vq_yaml_parser;
vq_yaml_parser *vq_yaml_parser_open(lua_State *L, const char *text, size_t len);
const yaml_event_t *vq_yaml_parser_next(vq_yaml_parser *p);
void vq_yaml_parser_close(vq_yaml_parser *p);
int vq_yaml_parser_error(lua_State *L, vq_yaml_parser *p, const char *file, const char *text,
                         size_t len);
int vq_yaml_error_at(lua_State *L, const char *file, yaml_mark_t mark, const char *message);
int vq_yaml_scan(lua_State *L);

#endif
