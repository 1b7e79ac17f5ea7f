/* json through its Lua API, from C: bad input is nil plus an error table (code "json", a
 * 1-based offset, line and column), never a crash, a hang or a leak (run under ASan by
 * `make asan-test`); numbers and strings with NUL bytes survive a round trip exactly; running
 * out of memory at any allocation leaves nothing behind. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <lauxlib.h>

#include "check.h"
#include "vq.h"


static int call_json(lua_State *L, const char *fn, int nargs, int nresults) {
  return call_field(L, "json", fn, nargs, nresults);
}

typedef struct json_error {
  long offset, line, column;
  char reason[160];
} json_error;

static long integer_field(lua_State *L, const char *name) {
  lua_getfield(L, -1, name);
  long v = lua_isinteger(L, -1) ? (long)lua_tointeger(L, -1) : -1;
  lua_pop(L, 1);
  return v;
}

/* Decodes text; 1 with the value left on the stack, or 0 with *err filled (nothing left). */
static int decode(lua_State *L, const char *text, size_t len, json_error *err) {
  int top = lua_gettop(L);
  lua_pushlstring(L, text, len);
  if (!call_json(L, "decode", 1, 2)) {
    failures++;
    return 0;
  }
  if (!lua_isnil(L, -2)) {
    lua_pop(L, 1);
    CHECK(lua_gettop(L) == top + 1);
    return 1;
  }
  CHECK(lua_istable(L, -1));
  lua_getfield(L, -1, "code");
  CHECK(lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "json") == 0);
  lua_pop(L, 1);
  lua_getfield(L, -1, "reason");
  snprintf(err->reason, sizeof err->reason, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
  lua_pop(L, 1);
  err->offset = integer_field(L, "offset");
  err->line = integer_field(L, "line");
  err->column = integer_field(L, "column");
  CHECK(err->offset >= 1 && err->offset <= (long)len + 1);
  CHECK(err->line >= 1 && err->column >= 1);
  lua_pop(L, 2);
  CHECK(lua_gettop(L) == top);
  return 0;
}

/* The text is rejected at offset (1-based) with a reason containing `reason`. */
static void expect_error(lua_State *L, const char *text, long offset, const char *reason) {
  json_error err = {0};
  if (decode(L, text, strlen(text), &err)) {
    fprintf(stderr, "accepted: %s\n", text);
    lua_pop(L, 1);
    failures++;
    return;
  }
  if (err.offset != offset || !strstr(err.reason, reason)) {
    fprintf(stderr, "%s: offset %ld, reason \"%s\"; expected offset %ld, \"%s\"\n", text,
            err.offset, err.reason, offset, reason);
    failures++;
  }
}

/* Runs a chunk that must not raise. */
static void run(lua_State *L, const char *chunk) {
  if (luaL_dostring(L, chunk) != LUA_OK) {
    fprintf(stderr, "%s\n  raised: %s\n", chunk, lua_tostring(L, -1));
    lua_pop(L, 1);
    failures++;
  }
}

/* Encodes the value the chunk returns; the text on the stack, or NULL (and the message in
 * `raised`) when encode raised. */
static const char *encode_chunk(lua_State *L, const char *chunk, char *raised, size_t size) {
  if (luaL_loadstring(L, chunk) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "%s: %s\n", chunk, lua_tostring(L, -1));
    failures++;
    lua_pop(L, 1);
    return NULL;
  }
  lua_getglobal(L, "json");
  lua_getfield(L, -1, "encode");
  lua_remove(L, -2);
  lua_insert(L, -2);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    snprintf(raised, size, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    return NULL;
  }
  return lua_tostring(L, -1);
}

/* ---- malformed input ---- */

