/* Ctrl-C. The first one interrupts the main task (or the REPL's running statement):
 * a wait raises {code = "interrupted"}, busy Lua code is stopped by a hook, and the
 * task's to-be-closed variables are closed as it unwinds. A second one while that
 * clean-up runs restores the default action, so a third kills the process. */
#include <string.h>

#include <lauxlib.h>

#include "internal.h"

/* POSIX gives a signal handler no argument: this is the one static the host keeps. */
static vq_runtime *volatile signal_runtime;

static void interrupt_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  vq_runtime *rt = vq_from_lua(L);
  if (!rt->sigint_pending) return;
  rt->sigint_pending = 0;
  vq_push_error_table(L, "interrupted", "interrupted");
  lua_error(L);
}

static void on_sigint(int sig) {
  (void)sig;
  vq_runtime *rt = signal_runtime;
  if (!rt) return;
  rt->sigint_count++;
  rt->sigint_pending = 1;
  vq_task *running = rt->current;
  if (running) /* busy Lua code: stop it at the next instruction */
    lua_sethook(running->co, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
  uv_async_send(&rt->sigint_async);
}

static void on_sigint_async(uv_async_t *async) {
  vq_runtime *rt = async->data;
  rt->sigint_pending = 0;
  if (rt->sigint_hook) {
    rt->sigint_hook(rt, rt->sigint_hook_ud);
    return;
  }
  if (rt->sigint_count >= 2) sigaction(SIGINT, &rt->old_sigint, NULL);
  if (rt->interrupt_target) vq_task_interrupt(rt->interrupt_target, "interrupted");
}

int vq_signal_init(vq_runtime *rt) {
  uv_async_init(&rt->loop, &rt->sigint_async, on_sigint_async);
  rt->sigint_async.data = rt;
  uv_unref((uv_handle_t *)&rt->sigint_async);
  if (signal_runtime) return 0; /* a second runtime in the process: the first keeps Ctrl-C */
  signal_runtime = rt;
  /* A peer that hangs up is an error on that write (EPIPE), not the end of the process. */
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  return sigaction(SIGINT, &sa, &rt->old_sigint);
}

void vq_signal_close(vq_runtime *rt) {
  if (signal_runtime == rt) {
    sigaction(SIGINT, &rt->old_sigint, NULL);
    signal_runtime = NULL;
  }
  uv_close((uv_handle_t *)&rt->sigint_async, NULL);
}
