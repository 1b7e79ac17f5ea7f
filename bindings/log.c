/* log: levels, the console (colour and aligned step markers on a tty, plain otherwise),
 * a JSON-lines audit file, and the redaction registry every byte of output goes through. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cJSON.h>
#include <lauxlib.h>

#include "bindings.h"
#include "internal.h"

enum { LEVEL_DEBUG, LEVEL_INFO, LEVEL_WARN, LEVEL_ERROR };
static const char *const level_names[] = {"debug", "info", "warn", "error", NULL};
static const char *const level_colours[] = {"\033[2m", "\033[32m", "\033[33m", "\033[1;31m"};
#define RESET "\033[0m"

static vq_runtime *runtime(lua_State *L) { return vq_from_lua(L); }

/* ---- redaction ---- */

/* Standard base64 with padding, as Kubernetes writes Secret data. (Eight lines here
 * keep OpenSSL, and its load time, out of every start of vqlua.) */
static size_t base64_encode(const unsigned char *in, size_t len, char *out) {
  static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  size_t o = 0;
  for (size_t i = 0; i < len; i += 3) {
    unsigned v = (unsigned)in[i] << 16 | (i + 1 < len ? (unsigned)in[i + 1] << 8 : 0) |
                 (i + 2 < len ? in[i + 2] : 0);
    out[o++] = digits[v >> 18 & 63];
    out[o++] = digits[v >> 12 & 63];
    out[o++] = i + 1 < len ? digits[v >> 6 & 63] : '=';
    out[o++] = i + 2 < len ? digits[v & 63] : '=';
  }
  return o;
}

static int add_secret(vq_runtime *rt, const char *s, size_t len) {
  if (vq_redactor_add(&rt->redactor, s, len) != 0) return -1;
  /* Secrets travel base64-encoded in Kubernetes Secrets: mask that form too. */
  if (len == 0 || len >= (1u << 20)) return 0;
  size_t cap = 4 * ((len + 2) / 3);
  char *b64 = malloc(cap);
  if (!b64) return -1;
  size_t n = base64_encode((const unsigned char *)s, len, b64);
  int rc = vq_redactor_add(&rt->redactor, b64, n);
  memset(b64, 0, cap);
  free(b64);
  return rc;
}

static int l_secret(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  if (add_secret(runtime(L), s, len) != 0) return luaL_error(L, "out of memory");
  lua_settop(L, 1);
  return 1;
}

static int l_redact(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  vq_push_redacted(L, s, len);
  return 1;
}

/* ---- console ---- */

static int use_colour(vq_runtime *rt, int fd) {
  return fd == 1 ? rt->color_stdout : rt->color_stderr;
}

static void clock_text(char *buf, size_t size) {
  time_t now = time(NULL);
  struct tm tm;
  localtime_r(&now, &tm);
  strftime(buf, size, "%H:%M:%S", &tm);
}

static void console_line(lua_State *L, int fd, const char *colour, const char *tag,
                         const char *text, size_t len) {
  vq_runtime *rt = runtime(L);
  char clock[16];
  clock_text(clock, sizeof clock);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (use_colour(rt, fd)) {
    luaL_addstring(&b, "\033[2m");
    luaL_addstring(&b, clock);
    luaL_addstring(&b, RESET " ");
    luaL_addstring(&b, colour);
    luaL_addstring(&b, tag);
    luaL_addstring(&b, RESET " ");
  } else {
    luaL_addstring(&b, clock);
    luaL_addchar(&b, ' ');
    luaL_addstring(&b, tag);
    luaL_addchar(&b, ' ');
  }
  luaL_addlstring(&b, text, len);
  luaL_addchar(&b, '\n');
  luaL_pushresult(&b);
  size_t out_len;
  const char *out = lua_tolstring(L, -1, &out_len);
  vq_console_write(rt, fd, out, out_len);
  lua_pop(L, 1);
}

/* ---- audit ---- */

