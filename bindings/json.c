/* json: JSON text to Lua values through cJSON, Lua values to JSON text.
 *
 * Decode. cJSON (Debian's 1.7.15) parses; its trees become Lua tables marked with array_mt /
 * object_mt, so that an empty [] and {} survive a round trip. Three things around it:
 *  - One pass over the text first (check_text) rejects what cJSON lets through but JSON does
 *    not (\uZZZZ, read by cJSON as U+0000; 01, 1. and -.5; raw control bytes and invalid
 *    UTF-8 in strings; any byte up to the space as white space) and, for a text that is
 *    wrong, names the problem: cJSON only gives a position.
 *  - cJSON keeps a number as a double and a string as a C string, so integer literals beyond
 *    2^53 and strings with \u0000 are read back from the source text (see "source tokens").
 *  - Containers of 32 KB or more are walked member by member, each member parsed by cJSON on
 *    its own (see decode_value), which keeps its trees, and glibc's work with them, small.
 *
 * Encode does not build a cJSON tree: it writes into a growing buffer, which is faster, keeps
 * int64 exact, and can say where in the value an unencodable thing sits. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <lauxlib.h>

#include "bindings.h"
#include "vq.h"

#define NESTING_LIMIT CJSON_NESTING_LIMIT
#define MAX_INDENT 32
/* Containers with at least this much text are not given to cJSON whole (see decode_value). */
#define SPLIT_BYTES (32 * 1024)

/* Every function of the module has these upvalues. */
#define NULL_IDX lua_upvalueindex(1)
#define ARRAY_MT_IDX lua_upvalueindex(2)
#define OBJECT_MT_IDX lua_upvalueindex(3)
#define DECODE_BOX_MT_IDX lua_upvalueindex(4)
#define OUTPUT_BOX_MT_IDX lua_upvalueindex(5)
#define UPVALUES 5

static const double TWO_53 = 9007199254740992.0;
static const double TWO_63 = 9223372036854775808.0;

/* ---- bytes ---- */

/* JSON's white space; cJSON takes every byte up to the space, NUL included. */
static int is_space(unsigned char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }
static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static int is_number_char(unsigned char c) {
  return is_digit(c) || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

static int is_structural(unsigned char c) {
  return c == ',' || c == ':' || c == '[' || c == ']' || c == '{' || c == '}';
}

static int hex_value(unsigned char c) {
  if (is_digit(c)) return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* The 4 hex digits at s, or -1. */
static long hex4(const char *s) {
  long v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hex_value((unsigned char)s[i]);
    if (h < 0) return -1;
    v = v * 16 + h;
  }
  return v;
}

/* cJSON skips a UTF-8 byte order mark when at least one more byte follows it. */
static size_t bom_length(const char *s, size_t len) {
  return len >= 4 && memcmp(s, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
}

/* The index of the quote that closes the string opening at `open`, or len. */
static size_t string_close(const char *s, size_t len, size_t open) {
  size_t from = open + 1;
  while (from < len) {
    const char *q = memchr(s + from, '"', len - from);
    if (!q) return len;
    size_t at = (size_t)(q - s), backslashes = 0;
    while (at - backslashes > open + 1 && s[at - backslashes - 1] == '\\') backslashes++;
    if (backslashes % 2 == 0) return at;
    from = at + 1;
  }
  return len;
}

static size_t number_run(const char *s, size_t len, size_t pos) {
  while (pos < len && is_number_char((unsigned char)s[pos])) pos++;
  return pos;
}

static size_t skip_digits(const char *s, size_t n, size_t i) {
  while (i < n && is_digit((unsigned char)s[i])) i++;
  return i;
}

/* JSON's grammar, which is stricter than cJSON's strtod: no 01, 1., -.5 or +1. */
static int is_json_number(const char *s, size_t n) {
  size_t i = s[0] == '-' ? 1 : 0;
  if (i < n && s[i] == '0') i++;
  else if (i < n && is_digit((unsigned char)s[i])) i = skip_digits(s, n, i);
  else return 0;
  if (i < n && s[i] == '.') {
    if (i + 1 >= n || !is_digit((unsigned char)s[i + 1])) return 0;
    i = skip_digits(s, n, i + 1);
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    if (i >= n || !is_digit((unsigned char)s[i])) return 0;
    i = skip_digits(s, n, i);
  }
  return i == n;
}

static size_t utf8_sequence_length(const unsigned char *p, size_t avail) {
  unsigned lo = 0x80, hi = 0xBF;
  size_t n;
  if (p[0] >= 0xC2 && p[0] <= 0xDF) n = 2;
  else if (p[0] >= 0xE0 && p[0] <= 0xEF) n = 3;
  else if (p[0] >= 0xF0 && p[0] <= 0xF4) n = 4;
  else return 0;
  if (p[0] == 0xE0) lo = 0xA0;       /* overlong */
  else if (p[0] == 0xED) hi = 0x9F;  /* UTF-16 surrogates */
  else if (p[0] == 0xF0) lo = 0x90;  /* overlong */
  else if (p[0] == 0xF4) hi = 0x8F;  /* beyond U+10FFFF */
  if (avail < n || p[1] < lo || p[1] > hi) return 0;
  for (size_t i = 2; i < n; i++)
    if (p[i] < 0x80 || p[i] > 0xBF) return 0;
  return n;
}

/* ---- checking the text ----
 * One pass over the text before cJSON sees it. It follows the structure only as far as it
 * needs to say what was expected where; cJSON still builds the tree. It is stricter than
 * cJSON, which takes any byte up to the space as white space, raw control bytes and any
 * bytes in strings, \uZZZZ as U+0000, and numbers such as 01, 1. or -.5. */

enum expect {
  EXPECT_VALUE, EXPECT_VALUE_OR_CLOSE, EXPECT_KEY, EXPECT_KEY_OR_CLOSE, EXPECT_COLON,
  EXPECT_COMMA_OR_CLOSE
};

/* A container with at least SPLIT_BYTES of text. */
typedef struct span { size_t start, end; } span;
typedef struct spans { span *list; size_t count, cap; } spans;

typedef struct level { size_t start; char bracket; } level;

typedef struct checker {
  const char *s;
  size_t len, pos;
  enum expect expect;
  int depth;
  int has_nul;            /* some string has a \u0000 */
  int out_of_memory;      /* recording a large container failed */
  spans *large;           /* where the large containers are recorded, in closing order */
  size_t problem_pos;
  char problem[112];
  level levels[NESTING_LIMIT];
} checker;

static int problem_at(checker *c, size_t pos, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->problem, sizeof c->problem, fmt, ap);
  va_end(ap);
  c->problem_pos = pos;
  return -1;
}

static void describe_byte(char *buf, size_t size, const char *s, size_t len, size_t pos) {
  unsigned char ch = pos < len ? (unsigned char)s[pos] : 0;
  if (pos >= len) snprintf(buf, size, "the end of the text");
  else if (ch > ' ' && ch < 0x7f) snprintf(buf, size, "'%c'", ch);
  else snprintf(buf, size, "byte 0x%02X", ch);
}

static int unexpected(checker *c, const char *expected) {
  char found[24];
  describe_byte(found, sizeof found, c->s, c->len, c->pos);
  return problem_at(c, c->pos, "expected %s but found %s", expected, found);
}

/* A \u escape at i: 6 bytes, or 12 for a surrogate pair. A '"' is no hex digit, so the
 * digits cannot run past the end of the string. */
static int check_unicode_escape(checker *c, size_t i, size_t *length) {
  size_t end = c->len;
  long first = i + 6 <= end ? hex4(c->s + i + 2) : -1;
  if (first < 0) return problem_at(c, i, "invalid \\u escape (4 hex digits expected)");
  if (first >= 0xDC00 && first <= 0xDFFF)
    return problem_at(c, i, "invalid \\u escape (a UTF-16 low surrogate alone)");
  *length = 6;
  if (first >= 0xD800 && first <= 0xDBFF) {
    long second = i + 12 <= end && c->s[i + 6] == '\\' && c->s[i + 7] == 'u'
                  ? hex4(c->s + i + 8) : -1;
    if (second < 0xDC00 || second > 0xDFFF)
      return problem_at(c, i, "invalid \\u escape (a UTF-16 high surrogate without its pair)");
    *length = 12;
  }
  if (first == 0) c->has_nul = 1;
  return 0;
}

/* The escape at i (a backslash with a byte after it); *length is set. */
static int check_escape(checker *c, size_t i, size_t *length) {
  *length = 2;
  switch (c->s[i + 1]) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't': return 0;
    case 'u': return check_unicode_escape(c, i, length);
    default: {
      char found[24];
      describe_byte(found, sizeof found, c->s, c->len, i + 1);
      return problem_at(c, i, "invalid escape: backslash followed by %s", found);
    }
  }
}