static void test_malformed(lua_State *L) {
  expect_error(L, "", 1, "no JSON value");
  expect_error(L, " \n\t ", 5, "no JSON value");
  /* truncated */
  expect_error(L, "{\"a\": [1, 2", 12, "unexpected end");
  expect_error(L, "{\"a\":", 6, "unexpected end");
  expect_error(L, "\"abc", 1, "unterminated string");
  expect_error(L, "\"abc\\", 1, "unterminated string");
  expect_error(L, "[tru", 2, "invalid literal");
  /* trailing garbage */
  expect_error(L, "{} x", 4, "after the JSON value");
  expect_error(L, "[1]]", 4, "after the JSON value");
  expect_error(L, "1 2", 3, "after the JSON value");
  /* structure */
  expect_error(L, "[1 2]", 4, "expected ',' or ']'");
  expect_error(L, "[1,]", 4, "expected a value");
  expect_error(L, "{\"a\" 1}", 6, "expected ':'");
  expect_error(L, "{\"a\":1,}", 8, "expected a string key");
  expect_error(L, "{a:1}", 2, "expected a string key or '}'");
  expect_error(L, "{\"a\":1]", 7, "expected ',' or '}'");
  expect_error(L, "[}", 2, "expected a value or ']'");
  expect_error(L, "'single'", 1, "expected a value");
  /* bad escapes: cJSON itself reads \uZZZZ as U+0000 */
  expect_error(L, "\"a\\qb\"", 3, "invalid escape");
  expect_error(L, "\"\\uZZZZ\"", 2, "4 hex digits");
  expect_error(L, "\"\\u00e\"", 2, "4 hex digits");
  expect_error(L, "[\"\\u12\"]", 3, "4 hex digits");
  expect_error(L, "\"\\uD83D\"", 2, "high surrogate");
  expect_error(L, "\"\\uD83D\\u0041\"", 2, "high surrogate");
  expect_error(L, "\"\\uDE00\"", 2, "low surrogate");
  expect_error(L, "\"\\x41\"", 2, "invalid escape");
  /* what cJSON lets through: raw control bytes and bad UTF-8 in strings, odd white space */
  expect_error(L, "[\"a\tb\"]", 4, "byte 0x09 in a string");
  expect_error(L, "\"\xff\"", 2, "invalid UTF-8");
  expect_error(L, "\"\xc3\"", 2, "invalid UTF-8");
  expect_error(L, "\"\xed\xa0\x80\"", 2, "invalid UTF-8");
  expect_error(L, "\"\xf4\x90\x80\x80\"", 2, "invalid UTF-8");
  expect_error(L, "[1,\x0b" "2]", 4, "expected a value but found byte 0x0B");
  /* invalid numbers: cJSON's strtod takes 01, 1. and -.5 */
  expect_error(L, "[01]", 2, "invalid number");
  expect_error(L, "[1.]", 2, "invalid number");
  expect_error(L, "[-.5]", 2, "invalid number");
  expect_error(L, "[.5]", 2, "expected a value");
  expect_error(L, "[+1]", 2, "expected a value");
  expect_error(L, "[-]", 2, "invalid number");
  expect_error(L, "[1e]", 2, "invalid number");
  expect_error(L, "[1e+]", 2, "invalid number");
  expect_error(L, "[1.2.3]", 2, "invalid number");
  expect_error(L, "[0x10]", 3, "expected ',' or ']'");
  expect_error(L, "[NaN]", 2, "expected a value");
  expect_error(L, "[Infinity]", 2, "expected a value");
  expect_error(L, "[-Infinity]", 2, "invalid number");
  /* huge numbers: beyond a double is an error, beyond int64 a float */
  expect_error(L, "[1e400]", 2, "out of range");
  expect_error(L, "{\"n\": -1e999}", 7, "out of range");
  /* line and column */
  json_error err = {0};
  CHECK(!decode(L, "{\n  \"a\": 1,\n  \"b\": ?\n}", 22, &err));
  CHECK(err.line == 3 && err.column == 8 && err.offset == 20);
}

