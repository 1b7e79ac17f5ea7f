/* vq.core.proc: child processes on the host loop. Mechanism only; vq.proc is the policy.
 *
 *   spawn{argv=, cwd=, env={"K=V", ...}, stdin=string|true, timeout=, grace=, buffer=,
 *         max_line=, linger=, kill_on_cancel=} -> process | nil, err
 *   p:read() -> line, "stdout"|"stderr", terminated | nil (the end) | nil, err
 *   p:lines()  p:wait() -> {pid=, code=|signal=, duration=, timed_out=, dropped=}
 *   p:kill([sig])  p:terminate([grace])  p:write(data)  p:close_stdin()  p:close()
 *   p:pid()  p:stats()
 *
 * Every child starts a session of its own (UV_PROCESS_DETACHED: setsid), so a signal sent
 * to its process group (kill(-pid, sig)) reaches the grandchildren too. Lines from both
 * pipes go into one queue in arrival order; once the queue holds `buffer` bytes the pipes
 * are no longer read (uv_read_stop) until the reader drains it, so a chatty child blocks
 * on a full pipe instead of our memory growing. libuv reaps every child (its SIGCHLD
 * handler); the process handle is closed only after that, so no zombie is left. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>

#include <lauxlib.h>

#include "vq.h"

#define PROC_MT "vq.proc"
#define REGISTRY_KEY "vq.proc.registry"
#define READ_CHUNK 65536
#define RECORD_HEAD 6 /* stream (1 byte), terminated (1 byte), length (4 bytes) */
#define DEFAULT_BUFFER (1u << 20)
#define DEFAULT_MAX_LINE (64u << 10)
#define DEFAULT_GRACE 5.0
#define DEFAULT_LINGER 2.0

enum { OUT_STDOUT, OUT_STDERR, OUT_COUNT };
static const char *const stream_names[OUT_COUNT] = {"stdout", "stderr"};

typedef struct proc proc;
typedef struct proc_registry proc_registry;

typedef struct byte_buf {
  char *data;
  size_t len, cap;
} byte_buf;

/* Lines as records in one growing buffer; records live in data[head, tail). */
typedef struct line_queue {
  char *data;
  size_t head, tail, cap, lines;
} line_queue;

typedef struct out_pipe {
  uv_pipe_t pipe; /* first: the read callback's stream is the out_pipe */
  proc *p;
  int index, open, reading;
  byte_buf partial; /* the line being read, not yet ended by a newline */
  char chunk[READ_CHUNK];
} out_pipe;

typedef struct waiter {
  vq_wait wait; /* first: the cancel function gets the waiter */
  proc *p;
  int active;
} waiter;

typedef struct write_req {
  uv_write_t req;
  proc *p;
  char data[];
} write_req;

typedef struct proc_ud {
  proc *p;
  int pid; /* kept for messages after the object is closed */
} proc_ud;

struct proc {
  proc_registry *reg; /* NULL once the runtime has closed */
  proc *next, *prev;
  proc_ud *owner;     /* NULL once Lua let go of the process object */
  uv_loop_t *loop;
  uv_process_t process;
  out_pipe out[OUT_COUNT];
  uv_pipe_t in;
  uv_shutdown_t shutdown;
  uv_timer_t deadline, killer, linger;
  int open_handles;
  int has_in, in_open, in_shutting;
  write_req *awaited_write;
  waiter reader, exiter, writer;
  line_queue queue;
  size_t limit, max_line, high_water, dropped, bytes_since_linger;
  int paused, ever_read, discard_unread;
  int pid, exited, process_closed, terminating, timed_out, kill_on_cancel;
  int ending, leader_reaped, killed; /* registry_close's bookkeeping */
  uint64_t kill_at;
  int64_t exit_status;
  int term_signal;
  uint64_t started, ended;
  double grace, linger_seconds;
};

struct proc_registry {
  void **owner; /* its vq_module_slot, emptied when the runtime closes */
  proc *procs;
};

typedef struct spawn_opts {
  char **argv, **env;
  const char *cwd, *stdin_data;
  size_t stdin_len;
  int keep_stdin, kill_on_cancel;
  double timeout, grace, linger;
  size_t buffer, max_line;
} spawn_opts;

static void close_timers_when_idle(proc *p);
static void terminate(proc *p, double grace);

/* ---- signals by name ---- */

static const struct {
  int number;
  const char *name;
} signal_table[] = {
  {SIGHUP, "HUP"},   {SIGINT, "INT"},   {SIGQUIT, "QUIT"}, {SIGILL, "ILL"},
  {SIGTRAP, "TRAP"}, {SIGABRT, "ABRT"}, {SIGBUS, "BUS"},   {SIGFPE, "FPE"},
  {SIGKILL, "KILL"}, {SIGUSR1, "USR1"}, {SIGSEGV, "SEGV"}, {SIGUSR2, "USR2"},
  {SIGPIPE, "PIPE"}, {SIGALRM, "ALRM"}, {SIGTERM, "TERM"}, {SIGCHLD, "CHLD"},
  {SIGCONT, "CONT"}, {SIGSTOP, "STOP"}, {SIGTSTP, "TSTP"}, {SIGTTIN, "TTIN"},
  {SIGTTOU, "TTOU"}, {SIGXCPU, "XCPU"}, {SIGXFSZ, "XFSZ"}, {SIGWINCH, "WINCH"},
  {SIGSYS, "SYS"}};