/* Whether any of the 8 bytes ends a plain run inside a string: '"', '\\', a control byte
 * or a non-ASCII byte. */
static int word_needs_care(uint64_t word) {
  const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
  uint64_t q = word ^ (ones * '"'), b = word ^ (ones * '\\');
  uint64_t quote = (q - ones) & ~q, backslash = (b - ones) & ~b;
  uint64_t control = (word - ones * 0x20) & ~word;
  return ((quote | backslash | control) & highs) || (word & highs);
}

static int byte_needs_care(unsigned char c) {
  return c == '"' || c == '\\' || c < 0x20 || c >= 0x80;
}

/* The first byte at or after pos that ends a plain run, or len; 8 bytes at a time, since
 * most of a Kubernetes object's text is inside strings. */
static size_t plain_run_end(const char *s, size_t len, size_t pos) {
  for (; pos + 8 <= len; pos += 8) {
    uint64_t word;
    memcpy(&word, s + pos, 8);
    if (word_needs_care(word)) break;
  }
  while (pos < len && !byte_needs_care((unsigned char)s[pos])) pos++;
  return pos;
}

/* The byte at pos, inside a string, that ends a plain run: *length is how far to go on. */
static int check_string_byte(checker *c, size_t pos, size_t *length) {
  unsigned char ch = (unsigned char)c->s[pos];
  if (ch == '\\') return check_escape(c, pos, length);
  if (ch < 0x20) {
    char found[24];
    describe_byte(found, sizeof found, c->s, c->len, pos);
    return problem_at(c, pos, "%s in a string (control bytes must be escaped)", found);
  }
  *length = utf8_sequence_length((const unsigned char *)c->s + pos, c->len - pos);
  if (*length == 0) return problem_at(c, pos, "invalid UTF-8 in a string");
  return 0;
}

static int check_string(checker *c) {
  size_t open = c->pos, pos = open + 1, length = 0;
  for (;;) {
    pos = plain_run_end(c->s, c->len, pos);
    if (pos >= c->len || (c->s[pos] == '\\' && pos + 1 >= c->len))
      return problem_at(c, open, "unterminated string");
    if (c->s[pos] == '"') break;
    if (check_string_byte(c, pos, &length) != 0) return -1;
    pos += length;
  }
  c->pos = pos + 1;
  return 0;
}

static int check_number(checker *c) {
  size_t start = c->pos, end = number_run(c->s, c->len, start);
  if (!is_json_number(c->s + start, end - start)) {
    int shown = end - start > 40 ? 40 : (int)(end - start);
    return problem_at(c, start, "invalid number %.*s%s", shown, c->s + start,
                      end - start > 40 ? "..." : "");
  }
  c->pos = end;
  return 0;
}

static int check_literal(checker *c) {
  static const char *const literals[] = {"true", "false", "null"};
  for (int i = 0; i < 3; i++) {
    size_t n = strlen(literals[i]);
    if (c->len - c->pos >= n && memcmp(c->s + c->pos, literals[i], n) == 0) {
      c->pos += n;
      return 0;
    }
  }
  return problem_at(c, c->pos, "invalid literal (true, false or null expected)");
}

static int open_container(checker *c, char bracket) {
  if (c->depth >= NESTING_LIMIT)
    return problem_at(c, c->pos, "nesting deeper than %d levels", NESTING_LIMIT);
  c->levels[c->depth++] = (level){.start = c->pos, .bracket = bracket};
  c->expect = bracket == '[' ? EXPECT_VALUE_OR_CLOSE : EXPECT_KEY_OR_CLOSE;
  c->pos++;
  return 0;
}

static int record_span(spans *large, span sp) {
  if (large->count == large->cap) {
    size_t cap = large->cap ? large->cap * 2 : 16;
    span *list = realloc(large->list, cap * sizeof *list);
    if (!list) return -1;
    large->list = list;
    large->cap = cap;
  }
  large->list[large->count++] = sp;
  return 0;
}

static int close_container(checker *c) {
  const level *l = &c->levels[--c->depth];
  size_t end = c->pos + 1;
  if (end - l->start >= SPLIT_BYTES && record_span(c->large, (span){l->start, end}) != 0) {
    c->out_of_memory = 1;
    return -1;
  }
  c->expect = EXPECT_COMMA_OR_CLOSE;
  c->pos = end;
  return 0;
}

