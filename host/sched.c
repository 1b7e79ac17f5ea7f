/* Tasks: Lua coroutines driven by the libuv loop.
 *
 * A task is a userdata (struct vq_task) whose user values hold its coroutine, its outcome,
 * its traceback and its name. Resumes never happen on a libuv callback's stack: callbacks
 * push results and queue the task; an idle handle drains the queue. */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "internal.h"

#define TASK_MT "vq.task"
enum { UV_THREAD = 1, UV_OUTCOME, UV_TRACEBACK, UV_NAME, UV_COUNT = UV_NAME };

struct vq_joiner {
  vq_wait wait;
  vq_task *target;
  vq_joiner *next;
};

static vq_task *task_of_thread(lua_State *L) {
  return *(vq_task **)lua_getextraspace(L);
}

static void push_task(lua_State *L, vq_task *t) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
}

/* ---- ready queue ---- */

static void task_resume(vq_task *t);
static void task_finish(vq_task *t, int ok, int nres);
static void on_ready(uv_idle_t *idle);

static void make_ready(vq_task *t, int nargs) {
  vq_runtime *rt = t->rt;
  t->nargs = nargs;
  if (t->state != VQ_TASK_NEW) t->state = VQ_TASK_READY;
  t->next_ready = NULL;
  if (rt->ready_tail) rt->ready_tail->next_ready = t;
  else rt->ready_head = t;
  rt->ready_tail = t;
  if (!uv_is_active((uv_handle_t *)&rt->ready_idle)) uv_idle_start(&rt->ready_idle, on_ready);
}


static void on_ready(uv_idle_t *idle) {
  vq_runtime *rt = idle->data;
  /* Tasks made ready while draining wait for the next turn, so I/O is never starved. */
  vq_task *t = rt->ready_head;
  rt->ready_head = rt->ready_tail = NULL;
  while (t) {
    vq_task *next = t->next_ready;
    t->next_ready = NULL;
    if (t->state == VQ_TASK_NEW && t->interrupt) {
      lua_State *L = rt->L;
      vq_push_error_table(L, t->interrupt, "task %I was cancelled before it started", (lua_Integer)t->id);
      lua_xmove(L, t->co, 1);
      t->interrupt = NULL;
      task_finish(t, 0, 1);
    } else {
      task_resume(t);
    }
    t = next;
  }
  if (!rt->ready_head) uv_idle_stop(&rt->ready_idle);
}

/* ---- waiting ---- */

static int wait_k(lua_State *L, int status, lua_KContext base) {
  (void)status;
  vq_task *t = task_of_thread(L);
  if (t && t->raise_on_resume) {
    t->raise_on_resume = 0;
    return lua_error(L);
  }
  return lua_gettop(L) - (int)base;
}

void vq_wait_check(lua_State *L) {
  vq_task *t = task_of_thread(L);
  if (!t || t->co != L) {
    vq_runtime *rt = vq_from_lua(L);
    if (rt && L == rt->L)
      luaL_error(L, "this call waits, so it must run in a task: in a luv callback or at the "
                    "top of a C call, wrap the work in vq.spawn(function() ... end)");
    luaL_error(L, "this call waits, so it must run in a task, not in a plain coroutine: "
                  "use vq.spawn instead of coroutine.create/wrap");
  }
  if (!lua_isyieldable(L))
    luaL_error(L, "this call waits, but a C function that cannot yield (table.sort's "
                  "comparator, a string.gsub callback, a metamethod called from C) is in between");
  if (t->wait) luaL_error(L, "task %I is already waiting", (lua_Integer)t->id);
}

void vq_wait_begin(lua_State *L, vq_wait *w, vq_cancel_fn cancel) {
  vq_wait_check(L);
  vq_task *t = task_of_thread(L);
  w->task = t;
  w->cancel = cancel;
  t->wait = w;
}

int vq_wait_yield(lua_State *L, vq_wait *w) {
  (void)w;
  return lua_yieldk(L, 0, (lua_KContext)lua_gettop(L), wait_k);
}

static int wait_custom_k(lua_State *L, int status, lua_KContext ctx) {
  vq_task *t = task_of_thread(L);
  if (t->raise_on_resume) {
    t->raise_on_resume = 0;
    return lua_error(L);
  }
  lua_KFunction k = t->k;
  t->k = NULL;
  return k(L, status, ctx);
}