static void push_signal_name(lua_State *L, int number) {
  for (size_t i = 0; i < sizeof signal_table / sizeof *signal_table; i++)
    if (signal_table[i].number == number) {
      lua_pushstring(L, signal_table[i].name);
      return;
    }
  lua_pushfstring(L, "SIG%d", number);
}

/* "TERM", "SIGTERM", "term" or 15. */
static int check_signal(lua_State *L, int idx, int dflt) {
  if (lua_isnoneornil(L, idx)) return dflt;
  if (lua_type(L, idx) == LUA_TNUMBER) {
    lua_Integer n = luaL_checkinteger(L, idx);
    luaL_argcheck(L, n >= 0 && n < 65, idx, "not a signal number");
    return (int)n;
  }
  const char *name = luaL_checkstring(L, idx);
  if (strncasecmp(name, "SIG", 3) == 0) name += 3;
  for (size_t i = 0; i < sizeof signal_table / sizeof *signal_table; i++)
    if (strcasecmp(name, signal_table[i].name) == 0) return signal_table[i].number;
  return luaL_argerror(L, idx, "unknown signal name");
}

/* ---- the line queue ---- */

static size_t queue_size(const line_queue *q) { return q->tail - q->head; }

static int queue_reserve(line_queue *q, size_t need) {
  if (q->tail + need <= q->cap) return 0;
  if (q->head > 0) {
    memmove(q->data, q->data + q->head, q->tail - q->head);
    q->tail -= q->head;
    q->head = 0;
  }
  if (q->tail + need <= q->cap) return 0;
  size_t cap = q->cap ? q->cap : 4096;
  while (cap < q->tail + need) cap *= 2;
  char *data = realloc(q->data, cap);
  if (!data) return -1;
  q->data = data;
  q->cap = cap;
  return 0;
}

/* One record: a line made of two pieces (what was pending, then the new bytes). */
static int queue_push(line_queue *q, int stream, int terminated, const char *a, size_t alen,
                      const char *b, size_t blen) {
  size_t len = alen + blen;
  if (len > UINT32_MAX || queue_reserve(q, RECORD_HEAD + len) != 0) return -1;
  unsigned char *rec = (unsigned char *)q->data + q->tail;
  uint32_t len32 = (uint32_t)len;
  rec[0] = (unsigned char)stream;
  rec[1] = (unsigned char)terminated;
  memcpy(rec + 2, &len32, sizeof len32);
  if (alen) memcpy(rec + RECORD_HEAD, a, alen);
  if (blen) memcpy(rec + RECORD_HEAD + alen, b, blen);
  q->tail += RECORD_HEAD + len;
  q->lines++;
  return 0;
}

/* Takes the oldest record; returns its length, and where its bytes are. */
static size_t queue_pop(line_queue *q, int *stream, int *terminated, const char **bytes) {
  const unsigned char *rec = (const unsigned char *)q->data + q->head;
  uint32_t len32;
  memcpy(&len32, rec + 2, sizeof len32);
  *stream = rec[0];
  *terminated = rec[1];
  *bytes = (const char *)rec + RECORD_HEAD;
  q->head += RECORD_HEAD + len32;
  q->lines--;
  return len32;
}

/* Once the popped bytes are copied: an empty queue starts again at the front. */
static void queue_settle(line_queue *q) {
  if (q->head == q->tail) q->head = q->tail = 0;
}

static void queue_free(line_queue *q) {
  free(q->data);
  memset(q, 0, sizeof *q);
}

/* ---- handles and the life of a process record ---- */

static void registry_unlink(proc *p) {
  if (!p->reg) return;
  if (p->prev) p->prev->next = p->next;
  else p->reg->procs = p->next;
  if (p->next) p->next->prev = p->prev;
  p->next = p->prev = NULL;
  p->reg = NULL;
}

static void registry_link(proc_registry *reg, proc *p) {
  p->reg = reg;
  p->prev = NULL;
  p->next = reg->procs;
  if (reg->procs) reg->procs->prev = p;
  reg->procs = p;
}

/* Freed when Lua has let go and libuv is done with every handle. */
static void maybe_free(proc *p) {
  if (p->owner || p->open_handles > 0) return;
  registry_unlink(p);
  queue_free(&p->queue);
  for (int i = 0; i < OUT_COUNT; i++) free(p->out[i].partial.data);
  free(p);
}

static void on_handle_closed(uv_handle_t *h) {
  proc *p = h->data;
  p->open_handles--;
  maybe_free(p);
}

static void close_handle(uv_handle_t *h) {
  if (!uv_is_closing(h)) uv_close(h, on_handle_closed);
}

static void adopt_handle(proc *p, uv_handle_t *h) {
  h->data = p;
  p->open_handles++;
}

