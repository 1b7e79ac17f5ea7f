/* yaml: libyaml under the Lua API that scripts/lib/vq/yaml.lua builds the module on.
 *
 *   decode, decode_all   libyaml's events → Lua values: mappings and sequences marked by
 *                        metatables, plain scalars resolved by a schema, aliases copied
 *                        within a node budget (so "billion laughs" is an error, not an OOM)
 *   encode, encode_all   Lua values → libyaml's emitter: block style, sorted keys, strings
 *                        quoted when they would read back as another type
 *   render               one scalar as the emitter writes it in a given context (for edits)
 *   resolve, needs_quotes the schema, for the Lua layer's own decisions
 *   scan                 (yaml_edit.c) where each node sits in the text, in bytes
 *
 * Every libyaml object lives in a userdata whose __gc releases it, so a Lua error raised in
 * the middle (out of memory) leaks nothing; the normal paths release them at once. */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <yaml.h>

#include "bindings.h"
#include "vq.h"
#include "yaml_internal.h"

#define PARSER_MT "vq.yaml.parser"
#define EMITTER_MT "vq.yaml.emitter"
#define SEQUENCE_MT "vq.yaml.sequence"
#define MAPPING_MT "vq.yaml.mapping"
#define TAG_PREFIX "tag:yaml.org,2002:"
#define MESSAGE_SIZE 256

enum { SCHEMA_KUBERNETES, SCHEMA_CORE };
static const char *const schema_names[] = {"kubernetes", "core", NULL};

/* ---- options ---- */

static lua_Integer opt_integer(lua_State *L, int opts, const char *name, lua_Integer dflt) {
  if (!opts) return dflt;
  lua_getfield(L, opts, name);
  lua_Integer v = lua_isnil(L, -1) ? dflt : luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  return v;
}

static int opt_boolean(lua_State *L, int opts, const char *name) {
  if (!opts) return 0;
  lua_getfield(L, opts, name);
  int v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* A string option, kept alive by the options table. */
static const char *opt_string(lua_State *L, int opts, const char *name) {
  if (!opts) return NULL;
  lua_getfield(L, opts, name);
  const char *v = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
  lua_pop(L, 1);
  return v;
}

static int opt_schema(lua_State *L, int opts) {
  const char *name = opt_string(L, opts, "schema");
  if (!name) return SCHEMA_KUBERNETES;
  for (int i = 0; schema_names[i]; i++)
    if (strcmp(name, schema_names[i]) == 0) return i;
  return luaL_error(L, "unknown yaml schema '%s' (kubernetes or core)", name);
}

static int options_index(lua_State *L, int arg) {
  if (lua_isnoneornil(L, arg)) return 0;
  luaL_checktype(L, arg, LUA_TTABLE);
  return arg;
}

/* ---- errors ---- */

/* nil, {code = "yaml", message = "file:line:col: ...", file =, line =, column =}. */
static int push_error_at(lua_State *L, const char *file, size_t line, size_t column,
                         const char *message) {
  if (file)
    vq_push_error(L, "yaml", "%s:%d:%d: %s", file, (int)line, (int)column, message);
  else
    vq_push_error(L, "yaml", "line %d, column %d: %s", (int)line, (int)column, message);
  if (file) {
    lua_pushstring(L, file);
    lua_setfield(L, -2, "file");
  }
  lua_pushinteger(L, (lua_Integer)line);
  lua_setfield(L, -2, "line");
  lua_pushinteger(L, (lua_Integer)column);
  lua_setfield(L, -2, "column");
  return 2;
}

int vq_yaml_error_at(lua_State *L, const char *file, yaml_mark_t mark, const char *message) {
  return push_error_at(L, file, mark.line + 1, mark.column + 1, message);
}

/* ---- the parser, released by __gc whatever happens ---- */

struct vq_yaml_parser {
  yaml_parser_t parser;
  yaml_event_t event;
  int has_parser, has_event;
};

void vq_yaml_parser_close(vq_yaml_parser *p) {
  if (p->has_event) yaml_event_delete(&p->event);
  if (p->has_parser) yaml_parser_delete(&p->parser);
  p->has_event = p->has_parser = 0;
}

static int parser_gc(lua_State *L) {
  vq_yaml_parser_close(luaL_checkudata(L, 1, PARSER_MT));
  return 0;
}

/* Pushes the parser's userdata; text must stay alive (on the stack) while it is used. */
vq_yaml_parser *vq_yaml_parser_open(lua_State *L, const char *text, size_t len) {
  vq_yaml_parser *p = lua_newuserdatauv(L, sizeof *p, 0);
  memset(p, 0, sizeof *p);
  luaL_setmetatable(L, PARSER_MT);
  if (!yaml_parser_initialize(&p->parser)) luaL_error(L, "out of memory");
  p->has_parser = 1;
  yaml_parser_set_input_string(&p->parser, (const unsigned char *)text, len);
  return p;
}

/* The next event, or NULL on a parse error; the previous event is released. */
const yaml_event_t *vq_yaml_parser_next(vq_yaml_parser *p) {
  if (p->has_event) yaml_event_delete(&p->event);
  p->has_event = 0;
  if (!yaml_parser_parse(&p->parser, &p->event)) return NULL;
  p->has_event = 1;
  return &p->event;
}

/* A reader error has a byte offset, not a mark: count lines and characters to it. */
static void offset_position(const char *text, size_t len, size_t offset, size_t *line,
                            size_t *column) {
  *line = 1;
  *column = 1;
  for (size_t i = 0; i < offset && i < len; i++) {
    unsigned char c = (unsigned char)text[i];
    if (c == '\n') {
      (*line)++;
      *column = 1;
    } else if ((c & 0xC0) != 0x80) {
      (*column)++;
    }
  }
}

int vq_yaml_parser_error(lua_State *L, vq_yaml_parser *p, const char *file, const char *text,
                         size_t len) {
  const yaml_parser_t *parser = &p->parser;
  char message[MESSAGE_SIZE];
  const char *problem = parser->problem ? parser->problem : "invalid YAML";
  if (parser->error == YAML_MEMORY_ERROR) return luaL_error(L, "out of memory");
  if (parser->error == YAML_READER_ERROR) {
    size_t line, column;
    offset_position(text, len, parser->problem_offset, &line, &column);
    return push_error_at(L, file, line, column, problem);
  }
  if (parser->context)
    snprintf(message, sizeof message, "%s (%s at line %d, column %d)", problem, parser->context,
             (int)parser->context_mark.line + 1, (int)parser->context_mark.column + 1);
  else
    snprintf(message, sizeof message, "%s", problem);
  return vq_yaml_error_at(L, file, parser->problem_mark, message);
}

/* ---- the schema: what a plain scalar means ---- */

typedef enum { R_STRING, R_NULL, R_BOOL, R_INT, R_FLOAT } resolved_type;

typedef struct resolved {
  resolved_type type;
  int boolean;
  lua_Integer integer;
  double number;
} resolved;

static const char *const null_words[] = {"~", "null", "Null", "NULL", NULL};
static const char *const core_true[] = {"true", "True", "TRUE", NULL};
static const char *const core_false[] = {"false", "False", "FALSE", NULL};
/* YAML 1.1 as go-yaml v2 reads it, and so Kubernetes and Helm (sigs.k8s.io/yaml). */
static const char *const yaml11_true[] = {"y",    "Y",    "yes", "Yes", "YES", "true",
                                          "True", "TRUE", "on",  "On",  "ON",  NULL};
static const char *const yaml11_false[] = {"n",     "N",     "no",  "No",  "NO",  "false",
                                           "False", "FALSE", "off", "Off", "OFF", NULL};
static const char *const inf_words[] = {".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", NULL};
static const char *const negative_inf_words[] = {"-.inf", "-.Inf", "-.INF", NULL};
static const char *const nan_words[] = {".nan", ".NaN", ".NAN", NULL};

static int in_list(const char *s, size_t len, const char *const *list) {
  for (; *list; list++)
    if (strlen(*list) == len && memcmp(*list, s, len) == 0) return 1;
  return 0;
}

static int is_digit_in(int c, int base) {
  if (base == 16) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
  return c >= '0' && c < '0' + base;
}

static int digit_value(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  return (c | 0x20) - 'a' + 10;
}

/* At least one digit, all of base, and no overflow of 64 bits. */
static int parse_digits(const char *s, int base, unsigned long long *out) {
  unsigned long long v = 0;
  if (!*s) return 0;
  for (; *s; s++) {
    if (!is_digit_in((unsigned char)*s, base)) return 0;
    unsigned d = (unsigned)digit_value((unsigned char)*s);
    if (v > (ULLONG_MAX - d) / (unsigned)base) return 0;
    v = v * (unsigned)base + d;
  }
  *out = v;
  return 1;
}

static int set_integer(resolved *r, int negative, unsigned long long u) {
  if (negative) {
    if (u > (unsigned long long)LLONG_MAX + 1) return 0;
    r->integer = u == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN : -(long long)u;
    r->type = R_INT;
  } else if (u <= (unsigned long long)LLONG_MAX) {
    r->integer = (lua_Integer)u;
    r->type = R_INT;
  } else {
    r->number = (double)u; /* a uint64 that Lua's integers cannot hold */
    r->type = R_FLOAT;
  }
  return 1;
}

/* Go's strconv.ParseInt(s, 0, 64), as go-yaml v2 uses it: 0x, 0o, 0b, and a leading 0 is octal. */
static int parse_go_integer(const char *s, resolved *r) {
  int negative = 0, base = 10;
  if (*s == '+' || *s == '-') negative = *s++ == '-';
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) base = 16, s += 2;
  else if (s[0] == '0' && (s[1] == 'o' || s[1] == 'O')) base = 8, s += 2;
  else if (s[0] == '0' && (s[1] == 'b' || s[1] == 'B')) base = 2, s += 2;
  else if (s[0] == '0' && s[1]) base = 8, s += 1;
  unsigned long long u;
  return parse_digits(s, base, &u) && set_integer(r, negative, u);
}