static cJSON *to_json(lua_State *L, int idx, int depth);

static cJSON *table_to_json(lua_State *L, int idx, int depth) {
  idx = lua_absindex(L, idx);
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  cJSON *out = n > 0 ? cJSON_CreateArray() : cJSON_CreateObject();
  if (n > 0) {
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, i);
      cJSON_AddItemToArray(out, to_json(L, -1, depth + 1));
      lua_pop(L, 1);
    }
    return out;
  }
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) == LUA_TSTRING)
      cJSON_AddItemToObject(out, lua_tostring(L, -2), to_json(L, -1, depth + 1));
    lua_pop(L, 1);
  }
  return out;
}

static cJSON *to_json(lua_State *L, int idx, int depth) {
  switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN: return cJSON_CreateBool(lua_toboolean(L, idx));
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        char buf[32];
        snprintf(buf, sizeof buf, LUA_INTEGER_FMT, lua_tointeger(L, idx));
        return cJSON_CreateRaw(buf);
      }
      return cJSON_CreateNumber(lua_tonumber(L, idx));
    case LUA_TSTRING: return cJSON_CreateString(lua_tostring(L, idx));
    case LUA_TTABLE:
      if (depth < 16) {
        if (!luaL_getmetafield(L, idx, "__tostring")) return table_to_json(L, idx, depth);
        lua_pop(L, 1);
      }
      break; /* an error object or a deep table is written as its text */
    default:
      break;
  }
  {
      const char *s = luaL_tolstring(L, idx, NULL);
      cJSON *item = cJSON_CreateString(s);
      lua_pop(L, 1);
      return item;
  }
}