static uint64_t millis(double seconds) {
  return seconds <= 0 ? 0 : (uint64_t)(seconds * 1000.0 + 0.5);
}

/* ---- waking the tasks that wait on a process ---- */

/* A process keeps the loop (and so the program) alive only while a task waits on it: one
 * left running when the program ends is ended by registry_close. */
static void update_ref(proc *p) {
  int ref = p->reader.active || p->exiter.active || p->writer.active;
  uv_handle_t *handles[] = {(uv_handle_t *)&p->process, (uv_handle_t *)&p->out[0].pipe,
                            (uv_handle_t *)&p->out[1].pipe, (uv_handle_t *)&p->deadline,
                            (uv_handle_t *)&p->killer, (uv_handle_t *)&p->linger,
                            p->has_in ? (uv_handle_t *)&p->in : NULL};
  for (size_t i = 0; i < sizeof handles / sizeof *handles; i++) {
    if (!handles[i]) continue;
    if (ref) uv_ref(handles[i]);
    else uv_unref(handles[i]);
  }
}

static void wake(waiter *w, int nresults) {
  w->active = 0;
  update_ref(w->p);
  vq_wait_done(&w->wait, nresults);
}

static void wake_with_true(waiter *w) {
  if (!w->active) return;
  lua_State *co = vq_wait_thread(&w->wait);
  lua_checkstack(co, 1);
  lua_pushboolean(co, 1);
  wake(w, 1);
}

static void wake_with_error(waiter *w, const char *code, const char *message) {
  if (!w->active) return;
  lua_State *co = vq_wait_thread(&w->wait);
  lua_checkstack(co, 3);
  lua_pushnil(co);
  vq_push_error_table(co, code, "%s", message);
  wake(w, 2);
}

/* Called for a cancelled task and for a vq.timeout alike: the request only stops waiting,
 * unless the process belongs to the wait (proc.run). */
static void on_wait_cancelled(vq_wait *vw) {
  waiter *w = (waiter *)vw;
  w->active = 0;
  if (!w->p->reg) return;
  update_ref(w->p);
  if (w->p->kill_on_cancel) terminate(w->p, w->p->grace);
}

static void begin_wait(lua_State *L, waiter *w) {
  vq_wait_begin(L, &w->wait, on_wait_cancelled);
  w->active = 1;
  update_ref(w->p);
}

/* ---- signalling the process group ---- */

static int signal_group(proc *p, int sig) {
  if (p->pid <= 0) return UV_ESRCH;
  return kill(-p->pid, sig) == 0 ? 0 : uv_translate_sys_error(errno);
}

static int group_gone(proc *p) {
  return p->pid <= 0 || (kill(-p->pid, 0) != 0 && errno == ESRCH);
}

static void on_killer(uv_timer_t *t) {
  proc *p = t->data;
  signal_group(p, SIGKILL);
  close_timers_when_idle(p);
}

/* SIGTERM to the group now, SIGKILL after the grace period unless it is gone by then.
 * The first call's grace period holds. */
static void terminate(proc *p, double grace) {
  if (p->terminating || p->pid <= 0) return;
  p->terminating = 1;
  if (p->exited && group_gone(p)) return;
  signal_group(p, SIGTERM);
  if (grace <= 0) signal_group(p, SIGKILL);
  else if (!uv_is_closing((uv_handle_t *)&p->killer))
    uv_timer_start(&p->killer, on_killer, millis(grace), 0);
}

static void on_deadline(uv_timer_t *t) {
  proc *p = t->data;
  p->timed_out = 1;
  terminate(p, p->grace);
}

/* ---- reading output ---- */

static int output_ended(const proc *p) { return !p->out[OUT_STDOUT].open && !p->out[OUT_STDERR].open; }