/* YAML 1.2 core: [-+]?[0-9]+, 0o[0-7]+, 0x[0-9a-fA-F]+. */
static int parse_core_integer(const char *s, resolved *r) {
  unsigned long long u;
  if (s[0] == '0' && s[1] == 'o') return parse_digits(s + 2, 8, &u) && set_integer(r, 0, u);
  if (s[0] == '0' && s[1] == 'x') return parse_digits(s + 2, 16, &u) && set_integer(r, 0, u);
  int negative = 0;
  if (*s == '+' || *s == '-') negative = *s++ == '-';
  return parse_digits(s, 10, &u) && set_integer(r, negative, u);
}

static const char *skip_digits(const char *s) {
  while (*s >= '0' && *s <= '9') s++;
  return s;
}

/* ^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$ */
static int is_float_syntax(const char *s) {
  if (*s == '+' || *s == '-') s++;
  if (*s == '.') {
    const char *end = skip_digits(s + 1);
    if (end == s + 1) return 0;
    s = end;
  } else {
    const char *end = skip_digits(s);
    if (end == s) return 0;
    s = end;
    if (*s == '.') s = skip_digits(s + 1);
  }
  if (*s == 'e' || *s == 'E') {
    s++;
    if (*s == '+' || *s == '-') s++;
    const char *end = skip_digits(s);
    if (end == s) return 0;
    s = end;
  }
  return *s == '\0';
}

/* The value of a syntax-checked decimal float, through Lua's locale-proof conversion. A value
 * out of range is not a float (go-yaml reads "1e400" as a string). */
static int parse_float(lua_State *L, const char *s, resolved *r) {
  if (!lua_stringtonumber(L, s)) return 0;
  double d = (double)lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (isinf(d)) return 0;
  r->number = d;
  r->type = R_FLOAT;
  return 1;
}

static int resolve_words(const char *s, size_t len, int schema, resolved *r) {
  const char *const *true_words = schema == SCHEMA_CORE ? core_true : yaml11_true;
  const char *const *false_words = schema == SCHEMA_CORE ? core_false : yaml11_false;
  if (len == 0 || in_list(s, len, null_words)) r->type = R_NULL;
  else if (in_list(s, len, true_words)) r->type = R_BOOL, r->boolean = 1;
  else if (in_list(s, len, false_words)) r->type = R_BOOL, r->boolean = 0;
  else if (in_list(s, len, inf_words)) r->type = R_FLOAT, r->number = HUGE_VAL;
  else if (in_list(s, len, negative_inf_words)) r->type = R_FLOAT, r->number = -HUGE_VAL;
  else if (in_list(s, len, nan_words)) r->type = R_FLOAT, r->number = NAN;
  else return 0;
  return 1;
}

/* Numbers longer than this are read as strings (no real file has one). */
#define NUMBER_MAX 128

static void resolve_kubernetes_number(lua_State *L, const char *s, size_t len, resolved *r) {
  char plain[NUMBER_MAX + 1];
  size_t n = 0;
  if (s[0] == '.') { /* go-yaml: strconv.ParseFloat on the text as it is */
    memcpy(plain, s, len);
    plain[len] = '\0';
    if (is_float_syntax(plain)) parse_float(L, plain, r);
    return;
  }
  for (size_t i = 0; i < len; i++)
    if (s[i] != '_') plain[n++] = s[i];
  plain[n] = '\0';
  if (parse_go_integer(plain, r)) return;
  if (is_float_syntax(plain)) parse_float(L, plain, r);
}

static void resolve_core_number(lua_State *L, const char *s, size_t len, resolved *r) {
  char text[NUMBER_MAX + 1];
  memcpy(text, s, len);
  text[len] = '\0';
  if (parse_core_integer(text, r)) return;
  if (is_float_syntax(text)) parse_float(L, text, r);
}

