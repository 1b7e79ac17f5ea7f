/* scan: where each node of a YAML text sits, in bytes, so that scripts/lib/vq/yaml.lua can
 * edit the text in place and leave every other byte as it was.
 *
 * libyaml's marks count characters, not bytes (mark.index), and do not count a UTF-8 BOM;
 * the files have Japanese comments, so the marks are turned into byte offsets by walking the
 * UTF-8 text from the last position asked for.
 *
 *   scan(text [, {file =, max_depth =}]) → {bom = bool, docs = {doc, ...}} or nil, err
 *   doc  = {s =, e =, root = node or nil, aliases = {anchor name = times used}}
 *   node = {kind = "scalar"|"mapping"|"sequence"|"alias", s =, e =, ce =, line =, col =,
 *           anchor =, tag =,
 *           scalar:   value =, style = "plain"|"single"|"double"|"literal"|"folded"
 *           mapping:  flow =, keys = {node...}, values = {node...}
 *           sequence: flow =, items = {node...}}
 * s and e are 1-based byte offsets, e exclusive: text:sub(s, e - 1) is the node as written,
 * with its anchor and tag. ce ends its content: a block collection's e runs on over the
 * comments after it, and a block scalar's over the blank lines after it; ce does not.
 * line and col are 1-based, col in characters. */
#include <string.h>

#include <lauxlib.h>
#include <yaml.h>

#include "vq.h"
#include "yaml_internal.h"

/* ---- character index → byte offset ---- */

typedef struct offsets {
  const unsigned char *text;
  size_t len;
  size_t base;  /* 3 after a UTF-8 BOM, which libyaml does not count */
  size_t chars; /* the character index at... */
  size_t bytes; /* ...this byte offset */
} offsets;

static size_t utf8_width(unsigned char lead) {
  if (lead >= 0xF0) return 4;
  if (lead >= 0xE0) return 3;
  if (lead >= 0xC0) return 2;
  return 1;
}

/* Marks mostly move forward, so this walks from the last answer, either way. */
static size_t byte_offset(offsets *o, size_t index) {
  while (o->chars < index && o->bytes < o->len) {
    size_t width = utf8_width(o->text[o->bytes]);
    o->bytes = width > o->len - o->bytes ? o->len : o->bytes + width;
    o->chars++;
  }
  while (o->chars > index && o->bytes > o->base) {
    do o->bytes--;
    while (o->bytes > o->base && (o->text[o->bytes] & 0xC0) == 0x80);
    o->chars--;
  }
  return o->bytes;
}

static int has_bom(const char *text, size_t len) {
  return len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0;
}

static int is_utf16(const char *text, size_t len) {
  return len >= 2 && ((unsigned char)text[0] == 0xFE || (unsigned char)text[0] == 0xFF) &&
         ((unsigned char)text[1] == 0xFE || (unsigned char)text[1] == 0xFF);
}

/* ---- the scanner ---- */

typedef struct scanner {
  lua_State *L;
  vq_yaml_parser *parser;
  const char *text;
  size_t len;
  offsets pos;
  int max_depth;
  int aliases; /* stack index: the current document's alias names → uses */
  const yaml_event_t *event; /* the current one, owned by the parser */
  int parse_failed;
  const char *message;
  yaml_mark_t mark;
} scanner;

static const yaml_event_t *scan_next(scanner *sc) {
  sc->event = vq_yaml_parser_next(sc->parser);
  if (!sc->event) sc->parse_failed = 1;
  return sc->event;
}

static int scan_fail(scanner *sc, yaml_mark_t mark, const char *message) {
  sc->message = message;
  sc->mark = mark;
  return 0;
}

static void set_integer(lua_State *L, const char *name, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, name);
}

static void set_string(lua_State *L, const char *name, const yaml_char_t *s) {
  if (!s) return;
  lua_pushstring(L, (const char *)s);
  lua_setfield(L, -2, name);
}

static size_t position(scanner *sc, const yaml_mark_t *mark) {
  return byte_offset(&sc->pos, mark->index) + 1;
}