static void pause_reading(proc *p) {
  for (int i = 0; i < OUT_COUNT; i++) {
    out_pipe *o = &p->out[i];
    if (o->open && o->reading) uv_read_stop((uv_stream_t *)&o->pipe);
    o->reading = 0;
  }
  p->paused = 1;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  out_pipe *o = (out_pipe *)h;
  *buf = uv_buf_init(o->chunk, sizeof o->chunk);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void end_of_pipe(proc *p, out_pipe *o);

static void close_pipe(out_pipe *o) {
  if (!o->open) return;
  o->open = o->reading = 0;
  close_handle((uv_handle_t *)&o->pipe);
  free(o->partial.data);
  memset(&o->partial, 0, sizeof o->partial);
}

static void start_reading(out_pipe *o) {
  if (!o->open || o->reading) return;
  o->reading = 1;
  if (uv_read_start((uv_stream_t *)&o->pipe, on_alloc, on_read) != 0) end_of_pipe(o->p, o);
}

static void resume_reading(proc *p) {
  p->paused = 0;
  for (int i = 0; i < OUT_COUNT; i++) start_reading(&p->out[i]);
}

static void drop_oldest(proc *p, size_t target) {
  while (queue_size(&p->queue) > target) {
    int stream, terminated;
    const char *bytes;
    p->dropped += queue_pop(&p->queue, &stream, &terminated, &bytes);
  }
  queue_settle(&p->queue);
}

static void emit_line(proc *p, out_pipe *o, const char *s, size_t n, int terminated) {
  if (queue_push(&p->queue, o->index, terminated, o->partial.data, o->partial.len, s, n) != 0)
    p->dropped += o->partial.len + n; /* out of memory: the line is lost, not the process */
  o->partial.len = 0;
}

static void keep_partial(proc *p, out_pipe *o, const char *s, size_t n) {
  /* A line longer than max_line is handed on in pieces, so that memory stays bounded. */
  while (o->partial.len + n >= p->max_line) {
    size_t take = p->max_line - o->partial.len;
    emit_line(p, o, s, take, 0);
    s += take;
    n -= take;
  }
  if (n == 0) return;
  if (o->partial.len + n > o->partial.cap) {
    size_t cap = p->max_line;
    char *data = realloc(o->partial.data, cap);
    if (!data) {
      p->dropped += n;
      return;
    }
    o->partial.data = data;
    o->partial.cap = cap;
  }
  memcpy(o->partial.data + o->partial.len, s, n);
  o->partial.len += n;
}

static void split_lines(proc *p, out_pipe *o, const char *s, size_t n) {
  while (n > 0) {
    const char *nl = memchr(s, '\n', n);
    if (!nl) {
      keep_partial(p, o, s, n);
      return;
    }
    size_t len = (size_t)(nl - s);
    emit_line(p, o, s, len, 1);
    s += len + 1;
    n -= len + 1;
  }
}

static void apply_back_pressure(proc *p) {
  size_t size = queue_size(&p->queue);
  if (size > p->high_water) p->high_water = size;
  if (size < p->limit) return;
  if (p->discard_unread) drop_oldest(p, p->limit / 2);
  else pause_reading(p);
}

static void end_of_pipe(proc *p, out_pipe *o) {
  if (o->partial.len) emit_line(p, o, NULL, 0, 0);
  close_pipe(o);
  if (output_ended(p)) {
    uv_timer_stop(&p->linger);
    wake_with_true(&p->reader);
  }
  close_timers_when_idle(p);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  out_pipe *o = (out_pipe *)s;
  proc *p = o->p;
  if (n < 0) {
    end_of_pipe(p, o);
    return;
  }
  if (n == 0) return;
  p->bytes_since_linger += (size_t)n;
  split_lines(p, o, buf->base, (size_t)n);
  apply_back_pressure(p);
  if (queue_size(&p->queue) > 0) wake_with_true(&p->reader);
}

/* After the process exited, a grandchild may still hold its pipes open (a daemon it
 * started): once they have been quiet for `linger` seconds, stop waiting for them. */
static void on_linger(uv_timer_t *t) {
  proc *p = t->data;
  if (p->bytes_since_linger > 0 || p->paused) {
    p->bytes_since_linger = 0;
    return;
  }
  for (int i = 0; i < OUT_COUNT; i++)
    if (p->out[i].open) end_of_pipe(p, &p->out[i]);
}

/* ---- stdin ---- */

static void close_stdin(proc *p) {
  if (!p->in_open) return;
  p->in_open = 0;
  close_handle((uv_handle_t *)&p->in); /* pending writes end with UV_ECANCELED */
}

static void on_stdin_shutdown(uv_shutdown_t *req, int status) {
  (void)status;
  proc *p = req->data;
  close_stdin(p);
  close_timers_when_idle(p);
}

/* EOF for the child once what was written is through. */
static void finish_stdin(proc *p) {
  if (!p->in_open || p->in_shutting) return;
  p->in_shutting = 1;
  p->shutdown.data = p;
  if (uv_shutdown(&p->shutdown, (uv_stream_t *)&p->in, on_stdin_shutdown) != 0) close_stdin(p);
}

static void on_write(uv_write_t *req, int status) {
  write_req *w = (write_req *)req;
  proc *p = w->p;
  if (p->awaited_write == w) {
    p->awaited_write = NULL;
    if (status == 0) wake_with_true(&p->writer);
    else wake_with_error(&p->writer, status == UV_ECANCELED ? "closed" : "write",
                         uv_strerror(status));
  }
  if (status < 0) close_stdin(p); /* the child is not reading any more */
  free(w);
}

static int start_write(proc *p, const char *data, size_t len, write_req **out) {
  if (len > UINT32_MAX) return UV_E2BIG;
  write_req *w = malloc(sizeof *w + len);
  if (!w) return UV_ENOMEM;
  memcpy(w->data, data, len);
  w->p = p;
  uv_buf_t buf = uv_buf_init(w->data, (unsigned)len);
  int rc = uv_write(&w->req, (uv_stream_t *)&p->in, &buf, 1, on_write);
  if (rc != 0) {
    free(w);
    return rc;
  }
  if (out) *out = w;
  return 0;
}

/* ---- exit ---- */

/* The timers go once nothing can need them: the process reaped, the pipes closed and
 * no SIGKILL pending for what is left of the group. */
static void close_timers_when_idle(proc *p) {
  if (!p->process_closed || !output_ended(p) || p->in_open) return;
  if (uv_is_active((uv_handle_t *)&p->killer)) return;
  close_handle((uv_handle_t *)&p->deadline);
  close_handle((uv_handle_t *)&p->killer);
  close_handle((uv_handle_t *)&p->linger);
}

static void on_process_exit(uv_process_t *h, int64_t status, int term_signal) {
  proc *p = h->data;
  p->exited = p->process_closed = 1;
  p->exit_status = status;
  p->term_signal = term_signal;
  p->ended = uv_hrtime();
  close_handle((uv_handle_t *)h);
  uv_timer_stop(&p->deadline);
  if (p->terminating && group_gone(p)) uv_timer_stop(&p->killer);
  close_stdin(p);
  if (!output_ended(p) && !uv_is_closing((uv_handle_t *)&p->linger)) {
    p->bytes_since_linger = 0;
    uint64_t ms = millis(p->linger_seconds);
    uv_timer_start(&p->linger, on_linger, ms ? ms : 1, ms ? ms : 1);
  }
  wake_with_true(&p->exiter);
  close_timers_when_idle(p);
}

static void push_exit(lua_State *L, const proc *p) {
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, p->pid);
  lua_setfield(L, -2, "pid");
  if (p->term_signal) {
    push_signal_name(L, p->term_signal);
    lua_setfield(L, -2, "signal");
  } else {
    lua_pushinteger(L, (lua_Integer)p->exit_status);
    lua_setfield(L, -2, "code");
  }
  lua_pushnumber(L, (lua_Number)(p->ended - p->started) / 1e9);
  lua_setfield(L, -2, "duration");
  lua_pushboolean(L, p->timed_out);
  lua_setfield(L, -2, "timed_out");
  if (p->dropped) {
    lua_pushinteger(L, (lua_Integer)p->dropped);
    lua_setfield(L, -2, "dropped");
  }
}