static int check_value(checker *c) {
  unsigned char ch = (unsigned char)c->s[c->pos];
  if (ch == ']' && c->expect == EXPECT_VALUE_OR_CLOSE) return close_container(c);
  if (ch == '[' || ch == '{') return open_container(c, (char)ch);
  if (ch == '"' || ch == '-' || is_digit(ch) || ch == 't' || ch == 'f' || ch == 'n') {
    c->expect = EXPECT_COMMA_OR_CLOSE;
    if (ch == '"') return check_string(c);
    return ch == '-' || is_digit(ch) ? check_number(c) : check_literal(c);
  }
  return unexpected(c, c->expect == EXPECT_VALUE_OR_CLOSE ? "a value or ']'" : "a value");
}

static int check_key(checker *c) {
  char ch = c->s[c->pos];
  if (ch == '}' && c->expect == EXPECT_KEY_OR_CLOSE) return close_container(c);
  if (ch != '"')
    return unexpected(c, c->expect == EXPECT_KEY_OR_CLOSE ? "a string key or '}'" : "a string key");
  c->expect = EXPECT_COLON;
  return check_string(c);
}

static int check_after_value(checker *c) {
  if (c->depth == 0) return problem_at(c, c->pos, "unexpected text after the JSON value");
  char inner = c->levels[c->depth - 1].bracket, ch = c->s[c->pos];
  if (ch == (inner == '[' ? ']' : '}')) return close_container(c);
  if (ch != ',') return unexpected(c, inner == '[' ? "',' or ']'" : "',' or '}'");
  c->expect = inner == '[' ? EXPECT_VALUE : EXPECT_KEY;
  c->pos++;
  return 0;
}

static int check_step(checker *c) {
  switch (c->expect) {
    case EXPECT_VALUE: case EXPECT_VALUE_OR_CLOSE: return check_value(c);
    case EXPECT_KEY: case EXPECT_KEY_OR_CLOSE: return check_key(c);
    case EXPECT_COLON:
      if (c->s[c->pos] != ':') return unexpected(c, "':' after the key");
      c->expect = EXPECT_VALUE;
      c->pos++;
      return 0;
    default: return check_after_value(c);
  }
}

static void skip_space(checker *c) {
  while (c->pos < c->len && is_space((unsigned char)c->s[c->pos])) c->pos++;
}

/* 0 when the text is JSON, else -1 with c->problem and c->problem_pos. */
static int check_text(checker *c) {
  c->pos = bom_length(c->s, c->len);
  c->expect = EXPECT_VALUE;
  c->has_nul = c->out_of_memory = 0;
  skip_space(c);
  if (c->pos >= c->len) return problem_at(c, c->len, "no JSON value (the text is empty)");
  for (;;) {
    skip_space(c);
    if (c->pos >= c->len) break;
    if (check_step(c) != 0) return -1;
  }
  if (c->depth > 0 || c->expect != EXPECT_COMMA_OR_CLOSE)
    return problem_at(c, c->len, "unexpected end of the text");
  return 0;
}

/* ---- decode errors ---- */

static size_t line_of(const char *s, size_t pos, size_t *line_start) {
  size_t line = 1;
  *line_start = 0;
  for (const char *p = s, *end = s + pos; (p = memchr(p, '\n', (size_t)(end - p))); p++) {
    line++;
    *line_start = (size_t)(p - s) + 1;
  }
  return line;
}

static void set_integer_field(lua_State *L, const char *name, size_t value) {
  lua_pushinteger(L, (lua_Integer)value);
  lua_setfield(L, -2, name);
}

/* nil, {code = "json", message, reason, offset, line, column[, file]}. The offset is 1-based,
 * like Lua's string positions: text:sub(err.offset) starts at the problem. line and column
 * are 1-based too; the column counts bytes. */
static int push_decode_error(lua_State *L, const char *text, size_t pos, const char *reason,
                             const char *file) {
  size_t line_start, line = line_of(text, pos, &line_start), column = pos - line_start + 1;
  if (file)
    vq_push_error(L, "json", "%s:%I:%I: invalid JSON: %s", file, (lua_Integer)line,
                  (lua_Integer)column, reason);
  else
    vq_push_error(L, "json", "invalid JSON at line %I, column %I: %s", (lua_Integer)line,
                  (lua_Integer)column, reason);
  lua_pushstring(L, reason);
  lua_setfield(L, -2, "reason");
  set_integer_field(L, "offset", pos + 1);
  set_integer_field(L, "line", line);
  set_integer_field(L, "column", column);
  if (file) {
    lua_pushstring(L, file);
    lua_setfield(L, -2, "file");
  }
  return 2;
}

/* ---- source tokens ----
 * The scalar tokens of a checked text (strings, keys included, numbers, true, false, null)
 * come in the order in which the tree is converted, so the k-th scalar node of the tree is
 * the k-th token. The walk is lazy: it only moves when a node needs its source, and passes
 * over the text at most once per decode. */

typedef struct source {
  const char *s;
  size_t len, pos;  /* pos: after the last token passed */
  size_t passed;    /* tokens passed */
} source;

static size_t scalar_token_end(const source *src, size_t pos) {
  switch (src->s[pos]) {
    case '"': return string_close(src->s, src->len, pos) + 1;
    case 't': case 'n': return pos + 4;
    case 'f': return pos + 5;
    default: return number_run(src->s, src->len, pos);
  }
}

static int is_between_tokens(unsigned char c) { return is_space(c) || is_structural(c); }

/* Where token `index` starts; indexes only grow from one call to the next. */
static size_t source_token(source *src, size_t index) {
  for (;;) {
    while (src->pos < src->len && is_between_tokens((unsigned char)src->s[src->pos])) src->pos++;
    if (src->passed == index || src->pos >= src->len) return src->pos;
    src->pos = scalar_token_end(src, src->pos);
    src->passed++;
  }
}

/* How many bytes cJSON decoded the string token at `open` into (it cannot say: its strings
 * end at the first NUL). The escapes were checked already. */
static size_t decoded_length(const char *s, size_t len, size_t open) {
  size_t close = string_close(s, len, open), n = 0, i = open + 1;
  while (i < close) {
    if (s[i] != '\\') {
      n++;
      i++;
    } else if (s[i + 1] != 'u') {
      n++;
      i += 2;
    } else {
      long cp = hex4(s + i + 2);
      int pair = cp >= 0xD800 && cp <= 0xDBFF;
      n += pair ? 4 : cp < 0x80 ? 1 : cp < 0x800 ? 2 : 3;
      i += pair ? 12 : 6;
    }
  }
  return n;
}

