/* yaml through its Lua API, from C: what must hold whatever else changes. Bad input is an error
 * with a position (code "yaml"), never a crash, a hang or a leak (run under ASan by
 * `make asan-test`); libyaml's marks count characters, edits work in bytes; running out of
 * memory at any allocation leaves nothing behind. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>

#include "check.h"
#include "vq.h"


static double seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int call_yaml(lua_State *L, const char *fn, int nargs, int nresults) {
  return call_field(L, "yaml", fn, nargs, nresults);
}

/* Decodes text; on an error, fills line and column and returns 0. */
static int decode(lua_State *L, const char *text, size_t len, long *line, long *column) {
  lua_pushlstring(L, text, len);
  if (!call_yaml(L, "decode", 1, 2)) return -1;
  int ok = !lua_isnil(L, -2);
  if (!ok) {
    CHECK(lua_istable(L, -1));
    lua_getfield(L, -1, "code");
    CHECK(lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "yaml") == 0);
    lua_getfield(L, -2, "line");
    lua_getfield(L, -3, "column");
    *line = (long)lua_tointeger(L, -2);
    *column = (long)lua_tointeger(L, -1);
    lua_pop(L, 3);
  }
  lua_pop(L, 2);
  return ok;
}

static void expect_error_in(lua_State *L, const char *text, size_t len, long line, long column) {
  long l = 0, c = 0;
  int ok = decode(L, text, len, &l, &c);
  if (ok != 0 || l != line || c != column) {
    fprintf(stderr, "decode of %s: expected an error at %ld:%ld, got %s %ld:%ld\n", text, line,
            column, ok ? "success" : "an error at", l, c);
    failures++;
  }
}

static void expect_error_at(lua_State *L, const char *text, long line, long column) {
  expect_error_in(L, text, strlen(text), line, column);
}

static void test_malformed(lua_State *L) {
  expect_error_at(L, "a: b: c\n", 1, 5);
  expect_error_at(L, "vantiq:\n  image:\n    tag: 1\n   bad: 2\n", 4, 4);
  expect_error_at(L, "key: [1, 2\n", 2, 1);
  expect_error_at(L, "a: 'unterminated\n", 2, 1);
  expect_error_at(L, "a: \"\\q\"\n", 1, 5);
  expect_error_at(L, "\tkey: x\n", 1, 1);
  expect_error_at(L, "a: *nope\n", 1, 4);
  expect_error_at(L, "{a: 1, a: 2}\n", 1, 8);
  expect_error_at(L, "a: 1\nb: 2\na: 3\n", 3, 1);
  expect_error_at(L, "? [a]\n: b\n", 1, 3);
  expect_error_at(L, "x: !!int nope\n", 1, 4);
  expect_error_at(L, "a: \xff\n", 1, 4);
  expect_error_in(L, "a: b\0c\n", 7, 1, 5);
  /* columns count characters: "キー: 値: x" fails at the second ':', character 6 (byte 13) */
  expect_error_at(L, "# 日本語のコメント\nキー: 値: x\n", 2, 6);
}

static void test_billion_laughs(lua_State *L) {
  const char *lol =
      "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
      "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
      "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
      "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
      "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
      "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
      "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
      "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
      "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n";
  long line = 0, column = 0;
  double start = seconds();
  CHECK(decode(L, lol, strlen(lol), &line, &column) == 0);
  CHECK(line >= 6 && line <= 9);
  CHECK(seconds() - start < 5.0);
  /* a few aliases are fine */
  const char *few = "base: &b {cpu: 1}\nx: *b\ny: *b\n";
  CHECK(decode(L, few, strlen(few), &line, &column) == 1);
}

static char *repeat(const char *unit, size_t times, const char *tail) {
  size_t n = strlen(unit), t = strlen(tail);
  char *s = malloc(n * times + t + 1);
  if (!s) abort();
  for (size_t i = 0; i < times; i++) memcpy(s + i * n, unit, n);
  memcpy(s + n * times, tail, t + 1);
  return s;
}

static void test_deep_nesting(lua_State *L) {
  long line, column;
  static const char *const units[] = {"[", "{a: ", "- ", "a:\n "};
  for (size_t i = 0; i < sizeof units / sizeof *units; i++) {
    char *deep = repeat(units[i], 100000, "x\n");
    double start = seconds();
    CHECK(decode(L, deep, strlen(deep), &line, &column) == 0);
    CHECK(seconds() - start < 5.0);
    lua_pushstring(L, deep);
    lua_pushstring(L, "a");
    lua_pushstring(L, "b");
    if (call_yaml(L, "edit", 3, 2)) {
      CHECK(lua_isnil(L, -2));
      lua_pop(L, 2);
    } else {
      failures++;
    }
    free(deep);
  }
  /* an alias may not nest deeper than the limit either */
  char *opening = repeat("[", 400, ""), *closing = repeat("]", 400, "");
  size_t cap = 4 * 1024;
  char *chain = malloc(cap);
  if (!chain) abort();
  snprintf(chain, cap, "a: &a %sx%s\nb: &b %s*a%s\n", opening, closing, opening, closing);
  CHECK(decode(L, chain, strlen(chain), &line, &column) == 0);
  CHECK(line == 2);
  free(opening);
  free(closing);
  free(chain);
  /* encode refuses deep and cyclic tables */
  CHECK(luaL_dostring(L, "local t = {} local c = t for i = 1, 100000 do c.x = {} c = c.x end "
                         "local s, e = yaml.encode(t) assert(s == nil and e.code == 'yaml') "
                         "local cyc = {} cyc.self = cyc "
                         "s, e = yaml.encode(cyc) assert(s == nil and e.code == 'yaml')") == LUA_OK);
}