/* ---- releasing a process: Lua let go, or the runtime closes ---- */

static void close_all_pipes(proc *p) {
  for (int i = 0; i < OUT_COUNT; i++) close_pipe(&p->out[i]);
  close_stdin(p);
}

static void release(proc *p) {
  p->owner = NULL;
  wake_with_error(&p->reader, "closed", "the process object was closed");
  wake_with_error(&p->exiter, "closed", "the process object was closed");
  wake_with_error(&p->writer, "closed", "the process object was closed");
  if (p->reg) {
    if (!p->exited) terminate(p, p->grace);
    close_all_pipes(p);
    queue_free(&p->queue);
    close_timers_when_idle(p);
  }
  maybe_free(p);
}

static void pause_briefly(void) {
  struct timespec pause = {0, 10 * 1000 * 1000};
  nanosleep(&pause, NULL);
}

/* Reaps the leader (libuv no longer will: its handle is closed) and tells whether the
 * whole group is gone. */
static int group_ended(proc *p) {
  if (!p->leader_reaped) {
    pid_t r = waitpid(p->pid, NULL, WNOHANG);
    if (r == p->pid || (r < 0 && errno == ECHILD)) p->leader_reaped = 1;
  }
  return p->leader_reaped && group_gone(p);
}

/* One round over the groups being ended: SIGKILL for those past their grace period.
 * Returns whether some are still to wait for; one that outlives its SIGKILL by 2 s (stuck
 * in the kernel, or a zombie nobody reaps left in the group) is given up on. */
static int end_groups_round(proc_registry *reg) {
  int waiting = 0;
  uint64_t now = uv_hrtime();
  for (proc *p = reg->procs; p; p = p->next) {
    if (!p->ending || group_ended(p)) continue;
    if (now >= p->kill_at && !p->killed) {
      p->killed = 1;
      signal_group(p, SIGKILL);
    }
    if (now < p->kill_at + 2000000000u) waiting = 1;
  }
  return waiting;
}

/* The runtime closes with children still running (or being terminated): the usual
 * SIGTERM, grace period and SIGKILL, waited for here since the loop is done. A child that
 * exited by itself keeps whatever it left behind (a daemon it started). */
static void end_groups(proc_registry *reg) {
  uint64_t now = uv_hrtime();
  for (proc *p = reg->procs; p; p = p->next) {
    p->ending = p->pid > 0 && (!p->exited || p->terminating);
    if (!p->ending) continue;
    p->leader_reaped = p->exited;
    if (!p->process_closed) {
      p->process_closed = 1;
      close_handle((uv_handle_t *)&p->process); /* libuv will not reap it now: we do */
    }
    signal_group(p, SIGTERM);
    p->kill_at = now + millis(p->grace) * 1000000u;
  }
  while (end_groups_round(reg)) pause_briefly();
}

static void force_close(proc *p) {
  p->reader.active = p->exiter.active = p->writer.active = 0;
  if (!p->process_closed) {
    p->process_closed = 1;
    close_handle((uv_handle_t *)&p->process);
  }
  close_all_pipes(p);
  close_handle((uv_handle_t *)&p->deadline);
  close_handle((uv_handle_t *)&p->killer);
  close_handle((uv_handle_t *)&p->linger);
}

