/* vq.h — embed the vqlua runtime: Lua 5.4 tasks on one libuv loop.
 *
 *   vq_runtime *rt = vq_new(&(vq_options){.argv0 = argv[0]});
 *   vq_register(rt, "mymod", luaopen_mymod);
 *   int status = vq_run_file(rt, "script.lua", argc, argv);
 *   vq_close(rt);
 *
 * The same header is what every binding uses to wait without blocking the loop:
 *
 *   static int l_sleep(lua_State *L) {
 *     vq_wait_check(L);                             // raises outside a task
 *     sleep_req *r = ...;                           // so nothing leaks when it does
 *     vq_wait_begin(L, &r->wait, sleep_cancel);
 *     uv_timer_start(&r->timer, on_timer, ms, 0);
 *     return vq_wait_yield(L, &r->wait);            // returns what the callback pushed
 *   }
 *   static void on_timer(uv_timer_t *t) {
 *     sleep_req *r = t->data;
 *     lua_pushboolean(vq_wait_thread(&r->wait), 1);
 *     vq_wait_done(&r->wait, 1);
 *   }
 */
#ifndef VQ_H
#define VQ_H

#include <lua.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct vq_runtime vq_runtime;
typedef struct vq_task vq_task;
typedef struct vq_wait vq_wait;

typedef struct vq_options {
  const char *argv0;       /* to find scripts/lib next to the binary; may be NULL */
  const char *lib_path;    /* extra Lua library folders, ':'-separated (VQ_PATH adds more) */
  int dry_run;             /* runbooks read it as vq.options.dry_run */
  int color;               /* 0 auto (a tty and no NO_COLOR), 1 always, -1 never */
  int log_level;           /* 0 the default (info), 1 debug, 2 info, 3 warn, 4 error */
  const char *audit_path;  /* JSON-lines audit log, opened 0600; NULL for none */
} vq_options;

const char *vq_version(void);

/* Life cycle. vq_close cancels the tasks, closes every handle, drains the loop, frees. */
vq_runtime *vq_new(const vq_options *options);
void vq_close(vq_runtime *rt);
lua_State *vq_lua(vq_runtime *rt);
uv_loop_t *vq_loop(vq_runtime *rt);
vq_runtime *vq_from_lua(lua_State *L);

/* Make `require(name)` open a C module. */
void vq_register(vq_runtime *rt, const char *name, lua_CFunction open);

/* Run a chunk as the main task and drive the loop until it and every task it spawned
 * are done. Returns a process exit status: 0, 1 on an uncaught error, 130 on Ctrl-C. */
int vq_run_file(vq_runtime *rt, const char *path, int argc, char **argv, int script_index);
int vq_run_string(vq_runtime *rt, const char *chunk, const char *chunkname);
/* Set the global arg table as lua.c does (argv[script_index] is arg[0]). */
void vq_set_args(vq_runtime *rt, int argc, char **argv, int script_index);

/* The interactive prompt, on the same loop: returns when the user ends it. */
int vq_repl_run(vq_runtime *rt);

/* Call fn(ud) when the runtime closes, before the loop's remaining handles are closed:
 * a binding with handles of its own on the loop closes them here. */
void vq_on_close(vq_runtime *rt, void (*fn)(void *ud), void *ud);

/* A module's per-runtime state (an HTTP client, a resolver): the address of a pointer,
 * NULL until the module makes its state, stores it there and registers its close hook.
 * The hook must empty the slot. Asking while the runtime closes raises, so nothing is
 * made again once its hook has run. */
void **vq_module_slot(lua_State *L, const char *key);

/* Drive the loop by hand (an embedder with its own main loop): like uv_run. */
int vq_step(vq_runtime *rt, uv_run_mode mode);

/* Spawn the function on top of L's stack (followed by nargs arguments) as a task;
 * pushes the task object. */
vq_task *vq_spawn(lua_State *L, int nargs);
int vq_task_done(const vq_task *task);

/* ---- How a primitive waits ---- */
typedef void (*vq_cancel_fn)(vq_wait *w);

struct vq_wait {
  vq_task *task;          /* set by vq_wait_begin */
  vq_cancel_fn cancel;    /* stops the request so that it will never call vq_wait_done */
};

/* Raise a clear error unless L can wait: call it before allocating the request. */
void vq_wait_check(lua_State *L);
/* Park the calling task on w. Raises a clear error when L is not a task's own coroutine
 * (a plain coroutine, a luv callback, the REPL's top level outside a statement). */
void vq_wait_begin(lua_State *L, vq_wait *w, vq_cancel_fn cancel);
/* Yield; when the task resumes, the C function returns what vq_wait_done's caller pushed. */
int vq_wait_yield(lua_State *L, vq_wait *w);
/* The same with a continuation of the primitive's own: k runs when the task resumes, with
 * what vq_wait_done's caller pushed on top of the primitive's stack (a cancellation has
 * already been raised by then; a timeout arrives as nil, err). */
int vq_wait_yieldk(lua_State *L, vq_wait *w, lua_KContext ctx, lua_KFunction k);
/* The thread to push results onto, from a libuv or curl callback. */
lua_State *vq_wait_thread(const vq_wait *w);
/* The request finished: nresults values were pushed; the task resumes on the next tick. */
void vq_wait_done(vq_wait *w, int nresults);

/* ---- Errors a runbook can handle: nil, {code=, message=, ...} ---- */
/* Pushes nil and an error table; returns 2 so a C function can `return vq_push_error(...)`. */
int vq_push_error(lua_State *L, const char *code, const char *fmt, ...);
/* Pushes only the error table. */
void vq_push_error_table(lua_State *L, const char *code, const char *fmt, ...);

/* ---- Output: everything a person or a file sees goes through here (redaction). ---- */
void vq_console_write(vq_runtime *rt, int fd, const char *text, size_t len);
/* Returns a redacted copy of text as a Lua string pushed on L. */
void vq_push_redacted(lua_State *L, const char *text, size_t len);

/* Hooks around console writes, so that a line editor can clear and redraw its prompt. */
typedef void (*vq_console_hook)(void *ud, int before);
void vq_set_console_hook(vq_runtime *rt, vq_console_hook hook, void *ud);

#ifdef __cplusplus
}
#endif
#endif