int vq_wait_yieldk(lua_State *L, vq_wait *w, lua_KContext ctx, lua_KFunction k) {
  w->task->k = k;
  return lua_yieldk(L, 0, ctx, wait_custom_k);
}

lua_State *vq_wait_thread(const vq_wait *w) { return w->task->co; }

void vq_wait_done(vq_wait *w, int nresults) {
  vq_task *t = w->task;
  if (t->wait == w) t->wait = NULL;
  make_ready(t, nresults);
}

/* A timeout stays in force until its vq.timeout scope ends (clear_interrupt), so code that
 * retries after a failed wait cannot outlive the deadline; a cancellation is delivered once,
 * so that clean-up may still wait. */
static void deliver_interrupt(vq_task *t) {
  vq_wait *w = t->wait;
  const char *code = t->interrupt;
  lua_State *co = t->co;
  if (strcmp(code, "timeout") != 0) t->interrupt = NULL;
  t->wait = NULL;
  w->cancel(w);
  if (strcmp(code, "timeout") == 0) {
    lua_pushnil(co);
    vq_push_error_table(co, code, "timed out");
    make_ready(t, 2);
    return;
  }
  vq_push_error_table(co, code, "task %I was %s", (lua_Integer)t->id, code);
  t->raise_on_resume = 1;
  make_ready(t, 1);
}

void vq_task_interrupt(vq_task *t, const char *code) {
  if (t->state == VQ_TASK_DONE) return;
  if (strcmp(code, "timeout") != 0) t->cancelled = 1;
  t->interrupt = code;
  if (t->state == VQ_TASK_WAITING && t->wait) deliver_interrupt(t);
}

/* ---- running ---- */

static void link_live(vq_runtime *rt, vq_task *t) {
  (void)rt;
  t->rt->live_tasks++;
}

static void task_resume(vq_task *t) {
  vq_runtime *rt = t->rt;
  int nres = 0, nargs = t->nargs;
  vq_task *outer = rt->current;
  t->nargs = 0;
  t->state = VQ_TASK_RUNNING;
  rt->current = t;
  int status = lua_resume(t->co, rt->L, nargs, &nres);
  rt->current = outer;
  if (status != LUA_YIELD) {
    task_finish(t, status == LUA_OK, status == LUA_OK ? nres : 1);
    return;
  }
  lua_pop(t->co, nres);
  if (t->state != VQ_TASK_RUNNING) return; /* already made ready again */
  if (!t->wait) {
    make_ready(t, 0); /* a bare coroutine.yield(): let the others run, then continue */
  } else {
    t->state = VQ_TASK_WAITING;
    if (t->interrupt) deliver_interrupt(t);
  }
}

/* Pack the n values on top of co into a table {n = n, ...} left on L. */
static void pack_results(lua_State *L, lua_State *co, int n) {
  lua_createtable(co, n, 1);
  lua_insert(co, -(n + 1));
  for (int i = n; i >= 1; i--) lua_rawseti(co, -(i + 1), i);
  lua_pushinteger(co, n);
  lua_setfield(co, -2, "n");
  lua_xmove(co, L, 1);
}

static void store_failure(lua_State *L, vq_task *t) {
  lua_State *co = t->co;
  /* Describe before resetting the thread: the traceback needs its stack. */
  luaL_traceback(L, co, NULL, 0);
  lua_xmove(co, L, 1); /* the error object */
  push_task(L, t);
  lua_insert(L, -3);   /* task, traceback, error */
  lua_setiuservalue(L, -3, UV_OUTCOME);
  lua_setiuservalue(L, -2, UV_TRACEBACK);
  lua_pop(L, 1);
  /* Close the to-be-closed variables the error left open. */
  if (lua_resetthread(co) != LUA_OK) lua_settop(co, 0);
}

static void wake_joiners(vq_task *t) {
  lua_State *L = t->rt->L;
  vq_joiner *j = t->joiners;
  t->joiners = NULL;
  if (!j) return;
  t->joined = 1;
  push_task(L, t);
  int task_idx = lua_gettop(L);
  while (j) {
    vq_joiner *next = j->next;
    lua_State *co = vq_wait_thread(&j->wait);
    int n = vq_task_push_outcome(L, task_idx);
    lua_checkstack(co, n);
    lua_xmove(L, co, n);
    vq_wait_done(&j->wait, n);
    free(j);
    j = next;
  }
  lua_pop(L, 1);
}