static void registry_close(void *ud) {
  proc_registry *reg = ud;
  end_groups(reg);
  while (reg->procs) {
    proc *p = reg->procs;
    registry_unlink(p);
    force_close(p);
  }
  if (reg->owner) *reg->owner = NULL;
  free(reg);
}

static proc_registry *registry_of(lua_State *L) {
  void **slot = vq_module_slot(L, REGISTRY_KEY);
  if (*slot) return *slot;
  proc_registry *reg = calloc(1, sizeof *reg);
  if (!reg) luaL_error(L, "out of memory");
  *slot = reg;
  reg->owner = slot;
  vq_on_close(vq_from_lua(L), registry_close, reg);
  return reg;
}

/* ---- spawning ---- */

/* A NULL-terminated array of the list's strings, in a userdata left on the stack (so
 * that nothing leaks if a later check raises); the strings stay in the options table. */
static char **string_list(lua_State *L, int opts, const char *key) {
  if (lua_getfield(L, opts, key) == LUA_TNIL) {
    lua_pop(L, 1);
    return NULL;
  }
  if (!lua_istable(L, -1)) luaL_error(L, "proc.spawn: %s must be a list of strings", key);
  lua_Integer n = luaL_len(L, -1);
  char **list = lua_newuserdatauv(L, sizeof *list * (size_t)(n + 1), 0);
  for (lua_Integer i = 1; i <= n; i++) {
    size_t len;
    if (lua_rawgeti(L, -2, i) != LUA_TSTRING)
      luaL_error(L, "proc.spawn: %s[%d] must be a string", key, (int)i);
    list[i - 1] = (char *)lua_tolstring(L, -1, &len);
    if (strlen(list[i - 1]) != len) luaL_error(L, "proc.spawn: %s[%d] holds a NUL byte", key, (int)i);
    lua_pop(L, 1);
  }
  list[n] = NULL;
  lua_remove(L, -2);
  return list;
}