static void resolve_plain(lua_State *L, const char *s, size_t len, int schema, resolved *r) {
  memset(r, 0, sizeof *r);
  r->type = R_STRING;
  if (resolve_words(s, len, schema, r)) return;
  if (len == 0 || len > NUMBER_MAX || memchr(s, '\0', len)) return;
  int c = (unsigned char)s[0];
  if (!((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.')) return;
  if (schema == SCHEMA_CORE) resolve_core_number(L, s, len, r);
  else resolve_kubernetes_number(L, s, len, r);
}

/* YYYY-M-D...: a timestamp to YAML 1.1 readers. */
static int looks_like_date(const char *s, size_t len) {
  if (len < 8) return 0;
  for (int i = 0; i < 4; i++)
    if (s[i] < '0' || s[i] > '9') return 0;
  return s[4] == '-' && s[5] >= '0' && s[5] <= '9';
}

/* [-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?: a base-60 number to YAML 1.1 readers. */
static int looks_like_base60(const char *s, size_t len) {
  size_t i = 0;
  if (i < len && (s[i] == '+' || s[i] == '-')) i++;
  if (i >= len || s[i] < '0' || s[i] > '9') return 0;
  while (i < len && ((s[i] >= '0' && s[i] <= '9') || s[i] == '_')) i++;
  int groups = 0;
  while (i < len && s[i] == ':') {
    size_t start = ++i;
    while (i < len && s[i] >= '0' && s[i] <= '9' && i - start < 2) i++;
    if (i == start) return 0;
    groups++;
  }
  if (i < len && s[i] == '.')
    for (i++; i < len && ((s[i] >= '0' && s[i] <= '9') || s[i] == '_'); i++) {}
  return groups > 0 && i == len;
}

/* Would this string, written plain, read back as something else to either schema or to a
 * YAML 1.1 reader (timestamps, base 60, the merge key, the value key "=")? */
static int needs_quotes(lua_State *L, const char *s, size_t len) {
  resolved r;
  resolve_plain(L, s, len, SCHEMA_KUBERNETES, &r);
  if (r.type != R_STRING) return 1;
  resolve_plain(L, s, len, SCHEMA_CORE, &r);
  if (r.type != R_STRING) return 1;
  if ((len == 2 && memcmp(s, "<<", 2) == 0) || (len == 1 && s[0] == '=')) return 1;
  return looks_like_date(s, len) || looks_like_base60(s, len);
}

static void push_null(lua_State *L) { lua_pushlightuserdata(L, NULL); }

static int is_null(lua_State *L, int idx) {
  return lua_islightuserdata(L, idx) && lua_touserdata(L, idx) == NULL;
}

static void push_resolved(lua_State *L, const resolved *r, const char *s, size_t len) {
  switch (r->type) {
    case R_NULL: push_null(L); break;
    case R_BOOL: lua_pushboolean(L, r->boolean); break;
    case R_INT: lua_pushinteger(L, r->integer); break;
    case R_FLOAT: lua_pushnumber(L, (lua_Number)r->number); break;
    default: lua_pushlstring(L, s, len); break;
  }
}

/* resolve(text [, schema]) → the value a plain scalar with this text has. */
static int l_resolve(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  int schema = luaL_checkoption(L, 2, "kubernetes", schema_names);
  resolved r;
  resolve_plain(L, s, len, schema, &r);
  push_resolved(L, &r, s, len);
  return 1;
}

static int l_needs_quotes(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  lua_pushboolean(L, needs_quotes(L, s, len));
  return 1;
}

/* ---- decode ---- */

typedef struct decoder {
  lua_State *L;
  vq_yaml_parser *parser;
  const char *file;
  const char *text;
  size_t len;
  int schema;
  int max_depth;
  lua_Integer alias_limit, alias_budget; /* nodes that aliases may expand to, and what is left */
  int anchors;              /* stack index: name → {value, nodes, height, key text} */
  int sequence_mt, mapping_mt;
  /* the first error, reported once the stack is unwound */
  int parse_failed;
  char message[MESSAGE_SIZE];
  yaml_mark_t mark;
} decoder;

/* How big a decoded node is: to charge aliases for what they expand to. */
typedef struct shape {
  lua_Integer nodes;
  int height;
} shape;

static int decode_fail(decoder *d, yaml_mark_t mark, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(d->message, sizeof d->message, fmt, ap);
  va_end(ap);
  d->mark = mark;
  return 0;
}

static const yaml_event_t *decode_next(decoder *d) {
  const yaml_event_t *ev = vq_yaml_parser_next(d->parser);
  if (!ev) d->parse_failed = 1;
  return ev;
}

static const yaml_event_t *current(decoder *d) { return &d->parser->event; }

static void add_nodes(shape *total, const shape *part) {
  total->nodes = part->nodes > LUA_MAXINTEGER - total->nodes ? LUA_MAXINTEGER
                                                              : total->nodes + part->nodes;
  if (part->height + 1 > total->height) total->height = part->height + 1;
}

static int tag_is(const char *tag, const char *name) {
  return tag && strncmp(tag, TAG_PREFIX, sizeof TAG_PREFIX - 1) == 0 &&
         strcmp(tag + sizeof TAG_PREFIX - 1, name) == 0;
}

/* A scalar with an explicit !!int, !!float, !!bool or !!null tag. */
static int push_tagged_scalar(decoder *d, const yaml_event_t *ev, const char *tag) {
  const char *s = (const char *)ev->data.scalar.value;
  size_t len = ev->data.scalar.length;
  resolved r;
  resolve_plain(d->L, s, len, d->schema, &r);
  if (tag_is(tag, "float") && r.type == R_INT) r.type = R_FLOAT, r.number = (double)r.integer;
  int ok = (tag_is(tag, "int") && r.type == R_INT) || (tag_is(tag, "float") && r.type == R_FLOAT) ||
           (tag_is(tag, "bool") && r.type == R_BOOL) || (tag_is(tag, "null") && r.type == R_NULL);
  if (!ok)
    return decode_fail(d, ev->start_mark, "cannot read '%.40s' as !!%s", s,
                       tag + sizeof TAG_PREFIX - 1);
  push_resolved(d->L, &r, s, len);
  return 1;
}

/* Untagged plain scalars are resolved; quoted ones are strings, and so are scalars with any
 * other tag (!!str, "!", !!binary, !custom), as go-yaml reads them. */
static int push_scalar(decoder *d, const yaml_event_t *ev) {
  const char *s = (const char *)ev->data.scalar.value;
  size_t len = ev->data.scalar.length;
  const char *tag = (const char *)ev->data.scalar.tag;
  if (tag_is(tag, "int") || tag_is(tag, "float") || tag_is(tag, "bool") || tag_is(tag, "null"))
    return push_tagged_scalar(d, ev, tag);
  if (tag || ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) {
    lua_pushlstring(d->L, s, len);
    return 1;
  }
  resolved r;
  resolve_plain(d->L, s, len, d->schema, &r);
  push_resolved(d->L, &r, s, len);
  return 1;
}

/* anchors[name] = {value, nodes, height, key text}; the value is on top of the stack. */
static void remember_anchor(decoder *d, const char *name, const shape *sh, const char *text,
                            size_t len) {
  lua_State *L = d->L;
  lua_createtable(L, 4, 0);
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, 1);
  lua_pushinteger(L, sh->nodes);
  lua_rawseti(L, -2, 2);
  lua_pushinteger(L, sh->height);
  lua_rawseti(L, -2, 3);
  if (text) {
    lua_pushlstring(L, text, len);
    lua_rawseti(L, -2, 4);
  }
  lua_setfield(L, d->anchors, name);
}

static void copy_value(lua_State *L, int idx);

static void copy_table(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 6, "yaml: nesting too deep");
  lua_createtable(L, (int)lua_rawlen(L, idx), 0);
  if (lua_getmetatable(L, idx)) lua_setmetatable(L, -2);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pushvalue(L, -2);
    copy_value(L, -2);
    lua_rawset(L, -5);
    lua_pop(L, 1);
  }
}