static void test_nesting(lua_State *L) {
  enum { LIMIT = 1000 };
  char text[2 * (LIMIT + 1) + 1];
  json_error err = {0};
  memset(text, '[', LIMIT);
  memset(text + LIMIT, ']', LIMIT);
  CHECK(decode(L, text, 2 * LIMIT, &err));
  lua_pop(L, 1);
  memset(text, '[', LIMIT + 1);
  memset(text + LIMIT + 1, ']', LIMIT + 1);
  CHECK(!decode(L, text, 2 * (LIMIT + 1), &err));
  CHECK(err.offset == LIMIT + 1 && strstr(err.reason, "nesting deeper than 1000"));
  /* objects count too */
  char objects[8 * (LIMIT + 1) + 1], *p = objects;
  for (int i = 0; i <= LIMIT; i++) p += sprintf(p, "{\"a\":");
  CHECK(!decode(L, objects, (size_t)(p - objects), &err));
  CHECK(strstr(err.reason, "nesting deeper"));
  /* far deeper: still an error, quickly */
  size_t deep = 1000000;
  char *many = malloc(deep);
  memset(many, '[', deep);
  CHECK(!decode(L, many, deep, &err) && strstr(err.reason, "nesting deeper"));
  free(many);
}

/* Every prefix of a valid document is an error; never a crash. */
static void test_every_prefix(lua_State *L) {
  static const char doc[] =
    "{\"kind\":\"Pod\",\"metadata\":{\"name\":\"web-0\",\"labels\":{\"app\":\"web\"}},"
    "\"spec\":{\"replicas\":3,\"ratio\":0.25,\"big\":9007199254740993,\"tags\":[\"a\\u00e9\\n\","
    "true,false,null,[],{}]}}";
  json_error err;
  for (size_t n = 0; n < sizeof doc - 1; n++) CHECK(!decode(L, doc, n, &err));
  CHECK(decode(L, doc, sizeof doc - 1, &err));
  lua_pop(L, 1);
}

/* ---- numbers ---- */

static void test_numbers(lua_State *L) {
  run(L,
      "local v = json.decode('{\"replicas\": 3, \"neg\": -7, \"f\": 2.5, \"e\": 1e3, \"z\": -0,"
      " \"two53p1\": 9007199254740993, \"max\": 9223372036854775807,"
      " \"min\": -9223372036854775808, \"over\": 9223372036854775808,"
      " \"under\": -9223372036854775809, \"wide\": 123456789012345678901234567890}') "
      "assert(math.type(v.replicas) == 'integer' and v.replicas == 3) "
      "assert(tostring(v.replicas) == '3') "
      "assert(math.type(v.neg) == 'integer' and v.neg == -7) "
      "assert(math.type(v.f) == 'float' and v.f == 2.5) "
      "assert(math.type(v.e) == 'integer' and v.e == 1000) "
      "assert(math.type(v.z) == 'integer' and v.z == 0) "
      "assert(v.two53p1 == 9007199254740993 and math.type(v.two53p1) == 'integer') "
      "assert(v.max == math.maxinteger and v.min == math.mininteger) "
      "assert(math.type(v.over) == 'float' and v.over == 2^63) "
      "assert(math.type(v.under) == 'float' and v.under == -2^63) "
      "assert(math.type(v.wide) == 'float' and v.wide == 1.2345678901234568e29)");
  run(L,
      "assert(json.encode(9007199254740993) == '9007199254740993') "
      "assert(json.encode(math.maxinteger) == '9223372036854775807') "
      "assert(json.encode(math.mininteger) == '-9223372036854775808') "
      "for _, x in ipairs({0.1, 1/3, -2.5e-300, 1e300, 2^63, 123.456, 5e-324}) do "
      "  local t = json.encode(x) "
      "  assert(json.decode(t) == x, t) "
      "end "
      "assert(json.encode(0.1) == '0.1' and json.encode(3.0) == '3')");
  char raised[256] = "";
  CHECK(!encode_chunk(L, "return {spec = {ratio = 0/0}}", raised, sizeof raised));
  CHECK(strstr(raised, "NaN") && strstr(raised, "value.spec.ratio"));
  CHECK(!encode_chunk(L, "return {math.huge}", raised, sizeof raised));
  CHECK(strstr(raised, "inf") && strstr(raised, "value[1]"));
  CHECK(!encode_chunk(L, "return -math.huge", raised, sizeof raised));
}

/* ---- strings with NUL bytes ---- */