static double opt_number(lua_State *L, int opts, const char *key, double dflt) {
  lua_getfield(L, opts, key);
  double v = lua_isnil(L, -1) ? dflt : (double)luaL_checknumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static void read_stdin_opt(lua_State *L, int opts, spawn_opts *o) {
  int type = lua_getfield(L, opts, "stdin");
  if (type == LUA_TSTRING) o->stdin_data = lua_tolstring(L, -1, &o->stdin_len);
  else if (type == LUA_TBOOLEAN) o->keep_stdin = lua_toboolean(L, -1);
  else if (type != LUA_TNIL) luaL_error(L, "proc.spawn: stdin must be a string or true");
  lua_pop(L, 1); /* a string stays alive in the options table */
}

static void read_spawn_opts(lua_State *L, int opts, spawn_opts *o) {
  memset(o, 0, sizeof *o);
  o->argv = string_list(L, opts, "argv");
  if (!o->argv || !o->argv[0] || !o->argv[0][0])
    luaL_error(L, "proc.spawn: argv must be a list of strings starting with the program");
  o->env = string_list(L, opts, "env");
  lua_getfield(L, opts, "cwd");
  o->cwd = lua_isnil(L, -1) ? NULL : luaL_checkstring(L, -1);
  lua_pop(L, 1);
  read_stdin_opt(L, opts, o);
  o->timeout = opt_number(L, opts, "timeout", 0);
  o->grace = opt_number(L, opts, "grace", DEFAULT_GRACE);
  o->linger = opt_number(L, opts, "linger", DEFAULT_LINGER);
  double buffer = opt_number(L, opts, "buffer", DEFAULT_BUFFER);
  double max_line = opt_number(L, opts, "max_line", DEFAULT_MAX_LINE);
  if (buffer < 1024 || max_line < 64) luaL_error(L, "proc.spawn: buffer or max_line too small");
  o->buffer = (size_t)buffer;
  o->max_line = (size_t)max_line;
  lua_getfield(L, opts, "kill_on_cancel");
  o->kill_on_cancel = lua_toboolean(L, -1);
  lua_pop(L, 1);
}

static void init_out_pipe(proc *p, int index) {
  out_pipe *o = &p->out[index];
  o->p = p;
  o->index = index;
  o->open = 1;
  uv_pipe_init(p->loop, &o->pipe, 0);
  adopt_handle(p, (uv_handle_t *)&o->pipe);
}

static proc *proc_new(uv_loop_t *loop, const spawn_opts *o) {
  proc *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->loop = loop;
  p->limit = o->buffer;
  p->max_line = o->max_line;
  p->grace = o->grace;
  p->linger_seconds = o->linger;
  p->kill_on_cancel = o->kill_on_cancel;
  p->reader.p = p->exiter.p = p->writer.p = p;
  uv_timer_t *timers[] = {&p->deadline, &p->killer, &p->linger};
  for (size_t i = 0; i < 3; i++) {
    uv_timer_init(loop, timers[i]);
    adopt_handle(p, (uv_handle_t *)timers[i]);
  }
  for (int i = 0; i < OUT_COUNT; i++) init_out_pipe(p, i);
  p->has_in = p->in_open = o->stdin_data != NULL || o->keep_stdin;
  if (p->has_in) {
    uv_pipe_init(loop, &p->in, 0);
    adopt_handle(p, (uv_handle_t *)&p->in);
  }
  return p;
}

static int start_process(proc *p, const spawn_opts *o) {
  uv_stdio_container_t stdio[3];
  stdio[0].flags = p->has_in ? UV_CREATE_PIPE | UV_READABLE_PIPE : UV_IGNORE;
  stdio[0].data.stream = p->has_in ? (uv_stream_t *)&p->in : NULL;
  for (int i = 0; i < OUT_COUNT; i++) {
    stdio[i + 1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[i + 1].data.stream = (uv_stream_t *)&p->out[i].pipe;
  }
  uv_process_options_t options;
  memset(&options, 0, sizeof options);
  options.exit_cb = on_process_exit;
  options.file = o->argv[0];
  options.args = o->argv;
  options.env = o->env;
  options.cwd = o->cwd;
  options.flags = UV_PROCESS_DETACHED; /* setsid: a process group of its own */
  options.stdio_count = 3;
  options.stdio = stdio;
  p->started = uv_hrtime();
  int rc = uv_spawn(p->loop, &p->process, &options);
  adopt_handle(p, (uv_handle_t *)&p->process); /* initialised even when uv_spawn fails */
  if (rc == 0) p->pid = p->process.pid;
  return rc;
}

static void start_io(proc *p, const spawn_opts *o) {
  for (int i = 0; i < OUT_COUNT; i++) start_reading(&p->out[i]);
  if (o->stdin_data) {
    if (o->stdin_len > 0 && start_write(p, o->stdin_data, o->stdin_len, NULL) != 0) close_stdin(p);
    finish_stdin(p);
  }
  if (o->timeout > 0) uv_timer_start(&p->deadline, on_deadline, millis(o->timeout), 0);
}

static int push_spawn_error(lua_State *L, int rc, const spawn_opts *o) {
  lua_pushnil(L);
  vq_push_error_table(L, "spawn", "cannot run %s: %s", o->argv[0], uv_strerror(rc));
  lua_pushstring(L, o->argv[0]);
  lua_setfield(L, -2, "program");
  lua_pushstring(L, uv_err_name(rc));
  lua_setfield(L, -2, "errno");
  if (o->cwd) {
    lua_pushstring(L, o->cwd);
    lua_setfield(L, -2, "cwd");
  }
  return 2;
}

static int l_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  spawn_opts o;
  read_spawn_opts(L, 1, &o);
  proc_registry *reg = registry_of(L);
  proc_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  ud->p = NULL;
  ud->pid = 0;
  luaL_setmetatable(L, PROC_MT);
  proc *p = proc_new(vq_loop(vq_from_lua(L)), &o);
  if (!p) return luaL_error(L, "out of memory");
  registry_link(reg, p);
  int rc = start_process(p, &o);
  if (rc != 0) {
    p->process_closed = 1;
    close_handle((uv_handle_t *)&p->process);
    close_all_pipes(p);
    close_timers_when_idle(p);
    return push_spawn_error(L, rc, &o);
  }
  p->owner = ud;
  ud->p = p;
  ud->pid = p->pid;
  start_io(p, &o);
  update_ref(p);
  return 1;
}

/* ---- the process object ---- */

static proc_ud *check_ud(lua_State *L) { return luaL_checkudata(L, 1, PROC_MT); }

/* The process, or NULL once the object was closed or the runtime has closed. */
static proc *live_proc(lua_State *L) {
  proc *p = check_ud(L)->p;
  return p && p->reg ? p : NULL;
}

static int push_closed(lua_State *L) {
  return vq_push_error(L, "closed", "the process object is closed");
}

/* nil, err on top: a timed-out or closed wait. */
static int is_failure(lua_State *L) {
  return lua_gettop(L) >= 2 && lua_isnil(L, -2) && lua_istable(L, -1);
}

static int pop_line(lua_State *L, proc *p) {
  int stream, terminated;
  const char *bytes;
  size_t len = queue_pop(&p->queue, &stream, &terminated, &bytes);
  lua_pushlstring(L, bytes, len);
  lua_pushstring(L, stream_names[stream]);
  lua_pushboolean(L, terminated);
  queue_settle(&p->queue);
  if (p->paused && queue_size(&p->queue) < p->limit / 2) resume_reading(p);
  return 3;
}

static int read_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  if (is_failure(L)) return 2;
  lua_settop(L, 1);
  proc *p = live_proc(L);
  if (!p) return push_closed(L);
  if (queue_size(&p->queue) > 0) return pop_line(L, p);
  lua_pushnil(L);
  return 1;
}

static int l_read(lua_State *L) {
  proc *p = live_proc(L);
  if (!p) return push_closed(L);
  lua_settop(L, 1);
  p->ever_read = 1;
  p->discard_unread = 0;
  if (queue_size(&p->queue) > 0) return pop_line(L, p);
  if (output_ended(p)) {
    lua_pushnil(L);
    return 1;
  }
  vq_wait_check(L);
  if (p->reader.active) return luaL_error(L, "another task is already reading this process's output");
  begin_wait(L, &p->reader);
  return vq_wait_yieldk(L, &p->reader.wait, 0, read_k);
}