static void task_finish(vq_task *t, int ok, int nres) {
  vq_runtime *rt = t->rt;
  lua_State *L = rt->L;
  t->state = VQ_TASK_DONE;
  t->ok = ok;
  t->wait = NULL;
  rt->live_tasks--;
  if (ok) {
    pack_results(L, t->co, nres);
    push_task(L, t);
    lua_insert(L, -2);
    lua_setiuservalue(L, -2, UV_OUTCOME);
    lua_pop(L, 1);
  } else {
    store_failure(L, t);
  }
  /* The coroutine is no longer needed: let it be collected. */
  push_task(L, t);
  lua_pushnil(L);
  lua_setiuservalue(L, -2, UV_THREAD);
  lua_pop(L, 1);
  wake_joiners(t);
  if (ok || t->joined || t->cancelled) {
    luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
    t->ref = LUA_NOREF;
  }
  /* With the main task gone, nothing can join a failed task any more. */
  if (t == rt->main_task && !ok) rt->exit_status = 1;
  /* A failed main ends the program once its tasks have unwound, even if luv handles
   * (a server a script left listening) would keep the loop alive. */
  vq_task *m = rt->main_task;
  if (m && m->state == VQ_TASK_DONE && !m->ok) uv_stop(&rt->loop);
}

/* ---- outcome ---- */

static int push_error_value(lua_State *L, const vq_task *t, int task_idx) {
  lua_getiuservalue(L, task_idx, UV_OUTCOME);
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "traceback");
    int has = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!has) {
      lua_getiuservalue(L, task_idx, UV_TRACEBACK);
      lua_setfield(L, -2, "traceback");
    }
    return 1;
  }
  const char *msg = luaL_tolstring(L, -1, NULL);
  vq_push_error_table(L, t->cancelled ? "cancelled" : "error", "%s", msg);
  lua_getiuservalue(L, task_idx, UV_TRACEBACK);
  lua_setfield(L, -2, "traceback");
  lua_pushinteger(L, (lua_Integer)t->id);
  lua_setfield(L, -2, "task");
  lua_replace(L, -3);
  lua_pop(L, 1);
  return 1;
}

/* nil, err for a failed task; its results otherwise. The task userdata is at task_idx. */
int vq_task_push_outcome(lua_State *L, int task_idx) {
  vq_task *t = lua_touserdata(L, task_idx);
  task_idx = lua_absindex(L, task_idx);
  if (!t->ok) {
    lua_pushnil(L);
    push_error_value(L, t, task_idx);
    return 2;
  }
  lua_getiuservalue(L, task_idx, UV_OUTCOME);
  lua_getfield(L, -1, "n");
  int n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, n, "too many results");
  int results = lua_gettop(L);
  for (int i = 1; i <= n; i++) lua_rawgeti(L, results, i);
  lua_remove(L, results);
  return n;
}

/* ---- spawning ---- */

vq_task *vq_spawn(lua_State *L, int nargs) {
  vq_runtime *rt = vq_from_lua(L);
  luaL_checktype(L, -(nargs + 1), LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_insert(L, -(nargs + 2));
  lua_xmove(L, co, nargs + 1);        /* function and arguments */
  vq_task *t = lua_newuserdatauv(L, sizeof *t, UV_COUNT);
  memset(t, 0, sizeof *t);
  luaL_setmetatable(L, TASK_MT);
  lua_insert(L, -2);
  lua_setiuservalue(L, -2, UV_THREAD);
  t->rt = rt;
  t->co = co;
  t->id = ++rt->next_task_id;
  t->state = VQ_TASK_NEW;
  *(vq_task **)lua_getextraspace(co) = t;
  lua_pushvalue(L, -1);
  t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  link_live(rt, t);
  make_ready(t, nargs);
  return t;
}

int vq_task_done(const vq_task *t) { return t->state == VQ_TASK_DONE; }

static vq_task *check_task(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, TASK_MT);
}

static int l_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  vq_spawn(L, lua_gettop(L) - 1);
  return 1;
}

/* ---- joining ---- */

static void joiner_cancel(vq_wait *w) {
  vq_joiner *j = (vq_joiner *)w;
  vq_joiner **p = &j->target->joiners;
  while (*p && *p != j) p = &(*p)->next;
  if (*p) *p = j->next;
  free(j);
}