enum { LITERAL_INTEGER, LITERAL_TOO_BIG, LITERAL_NOT_INTEGER };

/* An integer literal read exactly (cJSON kept only a double). */
static int source_integer(const char *s, size_t len, size_t pos, lua_Integer *out) {
  if (pos >= len) return LITERAL_NOT_INTEGER;
  int negative = s[pos] == '-';
  size_t start = pos + (size_t)negative, end = number_run(s, len, start);
  if (skip_digits(s, end, start) != end) return LITERAL_NOT_INTEGER;
  uint64_t limit = negative ? (uint64_t)1 << 63 : ((uint64_t)1 << 63) - 1, v = 0;
  for (size_t i = start; i < end; i++) {
    unsigned digit = (unsigned)(s[i] - '0');
    if (v > (limit - digit) / 10) return LITERAL_TOO_BIG;
    v = v * 10 + digit;
  }
  if (!negative) *out = (lua_Integer)v;
  else *out = v == (uint64_t)1 << 63 ? LUA_MININTEGER : -(lua_Integer)v;
  return LITERAL_INTEGER;
}

/* ---- decode ---- */

/* Object keys repeat: every Pod has "metadata", "name", "labels". Lua interns each string it
 * is given, a lookup in its global string table; a small cache of the key strings made so far,
 * checked with memcmp, made decoding a 10 MB list 6% faster. Only for large texts: the cache
 * is a table of 256 slots, anchoring the strings whose bytes `text` points to. */
#define KEY_CACHE_SLOTS 256

typedef struct key_cache {
  int idx;  /* the table, on the stack */
  const char *text[KEY_CACHE_SLOTS];
  size_t len[KEY_CACHE_SLOTS];
} key_cache;

static unsigned key_slot(const char *s, size_t len) {
  uint32_t h = 2166136261u;  /* FNV-1a */
  for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
  return (h ^ (h >> 16)) % KEY_CACHE_SLOTS;
}

static key_cache *start_key_cache(lua_State *L, key_cache *keys) {
  lua_createtable(L, KEY_CACHE_SLOTS, 0);
  keys->idx = lua_gettop(L);
  memset(keys->text, 0, sizeof keys->text);
  return keys;
}

static void push_cached_key(lua_State *L, key_cache *keys, const char *s) {
  size_t len = strlen(s);
  unsigned slot = key_slot(s, len);
  if (keys->text[slot] && keys->len[slot] == len && memcmp(keys->text[slot], s, len) == 0) {
    lua_rawgeti(L, keys->idx, slot + 1);
    return;
  }
  lua_pushlstring(L, s, len);
  lua_pushvalue(L, -1);
  lua_rawseti(L, keys->idx, slot + 1);
  keys->text[slot] = lua_tostring(L, -1);
  keys->len[slot] = len;
}

/* What a decode owns, freed by __close on every way out. */
typedef struct decode_box {
  cJSON *tree;  /* the piece being converted */
  spans large;
} decode_box;

static int free_decode_box(lua_State *L) {
  decode_box *box = lua_touserdata(L, 1);
  cJSON_Delete(box->tree);
  free(box->large.list);
  *box = (decode_box){0};
  return 0;
}

typedef struct decoder {
  lua_State *L;
  decode_box *box;
  const char *s;
  size_t len;
  size_t next_large;      /* the next of box->large, sorted by start */
  source src;
  size_t token;           /* index of the next scalar node */
  int has_nul;
  key_cache *keys;        /* NULL for small texts */
  size_t error_pos;
  const char *error;
} decoder;

static void push_string(decoder *d, const char *s) {
  if (d->has_nul) {
    size_t open = source_token(&d->src, d->token);
    lua_pushlstring(d->L, s, decoded_length(d->src.s, d->src.len, open));
  } else {
    lua_pushlstring(d->L, s, strlen(s));  /* lua_pushstring would first try Lua's C-string cache */
  }
  d->token++;
}

static void push_key(decoder *d, const char *s) {
  if (!d->keys || d->has_nul) {
    push_string(d, s);
    return;
  }
  push_cached_key(d->L, d->keys, s);
  d->token++;
}

/* |x| >= 2^53 and integral: the double may have rounded the literal. */
static void push_wide_integer(decoder *d, double x) {
  size_t pos = source_token(&d->src, d->token);
  lua_Integer i;
  switch (source_integer(d->src.s, d->src.len, pos, &i)) {
    case LITERAL_INTEGER: lua_pushinteger(d->L, i); break;
    case LITERAL_TOO_BIG: lua_pushnumber(d->L, x); break;
    default:  /* 1e18, 1.5e17: integral values written otherwise */
      if (x < TWO_63) lua_pushinteger(d->L, (lua_Integer)x);
      else lua_pushnumber(d->L, x);
  }
}

/* An integral value that fits int64 becomes a Lua integer; anything else a float. */
static int push_number(decoder *d, double x) {
  if (x > -TWO_53 && x < TWO_53) {
    lua_Integer i = (lua_Integer)x;
    if ((double)i == x) lua_pushinteger(d->L, i);
    else lua_pushnumber(d->L, x);
  } else if (!isfinite(x)) {
    d->error_pos = source_token(&d->src, d->token);
    d->error = "number out of range (beyond a double)";
    return -1;
  } else if (x >= -TWO_63 && x <= TWO_63) {
    push_wide_integer(d, x);
  } else {
    lua_pushnumber(d->L, x);
  }
  d->token++;
  return 0;
}

static int convert(decoder *d, const cJSON *item);

static int count_children(const cJSON *item) {
  int n = 0;
  for (const cJSON *c = item->child; c && n < INT32_MAX; c = c->next) n++;
  return n;
}

static int convert_array(decoder *d, const cJSON *item) {
  lua_State *L = d->L;
  lua_createtable(L, count_children(item), 0);
  lua_Integer i = 0;
  for (const cJSON *c = item->child; c; c = c->next) {
    if (convert(d, c) != 0) return -1;
    lua_rawseti(L, -2, ++i);
  }
  lua_pushvalue(L, ARRAY_MT_IDX);
  lua_setmetatable(L, -2);
  return 0;
}

static int convert_object(decoder *d, const cJSON *item) {
  lua_State *L = d->L;
  lua_createtable(L, 0, count_children(item));
  for (const cJSON *c = item->child; c; c = c->next) {
    push_key(d, c->string);
    if (convert(d, c) != 0) return -1;
    lua_rawset(L, -3);  /* a key given twice: the last one wins */
  }
  lua_pushvalue(L, OBJECT_MT_IDX);
  lua_setmetatable(L, -2);
  return 0;
}

