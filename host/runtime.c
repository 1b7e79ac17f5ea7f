/* The runtime: one loop, one Lua state, the options, and the way in and out. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>
#include <luv/luv.h>

#include "internal.h"

static const char RUNTIME_KEY = 'R';

vq_runtime *vq_from_lua(lua_State *L) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &RUNTIME_KEY);
  vq_runtime *rt = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return rt;
}

const char *vq_version(void) { return VQ_VERSION; }

lua_State *vq_lua(vq_runtime *rt) { return rt->L; }
uv_loop_t *vq_loop(vq_runtime *rt) { return &rt->loop; }

void vq_register(vq_runtime *rt, const char *name, lua_CFunction open) {
  lua_State *L = rt->L;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, open);
  lua_setfield(L, -2, name);
  lua_pop(L, 1);
}

/* ---- the library path ---- */

static int is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static void add_dir_entry(luaL_Buffer *b, const char *dir, size_t len, const char *pattern) {
  char path[4096];
  if (len == 0 || len >= sizeof path) return;
  memcpy(path, dir, len);
  path[len] = '\0';
  if (!is_dir(path)) return;
  luaL_addlstring(b, dir, len);
  luaL_addstring(b, pattern);
}

static void add_lib_dir(luaL_Buffer *b, const char *dir, size_t len) {
  add_dir_entry(b, dir, len, "/?.lua;");
  add_dir_entry(b, dir, len, "/?/init.lua;");
}

static void add_lib_list(luaL_Buffer *b, const char *list) {
  while (list && *list) {
    const char *colon = strchr(list, ':');
    size_t len = colon ? (size_t)(colon - list) : strlen(list);
    add_lib_dir(b, list, len);
    list = colon ? colon + 1 : NULL;
  }
}

/* The folder of the running binary, into buf. */
static int exe_dir(char *buf, size_t size) {
  if (uv_exepath(buf, &size) != 0) return 0;
  char *slash = strrchr(buf, '/');
  if (!slash) return 0;
  *slash = '\0';
  return 1;
}

/* Folders relative to the running binary: the build tree and an installed prefix. */
static void add_exe_relative(luaL_Buffer *b, const char *const *rel, size_t count,
                             const char *pattern) {
  char exe[4096];
  if (!exe_dir(exe, sizeof exe)) return;
  for (size_t i = 0; i < count; i++) {
    char dir[4096 + 32];
    int n = snprintf(dir, sizeof dir, "%s%s", exe, rel[i]);
    if (n > 0 && (size_t)n < sizeof dir) {
      if (pattern) add_dir_entry(b, dir, (size_t)n, pattern);
      else add_lib_dir(b, dir, (size_t)n);
    }
  }
}

static const char *const lua_dirs[] = {"/scripts/lib", "/../scripts/lib", "/../../scripts/lib",
                                       "/../share/vqlua/lib"};
static const char *const plugin_dirs[] = {"/lib", "/../lib", "/../lib/vqlua"};
/* The folder holding sim/ (the simulator), so that --rehearse can load it in-process. */
static const char *const sim_roots[] = {"/..", "/../..", "/../share/vqlua"};

static void add_sim_root(luaL_Buffer *b) {
  char exe[4096];
  if (!exe_dir(exe, sizeof exe)) return;
  for (size_t i = 0; i < sizeof sim_roots / sizeof *sim_roots; i++) {
    char dir[4096 + 32], sim[4096 + 40];
    int n = snprintf(dir, sizeof dir, "%s%s", exe, sim_roots[i]);
    snprintf(sim, sizeof sim, "%s/sim", dir);
    if (n > 0 && (size_t)n < sizeof dir && is_dir(sim)) {
      add_lib_dir(b, dir, (size_t)n); /* ?.lua and ?/init.lua: require "sim" is sim/init.lua */
      return;
    }
  }
}

/* libcurl links librtmp, which links GnuTLS, whose constructor initialises GnuTLS and
 * p11-kit's modules on load (~0.7 MB and a few files) although nothing here uses it.
 * Plugins load with GnuTLS's documented opt-out set, and only while they load, so child
 * processes never see it. */