static int task_join(lua_State *L) {
  vq_task *t = check_task(L, 1);
  if (t->state == VQ_TASK_DONE) {
    t->joined = 1;
    if (t->ref != LUA_NOREF) {
      luaL_unref(L, LUA_REGISTRYINDEX, t->ref);
      t->ref = LUA_NOREF;
    }
    return vq_task_push_outcome(L, 1);
  }
  if (task_of_thread(L) == t) return luaL_error(L, "task %I cannot wait for itself", (lua_Integer)t->id);
  vq_wait_check(L);
  vq_joiner *j = calloc(1, sizeof *j);
  if (!j) return luaL_error(L, "out of memory");
  vq_wait_begin(L, &j->wait, joiner_cancel);
  j->target = t;
  j->next = t->joiners;
  t->joiners = j;
  return vq_wait_yield(L, &j->wait);
}

static int task_cancel(lua_State *L) {
  vq_task *t = check_task(L, 1);
  const char *code = luaL_optstring(L, 2, "cancelled");
  if (strcmp(code, "cancelled") && strcmp(code, "interrupted") && strcmp(code, "timeout"))
    return luaL_argerror(L, 2, "cancelled, interrupted or timeout");
  static const char *const codes[] = {"cancelled", "interrupted", "timeout"};
  for (size_t i = 0; i < 3; i++)
    if (strcmp(code, codes[i]) == 0) vq_task_interrupt(t, codes[i]);
  lua_pushboolean(L, t->state != VQ_TASK_DONE);
  return 1;
}

static int task_status(lua_State *L) {
  vq_task *t = check_task(L, 1);
  switch (t->state) {
    case VQ_TASK_NEW:
    case VQ_TASK_READY: lua_pushliteral(L, "ready"); break;
    case VQ_TASK_RUNNING: lua_pushliteral(L, "running"); break;
    case VQ_TASK_WAITING: lua_pushliteral(L, "waiting"); break;
    case VQ_TASK_DONE:
      if (t->cancelled && !t->ok) lua_pushliteral(L, "cancelled");
      else lua_pushstring(L, t->ok ? "done" : "failed");
      break;
  }
  return 1;
}

static int task_id(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_task(L, 1)->id);
  return 1;
}

static int task_name(lua_State *L) {
  check_task(L, 1);
  if (lua_gettop(L) >= 2) {
    luaL_checkstring(L, 2);
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, 1, UV_NAME);
    lua_settop(L, 1);
    return 1;
  }
  lua_getiuservalue(L, 1, UV_NAME);
  return 1;
}

static int task_tostring(lua_State *L) {
  vq_task *t = check_task(L, 1);
  lua_getiuservalue(L, 1, UV_NAME);
  task_status(L);
  if (lua_isstring(L, -2))
    lua_pushfstring(L, "task %d (%s, %s)", (int)t->id, lua_tostring(L, -2), lua_tostring(L, -1));
  else
    lua_pushfstring(L, "task %d (%s)", (int)t->id, lua_tostring(L, -1));
  return 1;
}

/* ---- park / wake: the one primitive Lua builds events, queues and all/race on ---- */

typedef struct park_wait {
  vq_wait wait;
} park_wait;

static void park_cancel(vq_wait *w) { free(w); }

static int l_park(lua_State *L) {
  vq_wait_check(L);
  park_wait *p = calloc(1, sizeof *p);
  if (!p) return luaL_error(L, "out of memory");
  vq_wait_begin(L, &p->wait, park_cancel);
  return vq_wait_yield(L, &p->wait);
}