static int convert(decoder *d, const cJSON *item) {
  lua_State *L = d->L;
  switch (item->type & 0xFF) {
    case cJSON_NULL: lua_pushvalue(L, NULL_IDX); break;
    case cJSON_False: lua_pushboolean(L, 0); break;
    case cJSON_True: lua_pushboolean(L, 1); break;
    case cJSON_Number: return push_number(d, item->valuedouble);
    case cJSON_String: push_string(d, item->valuestring); return 0;
    case cJSON_Array:
      luaL_checkstack(L, 4, "json.decode");
      return convert_array(d, item);
    case cJSON_Object:
      luaL_checkstack(L, 4, "json.decode");
      return convert_object(d, item);
    default: return luaL_error(L, "json.decode: unexpected cJSON node type %d", item->type);
  }
  d->token++;
  return 0;
}

/* cJSON parses the value at pos, which it is given alone; *end is set after it. */
static int decode_with_cjson(decoder *d, size_t pos, size_t *end) {
  const char *stop = NULL;
  d->box->tree = cJSON_ParseWithLengthOpts(d->s + pos, d->len - pos, &stop, 0);
  if (!d->box->tree)  /* the text was checked: cJSON ran out of memory */
    return luaL_error(d->L, "json.decode: out of memory");
  *end = (size_t)(stop - d->s);
  int rc = convert(d, d->box->tree);
  cJSON_Delete(d->box->tree);
  d->box->tree = NULL;
  return rc;
}

static size_t skip_spaces(const char *s, size_t len, size_t pos) {
  while (pos < len && is_space((unsigned char)s[pos])) pos++;
  return pos;
}

static int decode_value(decoder *d, size_t pos, size_t *end);

/* A large container: the text was checked, so its members are found by stepping over
 * spaces, ',' and ':'; each key and member is parsed by cJSON (a large member in turn by
 * this function).
 * Its table is not presized. The first allocation of 1 KB or more after a collection makes
 * glibc consolidate every small chunk the collection freed; sized up front, the table was
 * that allocation, and a decode after a collection took 15 ms more. Grown as it fills, it
 * asks for large blocks only after cJSON's nodes have reused those chunks. */
static int decode_members(decoder *d, const span *sp, size_t *end) {
  lua_State *L = d->L;
  int is_array = d->s[sp->start] == '[';
  luaL_checkstack(L, 4, "json.decode");
  lua_newtable(L);
  size_t pos = skip_spaces(d->s, d->len, sp->start + 1);
  for (lua_Integer i = 1; pos < sp->end - 1; i++) {
    if (!is_array) {
      if (decode_with_cjson(d, pos, &pos) != 0) return -1;
      pos = skip_spaces(d->s, d->len, skip_spaces(d->s, d->len, pos) + 1);  /* the ':' */
    }
    if (decode_value(d, pos, &pos) != 0) return -1;
    if (is_array) lua_rawseti(L, -2, i);
    else lua_rawset(L, -3);
    pos = skip_spaces(d->s, d->len, pos);
    if (d->s[pos] == ',') pos = skip_spaces(d->s, d->len, pos + 1);
  }
  lua_pushvalue(L, is_array ? ARRAY_MT_IDX : OBJECT_MT_IDX);
  lua_setmetatable(L, -2);
  *end = sp->end;
  return 0;
}

/* cJSON allocates every node and string, and a large tree freed at once leaves glibc a long
 * list of small chunks to consolidate: on a 10 MB list, parsing whole took 25 to 135 ms and
 * member by member a steady 20 ms. So only containers under SPLIT_BYTES go to cJSON whole. */
static int decode_value(decoder *d, size_t pos, size_t *end) {
  const spans *large = &d->box->large;
  if (d->next_large < large->count && large->list[d->next_large].start == pos)
    return decode_members(d, &large->list[d->next_large++], end);
  return decode_with_cjson(d, pos, end);
}

static int compare_spans(const void *a, const void *b) {
  size_t x = ((const span *)a)->start, y = ((const span *)b)->start;
  return (x > y) - (x < y);
}

static const char *decode_file_option(lua_State *L) {
  if (lua_isnoneornil(L, 2)) {
    lua_settop(L, 2);
    lua_pushnil(L);
    return NULL;
  }
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING || strcmp(lua_tostring(L, -1), "file") != 0)
      luaL_error(L, "json.decode: unknown option %s", luaL_tolstring(L, -1, NULL));
  }
  lua_getfield(L, 2, "file");
  if (!lua_isnil(L, 3) && lua_type(L, 3) != LUA_TSTRING)
    luaL_argerror(L, 2, "opts.file must be a string");
  return lua_tostring(L, 3);
}

static decode_box *push_decode_box(lua_State *L) {
  decode_box *box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = (decode_box){0};
  lua_pushvalue(L, DECODE_BOX_MT_IDX);
  lua_setmetatable(L, -2);
  lua_toclose(L, -1);
  return box;
}

/* Checks the text and sorts its large containers into box. 0, or the number of results to
 * return (nil, err). */
static int check_for_decode(lua_State *L, const char *text, size_t len, decode_box *box,
                            const char *file, int *has_nul) {
  checker c;  /* its levels need no setting up */
  c.s = text;
  c.len = len;
  c.depth = 0;
  c.large = &box->large;
  if (check_text(&c) != 0) {
    if (c.out_of_memory) return luaL_error(L, "json.decode: out of memory");
    return push_decode_error(L, text, c.problem_pos, c.problem, file);
  }
  if (box->large.count > 1)
    qsort(box->large.list, box->large.count, sizeof *box->large.list, compare_spans);
  *has_nul = c.has_nul;
  return 0;
}

/* json.decode(text [, {file = name}]) -> value | nil, err */
static int l_decode(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *file = decode_file_option(L);
  decode_box *box = push_decode_box(L);
  int box_idx = lua_gettop(L), has_nul = 0;
  int results = check_for_decode(L, text, len, box, file, &has_nul);
  if (results) return results;

  key_cache keys;
  size_t start = bom_length(text, len), end;
  decoder d = {.L = L, .box = box, .s = text, .len = len, .src = {text, len, start, 0},
               .has_nul = has_nul, .keys = len >= SPLIT_BYTES ? start_key_cache(L, &keys) : NULL};
  if (decode_value(&d, skip_spaces(text, len, start), &end) != 0) {
    lua_settop(L, box_idx);
    return push_decode_error(L, text, d.error_pos, d.error, file);
  }
  lua_closeslot(L, box_idx);
  return 1;
}