static void iso_time(char *buf, size_t size) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(buf, size, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(buf + n, size - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

/* One JSON line: {"ts", "run", "event", ...fields}, redacted like everything else. */
static void audit_write(lua_State *L, const char *event, int fields_idx) {
  vq_runtime *rt = runtime(L);
  if (!rt->audit) return;
  char ts[40];
  iso_time(ts, sizeof ts);
  cJSON *obj = cJSON_CreateObject();
  cJSON_AddStringToObject(obj, "ts", ts);
  cJSON_AddStringToObject(obj, "run", rt->run_id);
  cJSON_AddStringToObject(obj, "event", event);
  if (fields_idx) {
    fields_idx = lua_absindex(L, fields_idx);
    lua_pushnil(L);
    while (lua_next(L, fields_idx)) {
      if (lua_type(L, -2) == LUA_TSTRING) {
        const char *key = lua_tostring(L, -2);
        cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
        cJSON_AddItemToObject(obj, key, to_json(L, -1, 0));
      }
      lua_pop(L, 1);
    }
  }
  char *line = cJSON_PrintUnformatted(obj);
  cJSON_Delete(obj);
  if (!line) return;
  size_t out_len;
  char *masked = vq_redact(&rt->redactor, line, strlen(line), &out_len);
  if (masked || out_len != SIZE_MAX) {
    const char *text = masked ? masked : line;
    fprintf(rt->audit, "%s\n", text);
    fflush(rt->audit);
  }
  free(masked);
  free(line);
}

static int l_audit(lua_State *L) {
  const char *event = luaL_checkstring(L, 1);
  if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
  audit_write(L, event, lua_istable(L, 2) ? 2 : 0);
  return 0;
}

static int l_open_audit(lua_State *L) {
  vq_runtime *rt = runtime(L);
  const char *path = luaL_checkstring(L, 1);
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return vq_push_error(L, "io", "cannot open audit log %s: %s", path, strerror(errno));
  /* It may record what operators did to production: readable by its owner only. */
  if (fchmod(fd, 0600) != 0) {
    close(fd);
    return vq_push_error(L, "io", "cannot restrict %s to mode 0600: %s", path, strerror(errno));
  }
  FILE *f = fdopen(fd, "a");
  if (!f) {
    close(fd);
    return vq_push_error(L, "io", "cannot open audit log %s: %s", path, strerror(errno));
  }
  if (rt->audit) fclose(rt->audit);
  rt->audit = f;
  lua_pushboolean(L, 1);
  return 1;
}

static int l_close_audit(lua_State *L) {
  vq_runtime *rt = runtime(L);
  if (rt->audit) fclose(rt->audit);
  rt->audit = NULL;
  return 0;
}

/* ---- levels ---- */

/* The message: fmt formatted with the rest when there is a rest, else the value as text. */
static const char *message(lua_State *L, size_t *len) {
  if (lua_gettop(L) > 1) {
    lua_getglobal(L, "string");
    lua_getfield(L, -1, "format");
    lua_insert(L, 1);
    lua_pop(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
  }
  return luaL_tolstring(L, 1, len);
}

static int log_at(lua_State *L, int level) {
  vq_runtime *rt = runtime(L);
  int shown = level >= rt->log_level;
  if (!shown && !rt->audit) return 0;
  size_t len;
  const char *text = message(L, &len);
  if (shown)
    console_line(L, 2, level_colours[level], level == LEVEL_INFO ? "info " : level_names[level],
                 text, len);
  if (rt->audit && level >= LEVEL_INFO) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, level_names[level]);
    lua_setfield(L, -2, "level");
    lua_pushlstring(L, text, len);
    lua_setfield(L, -2, "msg");
    audit_write(L, "log", -1);
  }
  return 0;
}

static int l_debug(lua_State *L) { return log_at(L, LEVEL_DEBUG); }
static int l_info(lua_State *L) { return log_at(L, LEVEL_INFO); }
static int l_warn(lua_State *L) { return log_at(L, LEVEL_WARN); }
static int l_error(lua_State *L) { return log_at(L, LEVEL_ERROR); }

static int l_level(lua_State *L) {
  vq_runtime *rt = runtime(L);
  lua_pushstring(L, level_names[rt->log_level]);
  if (!lua_isnoneornil(L, 1)) rt->log_level = luaL_checkoption(L, 1, NULL, level_names);
  return 1;
}

/* ---- steps ---- */

static int l_step(lua_State *L) {
  vq_runtime *rt = runtime(L);
  size_t len;
  const char *title = luaL_checklstring(L, 1, &len);
  lua_Integer index = luaL_optinteger(L, 2, 0), total = luaL_optinteger(L, 3, 0);
  if (index > 0 && total > 0)
    lua_pushfstring(L, "==> [%d/%d] %s", (int)index, (int)total, title);
  else
    lua_pushfstring(L, "==> %s", title);
  size_t line_len;
  const char *line = lua_tolstring(L, -1, &line_len);
  if (rt->color_stderr) lua_pushfstring(L, "\033[1;36m%s" RESET "\n", line);
  else lua_pushfstring(L, "%s\n", line);
  size_t out_len;
  const char *out = lua_tolstring(L, -1, &out_len);
  vq_console_write(rt, 2, out, out_len);
  lua_createtable(L, 0, 3);
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "step");
  if (index > 0) {
    lua_pushinteger(L, index);
    lua_setfield(L, -2, "index");
  }
  audit_write(L, "step.begin", -1);
  return 0;
}

static const char *const step_results[] = {"ok", "skipped", "failed", "dry-run", "warn", NULL};
static const char *const step_marks[] = {"  ok  ", " skip ", " FAIL ", " dry  ", " warn "};
static const char *const step_colours[] = {"\033[32m", "\033[2m", "\033[1;31m", "\033[35m",
                                           "\033[33m"};