static int l_wake(lua_State *L) {
  vq_task *t = check_task(L, 1);
  int n = lua_gettop(L) - 1;
  if (t->state != VQ_TASK_WAITING || !t->wait || t->wait->cancel != park_cancel) {
    lua_pushboolean(L, 0);
    return 1;
  }
  vq_wait *w = t->wait;
  if (n == 0) { /* park() returns true when woken with nothing: nil means a timeout */
    lua_pushboolean(L, 1);
    n = 1;
  }
  lua_checkstack(t->co, n + 1);
  lua_xmove(L, t->co, n);
  vq_wait_done(w, n);
  free(w);
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- sleep ---- */

typedef struct sleep_req {
  vq_wait wait;
  uv_timer_t timer;
} sleep_req;

static void sleep_free(uv_handle_t *h) { free(h->data); }

static void sleep_cancel(vq_wait *w) {
  sleep_req *r = (sleep_req *)w;
  uv_close((uv_handle_t *)&r->timer, sleep_free);
}

static void on_sleep(uv_timer_t *timer) {
  sleep_req *r = timer->data;
  lua_pushboolean(vq_wait_thread(&r->wait), 1);
  vq_wait_done(&r->wait, 1);
  uv_close((uv_handle_t *)timer, sleep_free);
}

static int l_sleep(lua_State *L) {
  lua_Number seconds = luaL_checknumber(L, 1);
  luaL_argcheck(L, seconds >= 0, 1, "must not be negative");
  vq_wait_check(L);
  sleep_req *r = calloc(1, sizeof *r);
  if (!r) return luaL_error(L, "out of memory");
  vq_wait_begin(L, &r->wait, sleep_cancel);
  uv_timer_init(&vq_from_lua(L)->loop, &r->timer);
  r->timer.data = r;
  uv_timer_start(&r->timer, on_sleep, (uint64_t)(seconds * 1000.0 + 0.5), 0);
  return vq_wait_yield(L, &r->wait);
}

/* ---- the rest of the module ---- */

static int l_current(lua_State *L) {
  vq_task *t = task_of_thread(L);
  if (!t || t->co != L) return 0;
  push_task(L, t);
  return 1;
}

static int l_interrupt(lua_State *L) {
  vq_task *t = check_task(L, 1);
  const char *code = luaL_checkstring(L, 2);
  luaL_argcheck(L, strcmp(code, "timeout") == 0, 2, "only timeout is interrupted from Lua");
  vq_task_interrupt(t, "timeout");
  return 0;
}

static int l_clear_interrupt(lua_State *L) {
  vq_task *t = check_task(L, 1);
  if (t->interrupt && strcmp(t->interrupt, "timeout") == 0) t->interrupt = NULL;
  return 0;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
  return 1;
}

static int l_stats(lua_State *L) {
  vq_runtime *rt = vq_from_lua(L);
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)rt->live_tasks);
  lua_setfield(L, -2, "live");
  lua_pushinteger(L, (lua_Integer)rt->next_task_id);
  lua_setfield(L, -2, "spawned");
  return 1;
}

/* error(code, message [, details]): the error table primitives return. */
/* error(code, message [, details]): the error table primitives return. The code keeps
 * its type, so that an HTTP status stays a number. */
static int l_error(lua_State *L) {
  int t = lua_type(L, 1);
  luaL_argcheck(L, t == LUA_TSTRING || t == LUA_TNUMBER, 1, "a string or a number");
  lua_settop(L, 3);
  lua_pushvalue(L, 1);
  const char *code_text = lua_tostring(L, 4); /* converts the copy, not the original */
  const char *message = luaL_optstring(L, 2, code_text);
  vq_push_error_table(L, code_text, "%s", message);
  if (lua_istable(L, 3)) {
    lua_pushnil(L);
    while (lua_next(L, 3)) {
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_settable(L, -4);
    }
    lua_pushstring(L, message);
    lua_setfield(L, -2, "message");
  }
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "code");
  return 1;
}

static int l_options(lua_State *L) {
  vq_runtime *rt = vq_from_lua(L);
  lua_createtable(L, 0, 2);
  lua_pushboolean(L, rt->options.dry_run);
  lua_setfield(L, -2, "dry_run");
  lua_getfield(L, LUA_REGISTRYINDEX, "vq.rehearse");
  lua_pushboolean(L, !lua_isnil(L, -1));
  lua_setfield(L, -3, "rehearse");
  lua_setfield(L, -2, "rehearsal");
  return 1;
}

static const luaL_Reg task_methods[] = {
  {"wait", task_join}, {"cancel", task_cancel}, {"status", task_status},
  {"id", task_id}, {"name", task_name}, {NULL, NULL}};

static const luaL_Reg sched_functions[] = {
  {"spawn", l_spawn}, {"sleep", l_sleep}, {"park", l_park}, {"wake", l_wake},
  {"current", l_current}, {"interrupt", l_interrupt}, {"clear_interrupt", l_clear_interrupt},
  {"now", l_now}, {"stats", l_stats}, {"error", l_error}, {"options", l_options},
  {NULL, NULL}};

int luaopen_vq_core_sched(lua_State *L) {
  luaL_newlib(L, sched_functions);
  return 1;
}

/* ---- driving the loop ---- */