/* ---- encode: the output buffer ---- */

/* The text starts in a buffer on the C stack and moves to the heap when it outgrows it. */
typedef struct output {
  char *data;
  size_t len, cap;
  char *heap;  /* data once it is on the heap: what the box frees */
} output;

static int free_output_box(lua_State *L) {
  output *out = lua_touserdata(L, 1);
  free(out->heap);
  *out = (output){0};
  return 0;
}

/* A step on the way from the value given to encode to the one being written. */
typedef struct frame {
  const struct frame *parent;
  const void *table;
  const char *key;     /* the element being written: its string key, or NULL and index */
  size_t key_len;
  lua_Integer index;
} frame;

typedef struct encoder {
  lua_State *L;
  output *out;
  int indent, sort_keys, depth;
} encoder;

static void grow(encoder *e, size_t need) {
  output *out = e->out;
  size_t cap = out->cap;
  while (cap - out->len < need) {
    if (cap > SIZE_MAX / 2) luaL_error(e->L, "json.encode: output too large");
    cap *= 2;
  }
  char *heap = realloc(out->heap, cap);
  if (!heap) luaL_error(e->L, "json.encode: out of memory");
  if (!out->heap) memcpy(heap, out->data, out->len);
  out->data = out->heap = heap;
  out->cap = cap;
}

static inline char *reserve(encoder *e, size_t n) {
  if (e->out->cap - e->out->len < n) grow(e, n);
  return e->out->data + e->out->len;
}

static inline void put(encoder *e, const void *s, size_t n) {
  memcpy(reserve(e, n), s, n);
  e->out->len += n;
}

static inline void put_char(encoder *e, char ch) {
  *reserve(e, 1) = ch;
  e->out->len++;
}

static void newline(encoder *e, int level) {
  if (!e->indent) return;
  size_t n = (size_t)level * (size_t)e->indent;
  char *p = reserve(e, n + 1);
  *p = '\n';
  memset(p + 1, ' ', n);
  e->out->len += n + 1;
}

/* ---- encode: errors, with where the value sits ---- */

static int is_identifier(const char *s, size_t len) {
  if (len == 0 || is_digit((unsigned char)s[0])) return 0;
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (!(ch == '_' || is_digit(ch) || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')))
      return 0;
  }
  return 1;
}

/* value.spec.containers[1]["app.kubernetes.io/name"]: Lua's syntax and 1-based indexes. */
static void add_path(luaL_Buffer *b, const frame *f) {
  if (!f) {
    luaL_addstring(b, "value");
    return;
  }
  add_path(b, f->parent);
  if (f->key && is_identifier(f->key, f->key_len)) {
    luaL_addchar(b, '.');
    luaL_addlstring(b, f->key, f->key_len);
  } else if (f->key) {
    luaL_addstring(b, "[\"");
    luaL_addlstring(b, f->key, f->key_len);
    luaL_addstring(b, "\"]");
  } else {
    char index[32];
    snprintf(index, sizeof index, "[%lld]", (long long)f->index);
    luaL_addstring(b, index);
  }
}

static const char *push_path(lua_State *L, const frame *f) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  add_path(&b, f);
  luaL_pushresult(&b);
  return lua_tostring(L, -1);
}

/* Raises "json.encode: <what> at <path>"; `at` is the frame of the value's container. */
static void fail_at(encoder *e, const frame *at, const char *fmt, ...) {
  lua_State *L = e->L;
  luaL_checkstack(L, 4, "json.encode");
  va_list ap;
  va_start(ap, fmt);
  const char *what = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  if (!at) luaL_error(L, "json.encode: %s", what);
  luaL_error(L, "json.encode: %s at %s", what, push_path(L, at));
}

/* ---- encode: scalars ---- */

/* 1 for the bytes that cannot be copied as they are: control bytes, '"', '\\', non-ASCII. */
#define ROW(x) x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x
static const unsigned char needs_care[256] = {
  ROW(1), ROW(1),
  0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* '"' */
  ROW(0), ROW(0),
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,  /* '\\' */
  ROW(0), ROW(0),
  ROW(1), ROW(1), ROW(1), ROW(1), ROW(1), ROW(1), ROW(1), ROW(1)};
#undef ROW

/* Writes the escape for ch at out (room for 6 bytes); returns its length. */
static size_t write_escape(char *out, unsigned char ch) {
  static const char hex[] = "0123456789abcdef";
  const char *short_form = NULL;
  switch (ch) {
    case '"': short_form = "\\\""; break;
    case '\\': short_form = "\\\\"; break;
    case '\b': short_form = "\\b"; break;
    case '\f': short_form = "\\f"; break;
    case '\n': short_form = "\\n"; break;
    case '\r': short_form = "\\r"; break;
    case '\t': short_form = "\\t"; break;
    default: break;
  }
  if (short_form) {
    memcpy(out, short_form, 2);
    return 2;
  }
  memcpy(out, "\\u00", 4);
  out[4] = hex[ch >> 4];
  out[5] = hex[ch & 15];
  return 6;
}

/* Invalid UTF-8 is an error rather than replaced: a silent change to the bytes of a name or
 * a label value is worse than a clear failure.
 * Room for len + 2 bytes is made once; an escape makes room for what it adds. */
static void put_string(encoder *e, const char *s, size_t len, const frame *at) {
  const unsigned char *p = (const unsigned char *)s, *end = p + len;
  char *out = reserve(e, len + 2);
  *out++ = '"';
  for (;;) {
    while (p < end && !needs_care[*p]) *out++ = (char)*p++;
    if (p == end) break;
    if (*p >= 0x80) {
      size_t n = utf8_sequence_length(p, (size_t)(end - p));
      if (!n)
        fail_at(e, at, "invalid UTF-8 in a string (byte %I)",
                (lua_Integer)(p - (const unsigned char *)s) + 1);
      memcpy(out, p, n);
      out += n;
      p += n;
      continue;
    }
    e->out->len = (size_t)(out - e->out->data);
    out = reserve(e, 6 + (size_t)(end - p) + 1);
    out += write_escape(out, *p++);
  }
  *out++ = '"';
  e->out->len = (size_t)(out - e->out->data);
}

static void put_integer(encoder *e, lua_Integer v) {
  char buf[24], *end = buf + sizeof buf, *p = end;
  uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
  do {
    *--p = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0) *--p = '-';
  put(e, p, (size_t)(end - p));
}