static int load_plugin(lua_State *L) {
  int set = getenv("GNUTLS_NO_IMPLICIT_INIT") == NULL;
  if (set) setenv("GNUTLS_NO_IMPLICIT_INIT", "1", 0);
  int top = lua_gettop(L);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  int status = lua_pcall(L, top, LUA_MULTRET, 0);
  if (set) unsetenv("GNUTLS_NO_IMPLICIT_INIT");
  if (status != LUA_OK) return lua_error(L);
  return lua_gettop(L);
}

static void wrap_c_searcher(lua_State *L) {
  lua_getfield(L, -1, "searchers");
  lua_rawgeti(L, -1, 3); /* Lua's searcher of C libraries along cpath */
  lua_pushcclosure(L, load_plugin, 1);
  lua_rawseti(L, -2, 3);
  lua_pop(L, 1);
}

/* VQ_PATH, the embedder's folders, then scripts/lib next to the binary, the source tree
 * and the install prefix, in front of Lua's own path (so busted and friends still load). */
static void set_package_path(vq_runtime *rt) {
  lua_State *L = rt->L;
  luaL_Buffer b;
  lua_getglobal(L, "package");
  luaL_buffinit(L, &b);
  add_lib_list(&b, getenv("VQ_PATH"));
  add_lib_list(&b, rt->options.lib_path);
  add_exe_relative(&b, lua_dirs, sizeof lua_dirs / sizeof *lua_dirs, NULL);
  add_lib_dir(&b, VQ_SOURCE_LIB, strlen(VQ_SOURCE_LIB));
  add_lib_dir(&b, VQ_INSTALL_LIB, strlen(VQ_INSTALL_LIB));
  add_sim_root(&b);
  lua_getfield(L, -2, "path");
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  lua_setfield(L, -2, "path");
  /* The plugins: bindings over heavy libraries, loaded on first require. */
  luaL_buffinit(L, &b);
  add_exe_relative(&b, plugin_dirs, sizeof plugin_dirs / sizeof *plugin_dirs, "/?.so;");
  add_dir_entry(&b, VQ_INSTALL_CLIB, strlen(VQ_INSTALL_CLIB), "/?.so;");
  lua_getfield(L, -2, "cpath");
  luaL_addvalue(&b);
  luaL_pushresult(&b);
  lua_setfield(L, -2, "cpath");
  wrap_c_searcher(L);
  lua_pop(L, 1);
}

/* ---- luv on our loop ---- */

/* luv's default handler exits the process on an error in a callback; ours reports it and
 * lets the program end with a failure status. */
static int luv_callback(lua_State *L, int nargs, int nresults, int flags) {
  (void)flags;
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, vq_traceback_handler);
  lua_insert(L, base);
  int status = lua_pcall(L, nargs, nresults, base);
  if (status == LUA_OK) {
    lua_remove(L, base);
    return nresults == LUA_MULTRET ? lua_gettop(L) - base + 1 : nresults;
  }
  vq_runtime *rt = vq_from_lua(L);
  const char *msg = lua_tostring(L, -1);
  char head[] = "vqlua: error in a luv callback: ";
  vq_console_write(rt, 2, head, sizeof head - 1);
  vq_console_write(rt, 2, msg ? msg : "(no message)", msg ? strlen(msg) : 12);
  vq_console_write(rt, 2, "\n", 1);
  rt->callback_errors++;
  rt->exit_status = 1;
  lua_settop(L, base - 1);
  return -status;
}

static int refuse_loop_control(lua_State *L) {
  return luaL_error(L, "the host runs the loop: uv.run/uv.stop/uv.loop_close are not for "
                       "scripts (tasks and luv callbacks already run on it)");
}

static int open_bound_luv(lua_State *L) {
  luaopen_luv(L);
  static const char *const refused[] = {"run", "stop", "loop_close"};
  for (size_t i = 0; i < sizeof refused / sizeof *refused; i++) {
    lua_pushcfunction(L, refuse_loop_control);
    lua_setfield(L, -2, refused[i]);
  }
  return 1;
}

static void open_luv(vq_runtime *rt) {
  lua_State *L = rt->L;
  luv_set_loop(L, &rt->loop);
  luv_set_callback(L, luv_callback);
  luaL_requiref(L, "luv", open_bound_luv, 0);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  lua_pushvalue(L, -3);
  lua_setfield(L, -2, "uv");
  lua_pop(L, 3);
}

/* os.exit from inside a task cannot close the state it runs on: flush what we own and
 * leave (the kernel closes sockets and files; the audit log is flushed per line). */