/* Push {kind =, s =, line =, col =, anchor =, tag =}. */
static void push_node(scanner *sc, const char *kind, const yaml_event_t *ev,
                      const yaml_char_t *anchor, const yaml_char_t *tag) {
  lua_State *L = sc->L;
  lua_createtable(L, 0, 12);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  set_integer(L, "s", (lua_Integer)position(sc, &ev->start_mark));
  set_integer(L, "line", (lua_Integer)ev->start_mark.line + 1);
  set_integer(L, "col", (lua_Integer)ev->start_mark.column + 1);
  set_string(L, "anchor", anchor);
  set_string(L, "tag", tag);
}

/* e and ce of the node on top. */
static void set_end(scanner *sc, size_t e, size_t ce) {
  set_integer(sc->L, "e", (lua_Integer)e);
  set_integer(sc->L, "ce", (lua_Integer)ce);
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

static const char *const style_names[] = {"any", "plain", "single", "double", "literal", "folded"};

static void scan_scalar(scanner *sc, const yaml_event_t *ev, size_t *ce) {
  lua_State *L = sc->L;
  push_node(sc, "scalar", ev, ev->data.scalar.anchor, ev->data.scalar.tag);
  lua_pushlstring(L, (const char *)ev->data.scalar.value, ev->data.scalar.length);
  lua_setfield(L, -2, "value");
  yaml_scalar_style_t style = ev->data.scalar.style;
  lua_pushstring(L, style_names[style <= YAML_FOLDED_SCALAR_STYLE ? style : 0]);
  lua_setfield(L, -2, "style");
  size_t s = position(sc, &ev->start_mark), e = position(sc, &ev->end_mark);
  *ce = e;
  if (style == YAML_LITERAL_SCALAR_STYLE || style == YAML_FOLDED_SCALAR_STYLE)
    while (*ce > s && is_blank(sc->text[*ce - 2])) (*ce)--;
  set_end(sc, e, *ce);
}

static void scan_alias(scanner *sc, const yaml_event_t *ev, size_t *ce) {
  lua_State *L = sc->L;
  push_node(sc, "alias", ev, ev->data.alias.anchor, NULL);
  *ce = position(sc, &ev->end_mark);
  set_end(sc, *ce, *ce);
  lua_getfield(L, sc->aliases, (const char *)ev->data.alias.anchor);
  lua_Integer uses = lua_tointeger(L, -1);
  lua_pop(L, 1);
  lua_pushinteger(L, uses + 1);
  lua_setfield(L, sc->aliases, (const char *)ev->data.alias.anchor);
}

static int scan_node(scanner *sc, int depth, size_t *ce);

/* The children of the collection on top go to its list fields: the only field for a
 * sequence, keys and values in turn for a mapping. */
static int scan_children(scanner *sc, yaml_event_type_t end_type, int depth, size_t *last_ce) {
  lua_State *L = sc->L;
  int is_mapping = end_type == YAML_MAPPING_END_EVENT;
  lua_newtable(L);
  if (is_mapping) lua_newtable(L);
  int first = lua_gettop(L) - is_mapping;
  for (lua_Integer n = 0;; n++) {
    const yaml_event_t *ev = scan_next(sc);
    if (!ev) return 0;
    if (ev->type == end_type) break;
    if (!scan_node(sc, depth + 1, last_ce)) return 0;
    int list = is_mapping ? first + (int)(n % 2) : first;
    lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
  }
  return 1;
}

static int scan_collection(scanner *sc, int depth, size_t *ce) {
  lua_State *L = sc->L;
  const yaml_event_t *ev = sc->event;
  int is_mapping = ev->type == YAML_MAPPING_START_EVENT;
  if (depth >= sc->max_depth) return scan_fail(sc, ev->start_mark, "nesting too deep");
  luaL_checkstack(L, 8, "yaml: nesting too deep");
  int flow = is_mapping ? ev->data.mapping_start.style == YAML_FLOW_MAPPING_STYLE
                        : ev->data.sequence_start.style == YAML_FLOW_SEQUENCE_STYLE;
  push_node(sc, is_mapping ? "mapping" : "sequence", ev,
            is_mapping ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor,
            is_mapping ? ev->data.mapping_start.tag : ev->data.sequence_start.tag);
  lua_pushboolean(L, flow);
  lua_setfield(L, -2, "flow");
  size_t last_ce = 0;
  if (!scan_children(sc, is_mapping ? YAML_MAPPING_END_EVENT : YAML_SEQUENCE_END_EVENT, depth,
                     &last_ce))
    return 0;
  if (is_mapping) lua_setfield(L, -3, "values");
  lua_setfield(L, -2, is_mapping ? "keys" : "items");
  /* the end event is current now */
  size_t e = position(sc, &sc->event->end_mark);
  *ce = flow || last_ce == 0 ? e : last_ce;
  set_end(sc, e, *ce);
  return 1;
}

/* The current event starts a node: push its table, consuming the node's events; *ce is set to
 * where its content ends. */
static int scan_node(scanner *sc, int depth, size_t *ce) {
  const yaml_event_t *ev = sc->event;
  switch (ev->type) {
    case YAML_SCALAR_EVENT: scan_scalar(sc, ev, ce); return 1;
    case YAML_ALIAS_EVENT: scan_alias(sc, ev, ce); return 1;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: return scan_collection(sc, depth, ce);
    default: return scan_fail(sc, ev->start_mark, "unexpected event");
  }
}

/* After DOCUMENT-START: push {s, e, root, aliases}, consuming DOCUMENT-END. */
static int scan_document(scanner *sc) {
  lua_State *L = sc->L;
  lua_createtable(L, 0, 4);
  set_integer(L, "s", (lua_Integer)position(sc, &sc->event->start_mark));
  lua_newtable(L);
  sc->aliases = lua_gettop(L);
  size_t ce;
  if (!scan_next(sc) || !scan_node(sc, 0, &ce)) return 0;
  lua_setfield(L, -3, "root");
  lua_setfield(L, -2, "aliases");
  if (!scan_next(sc)) return 0;
  set_integer(L, "e", (lua_Integer)position(sc, &sc->event->end_mark));
  return 1;
}

static int scan_stream(scanner *sc) {
  lua_State *L = sc->L;
  lua_createtable(L, 0, 2);
  lua_pushboolean(L, has_bom(sc->text, sc->len));
  lua_setfield(L, -2, "bom");
  lua_newtable(L);
  if (!scan_next(sc)) return 0;
  for (lua_Integer n = 1;; n++) {
    if (!scan_next(sc)) return 0;
    if (sc->event->type == YAML_STREAM_END_EVENT) break;
    if (!scan_document(sc)) return 0;
    lua_rawseti(L, -2, n);
  }
  lua_setfield(L, -2, "docs");
  return 1;
}

int vq_yaml_scan(lua_State *L) {
  scanner sc;
  memset(&sc, 0, sizeof sc);
  sc.L = L;
  sc.text = luaL_checklstring(L, 1, &sc.len);
  int opts = lua_istable(L, 2) ? 2 : 0;
  const char *file = NULL;
  sc.max_depth = 512;
  if (opts) {
    lua_getfield(L, opts, "file");
    file = lua_tostring(L, -1); /* kept alive by the options table */
    lua_getfield(L, opts, "max_depth");
    if (lua_isinteger(L, -1)) sc.max_depth = (int)lua_tointeger(L, -1);
    lua_pop(L, 2);
  }
  if (is_utf16(sc.text, sc.len))
    return vq_push_error(L, "yaml", "%s%sUTF-16 text cannot be edited in place: make it UTF-8",
                         file ? file : "", file ? ": " : "");
  sc.pos = (offsets){(const unsigned char *)sc.text, sc.len, 0, 0, 0};
  if (has_bom(sc.text, sc.len)) sc.pos.base = sc.pos.bytes = 3;
  sc.parser = vq_yaml_parser_open(L, sc.text, sc.len);
  int base = lua_gettop(L);
  if (scan_stream(&sc)) {
    vq_yaml_parser_close(sc.parser);
    return 1;
  }
  lua_settop(L, base);
  int n = sc.parse_failed ? vq_yaml_parser_error(L, sc.parser, file, sc.text, sc.len)
                          : vq_yaml_error_at(L, file, sc.mark, sc.message);
  vq_yaml_parser_close(sc.parser);
  return n;
}