/* printf writes the locale's decimal point; JSON wants '.'. */
static size_t use_decimal_dot(char *s, size_t n) {
  size_t out = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (is_digit(ch) || ch == '-' || ch == '+' || ch == 'e') s[out++] = (char)ch;
    else if (out == 0 || s[out - 1] != '.') s[out++] = '.';
  }
  return out;
}

/* The shortest of %.15g, %.16g and %.17g that reads back as the same double. */
static void put_float(encoder *e, double x, const frame *at) {
  if (!isfinite(x))
    fail_at(e, at, "cannot encode %s (JSON has no NaN or infinity)",
            x != x ? "NaN" : x > 0 ? "inf" : "-inf");
  char buf[48];
  int n = 0;
  for (int precision = 15; precision <= 17; precision++) {
    n = snprintf(buf, sizeof buf, "%.*g", precision, x);
    if (strtod(buf, NULL) == x) break;
  }
  put(e, buf, use_decimal_dot(buf, (size_t)n));
}

/* ---- encode: tables ---- */

static void encode_value(encoder *e, int idx, const frame *at);

enum { AS_OBJECT, AS_ARRAY, UNMARKED };

/* json.array_mt / json.object_mt, or dkjson's __jsontype = "array" | "object". */
static int marked_kind(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return UNMARKED;
  int kind = UNMARKED;
  if (lua_rawequal(L, -1, ARRAY_MT_IDX)) {
    kind = AS_ARRAY;
  } else if (lua_rawequal(L, -1, OBJECT_MT_IDX)) {
    kind = AS_OBJECT;
  } else {
    lua_pushliteral(L, "__jsontype");
    lua_rawget(L, -2);
    const char *type = lua_tostring(L, -1);
    if (type && strcmp(type, "array") == 0) kind = AS_ARRAY;
    else if (type && strcmp(type, "object") == 0) kind = AS_OBJECT;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return kind;
}

/* Keys exactly 1..n. */
static int is_sequence(lua_State *L, int idx, lua_Unsigned n) {
  lua_Unsigned count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    lua_Integer k = lua_isinteger(L, -1) ? lua_tointeger(L, -1) : 0;
    if (k < 1 || (lua_Unsigned)k > n) {
      lua_pop(L, 1);
      return 0;
    }
    count++;
  }
  return count == n;
}

/* Marked tables go by their mark. Otherwise a table with keys 1..n (n > 0) is an array and
 * anything else an object; so an empty unmarked table is written {}. */
static int table_kind(lua_State *L, int idx, lua_Unsigned *n) {
  int kind = marked_kind(L, idx);
  *n = lua_rawlen(L, idx);
  if (kind != UNMARKED) return kind;
  return *n > 0 && is_sequence(L, idx, *n) ? AS_ARRAY : AS_OBJECT;
}

static void write_array(encoder *e, int idx, lua_Unsigned n, frame *f) {
  lua_State *L = e->L;
  put_char(e, '[');
  for (lua_Unsigned i = 1; i <= n; i++) {
    if (i > 1) put_char(e, ',');
    newline(e, e->depth);
    f->key = NULL;
    f->index = (lua_Integer)i;
    lua_rawgeti(L, idx, (lua_Integer)i);
    encode_value(e, -1, f);  /* a hole in a marked array is written null */
    lua_pop(L, 1);
  }
  if (n > 0) newline(e, e->depth - 1);
  put_char(e, ']');
}

static void put_colon(encoder *e) {
  if (e->indent) put(e, ": ", 2);
  else put_char(e, ':');
}

/* Object keys are strings; integer keys are written as their decimal text. */
static void write_key(encoder *e, int key_idx, frame *f) {
  lua_State *L = e->L;
  if (lua_type(L, key_idx) == LUA_TSTRING) {
    f->key = lua_tolstring(L, key_idx, &f->key_len);
    put_string(e, f->key, f->key_len, f);
  } else if (lua_isinteger(L, key_idx)) {
    f->key = NULL;
    f->index = lua_tointeger(L, key_idx);
    put_char(e, '"');
    put_integer(e, f->index);
    put_char(e, '"');
  } else {
    fail_at(e, f->parent, "cannot use a %s as an object key (strings and integers only)",
            luaL_typename(L, key_idx));
  }
}

static void write_object(encoder *e, int idx, frame *f) {
  lua_State *L = e->L;
  int first = 1;
  put_char(e, '{');
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (!first) put_char(e, ',');
    first = 0;
    newline(e, e->depth);
    write_key(e, -2, f);
    put_colon(e);
    encode_value(e, -1, f);
    lua_pop(L, 1);
  }
  if (!first) newline(e, e->depth - 1);
  put_char(e, '}');
}

typedef struct sorted_key {
  const char *text;  /* a string key (anchored in the keys table), or NULL: see digits */
  size_t len;
  lua_Integer slot;  /* where the key itself is in the keys table */
  char digits[24];
} sorted_key;

static const char *sorted_key_text(const sorted_key *k, size_t *len) {
  *len = k->len;
  return k->text ? k->text : k->digits;
}

static int compare_keys(const void *a, const void *b) {
  size_t la, lb;
  const char *sa = sorted_key_text(a, &la), *sb = sorted_key_text(b, &lb);
  int c = memcmp(sa, sb, la < lb ? la : lb);
  return c ? c : (la > lb) - (la < lb);
}

static size_t count_keys(lua_State *L, int idx) {
  size_t n = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    n++;
  }
  return n;
}

/* Fills keys (an array of the keys, at keys_idx) and k, one per key, unsorted. */
static void collect_keys(encoder *e, int idx, int keys_idx, sorted_key *k, frame *f) {
  lua_State *L = e->L;
  lua_Integer slot = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    sorted_key *key = &k[slot];
    key->slot = ++slot;
    if (lua_type(L, -1) == LUA_TSTRING) {
      key->text = lua_tolstring(L, -1, &key->len);
    } else if (lua_isinteger(L, -1)) {
      key->text = NULL;
      long long v = (long long)lua_tointeger(L, -1);
      key->len = (size_t)snprintf(key->digits, sizeof key->digits, "%lld", v);
    } else {
      fail_at(e, f->parent, "cannot use a %s as an object key (strings and integers only)",
              luaL_typename(L, -1));
    }
    lua_pushvalue(L, -1);
    lua_rawseti(L, keys_idx, slot);
  }
}