static int os_exit(lua_State *L) {
  int status;
  if (lua_isboolean(L, 1)) status = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else status = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
  vq_runtime *rt = vq_from_lua(L);
  if (rt->audit) fflush(rt->audit);
  fflush(NULL);
  exit(status);
}

static void replace_os_exit(lua_State *L) {
  lua_getglobal(L, "os");
  lua_pushcfunction(L, os_exit);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);
}

/* ---- create and close ---- */

vq_runtime *vq_new(const vq_options *options) {
  vq_runtime *rt = calloc(1, sizeof *rt);
  if (!rt) return NULL;
  if (options) rt->options = *options;
  if (uv_loop_init(&rt->loop) != 0) {
    free(rt);
    return NULL;
  }
  rt->loop.data = rt;
  rt->L = luaL_newstate();
  if (!rt->L) {
    uv_loop_close(&rt->loop);
    free(rt);
    return NULL;
  }
  lua_State *L = rt->L;
  *(vq_task **)lua_getextraspace(L) = NULL;
  lua_pushlightuserdata(L, rt);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &RUNTIME_KEY);
  luaL_openlibs(L);
  replace_os_exit(L);
  vq_error_init(L);
  vq_sched_init(rt);
  vq_signal_init(rt);
  set_package_path(rt);
  open_luv(rt);
  vq_open_modules(rt);
  return rt;
}

/* What is left on the loop now belongs to luv: close it through luv, so that the
 * handles' Lua references go too. */
static void close_luv_handles(vq_runtime *rt) {
  static const char closer[] =
    "local uv = require 'luv'\n"
    "uv.walk(function(h) if not h:is_closing() then h:close() end end)\n";
  if (luaL_dostring(rt->L, closer) != LUA_OK) lua_pop(rt->L, 1);
}

void vq_on_close(vq_runtime *rt, void (*fn)(void *ud), void *ud) {
  vq_close_hook *h = malloc(sizeof *h);
  if (!h) abort();
  *h = (vq_close_hook){fn, ud, rt->close_hooks};
  rt->close_hooks = h;
}

void **vq_module_slot(lua_State *L, const char *key) {
  if (vq_from_lua(L)->closing) luaL_error(L, "the runtime is closing (%s)", key);
  lua_getfield(L, LUA_REGISTRYINDEX, key);
  void **slot = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (slot) return slot;
  slot = lua_newuserdatauv(L, sizeof *slot, 0);
  *slot = NULL;
  lua_setfield(L, LUA_REGISTRYINDEX, key);
  return slot;
}

static void run_close_hooks(vq_runtime *rt) {
  while (rt->close_hooks) {
    vq_close_hook *h = rt->close_hooks;
    rt->close_hooks = h->next;
    h->fn(h->ud);
    free(h);
  }
}

void vq_close(vq_runtime *rt) {
  if (!rt) return;
  rt->closing = 1;
  vq_sched_close(rt);
  run_close_hooks(rt);
  vq_signal_close(rt);
  uv_run(&rt->loop, UV_RUN_NOWAIT); /* our own handles' close callbacks */
  close_luv_handles(rt);
  uv_run(&rt->loop, UV_RUN_DEFAULT);
  lua_close(rt->L);
  uv_run(&rt->loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&rt->loop) != 0) fprintf(stderr, "vqlua: handles left open at exit\n");
  if (rt->audit) fclose(rt->audit);
  vq_redactor_free(&rt->redactor);
  free(rt->lib_path);
  free(rt);
}

static int report_load_error(vq_runtime *rt) {
  const char *msg = lua_tostring(rt->L, -1);
  vq_console_write(rt, 2, "vqlua: ", 7);
  vq_console_write(rt, 2, msg, strlen(msg));
  vq_console_write(rt, 2, "\n", 1);
  lua_pop(rt->L, 1);
  return 1;
}

/* The REPL lives in the plugin vq.core.repl (it links libedit, which scripts never need). */
int vq_repl_run(vq_runtime *rt) {
  lua_State *L = rt->L;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "vq.core.repl");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) return report_load_error(rt);
  lua_getfield(L, -1, "run");
  lua_remove(L, -2);
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) return report_load_error(rt);
  int status = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return status;
}

int vq_step(vq_runtime *rt, uv_run_mode mode) { return uv_run(&rt->loop, mode); }

/* ---- running chunks as the main task ---- */

