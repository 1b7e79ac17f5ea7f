/* The runtime's own record and the pieces of host/ that share it. Not for bindings:
 * they use vq.h only. */
#ifndef VQ_INTERNAL_H
#define VQ_INTERNAL_H

#include <signal.h>
#include <stdio.h>

#include "vq.h"

typedef enum {
  VQ_TASK_NEW,      /* spawned, first resume queued */
  VQ_TASK_READY,    /* queued for a resume */
  VQ_TASK_RUNNING,
  VQ_TASK_WAITING,  /* parked on a vq_wait */
  VQ_TASK_DONE
} vq_task_state;

typedef struct vq_joiner vq_joiner;

struct vq_task {
  vq_runtime *rt;
  lua_State *co;
  int ref;                  /* registry anchor of the task userdata while it matters */
  unsigned long id;
  vq_task_state state;
  int ok;                   /* when done: returned (1) or raised (0) */
  int joined;               /* someone took its outcome, so a failure is not reported */
  const char *interrupt;    /* pending interrupt code: "cancelled", "interrupted", "timeout" */
  int raise_on_resume;      /* the value pushed is an error to raise in the task */
  int nargs;                /* values pushed on co for the next resume */
  int cancelled;
  vq_wait *wait;
  lua_KFunction k;          /* a primitive's own continuation (vq_wait_yieldk) */
  vq_task *next_ready;
  vq_joiner *joiners;
  const char *name;         /* for reports; points into the userdata's uservalue */
};

typedef struct vq_redactor {
  char **secrets;           /* longest first */
  size_t *lengths;
  size_t count, cap;
} vq_redactor;

typedef struct vq_close_hook {
  void (*fn)(void *ud);
  void *ud;
  struct vq_close_hook *next;
} vq_close_hook;

struct vq_runtime {
  uv_loop_t loop;
  lua_State *L;
  vq_options options;
  char *lib_path;           /* the scripts/lib folders, ';'-joined package.path entries */

  /* scheduler */
  vq_task *ready_head, *ready_tail;
  uv_idle_t ready_idle;     /* active while tasks are ready: the loop does not block then */
  unsigned long next_task_id;
  unsigned long live_tasks;
  vq_task *main_task;
  vq_task *current;         /* the task whose coroutine is running now */
  int exit_status;
  int callback_errors;      /* errors raised in luv callbacks */
  uv_timer_t grace_timer;   /* bounds the unwinding after a failed main task */
  int grace_started, grace_over;

  /* Ctrl-C */
  uv_async_t sigint_async;
  volatile sig_atomic_t sigint_count;
  volatile sig_atomic_t sigint_pending;  /* not yet delivered to a task */
  void (*sigint_hook)(vq_runtime *rt, void *ud); /* the REPL's own handling */
  void *sigint_hook_ud;
  struct sigaction old_sigint;
  vq_task *interrupt_target; /* the REPL's running statement, else the main task */

  vq_close_hook *close_hooks;
  int closing;              /* vq_close has begun: no module state is made again */

  /* output */
  vq_redactor redactor;
  vq_console_hook console_hook;
  void *console_hook_ud;
  int log_level;
  int color_stderr, color_stdout;
  FILE *audit;
  char run_id[32];
};

/* sched.c */
int vq_sched_init(vq_runtime *rt);
void vq_sched_close(vq_runtime *rt);
int luaopen_vq_core_sched(lua_State *L);
void vq_task_interrupt(vq_task *task, const char *code);
/* Run the loop until the main task is done and nothing else keeps the loop alive. */
int vq_sched_run_main(vq_runtime *rt, vq_task *main);
/* Push a done task's results, or nil, err. */
int vq_task_push_outcome(lua_State *L, int task_idx);
void vq_sched_report_unjoined(vq_runtime *rt);

/* signal.c */
int vq_signal_init(vq_runtime *rt);
void vq_signal_close(vq_runtime *rt);

/* redact.c */
void vq_redactor_free(vq_redactor *r);
int vq_redactor_add(vq_redactor *r, const char *secret, size_t len);
char *vq_redact(const vq_redactor *r, const char *text, size_t len, size_t *out_len);

/* modules.c */
void vq_open_modules(vq_runtime *rt);

/* error.c */
/* Format an error value (string, error table, anything) with a traceback, for a report. */
const char *vq_describe_error(lua_State *L, int idx);
void vq_error_init(lua_State *L);
int vq_traceback_handler(lua_State *L);

#endif