static void test_nul_bytes(lua_State *L) {
  static const char with_nul[] = "a\0b\0";
  lua_getglobal(L, "json");
  lua_getfield(L, -1, "encode");
  lua_remove(L, -2);
  lua_pushlstring(L, with_nul, sizeof with_nul - 1);
  CHECK(lua_pcall(L, 1, 1, 0) == LUA_OK);
  size_t len;
  const char *text = lua_tolstring(L, -1, &len);
  CHECK(text && strcmp(text, "\"a\\u0000b\\u0000\"") == 0);
  json_error err;
  CHECK(decode(L, text, len, &err));
  const char *back = lua_tolstring(L, -1, &len);
  CHECK(back && len == sizeof with_nul - 1 && memcmp(back, with_nul, len) == 0);
  lua_pop(L, 2);
  /* in keys, next to escapes, and raw NUL bytes inside the JSON string */
  run(L,
      "local t = {['k\\0ey'] = 'v\\0\\n\\u{e9}\\u{1F600}', list = {'\\0', '', 'x\\0'}} "
      "local back = json.decode(json.encode(t)) "
      "assert(back['k\\0ey'] == t['k\\0ey'] and #back['k\\0ey'] == #t['k\\0ey']) "
      "assert(back.list[1] == '\\0' and back.list[2] == '' and back.list[3] == 'x\\0') "
      "assert(json.decode('\"a\\0b\"') == nil) "
      "assert(json.decode('[\"\\\\ud83d\\\\ude00\\\\u0000!\"]')[1] == '\\u{1F600}\\0!')");
}

/* ---- encode errors ---- */

static void test_encode_errors(lua_State *L) {
  char raised[256] = "";
  CHECK(!encode_chunk(L, "return {spec = {containers = {{hook = print}}}}", raised, sizeof raised));
  CHECK(strstr(raised, "cannot encode a function at value.spec.containers[1].hook"));
  CHECK(!encode_chunk(L, "local t = {a = {}} t.a.back = t return t", raised, sizeof raised));
  CHECK(strstr(raised, "cycle") && strstr(raised, "value.a.back"));
  CHECK(!encode_chunk(L, "return {name = 'ok\\xff'}", raised, sizeof raised));
  CHECK(strstr(raised, "invalid UTF-8") && strstr(raised, "value.name"));
  CHECK(!encode_chunk(L, "return {'\\xed\\xa0\\x80'}", raised, sizeof raised));  /* a surrogate */
  CHECK(!encode_chunk(L, "return {'\\xc0\\xaf'}", raised, sizeof raised));       /* overlong */
  CHECK(!encode_chunk(L, "return {[true] = 1}", raised, sizeof raised));
  CHECK(strstr(raised, "object key"));
  CHECK(!encode_chunk(L, "return {[1.5] = 1}", raised, sizeof raised));
  CHECK(!encode_chunk(L, "return coroutine.create(print)", raised, sizeof raised));
  CHECK(!encode_chunk(L, "return io.stdout", raised, sizeof raised));
  const char *deep = encode_chunk(L, "local t = {} for i = 1, 999 do t = {t} end return t",
                                  raised, sizeof raised);
  CHECK(deep != NULL);
  lua_pop(L, deep ? 1 : 0);
  CHECK(!encode_chunk(L, "local t = {} for i = 1, 1000 do t = {t} end return t", raised,
                      sizeof raised));
  CHECK(strstr(raised, "deeper than 1000"));
}

/* ---- garbage in: never a crash ---- */

static unsigned long next_random(unsigned long *state) {
  *state = *state * 6364136223846793005UL + 1442695040888963407UL;
  return *state >> 33;
}