/* for line, stream in p:lines() do ... end */
static int l_lines(lua_State *L) {
  check_ud(L);
  lua_pushcfunction(L, l_read);
  lua_pushvalue(L, 1);
  return 2;
}

/* Output nobody reads must not block the child while a task waits for its exit. */
static void discard_unread_output(proc *p) {
  p->discard_unread = 1;
  if (p->paused) {
    drop_oldest(p, p->limit / 2);
    resume_reading(p);
  }
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  if (is_failure(L)) return 2;
  lua_settop(L, 1);
  proc *p = check_ud(L)->p;
  if (!p || !p->exited) return push_closed(L);
  push_exit(L, p);
  return 1;
}

static int l_wait(lua_State *L) {
  proc *p = check_ud(L)->p;
  if (p && p->exited) {
    push_exit(L, p);
    return 1;
  }
  if (!p || !p->reg) return push_closed(L);
  vq_wait_check(L);
  if (p->exiter.active) return luaL_error(L, "another task is already waiting for this process");
  if (!p->ever_read) discard_unread_output(p);
  begin_wait(L, &p->exiter);
  lua_settop(L, 1);
  return vq_wait_yieldk(L, &p->exiter.wait, 0, wait_k);
}

static int l_kill(lua_State *L) {
  proc *p = live_proc(L);
  int sig = check_signal(L, 2, SIGTERM);
  if (!p) return push_closed(L);
  int rc = signal_group(p, sig);
  if (rc == UV_ESRCH) return vq_push_error(L, "exited", "process %d has exited", p->pid);
  if (rc != 0) return vq_push_error(L, "kill", "cannot signal process %d: %s", p->pid, uv_strerror(rc));
  lua_pushboolean(L, 1);
  return 1;
}

static int l_terminate(lua_State *L) {
  proc *p = live_proc(L);
  if (!p) return push_closed(L);
  terminate(p, luaL_optnumber(L, 2, p->grace));
  lua_pushboolean(L, 1);
  return 1;
}

static int write_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  if (is_failure(L)) return 2;
  lua_pushboolean(L, 1);
  return 1;
}

static int l_write(lua_State *L) {
  proc *p = live_proc(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  if (!p) return push_closed(L);
  if (!p->in_open || p->in_shutting) return vq_push_error(L, "closed", "the process's stdin is closed");
  if (len == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  vq_wait_check(L);
  if (p->writer.active) return luaL_error(L, "another task is already writing to this process");
  write_req *w = NULL;
  int rc = start_write(p, data, len, &w);
  if (rc != 0) return vq_push_error(L, "write", "cannot write to the process: %s", uv_strerror(rc));
  p->awaited_write = w;
  begin_wait(L, &p->writer);
  lua_settop(L, 1);
  return vq_wait_yieldk(L, &p->writer.wait, 0, write_k);
}

static int l_close_stdin(lua_State *L) {
  proc *p = live_proc(L);
  if (p) finish_stdin(p);
  return 0;
}

static int l_close(lua_State *L) {
  proc_ud *ud = check_ud(L);
  if (ud->p) {
    proc *p = ud->p;
    ud->p = NULL;
    release(p);
  }
  return 0;
}

static int l_pid(lua_State *L) {
  lua_pushinteger(L, check_ud(L)->pid);
  return 1;
}

static void set_integer(lua_State *L, const char *key, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, key);
}

static int l_stats(lua_State *L) {
  proc *p = live_proc(L);
  if (!p) return push_closed(L);
  lua_createtable(L, 0, 6);
  set_integer(L, "buffered", (lua_Integer)queue_size(&p->queue));
  set_integer(L, "high_water", (lua_Integer)p->high_water);
  set_integer(L, "limit", (lua_Integer)p->limit);
  set_integer(L, "lines", (lua_Integer)p->queue.lines);
  set_integer(L, "dropped", (lua_Integer)p->dropped);
  lua_pushboolean(L, p->paused);
  lua_setfield(L, -2, "paused");
  return 1;
}

static int l_tostring(lua_State *L) {
  proc_ud *ud = check_ud(L);
  proc *p = ud->p;
  if (!p) lua_pushfstring(L, "process %d (closed)", ud->pid);
  else lua_pushfstring(L, "process %d (%s)", p->pid, p->exited ? "exited" : "running");
  return 1;
}

static const luaL_Reg proc_methods[] = {
  {"read", l_read}, {"lines", l_lines}, {"wait", l_wait}, {"kill", l_kill},
  {"terminate", l_terminate}, {"write", l_write}, {"close_stdin", l_close_stdin},
  {"close", l_close}, {"pid", l_pid}, {"stats", l_stats}, {NULL, NULL}};

static const luaL_Reg proc_functions[] = {{"spawn", l_spawn}, {NULL, NULL}};

int luaopen_vq_core_proc(lua_State *L) {
  if (luaL_newmetatable(L, PROC_MT)) {
    luaL_newlib(L, proc_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, l_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  luaL_newlib(L, proc_functions);
  return 1;
}