/* Runs a chunk that returns a string; compares it with expected. */
static void expect_string(lua_State *L, const char *chunk, const char *expected) {
  if (luaL_dostring(L, chunk) != LUA_OK) {
    fprintf(stderr, "chunk failed: %s\n", lua_tostring(L, -1));
    failures++;
  } else if (!lua_isstring(L, -1) || strcmp(lua_tostring(L, -1), expected) != 0) {
    fprintf(stderr, "expected [%s], got [%s]\n", expected, luaL_tolstring(L, -1, NULL));
    lua_pop(L, 1);
    failures++;
  }
  lua_settop(L, 0);
}

static void test_characters_and_bytes(lua_State *L) {
  /* the value sits after multibyte text on earlier lines and on its own line */
  expect_string(L,
                "return (yaml.edit('# 日本語のコメント\\nキー: 値  # コメント\\nタグ: \"1.0\"  # 版\\n', "
                "'タグ', '2.0'))",
                "# 日本語のコメント\nキー: 値  # コメント\nタグ: \"2.0\"  # 版\n");
  expect_string(L, "return (yaml.edit('キー: 値  # コメント\\n', 'キー', '新しい値'))",
                "キー: 新しい値  # コメント\n");
  /* four-byte characters and a BOM */
  expect_string(L, "return (yaml.edit('\\239\\187\\191# 😀😀 絵文字\\nb: x # 😀\\nc: 1\\n', 'c', 2))",
                "\xEF\xBB\xBF# 😀😀 絵文字\nb: x # 😀\nc: 2\n");
  expect_string(L, "return (yaml.edit('a: \"😀\"\\r\\nb: 値\\r\\n', 'b', 'ü'))",
                "a: \"😀\"\r\nb: ü\r\n");
  /* scan's byte offsets agree with string.find's */
  expect_string(L,
                "local core = require 'vq.core.yaml' "
                "local t = '# 説明\\nlist:\\n- 一: 二\\n- \"三\"\\n' "
                "local root = core.scan(t).docs[1].root "
                "local item = root.values[1].items[2] "
                "local key = root.values[1].items[1].keys[1] "
                "return t:sub(item.s, item.e - 1) .. '|' .. t:sub(key.s, key.e - 1) .. '|' .. key.col",
                "\"三\"|一|3");
}

/* ---- out of memory at every allocation: the __gc of libyaml's objects must run ---- */

static void test_out_of_memory(lua_State *L) {
  CHECK(luaL_dostring(L,
                      "local f = assert(io.open('spec/fixtures/yaml/deploy.yaml', 'rb')) "
                      "oom_text = f:read('a') f:close() "
                      "oom_run = function() "
                      "  yaml.decode(oom_text) "
                      "  yaml.encode({a = {1, 2, 'x'}, b = 'no'}) "
                      "  yaml.edit(oom_text, 'vantiq.image.tag', '1.30') "
                      "  return yaml.decode('a: \\'unterminated') "
                      "end") == LUA_OK);
  CHECK(fail_each_allocation(L, "oom_run") >= 0);
}

/* ---- garbage in: never a crash ---- */

static unsigned long next_random(unsigned long *state) {
  *state = *state * 6364136223846793005UL + 1442695040888963407UL;
  return *state >> 33;
}

static void test_mutations(lua_State *L) {
  CHECK(luaL_dostring(L,
                      "local f = assert(io.open('spec/fixtures/yaml/deploy.yaml', 'rb')) "
                      "fuzz_text = f:read('a') f:close() "
                      "fuzz_run = function(t) "
                      "  local v, e = yaml.decode(t) "
                      "  if v == nil then assert(e.code == 'yaml' and e.line and e.column, tostring(e)) end "
                      "  local r, e2 = yaml.edit(t, 'vantiq.image.tag', '1.30') "
                      "  if r == nil then assert(type(e2.code) == 'string') end "
                      "  require('vq.core.yaml').scan(t) "
                      "  yaml.decode_all(t, {schema = 'core'}) "
                      "end") == LUA_OK);
  lua_getglobal(L, "fuzz_text");
  size_t len;
  const char *original = lua_tolstring(L, -1, &len);
  char *buf = malloc(len + 16);
  unsigned long state = 42;
  static const char bytes[] = "\n\r\t :-[]{}&*!|>'\"#%@,?\xE3\x81\x82\xFF\x80";
  for (int round = 0; round < 1500; round++) {
    memcpy(buf, original, len);
    size_t n = len;
    for (int edits = 1 + (int)(next_random(&state) % 4); edits > 0; edits--) {
      size_t at = next_random(&state) % n;
      buf[at] = bytes[next_random(&state) % (sizeof bytes - 1)];
    }
    call_with_bytes(L, "fuzz_run", buf, n, round);
  }
  free(buf);
  lua_pop(L, 1);
}

int main(void) {
  vq_runtime *rt = vq_new(&(vq_options){.color = -1});
  lua_State *L = vq_lua(rt);
  if (luaL_dostring(L, "yaml = require 'yaml'") != LUA_OK) {
    fprintf(stderr, "require 'yaml': %s\n", lua_tostring(L, -1));
    return 1;
  }
  test_malformed(L);
  test_billion_laughs(L);
  test_deep_nesting(L);
  test_characters_and_bytes(L);
  test_out_of_memory(L);
  test_mutations(L);
  lua_settop(L, 0);
  vq_close(rt);
  if (failures) fprintf(stderr, "%d yaml checks failed\n", failures);
  else printf("yaml_test: all checks passed\n");
  return failures ? 1 : 0;
}