/* Push a copy: aliases expand into trees, as Kubernetes sees them, never shared tables. */
static void copy_value(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TTABLE) copy_table(L, idx);
  else lua_pushvalue(L, idx);
}

/* Looks up the anchor an alias names; pushes its entry. */
static int find_anchor(decoder *d, const yaml_event_t *ev) {
  const char *name = (const char *)ev->data.alias.anchor;
  if (lua_getfield(d->L, d->anchors, name) != LUA_TTABLE) {
    lua_pop(d->L, 1);
    return decode_fail(d, ev->start_mark, "unknown anchor *%.60s", name);
  }
  return 1;
}

static lua_Integer entry_integer(lua_State *L, int entry, int i) {
  lua_rawgeti(L, entry, i);
  lua_Integer v = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return v;
}

static int decode_alias(decoder *d, int depth, shape *out) {
  lua_State *L = d->L;
  const yaml_event_t *ev = current(d);
  if (!find_anchor(d, ev)) return 0;
  int entry = lua_gettop(L);
  out->nodes = entry_integer(L, entry, 2);
  out->height = (int)entry_integer(L, entry, 3);
  if (out->nodes > d->alias_budget)
    return decode_fail(d, ev->start_mark,
                       "aliases expand to more than %lld nodes (max_alias_nodes)",
                       (long long)d->alias_limit);
  d->alias_budget -= out->nodes;
  if (depth + out->height > d->max_depth)
    return decode_fail(d, ev->start_mark, "alias *%.60s nests deeper than %d levels",
                       (const char *)ev->data.alias.anchor, d->max_depth);
  lua_rawgeti(L, entry, 1);
  copy_value(L, -1);
  lua_replace(L, entry);
  lua_pop(L, 1);
  return 1;
}

static int decode_node(decoder *d, int depth, shape *out);

/* Push the anchor name of a collection start (or nil): it is remembered at the end. */
static void push_anchor_name(decoder *d, const yaml_char_t *anchor) {
  if (anchor) lua_pushstring(d->L, (const char *)anchor);
  else lua_pushnil(d->L);
}

static int check_depth(decoder *d, int depth) {
  if (depth < d->max_depth) return 1;
  return decode_fail(d, current(d)->start_mark, "nesting deeper than %d levels", d->max_depth);
}

static int decode_sequence(decoder *d, int depth, shape *out) {
  lua_State *L = d->L;
  if (!check_depth(d, depth)) return 0;
  luaL_checkstack(L, 8, "yaml: nesting too deep");
  push_anchor_name(d, current(d)->data.sequence_start.anchor);
  lua_newtable(L);
  lua_pushvalue(L, d->sequence_mt);
  lua_setmetatable(L, -2);
  *out = (shape){1, 0};
  for (lua_Integer i = 1;; i++) {
    const yaml_event_t *ev = decode_next(d);
    if (!ev) return 0;
    if (ev->type == YAML_SEQUENCE_END_EVENT) break;
    shape item;
    if (!decode_node(d, depth + 1, &item)) return 0;
    lua_rawseti(L, -2, i);
    add_nodes(out, &item);
  }
  if (!lua_isnil(L, -2)) remember_anchor(d, lua_tostring(L, -2), out, NULL, 0);
  lua_remove(L, -2);
  return 1;
}

/* A mapping key: its text (keys are strings, as written), pushed. Pushes nothing and sets
 * *merge for the merge key "<<". */
static int decode_key(decoder *d, int *merge) {
  lua_State *L = d->L;
  const yaml_event_t *ev = current(d);
  *merge = 0;
  if (ev->type == YAML_ALIAS_EVENT) {
    if (!find_anchor(d, ev)) return 0;
    if (lua_rawgeti(L, -1, 4) != LUA_TSTRING)
      return decode_fail(d, ev->start_mark, "mapping keys must be scalars (*%.60s is not)",
                         (const char *)ev->data.alias.anchor);
    lua_remove(L, -2);
    return 1;
  }
  if (ev->type != YAML_SCALAR_EVENT)
    return decode_fail(d, ev->start_mark, "mapping keys must be scalars");
  const char *s = (const char *)ev->data.scalar.value;
  size_t len = ev->data.scalar.length;
  const char *tag = (const char *)ev->data.scalar.tag;
  int plain = !tag && ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
  if (tag_is(tag, "merge") || (plain && len == 2 && memcmp(s, "<<", 2) == 0)) {
    *merge = 1;
    return 1;
  }
  if (ev->data.scalar.anchor) {
    if (!push_scalar(d, ev)) return 0;
    remember_anchor(d, (const char *)ev->data.scalar.anchor, &(shape){1, 0}, s, len);
    lua_pop(L, 1);
  }
  lua_pushlstring(L, s, len);
  return 1;
}

static int is_marked(lua_State *L, int idx, int mt) {
  if (!lua_istable(L, idx) || !lua_getmetatable(L, idx)) return 0;
  int same = lua_rawequal(L, -1, mt);
  lua_pop(L, 1);
  return same;
}

/* "<<: *base" or "<<: [*a, *b]": the value on top is added to the merges list below. */
static int collect_merge(decoder *d, int merges, yaml_mark_t mark) {
  lua_State *L = d->L;
  int value = lua_gettop(L);
  if (is_marked(L, value, d->sequence_mt)) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, value);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, value, i);
      int ok = is_marked(L, -1, d->mapping_mt);
      lua_pop(L, 1);
      if (!ok) return decode_fail(d, mark, "a merge (<<) takes a mapping or a list of mappings");
    }
  } else if (!is_marked(L, value, d->mapping_mt)) {
    return decode_fail(d, mark, "a merge (<<) takes a mapping or a list of mappings");
  }
  if (lua_isnil(L, merges)) {
    lua_newtable(L);
    lua_replace(L, merges);
  }
  lua_rawseti(L, merges, (lua_Integer)lua_rawlen(L, merges) + 1);
  return 1;
}

static void merge_missing_keys(lua_State *L, int map, int source) {
  lua_pushnil(L);
  while (lua_next(L, source)) {
    lua_pushvalue(L, -2);
    if (lua_rawget(L, map) == LUA_TNIL) {
      lua_pushvalue(L, -3);
      lua_pushvalue(L, -3);
      lua_rawset(L, map);
    }
    lua_pop(L, 2);
  }
}