int vq_sched_init(vq_runtime *rt) {
  lua_State *L = rt->L;
  /* Made here, not when vq is required: the main task exists before any require. */
  luaL_newmetatable(L, TASK_MT);
  luaL_newlib(L, task_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, task_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  int rc = uv_idle_init(&rt->loop, &rt->ready_idle);
  rt->ready_idle.data = rt;
  return rc;
}

static void cancel_all(vq_runtime *rt, lua_State *L) {
  /* Interrupt every live task still anchored in the registry. */
  lua_pushnil(L);
  while (lua_next(L, LUA_REGISTRYINDEX)) {
    vq_task *t = luaL_testudata(L, -1, TASK_MT);
    if (t && t->state != VQ_TASK_DONE && t->rt == rt) vq_task_interrupt(t, "cancelled");
    lua_pop(L, 1);
  }
}

static void on_grace_over(uv_timer_t *timer) {
  vq_runtime *rt = timer->data;
  rt->grace_over = 1;
  uv_stop(&rt->loop);
}

/* After a failed main, the other tasks get a few seconds to unwind. */
static void start_grace(vq_runtime *rt) {
  uv_timer_init(&rt->loop, &rt->grace_timer);
  rt->grace_timer.data = rt;
  uv_timer_start(&rt->grace_timer, on_grace_over, 5000, 0);
  uv_unref((uv_handle_t *)&rt->grace_timer);
  rt->grace_started = 1;
}

int vq_sched_run_main(vq_runtime *rt, vq_task *main) {
  rt->main_task = main;
  rt->grace_over = 0;
  for (;;) {
    uv_run(&rt->loop, UV_RUN_DEFAULT);
    int main_failed = main->state == VQ_TASK_DONE && !main->ok;
    if (main_failed && !rt->grace_started && rt->live_tasks) {
      start_grace(rt);
      cancel_all(rt, rt->L);
      continue;
    }
    if (rt->live_tasks == 0) break;
    if (rt->grace_over) {
      fprintf(stderr, "vqlua: %lu task(s) did not end after the main task failed\n", rt->live_tasks);
      break;
    }
    if (uv_loop_alive(&rt->loop) || main_failed) continue;
    /* Nothing can wake the tasks that are left. */
    fprintf(stderr, "vqlua: %lu task(s) wait on nothing that can wake them; cancelling\n",
            rt->live_tasks);
    if (rt->exit_status == 0) rt->exit_status = 1;
    cancel_all(rt, rt->L);
    if (!uv_loop_alive(&rt->loop)) break;
  }
  if (rt->grace_started) {
    uv_close((uv_handle_t *)&rt->grace_timer, NULL);
    rt->grace_started = 0;
  }
  return rt->exit_status;
}

/* Report failed tasks that nobody waited for. */
void vq_sched_report_unjoined(vq_runtime *rt) {
  lua_State *L = rt->L;
  lua_pushnil(L);
  while (lua_next(L, LUA_REGISTRYINDEX)) {
    vq_task *t = luaL_testudata(L, -1, TASK_MT);
    if (t && t->state == VQ_TASK_DONE && !t->ok && !t->joined && !t->cancelled &&
        t != rt->main_task) {
      int idx = lua_gettop(L);
      lua_getiuservalue(L, idx, UV_OUTCOME);
      const char *msg = luaL_tolstring(L, -1, NULL);
      lua_getiuservalue(L, idx, UV_TRACEBACK);
      const char *tb = lua_tostring(L, -1);
      char *text = NULL;
      size_t need = strlen(msg) + (tb ? strlen(tb) : 0) + 96;
      if ((text = malloc(need))) {
        int len = snprintf(text, need, "vqlua: task %lu failed and nobody waited for it: %s\n%s\n",
                           t->id, msg, tb ? tb : "");
        vq_console_write(rt, 2, text, (size_t)len);
        free(text);
      }
      lua_pop(L, 3);
      t->joined = 1;
      if (rt->exit_status == 0) rt->exit_status = 1;
    }
    lua_pop(L, 1);
  }
}

/* Cancel what still runs (an embedder may close a runtime with live tasks) and let the
 * tasks unwind; bounded, in case one ignores its cancellation. */
void vq_sched_close(vq_runtime *rt) {
  for (int round = 0; rt->live_tasks > 0 && round < 100; round++) {
    cancel_all(rt, rt->L);
    uv_run(&rt->loop, UV_RUN_NOWAIT);
  }
  uv_close((uv_handle_t *)&rt->ready_idle, NULL);
}