static void report_main_failure(vq_runtime *rt, int task_idx) {
  lua_State *L = rt->L;
  vq_task *t = lua_touserdata(L, task_idx);
  int n = vq_task_push_outcome(L, task_idx);
  if (n == 2) {
    lua_getfield(L, -1, "code");
    int interrupted = lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "interrupted") == 0;
    lua_pop(L, 1);
    if (interrupted) {
      static const char msg[] = "vqlua: interrupted\n";
      vq_console_write(rt, 2, msg, sizeof msg - 1);
      rt->exit_status = 130;
    } else {
      const char *text = vq_describe_error(L, -1);
      vq_console_write(rt, 2, "vqlua: ", 7);
      vq_console_write(rt, 2, text, strlen(text));
      vq_console_write(rt, 2, "\n", 1);
      lua_pop(L, 1);
      rt->exit_status = 1;
    }
  }
  (void)t;
  lua_pop(L, n);
}

static int run_loaded_chunk(vq_runtime *rt, int nargs) {
  lua_State *L = rt->L;
  rt->exit_status = 0;
  vq_task *t = vq_spawn(L, nargs);
  int task_idx = lua_gettop(L);
  lua_pushstring(L, "main");
  lua_setiuservalue(L, task_idx, 4);
  rt->interrupt_target = t;
  vq_sched_run_main(rt, t);
  rt->interrupt_target = NULL;
  if (!t->ok) report_main_failure(rt, task_idx);
  t->joined = 1;
  vq_sched_report_unjoined(rt);
  lua_settop(L, task_idx - 1);
  return rt->exit_status;
}


/* arg as lua.c builds it: arg[0] the script, arg[1..] its arguments, the interpreter's
 * own words at negative indices. */
static void set_arg_table(lua_State *L, int argc, char **argv, int script_index) {
  lua_createtable(L, argc - script_index - 1, script_index + 1);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - script_index);
  }
  lua_setglobal(L, "arg");
}

void vq_set_args(vq_runtime *rt, int argc, char **argv, int script_index) {
  set_arg_table(rt->L, argc, argv, script_index);
}

int vq_run_file(vq_runtime *rt, const char *path, int argc, char **argv, int script_index) {
  lua_State *L = rt->L;
  if (argv) set_arg_table(L, argc, argv, script_index);
  if (luaL_loadfile(L, path) != LUA_OK) return report_load_error(rt);
  int nargs = 0;
  for (int i = script_index + 1; argv && i < argc; i++, nargs++) lua_pushstring(L, argv[i]);
  return run_loaded_chunk(rt, nargs);
}

int vq_run_string(vq_runtime *rt, const char *chunk, const char *chunkname) {
  lua_State *L = rt->L;
  if (luaL_loadbuffer(L, chunk, strlen(chunk), chunkname) != LUA_OK)
    return report_load_error(rt);
  return run_loaded_chunk(rt, 0);
}

/* ---- output ---- */

void vq_set_console_hook(vq_runtime *rt, vq_console_hook hook, void *ud) {
  rt->console_hook = hook;
  rt->console_hook_ud = ud;
}

static void write_all(int fd, const char *p, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) return;
    p += n;
    len -= (size_t)n;
  }
}

void vq_console_write(vq_runtime *rt, int fd, const char *text, size_t len) {
  size_t out_len;
  char *masked = vq_redact(&rt->redactor, text, len, &out_len);
  if (!masked && out_len == SIZE_MAX) {
    static const char lost[] = "<output withheld: no memory to redact it>\n";
    masked = NULL;
    text = lost;
    len = sizeof lost - 1;
  } else if (masked) {
    text = masked;
    len = out_len;
  }
  if (rt->console_hook) rt->console_hook(rt->console_hook_ud, 1);
  write_all(fd, text, len);
  if (rt->console_hook) rt->console_hook(rt->console_hook_ud, 0);
  free(masked);
}

void vq_push_redacted(lua_State *L, const char *text, size_t len) {
  vq_runtime *rt = vq_from_lua(L);
  size_t out_len;
  char *masked = vq_redact(&rt->redactor, text, len, &out_len);
  if (masked) {
    lua_pushlstring(L, masked, out_len);
    free(masked);
  } else if (out_len == SIZE_MAX) {
    luaL_error(L, "out of memory while redacting");
  } else {
    lua_pushlstring(L, text, len);
  }
}