/* Keys written in the mapping win over merged ones; earlier merges win over later ones. */
static void apply_merges(decoder *d, int map, int merges) {
  lua_State *L = d->L;
  lua_Integer n = (lua_Integer)lua_rawlen(L, merges);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, merges, i);
    int source = lua_gettop(L);
    if (is_marked(L, source, d->mapping_mt)) {
      merge_missing_keys(L, map, source);
    } else {
      lua_Integer m = (lua_Integer)lua_rawlen(L, source);
      for (lua_Integer j = 1; j <= m; j++) {
        lua_rawgeti(L, source, j);
        merge_missing_keys(L, map, lua_gettop(L));
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  }
}

static int decode_entry(decoder *d, int map, int merges, int depth, shape *out) {
  lua_State *L = d->L;
  yaml_mark_t key_mark = current(d)->start_mark;
  int merge;
  if (!decode_key(d, &merge)) return 0;
  if (!merge) {
    lua_pushvalue(L, -1);
    if (lua_rawget(L, map) != LUA_TNIL)
      return decode_fail(d, key_mark, "duplicate key '%.80s'", lua_tostring(L, -2));
    lua_pop(L, 1);
  }
  shape value;
  if (!decode_next(d) || !decode_node(d, depth + 1, &value)) return 0;
  add_nodes(out, &value);
  if (merge) return collect_merge(d, merges, key_mark);
  lua_rawset(L, map);
  return 1;
}

static int decode_mapping(decoder *d, int depth, shape *out) {
  lua_State *L = d->L;
  if (!check_depth(d, depth)) return 0;
  luaL_checkstack(L, 12, "yaml: nesting too deep");
  push_anchor_name(d, current(d)->data.mapping_start.anchor);
  lua_pushnil(L); /* merges */
  int merges = lua_gettop(L);
  lua_newtable(L);
  int map = lua_gettop(L);
  lua_pushvalue(L, d->mapping_mt);
  lua_setmetatable(L, map);
  *out = (shape){1, 0};
  for (;;) {
    const yaml_event_t *ev = decode_next(d);
    if (!ev) return 0;
    if (ev->type == YAML_MAPPING_END_EVENT) break;
    if (!decode_entry(d, map, merges, depth, out)) return 0;
  }
  if (!lua_isnil(L, merges)) apply_merges(d, map, merges);
  if (!lua_isnil(L, map - 2)) remember_anchor(d, lua_tostring(L, map - 2), out, NULL, 0);
  lua_replace(L, map - 2);
  lua_pop(L, 1);
  return 1;
}

/* The current event starts a node: push its value, consuming the node's events. */
static int decode_node(decoder *d, int depth, shape *out) {
  const yaml_event_t *ev = current(d);
  switch (ev->type) {
    case YAML_SCALAR_EVENT:
      *out = (shape){1, 0};
      if (!push_scalar(d, ev)) return 0;
      if (ev->data.scalar.anchor)
        remember_anchor(d, (const char *)ev->data.scalar.anchor, out,
                        (const char *)ev->data.scalar.value, ev->data.scalar.length);
      return 1;
    case YAML_ALIAS_EVENT: return decode_alias(d, depth, out);
    case YAML_SEQUENCE_START_EVENT: return decode_sequence(d, depth, out);
    case YAML_MAPPING_START_EVENT: return decode_mapping(d, depth, out);
    default: return decode_fail(d, ev->start_mark, "unexpected event %d", (int)ev->type);
  }
}

/* After DOCUMENT-START: push the document's value, consume DOCUMENT-END. Each document has
 * its own anchors. */
static int decode_document(decoder *d) {
  lua_State *L = d->L;
  lua_newtable(L);
  d->anchors = lua_gettop(L);
  shape sh;
  if (!decode_next(d) || !decode_node(d, 0, &sh)) return 0;
  if (!decode_next(d)) return 0;
  lua_remove(L, d->anchors);
  return 1;
}

/* Push the first document (all = 0) or the list of documents. */
static int decode_stream(decoder *d, int all) {
  lua_State *L = d->L;
  const yaml_event_t *ev = decode_next(d);
  if (!ev) return 0;
  if (all) {
    lua_newtable(L);
    lua_pushvalue(L, d->sequence_mt);
    lua_setmetatable(L, -2);
  }
  for (lua_Integer n = 1;; n++) {
    ev = decode_next(d);
    if (!ev) return 0;
    if (ev->type == YAML_STREAM_END_EVENT) break;
    if (!decode_document(d)) return 0;
    if (!all) return 1;
    lua_rawseti(L, -2, n);
  }
  if (!all) push_null(L); /* an empty stream */
  return 1;
}

static void decoder_init(lua_State *L, decoder *d, int opts) {
  memset(d, 0, sizeof *d);
  d->L = L;
  d->text = luaL_checklstring(L, 1, &d->len);
  d->file = opt_string(L, opts, "file");
  d->schema = opt_schema(L, opts);
  d->max_depth = (int)opt_integer(L, opts, "max_depth", 512);
  d->alias_limit = d->alias_budget = opt_integer(L, opts, "max_alias_nodes", 1000000);
  luaL_getmetatable(L, SEQUENCE_MT);
  d->sequence_mt = lua_gettop(L);
  luaL_getmetatable(L, MAPPING_MT);
  d->mapping_mt = lua_gettop(L);
}

static int decode_with(lua_State *L, int all) {
  decoder d;
  decoder_init(L, &d, options_index(L, 2));
  d.parser = vq_yaml_parser_open(L, d.text, d.len);
  int base = lua_gettop(L); /* the parser stays on the stack, so alive, until we return */
  if (decode_stream(&d, all)) {
    vq_yaml_parser_close(d.parser);
    return 1;
  }
  lua_settop(L, base);
  int n = d.parse_failed ? vq_yaml_parser_error(L, d.parser, d.file, d.text, d.len)
                         : vq_yaml_error_at(L, d.file, d.mark, d.message);
  vq_yaml_parser_close(d.parser);
  return n;
}

static int l_decode(lua_State *L) { return decode_with(L, 0); }
static int l_decode_all(lua_State *L) { return decode_with(L, 1); }

/* ---- the emitter, released by __gc whatever happens ---- */

typedef struct emit_box {
  yaml_emitter_t emitter;
  int has_emitter;
  char *out;
  size_t len, cap;
} emit_box;

static void emit_box_close(emit_box *b) {
  if (b->has_emitter) yaml_emitter_delete(&b->emitter);
  free(b->out);
  b->has_emitter = 0;
  b->out = NULL;
  b->len = b->cap = 0;
}

static int emitter_gc(lua_State *L) {
  emit_box_close(luaL_checkudata(L, 1, EMITTER_MT));
  return 0;
}

static int emit_write(void *data, unsigned char *bytes, size_t size) {
  emit_box *b = data;
  if (size > b->cap - b->len) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < size) {
      if (cap > SIZE_MAX / 2) return 0;
      cap *= 2;
    }
    char *out = realloc(b->out, cap);
    if (!out) return 0;
    b->out = out;
    b->cap = cap;
  }
  memcpy(b->out + b->len, bytes, size);
  b->len += size;
  return 1;
}