static void write_sorted_object(encoder *e, int idx, frame *f) {
  lua_State *L = e->L;
  size_t n = count_keys(L, idx);
  if (n > (size_t)INT32_MAX) luaL_error(L, "json.encode: too many keys to sort");
  lua_createtable(L, (int)n, 0);
  int keys_idx = lua_gettop(L);
  sorted_key *keys = lua_newuserdatauv(L, n * sizeof *keys, 0);
  collect_keys(e, idx, keys_idx, keys, f);
  if (n > 1) qsort(keys, n, sizeof *keys, compare_keys);
  put_char(e, '{');
  for (size_t i = 0; i < n; i++) {
    if (i > 0) put_char(e, ',');
    newline(e, e->depth);
    lua_rawgeti(L, keys_idx, keys[i].slot);
    write_key(e, -1, f);
    put_colon(e);
    lua_rawget(L, idx);
    encode_value(e, -1, f);
    lua_pop(L, 1);
  }
  if (n > 0) newline(e, e->depth - 1);
  put_char(e, '}');
  lua_pop(L, 2);
}

static void check_ancestors(encoder *e, const void *table, const frame *at) {
  for (const frame *f = at; f; f = f->parent) {
    if (f->table != table) continue;
    lua_State *L = e->L;
    luaL_checkstack(L, 4, "json.encode");
    const char *ancestor = push_path(L, f->parent);
    luaL_error(L, "json.encode: a cycle: %s refers back to %s", push_path(L, at), ancestor);
  }
  if (e->depth >= NESTING_LIMIT)
    luaL_error(e->L, "json.encode: tables nested deeper than %d levels", NESTING_LIMIT);
}

static void encode_table(encoder *e, int idx, const frame *at) {
  lua_State *L = e->L;
  frame f = {.parent = at, .table = lua_topointer(L, idx)};
  check_ancestors(e, f.table, at);
  luaL_checkstack(L, 6, "json.encode");
  lua_Unsigned n;
  int kind = table_kind(L, idx, &n);
  e->depth++;
  if (kind == AS_ARRAY) write_array(e, idx, n, &f);
  else if (e->sort_keys) write_sorted_object(e, idx, &f);
  else write_object(e, idx, &f);
  e->depth--;
}

static void encode_value(encoder *e, int idx, const frame *at) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: put(e, "null", 4); return;
    case LUA_TBOOLEAN:
      if (lua_toboolean(L, idx)) put(e, "true", 4);
      else put(e, "false", 5);
      return;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) put_integer(e, lua_tointeger(L, idx));
      else put_float(e, lua_tonumber(L, idx), at);
      return;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      put_string(e, s, len, at);
      return;
    }
    case LUA_TTABLE: encode_table(e, lua_absindex(L, idx), at); return;
    case LUA_TUSERDATA:
      if (lua_rawequal(L, idx, NULL_IDX)) {
        put(e, "null", 4);
        return;
      }
      break;
    default: break;
  }
  fail_at(e, at, "cannot encode a %s", luaL_typename(L, idx));
}

static void encode_options(lua_State *L, encoder *e) {
  if (lua_isnoneornil(L, 2)) return;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_pushnil(L);
  while (lua_next(L, 2)) {
    const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
    if (strcmp(name, "sort_keys") == 0) {
      e->sort_keys = lua_toboolean(L, -1);
    } else if (strcmp(name, "indent") == 0) {
      int ok;
      lua_Integer indent = lua_tointegerx(L, -1, &ok);
      if (!ok || indent < 0 || indent > MAX_INDENT)
        luaL_error(L, "json.encode: opts.indent must be an integer from 0 to %d", MAX_INDENT);
      e->indent = (int)indent;
    } else {
      luaL_error(L, "json.encode: unknown option %s", luaL_tolstring(L, -2, NULL));
    }
    lua_pop(L, 1);
  }
}

/* json.encode(value [, {sort_keys = bool, indent = n}]) -> string; raises on what JSON
 * cannot hold. */
static int l_encode(lua_State *L) {
  luaL_checkany(L, 1);
  encoder e = {.L = L};
  encode_options(L, &e);
  lua_settop(L, 2);
  char first[1024];
  e.out = lua_newuserdatauv(L, sizeof *e.out, 0);
  *e.out = (output){.data = first, .cap = sizeof first};
  lua_pushvalue(L, OUTPUT_BOX_MT_IDX);
  lua_setmetatable(L, -2);
  lua_toclose(L, 3);
  encode_value(&e, 1, NULL);
  lua_pushlstring(L, e.out->data, e.out->len);
  lua_closeslot(L, 3);
  return 1;
}

/* ---- marks and null ---- */

static int mark(lua_State *L, int mt_idx) {
  if (lua_isnoneornil(L, 1)) {
    lua_settop(L, 0);
    lua_newtable(L);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
    return luaL_error(L, "cannot change a protected metatable");
  lua_pushvalue(L, mt_idx);
  lua_setmetatable(L, 1);
  return 1;
}

/* json.array([t]) -> t, written as a JSON array even when empty. */
static int l_array(lua_State *L) { return mark(L, ARRAY_MT_IDX); }

/* json.object([t]) -> t, written as a JSON object even when it looks like a sequence. */
static int l_object(lua_State *L) { return mark(L, OBJECT_MT_IDX); }

static int null_tostring(lua_State *L) {
  lua_pushliteral(L, "null");
  return 1;
}

static void push_null(lua_State *L) {
  lua_newuserdatauv(L, 0, 0);
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, null_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "json.null");
  lua_setfield(L, -2, "__name");
  lua_setmetatable(L, -2);
}

static void push_marker(lua_State *L, const char *type) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, type);
  lua_setfield(L, -2, "__jsontype");
  lua_pushfstring(L, "json.%s", type);
  lua_setfield(L, -2, "__name");
}

/* A metatable whose __close and __gc free what a box owns, on every way out. */
static void push_box_mt(lua_State *L, lua_CFunction free_box) {
  lua_createtable(L, 0, 2);
  lua_pushcfunction(L, free_box);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, free_box);
  lua_setfield(L, -2, "__gc");
}

static const luaL_Reg json_functions[] = {
  {"decode", l_decode}, {"encode", l_encode}, {"array", l_array}, {"object", l_object},
  {NULL, NULL}};

int luaopen_vq_core_json(lua_State *L) {
  lua_createtable(L, 0, 8);
  push_null(L);
  push_marker(L, "array");
  push_marker(L, "object");
  push_box_mt(L, free_decode_box);
  push_box_mt(L, free_output_box);
  lua_pushvalue(L, -5);
  lua_setfield(L, -7, "null");
  lua_pushvalue(L, -4);
  lua_setfield(L, -7, "array_mt");
  lua_pushvalue(L, -3);
  lua_setfield(L, -7, "object_mt");
  luaL_setfuncs(L, json_functions, UPVALUES);
  return 1;
}