static int l_step_done(lua_State *L) {
  vq_runtime *rt = runtime(L);
  const char *title = luaL_checkstring(L, 1);
  int result = luaL_checkoption(L, 2, "ok", step_results);
  lua_Number seconds = luaL_optnumber(L, 3, -1);
  char duration[32] = "";
  if (seconds >= 0) snprintf(duration, sizeof duration, " (%.1fs)", (double)seconds);
  if (rt->color_stderr)
    lua_pushfstring(L, "[%s%s" RESET "] %s%s\n", step_colours[result], step_marks[result], title,
                    duration);
  else
    lua_pushfstring(L, "[%s] %s%s\n", step_marks[result], title, duration);
  size_t out_len;
  const char *out = lua_tolstring(L, -1, &out_len);
  vq_console_write(rt, 2, out, out_len);
  lua_createtable(L, 0, 3);
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "step");
  lua_pushstring(L, step_results[result]);
  lua_setfield(L, -2, "result");
  if (seconds >= 0) {
    lua_pushnumber(L, seconds);
    lua_setfield(L, -2, "seconds");
  }
  audit_write(L, "step.end", -1);
  return 0;
}

/* ---- plain output ---- */

/* write(...) to stdout, through redaction, with no decoration. */
static int l_write(lua_State *L) {
  vq_runtime *rt = runtime(L);
  luaL_Buffer b;
  int n = lua_gettop(L);
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; i++) {
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  size_t len;
  const char *text = lua_tolstring(L, -1, &len);
  vq_console_write(rt, 1, text, len);
  return 0;
}

static int l_print(lua_State *L) {
  int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; i++) {
    if (i > 1) luaL_addchar(&b, '\t');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_addchar(&b, '\n');
  luaL_pushresult(&b);
  size_t len;
  const char *text = lua_tolstring(L, -1, &len);
  vq_console_write(runtime(L), 1, text, len);
  return 0;
}

void vq_log_install_print(lua_State *L) {
  lua_pushcfunction(L, l_print);
  lua_setglobal(L, "print");
}

static int l_colour(lua_State *L) {
  vq_runtime *rt = runtime(L);
  lua_pushboolean(L, rt->color_stderr);
  if (!lua_isnoneornil(L, 1)) rt->color_stderr = rt->color_stdout = lua_toboolean(L, 1);
  return 1;
}

static int l_run_id(lua_State *L) {
  lua_pushstring(L, runtime(L)->run_id);
  return 1;
}

void vq_log_init(vq_runtime *rt) {
  int colour = rt->options.color;
  const char *no_colour = getenv("NO_COLOR");
  int auto_ok = !(no_colour && *no_colour);
  rt->color_stderr = colour > 0 || (colour == 0 && auto_ok && isatty(2));
  rt->color_stdout = colour > 0 || (colour == 0 && auto_ok && isatty(1));
  rt->log_level = rt->options.log_level > 0 ? rt->options.log_level - 1 : LEVEL_INFO;
  if (!rt->run_id[0]) {
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    size_t n = strftime(rt->run_id, sizeof rt->run_id, "%Y%m%dT%H%M%SZ", &tm);
    snprintf(rt->run_id + n, sizeof rt->run_id - n, "-%05d", (int)(getpid() % 100000));
  }
}

static const luaL_Reg log_functions[] = {
  {"debug", l_debug}, {"info", l_info}, {"warn", l_warn}, {"error", l_error},
  {"level", l_level}, {"step", l_step}, {"step_done", l_step_done},
  {"audit", l_audit}, {"open_audit", l_open_audit}, {"close_audit", l_close_audit},
  {"secret", l_secret}, {"redact", l_redact}, {"write", l_write}, {"print", l_print},
  {"colour", l_colour}, {"run_id", l_run_id}, {NULL, NULL}};

int luaopen_vq_core_log(lua_State *L) {
  vq_runtime *rt = runtime(L);
  if (rt->options.audit_path && !rt->audit) {
    lua_pushcfunction(L, l_open_audit);
    lua_pushstring(L, rt->options.audit_path);
    lua_call(L, 1, 2);
    if (lua_isnil(L, -2)) luaL_error(L, "%s", luaL_tolstring(L, -1, NULL));
    lua_pop(L, 2);
  }
  luaL_newlib(L, log_functions);
  return 1;
}