static emit_box *emit_box_open(lua_State *L, int indent) {
  emit_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  memset(b, 0, sizeof *b);
  luaL_setmetatable(L, EMITTER_MT);
  if (!yaml_emitter_initialize(&b->emitter)) luaL_error(L, "out of memory");
  b->has_emitter = 1;
  yaml_emitter_set_output(&b->emitter, emit_write, b);
  yaml_emitter_set_unicode(&b->emitter, 1);
  yaml_emitter_set_width(&b->emitter, -1); /* never fold a long line: diffs stay small */
  yaml_emitter_set_indent(&b->emitter, indent);
  yaml_emitter_set_break(&b->emitter, YAML_LN_BREAK);
  return b;
}

/* ---- encode ---- */

typedef struct encoder {
  lua_State *L;
  emit_box *box;
  int flow;
  int max_depth;
  int visiting;    /* stack index: tables being emitted, to refuse cycles */
  int order;       /* stack index: key → rank, or 0 */
  int sequence_mt, mapping_mt;
  int extra_sequence_mts; /* stack index: a list of other metatables that mark sequences, or 0 */
  char message[MESSAGE_SIZE];
} encoder;

static int encode_fail(encoder *e, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->message, sizeof e->message, fmt, ap);
  va_end(ap);
  return 0;
}

/* The emitter takes the event and frees it, whether or not it succeeds. */
static int emit(encoder *e, yaml_event_t *ev) {
  if (yaml_emitter_emit(&e->box->emitter, ev)) return 1;
  const char *problem = e->box->emitter.problem;
  return encode_fail(e, "%s", problem ? problem : "out of memory");
}

static int emit_scalar(encoder *e, const char *s, size_t len, yaml_scalar_style_t style) {
  yaml_event_t ev;
  if (len > INT_MAX) return encode_fail(e, "a string is too long");
  if (!yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)len, 1, 1, style))
    return encode_fail(e, "a string is not valid UTF-8");
  return emit(e, &ev);
}

/* Strings that would read back as another type are double-quoted; multi-line ones are literal
 * blocks; the rest is left to libyaml, which writes them plain when it can. */
static yaml_scalar_style_t string_style(lua_State *L, const char *s, size_t len) {
  if (needs_quotes(L, s, len)) return YAML_DOUBLE_QUOTED_SCALAR_STYLE;
  if (memchr(s, '\n', len)) return YAML_LITERAL_SCALAR_STYLE;
  return YAML_ANY_SCALAR_STYLE;
}

/* The shortest text that reads back as the same float, and reads as a float (1.0, not 1). */
static void format_float(lua_State *L, double d, char *buf, size_t size) {
  if (isnan(d)) {
    snprintf(buf, size, ".nan");
    return;
  }
  if (isinf(d)) {
    snprintf(buf, size, d > 0 ? ".inf" : "-.inf");
    return;
  }
  for (int precision = 15; precision <= 17; precision++) {
    snprintf(buf, size, "%.*g", precision, d);
    for (char *p = buf; *p; p++)
      if (*p == ',') *p = '.'; /* a locale's decimal comma */
    if (lua_stringtonumber(L, buf)) {
      int same = (double)lua_tonumber(L, -1) == d;
      lua_pop(L, 1);
      if (same) break;
    }
  }
  if (!strpbrk(buf, ".e")) strncat(buf, ".0", size - strlen(buf) - 1);
}

static void format_number(lua_State *L, int idx, char *buf, size_t size) {
  if (lua_isinteger(L, idx)) snprintf(buf, size, LUA_INTEGER_FMT, lua_tointeger(L, idx));
  else format_float(L, (double)lua_tonumber(L, idx), buf, size);
}

static int emit_plain(encoder *e, const char *s) {
  return emit_scalar(e, s, strlen(s), YAML_PLAIN_SCALAR_STYLE);
}

static int emit_string(encoder *e, int idx, int forced_style) {
  size_t len;
  const char *s = lua_tolstring(e->L, idx, &len);
  yaml_scalar_style_t style = forced_style >= 0 ? (yaml_scalar_style_t)forced_style
                                                : string_style(e->L, s, len);
  return emit_scalar(e, s, len, style);
}

/* Booleans, numbers, strings and null: what can also be a key. */
static int emit_simple(encoder *e, int idx, int forced_style) {
  char buf[64];
  switch (lua_type(e->L, idx)) {
    case LUA_TNIL: return emit_plain(e, "null");
    case LUA_TBOOLEAN: return emit_plain(e, lua_toboolean(e->L, idx) ? "true" : "false");
    case LUA_TNUMBER:
      format_number(e->L, idx, buf, sizeof buf);
      return emit_plain(e, buf);
    case LUA_TSTRING: return emit_string(e, idx, forced_style);
    default:
      if (is_null(e->L, idx)) return emit_plain(e, "null");
      return encode_fail(e, "cannot encode a %s", luaL_typename(e->L, idx));
  }
}

enum { KIND_MAPPING, KIND_SEQUENCE };

static int metatable_marks_sequence(encoder *e, int mt) {
  lua_State *L = e->L;
  if (lua_rawequal(L, mt, e->sequence_mt)) return KIND_SEQUENCE;
  if (!e->extra_sequence_mts) return 0;
  lua_Integer n = (lua_Integer)lua_rawlen(L, e->extra_sequence_mts);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, e->extra_sequence_mts, i);
    int same = lua_rawequal(L, -1, mt);
    lua_pop(L, 1);
    if (same) return 1;
  }
  return 0;
}

/* A marked table is what its mark says; otherwise keys 1..n (n > 0) make a sequence, and
 * anything else (the empty table too) a mapping. */
static int table_kind(encoder *e, int idx) {
  lua_State *L = e->L;
  if (lua_getmetatable(L, idx)) {
    int mt = lua_gettop(L);
    int kind = metatable_marks_sequence(e, mt) ? KIND_SEQUENCE
               : lua_rawequal(L, mt, e->mapping_mt) ? KIND_MAPPING : -1;
    lua_pop(L, 1);
    if (kind >= 0) return kind;
  }
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0;
  if (n == 0) return KIND_MAPPING;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > n) {
      lua_pop(L, 1);
      return KIND_MAPPING;
    }
    count++;
  }
  return count == n ? KIND_SEQUENCE : KIND_MAPPING;
}

static int emit_value(encoder *e, int idx, int depth);

static int emit_sequence(encoder *e, int idx, int depth) {
  yaml_event_t ev;
  yaml_sequence_style_t style = e->flow ? YAML_FLOW_SEQUENCE_STYLE : YAML_BLOCK_SEQUENCE_STYLE;
  yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, style);
  if (!emit(e, &ev)) return 0;
  lua_Integer n = (lua_Integer)lua_rawlen(e->L, idx);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(e->L, idx, i);
    int ok = emit_value(e, lua_gettop(e->L), depth + 1);
    lua_pop(e->L, 1);
    if (!ok) return 0;
  }
  yaml_sequence_end_event_initialize(&ev);
  return emit(e, &ev);
}