static void test_mutations(lua_State *L) {
  run(L,
      "local f = assert(io.open('spec/fixtures/json/deployment.json', 'rb')) "
      "fuzz_text = f:read('a') f:close() "
      "fuzz_run = function(t) "
      "  local v, e = json.decode(t) "
      "  if v == nil then "
      "    assert(e.code == 'json' and e.offset and e.line and e.column, tostring(e)) "
      "  else json.decode(json.encode(v, {sort_keys = true, indent = 1})) end "
      "end");
  lua_getglobal(L, "fuzz_text");
  size_t len;
  const char *original = lua_tolstring(L, -1, &len);
  char *buf = malloc(len + 1);
  unsigned long state = 7;
  static const char bytes[] = "\"\\[]{},:0-.eE+ \nu\x00\xff\xc3tfn";
  for (int round = 0; round < 3000; round++) {
    memcpy(buf, original, len);
    for (int edits = 1 + (int)(next_random(&state) % 3); edits > 0; edits--)
      buf[next_random(&state) % len] = bytes[next_random(&state) % (sizeof bytes - 1)];
    call_with_bytes(L, "fuzz_run", buf, len, round);
  }
  free(buf);
  lua_pop(L, 1);
}

/* ---- out of memory at every allocation: what the codec owns must be freed ---- */

static void test_out_of_memory(lua_State *L) {
  /* The large array (over 32 KB) takes the member-by-member path. */
  run(L,
      "local f = assert(io.open('spec/fixtures/json/deployment.json', 'rb')) "
      "oom_text = f:read('a') f:close() "
      "oom_large = '[' .. string.rep('\"' .. string.rep('x', 1000) .. '\",', 40) "
      "  .. '{\"k\": [1, 2.5, null]}]' "
      "oom_run = function() "
      "  local v = json.decode(oom_text) "
      "  json.encode(v, {sort_keys = true, indent = 2}) "
      "  json.encode(json.decode(oom_large)) "
      "  return json.decode('[1, 2') "
      "end");
  long failed = fail_each_allocation(L, "oom_run");
  CHECK(failed >= 0);
  CHECK(failed >= 200); /* it failed at that many allocations before it got through */
  printf("out of memory at each of %ld allocations\n", failed);
}

/* cJSON's own allocations failing, one after another: decode raises "out of memory" and
 * frees what it holds. (The hooks are global: fine in this program.) */
static long cjson_allocations_left = -1;

static void *failing_malloc(size_t size) {
  if (cjson_allocations_left == 0) return NULL;
  if (cjson_allocations_left > 0) cjson_allocations_left--;
  return malloc(size);
}

static void test_cjson_out_of_memory(lua_State *L) {
  run(L,
      "local f = assert(io.open('spec/fixtures/json/deployment.json', 'rb')) "
      "cj_text = f:read('a') f:close() "
      "cj_large = '[' .. string.rep('{\"k\": \"' .. string.rep('x', 1000) .. '\"},', 40) .. '1]' "
      "cj_run = function() "
      "  assert(json.decode(cj_text).kind == 'Deployment') "
      "  assert(#json.decode(cj_large) == 41) "
      "end");
  cJSON_Hooks hooks = {failing_malloc, free};
  cJSON_InitHooks(&hooks);
  int completed = 0;
  long n = 0;
  for (; n < 100000 && !completed; n++) {
    lua_getglobal(L, "cj_run");
    cjson_allocations_left = n;
    int status = lua_pcall(L, 0, 0, 0);
    cjson_allocations_left = -1;
    if (status == LUA_OK) {
      completed = 1;
    } else {
      CHECK(strstr(lua_tostring(L, -1), "json.decode: out of memory"));
      lua_pop(L, 1);
    }
  }
  cJSON_InitHooks(NULL);
  CHECK(completed);
  CHECK(n > 100);
}

int main(void) {
  vq_runtime *rt = vq_new(&(vq_options){0});
  lua_State *L = vq_lua(rt);
  if (luaL_dostring(L, "json = require 'json'") != LUA_OK) {
    fprintf(stderr, "require 'json': %s\n", lua_tostring(L, -1));
    return 1;
  }
  test_malformed(L);
  test_nesting(L);
  test_every_prefix(L);
  test_numbers(L);
  test_nul_bytes(L);
  test_encode_errors(L);
  test_mutations(L);
  test_out_of_memory(L);
  test_cjson_out_of_memory(L);
  CHECK(lua_gettop(L) == 0);
  vq_close(rt);
  if (failures) fprintf(stderr, "%d json checks failed\n", failures);
  else printf("json_test: all checks passed\n");
  return failures ? 1 : 0;
}