typedef struct sort_key {
  int rank;       /* from opts.order; INT_MAX when not listed */
  int type;       /* LUA_TNUMBER < LUA_TBOOLEAN < LUA_TSTRING, by sort_class */
  const char *s;  /* a string key, alive while the table holds it */
  size_t len;
  double number;
  lua_Integer integer;
  int is_integer;
  int boolean;
} sort_key;

static int sort_class(int type) { return type == LUA_TNUMBER ? 0 : type == LUA_TBOOLEAN ? 1 : 2; }

static int compare_keys(const void *pa, const void *pb) {
  const sort_key *a = pa, *b = pb;
  if (a->rank != b->rank) return a->rank < b->rank ? -1 : 1;
  if (a->type != b->type) return sort_class(a->type) - sort_class(b->type);
  if (a->type == LUA_TNUMBER && a->is_integer && b->is_integer)
    return (a->integer > b->integer) - (a->integer < b->integer);
  if (a->type == LUA_TNUMBER) return (a->number > b->number) - (a->number < b->number);
  if (a->type == LUA_TBOOLEAN) return a->boolean - b->boolean;
  size_t n = a->len < b->len ? a->len : b->len;
  int c = memcmp(a->s, b->s, n);
  return c ? c : (a->len > b->len) - (a->len < b->len);
}

static int key_rank(encoder *e, int key) {
  if (!e->order) return INT_MAX;
  lua_pushvalue(e->L, key);
  lua_rawget(e->L, e->order);
  int rank = lua_isinteger(e->L, -1) ? (int)lua_tointeger(e->L, -1) : INT_MAX;
  lua_pop(e->L, 1);
  return rank;
}

/* The mapping's keys, sorted, in a userdata array (pushed). */
static sort_key *sorted_keys(encoder *e, int idx, size_t *count) {
  lua_State *L = e->L;
  size_t n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    n++;
  }
  sort_key *keys = lua_newuserdatauv(L, n ? n * sizeof *keys : 1, 0);
  size_t i = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    int type = lua_type(L, -1);
    if (type != LUA_TSTRING && type != LUA_TNUMBER && type != LUA_TBOOLEAN) {
      lua_pop(L, 1);
      encode_fail(e, "cannot encode a mapping key of type %s", lua_typename(L, type));
      return NULL;
    }
    sort_key *k = &keys[i++];
    memset(k, 0, sizeof *k);
    k->type = type;
    k->rank = key_rank(e, lua_gettop(L));
    if (type == LUA_TSTRING) k->s = lua_tolstring(L, -1, &k->len);
    else if (type == LUA_TNUMBER) {
      k->number = (double)lua_tonumber(L, -1);
      k->is_integer = lua_isinteger(L, -1);
      k->integer = lua_tointeger(L, -1);
    }
    else k->boolean = lua_toboolean(L, -1);
  }
  qsort(keys, n, sizeof *keys, compare_keys);
  *count = n;
  return keys;
}

static void push_sort_key(lua_State *L, const sort_key *k) {
  if (k->type == LUA_TSTRING) lua_pushlstring(L, k->s, k->len);
  else if (k->type == LUA_TBOOLEAN) lua_pushboolean(L, k->boolean);
  else if (k->is_integer) lua_pushinteger(L, k->integer);
  else lua_pushnumber(L, (lua_Number)k->number);
}

static int emit_entry(encoder *e, int idx, const sort_key *k, int depth) {
  lua_State *L = e->L;
  push_sort_key(L, k);
  int key = lua_gettop(L);
  /* multi-line keys cannot be literal blocks */
  int ok = emit_simple(e, key, k->type == LUA_TSTRING && memchr(k->s, '\n', k->len)
                                   ? YAML_DOUBLE_QUOTED_SCALAR_STYLE : -1);
  if (ok) {
    lua_pushvalue(L, key);
    lua_rawget(L, idx);
    ok = emit_value(e, lua_gettop(L), depth + 1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return ok;
}

static int emit_mapping(encoder *e, int idx, int depth) {
  lua_State *L = e->L;
  size_t n;
  sort_key *keys = sorted_keys(e, idx, &n);
  if (!keys) return 0;
  yaml_event_t ev;
  yaml_mapping_style_t style = e->flow ? YAML_FLOW_MAPPING_STYLE : YAML_BLOCK_MAPPING_STYLE;
  yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, style);
  int ok = emit(e, &ev);
  for (size_t i = 0; ok && i < n; i++) ok = emit_entry(e, idx, &keys[i], depth);
  lua_pop(L, 1); /* the keys */
  if (!ok) return 0;
  yaml_mapping_end_event_initialize(&ev);
  return emit(e, &ev);
}

static int emit_table(encoder *e, int idx, int depth) {
  lua_State *L = e->L;
  if (depth >= e->max_depth) return encode_fail(e, "nesting deeper than %d levels", e->max_depth);
  luaL_checkstack(L, 8, "yaml: nesting too deep");
  lua_pushvalue(L, idx);
  if (lua_rawget(L, e->visiting) != LUA_TNIL) {
    lua_pop(L, 1);
    return encode_fail(e, "cannot encode a table that contains itself");
  }
  lua_pop(L, 1);
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, e->visiting);
  int ok = table_kind(e, idx) == KIND_SEQUENCE ? emit_sequence(e, idx, depth)
                                               : emit_mapping(e, idx, depth);
  lua_pushvalue(L, idx);
  lua_pushnil(L);
  lua_rawset(L, e->visiting);
  return ok;
}

static int emit_value(encoder *e, int idx, int depth) {
  if (lua_type(e->L, idx) == LUA_TTABLE) return emit_table(e, idx, depth);
  return emit_simple(e, idx, -1);
}

static int emit_document(encoder *e, int idx) {
  yaml_event_t ev;
  yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1);
  if (!emit(e, &ev)) return 0;
  if (!emit_value(e, idx, 0)) return 0;
  yaml_document_end_event_initialize(&ev, 1);
  return emit(e, &ev);
}

static int emit_stream(encoder *e, int idx, int all) {
  yaml_event_t ev;
  yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING);
  if (!emit(e, &ev)) return 0;
  if (all) {
    if (!lua_istable(e->L, idx)) return encode_fail(e, "encode_all takes a list of documents");
    lua_Integer n = (lua_Integer)lua_rawlen(e->L, idx);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(e->L, idx, i);
      int ok = emit_document(e, lua_gettop(e->L));
      lua_pop(e->L, 1);
      if (!ok) return 0;
    }
  } else if (!emit_document(e, idx)) {
    return 0;
  }
  yaml_stream_end_event_initialize(&ev);
  return emit(e, &ev) && yaml_emitter_flush(&e->box->emitter);
}

static int optional_table_field(lua_State *L, int opts, const char *name) {
  if (!opts) return 0;
  if (lua_getfield(L, opts, name) == LUA_TTABLE) return lua_gettop(L);
  lua_pop(L, 1);
  return 0;
}

static void encoder_init(lua_State *L, encoder *e, int opts) {
  memset(e, 0, sizeof *e);
  e->L = L;
  e->flow = opt_boolean(L, opts, "flow");
  e->max_depth = (int)opt_integer(L, opts, "max_depth", 512);
  e->order = optional_table_field(L, opts, "order");
  e->extra_sequence_mts = optional_table_field(L, opts, "sequence_mts");
  luaL_getmetatable(L, SEQUENCE_MT);
  e->sequence_mt = lua_gettop(L);
  luaL_getmetatable(L, MAPPING_MT);
  e->mapping_mt = lua_gettop(L);
  lua_newtable(L);
  e->visiting = lua_gettop(L);
}

static int clamp_indent(lua_Integer indent) { return indent < 2 || indent > 9 ? 2 : (int)indent; }

/* Pushes the text, or nil, err (code "yaml"). */
static int encode_with(lua_State *L, int all) {
  luaL_checkany(L, 1);
  int opts = options_index(L, 2);
  encoder e;
  encoder_init(L, &e, opts);
  e.box = emit_box_open(L, clamp_indent(opt_integer(L, opts, "indent", 2)));
  int box = lua_gettop(L);
  if (!emit_stream(&e, 1, all)) {
    emit_box_close(e.box);
    return vq_push_error(L, "yaml", "cannot encode: %s", e.message);
  }
  lua_pushlstring(L, e.box->out ? e.box->out : "", e.box->len);
  emit_box_close(lua_touserdata(L, box));
  return 1;
}

static int l_encode(lua_State *L) { return encode_with(L, 0); }
static int l_encode_all(lua_State *L) { return encode_with(L, 1); }

/* ---- render: one scalar as it is written in a block value, a flow collection or a key ---- */

static const char *const style_names[] = {"auto", "plain", "single", "double", "literal", NULL};
static const int style_values[] = {-1, YAML_ANY_SCALAR_STYLE, YAML_SINGLE_QUOTED_SCALAR_STYLE,
                                   YAML_DOUBLE_QUOTED_SCALAR_STYLE, YAML_LITERAL_SCALAR_STYLE};
enum { CONTEXT_VALUE, CONTEXT_FLOW, CONTEXT_KEY };
static const char *const context_names[] = {"value", "flow", "key", NULL};

static int emit_in_context(encoder *e, int value, int style, int context) {
  yaml_event_t ev;
  if (context == CONTEXT_FLOW)
    yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_FLOW_SEQUENCE_STYLE);
  else
    yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE);
  if (!emit(e, &ev)) return 0;
  if (context == CONTEXT_VALUE && !emit_plain(e, "k")) return 0;
  if (!emit_simple(e, value, style)) return 0;
  if (context == CONTEXT_KEY && !emit_plain(e, "v")) return 0;
  if (context == CONTEXT_FLOW) yaml_sequence_end_event_initialize(&ev);
  else yaml_mapping_end_event_initialize(&ev);
  return emit(e, &ev);
}

static int render_stream(encoder *e, int value, int style, int context) {
  yaml_event_t ev;
  yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING);
  if (!emit(e, &ev)) return 0;
  yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1);
  if (!emit(e, &ev) || !emit_in_context(e, value, style, context)) return 0;
  yaml_document_end_event_initialize(&ev, 1);
  if (!emit(e, &ev)) return 0;
  yaml_stream_end_event_initialize(&ev);
  return emit(e, &ev) && yaml_emitter_flush(&e->box->emitter);
}

/* Cut the scaffolding ("k: ", "[...]", ": v") from the emitter's output. */
static int push_rendered(lua_State *L, const char *out, size_t len, int context) {
  /* the emitter's last line break, and the "..." it writes after an open-ended scalar */
  if (len >= 5 && memcmp(out + len - 5, "\n...\n", 5) == 0) len -= 4;
  if (len > 0 && out[len - 1] == '\n') len--;
  if (context == CONTEXT_VALUE && len >= 3 && memcmp(out, "k: ", 3) == 0)
    lua_pushlstring(L, out + 3, len - 3);
  else if (context == CONTEXT_VALUE && len >= 2 && memcmp(out, "k:", 2) == 0)
    lua_pushlstring(L, out + 2, len - 2);
  else if (context == CONTEXT_FLOW && len >= 2 && out[0] == '[' && out[len - 1] == ']')
    lua_pushlstring(L, out + 1, len - 2);
  else if (context == CONTEXT_KEY && len >= 3 && out[0] != '?' &&
           memcmp(out + len - 3, ": v", 3) == 0)
    lua_pushlstring(L, out, len - 3);
  else
    return vq_push_error(L, "yaml", "cannot write this value as a %s", context_names[context]);
  return 1;
}

/* render(value, style, context [, indent]) → the text, as libyaml writes it (it may pick
 * another style when the one asked for cannot hold the value). */
static int l_render(lua_State *L) {
  luaL_checkany(L, 1);
  int style = style_values[luaL_checkoption(L, 2, "auto", style_names)];
  int context = luaL_checkoption(L, 3, "value", context_names);
  lua_Integer indent = luaL_optinteger(L, 4, 2);
  lua_settop(L, 4);
  encoder e;
  encoder_init(L, &e, 0);
  e.box = emit_box_open(L, clamp_indent(indent));
  if (!render_stream(&e, 1, style, context)) {
    emit_box_close(e.box);
    return vq_push_error(L, "yaml", "cannot write this value: %s", e.message);
  }
  int n = push_rendered(L, e.box->out ? e.box->out : "", e.box->len, context);
  emit_box_close(e.box);
  return n;
}

/* ---- odds and ends ---- */

/* error(code, message [, fields]) → an error table like every vq primitive returns. */
static int l_error(lua_State *L) {
  const char *code = luaL_checkstring(L, 1);
  const char *message = luaL_optstring(L, 2, code);
  vq_push_error_table(L, code, "%s", message);
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, -4);
    }
  }
  lua_pushstring(L, code);
  lua_setfield(L, -2, "code");
  lua_pushstring(L, message);
  lua_setfield(L, -2, "message");
  return 1;
}

static const luaL_Reg yaml_functions[] = {
  {"decode", l_decode}, {"decode_all", l_decode_all}, {"encode", l_encode},
  {"encode_all", l_encode_all}, {"render", l_render}, {"resolve", l_resolve},
  {"needs_quotes", l_needs_quotes}, {"scan", vq_yaml_scan}, {"error", l_error}, {NULL, NULL}};

static void new_gc_metatable(lua_State *L, const char *name, lua_CFunction gc) {
  luaL_newmetatable(L, name);
  lua_pushcfunction(L, gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}

int luaopen_vq_core_yaml(lua_State *L) {
  new_gc_metatable(L, PARSER_MT, parser_gc);
  new_gc_metatable(L, EMITTER_MT, emitter_gc);
  luaL_newlib(L, yaml_functions);
  luaL_newmetatable(L, SEQUENCE_MT);
  lua_setfield(L, -2, "sequence_mt");
  luaL_newmetatable(L, MAPPING_MT);
  lua_setfield(L, -2, "mapping_mt");
  push_null(L);
  lua_setfield(L, -2, "null");
  return 1;
}
