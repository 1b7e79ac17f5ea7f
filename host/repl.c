/* The interactive prompt, on the runtime's own loop.
 *
 * Every complete input runs as a task, so a statement may wait (vq.sleep, a watch) and
 * tasks spawned earlier go on printing while the next line is typed. On a terminal,
 * libedit's callback interface edits the line: a uv_poll on fd 0 hands it the keys, and
 * a console hook erases the prompt before any output, which is redrawn with the
 * half-typed line before the loop blocks again. From a pipe or a file, lines are read
 * with libuv and run the same way, without prompts. What a value looks like and what Tab
 * offers is Lua's business: scripts/lib/vq/repl.lua.
 *
 * This file is the plugin vq.core.repl, linked with libedit and loaded on first use like
 * the other bindings over heavy libraries (see CMakeLists.txt): scripts never pay for it.
 * vq_repl_run (host/runtime.c) requires it. */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <editline/readline.h>
#include <lauxlib.h>

#include "internal.h"

#define PROMPT "> "
#define PROMPT_MORE ">> "
#define CHUNK_NAME "=stdin"
#define HISTORY_LINES 1000
#define READ_SIZE 65536

typedef enum { INPUT_EDIT, INPUT_STREAM, INPUT_FILE } input_kind;

typedef struct repl {
  vq_runtime *rt;
  lua_State *L;
  int policy;                 /* registry ref of the vq.repl table */
  int host_exit;              /* registry ref of the os.exit the REPL replaced */

  input_kind kind;
  union {
    uv_handle_t handle;
    uv_poll_t poll;           /* INPUT_EDIT: tells libedit a key is there */
    uv_stream_t stream;       /* INPUT_STREAM: a pipe or a terminal, read by line */
    uv_pipe_t pipe;
    uv_tty_t tty;
  } in;
  int have_in;
  uv_prepare_t tick;          /* each loop turn, before blocking: end statements, redraw */
  uv_signal_t winch;
  int have_winch;
  int open_handles;
  int stdin_flags;            /* fd 0's status flags as we found them */

  char *chunk;                /* the statement typed so far, lines joined by \n */
  size_t chunk_len;
  int chunk_lines;
  vq_task *task;              /* the statement running, or NULL */
  int task_ref;
  int sigints_seen;           /* Ctrl-Cs already aimed at a statement */
  unsigned long live_seen;    /* live tasks at the last look for failed ones */

  /* INPUT_EDIT */
  int at_prompt;              /* libedit owns the line and has drawn the prompt */
  int erased;                 /* output erased the prompt: redraw it before blocking */
  int restored;
  struct termios tty_saved;
  char *history;
  char *last_line;            /* the newest history entry, not to add it twice */

  /* INPUT_STREAM, INPUT_FILE: bytes read, not yet taken as lines */
  int prompts;                /* a terminal without libedit still gets "> " */
  int prompted;
  char *buf;
  size_t start, len, cap;
  int reading, eof;

  int finished, status;
} repl;

/* libedit's readline callbacks (the line handler, the completer) take no user data, so
 * this is how they find the REPL; os.exit uses it to tell whether a REPL still runs.
 * Set only while vq_repl_run runs. */
static repl *active;

static void show_prompt(repl *r);
static void read_lines(repl *r);

/* ---- output ---- */

static void console(repl *r, int fd, const char *text) {
  vq_console_write(r->rt, fd, text, strlen(text));
}

/* Cursor movement and the like: no user data, and not through the console hook, which
 * would erase the very prompt it is drawing. */
static void term_write(const char *s) {
  size_t len = strlen(s);
  while (len > 0) {
    ssize_t n = write(STDOUT_FILENO, s, len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return;
    s += n;
    len -= (size_t)n;
  }
}

/* Call vq.repl[name] on the nargs values on top of the stack and print the text it
 * returns on fd; pops the arguments. */
static void print_by_policy(repl *r, int fd, const char *name, int nargs) {
  lua_State *L = r->L;
  if (!lua_checkstack(L, 4)) {
    lua_pop(L, nargs);
    console(r, 2, "vqlua: too many values to print\n");
    return;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->policy);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
  lua_insert(L, -(nargs + 1));
  if (lua_pcall(L, nargs, 1, 0) != LUA_OK) {
    const char *why = lua_isstring(L, -1) ? lua_tostring(L, -1) : "(not a string)";
    lua_pushfstring(L, "vqlua: vq.repl.%s failed: %s\n", name, why);
    fd = 2;
  }
  size_t len;
  const char *text = lua_tolstring(L, -1, &len);
  if (text && len > 0) vq_console_write(r->rt, fd, text, len);
  lua_pop(L, 1);
}

static void finish(repl *r, int status) {
  if (r->finished) return;
  r->finished = 1;
  r->status = status;
  uv_stop(&r->rt->loop);
}

/* ---- history ---- */

static char *history_path(void) {
  const char *path = getenv("VQ_HISTORY");
  if (path && *path) return strdup(path);
  const char *home = getenv("HOME");
  if (!home || !*home) return NULL;
  size_t size = strlen(home) + sizeof "/.vqlua_history";
  char *p = malloc(size);
  if (p) snprintf(p, size, "%s/.vqlua_history", home);
  return p;
}

static void save_history(repl *r) {
  if (!r->history) return;
  /* Lines typed at a production prompt can hold anything: the file is its owner's only. */
  int fd = open(r->history, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return;
  close(fd);
  write_history(r->history);
}

static void add_history_lines(repl *r, char *text) {
  char *rest = NULL;
  for (char *line = strtok_r(text, "\n", &rest); line; line = strtok_r(NULL, "\n", &rest)) {
    if (r->last_line && strcmp(r->last_line, line) == 0) continue;
    char *copy = strdup(line);
    if (!copy) return;
    free(r->last_line);
    r->last_line = copy;
    add_history(line);
  }
}

/* After the statement ran, through the redactor: a secret it registered (a token pasted
 * into log.secret) does not reach the history file. */
static void remember_chunk(repl *r) {
  size_t len;
  char *masked = vq_redact(&r->rt->redactor, r->chunk, r->chunk_len, &len);
  if (!masked && len == SIZE_MAX) return;
  add_history_lines(r, masked ? masked : r->chunk);
  free(masked);
  save_history(r);
}

/* ---- statements ---- */

static int append_line(repl *r, const char *line) {
  /* lua.c's shorthand from 5.2 days: "=x" is "return x". */
  const char *prefix = r->chunk_lines == 0 && line[0] == '=' ? "return " : "";
  if (*prefix) line++;
  size_t n = strlen(line), plen = strlen(prefix);
  char *p = realloc(r->chunk, r->chunk_len + plen + n + 2);
  if (!p) return -1;
  r->chunk = p;
  if (r->chunk_lines++ > 0) p[r->chunk_len++] = '\n';
  memcpy(p + r->chunk_len, prefix, plen);
  memcpy(p + r->chunk_len + plen, line, n + 1);
  r->chunk_len += plen + n;
  return 0;
}

static void end_chunk(repl *r, int remember) {
  if (remember && r->chunk && r->kind == INPUT_EDIT) remember_chunk(r);
  free(r->chunk);
  r->chunk = NULL;
  r->chunk_len = 0;
  r->chunk_lines = 0;
}

/* lua.c's order: a single line is first tried as an expression, so that `1 + 1`
 * prints 2. Pushes the function or the error message. */
static int compile_chunk(repl *r) {
  lua_State *L = r->L;
  if (r->chunk_lines == 1) {
    const char *code = lua_pushfstring(L, "return %s;", r->chunk);
    int status = luaL_loadbuffer(L, code, strlen(code), CHUNK_NAME);
    lua_remove(L, -2);
    if (status == LUA_OK) return status;
    lua_pop(L, 1);
  }
  return luaL_loadbuffer(L, r->chunk, r->chunk_len, CHUNK_NAME);
}

/* A syntax error at <eof> means the statement goes on on the next line. */
static int is_incomplete(lua_State *L, int status) {
  static const char mark[] = "<eof>";
  size_t len;
  const char *msg = lua_tolstring(L, -1, &len);
  return status == LUA_ERRSYNTAX && msg && len >= sizeof mark - 1 &&
         strcmp(msg + len - (sizeof mark - 1), mark) == 0;
}

static void set_echo(int on) {
  struct termios t;
  if (tcgetattr(STDIN_FILENO, &t) != 0) return;
  if (on) t.c_lflag |= ECHO;
  else t.c_lflag &= ~(tcflag_t)ECHO;
  tcsetattr(STDIN_FILENO, TCSANOW, &t);
}

/* Keys typed while a statement runs wait in the terminal, unechoed, for the next prompt. */
static void pause_input(repl *r) {
  if (r->kind == INPUT_EDIT) {
    uv_poll_stop(&r->in.poll);
    set_echo(0);
  } else if (r->reading) {
    uv_read_stop(&r->in.stream);
    r->reading = 0;
  }
}

static void resume_input(repl *r) {
  if (r->finished) return;
  if (r->kind == INPUT_EDIT) show_prompt(r);
  else read_lines(r);
}

static void start_statement(repl *r) {
  lua_State *L = r->L;
  r->task = vq_spawn(L, 0);
  lua_getfield(L, -1, "name");
  lua_pushvalue(L, -2);
  lua_pushliteral(L, "repl");
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1);
  r->task_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  r->rt->interrupt_target = r->task;
  pause_input(r);
}

static void accept_line(repl *r, const char *line) {
  lua_State *L = r->L;
  if (append_line(r, line) != 0) {
    console(r, 2, "vqlua: out of memory\n");
    end_chunk(r, 0);
    return;
  }
  int status = compile_chunk(r);
  if (status == LUA_OK) {
    start_statement(r);
    return;
  }
  if (!is_incomplete(L, status)) {
    print_by_policy(r, 2, "describe", 1);
    end_chunk(r, 1);
    return;
  }
  lua_pop(L, 1);
}

/* Failed tasks nobody waited for are reported when one has ended, between statements
 * (a statement may still be about to wait for it). */
static void report_failed_tasks(repl *r, int statement_ended) {
  vq_runtime *rt = r->rt;
  if (r->task) return;
  if (statement_ended || rt->live_tasks < r->live_seen) vq_sched_report_unjoined(rt);
  r->live_seen = rt->live_tasks;
}

static void finish_statement(repl *r) {
  lua_State *L = r->L;
  int top = lua_gettop(L);
  int ok = r->task->ok;
  lua_rawgeti(L, LUA_REGISTRYINDEX, r->task_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, r->task_ref);
  r->task_ref = LUA_NOREF;
  r->task = NULL;
  r->rt->interrupt_target = NULL;
  r->sigints_seen = r->rt->sigint_count;
  lua_getfield(L, -1, "wait"); /* on a task that is done: its outcome, now */
  lua_insert(L, -2);
  if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) ok = 0;
  int n = lua_gettop(L) - top;
  if (ok) {
    print_by_policy(r, 1, "show", n);
  } else {
    lua_replace(L, top + 1); /* the error, in place of the nil before it */
    lua_settop(L, top + 1);
    print_by_policy(r, 2, "describe", 1);
  }
  lua_settop(L, top);
  end_chunk(r, 1);
  report_failed_tasks(r, 1);
  resume_input(r);
}

/* ---- the line editor ---- */

static int bytes_waiting(void) {
  int n = 0;
  return ioctl(STDIN_FILENO, FIONREAD, &n) == 0 ? n : 0;
}

/* Clear from the prompt's first row down, from wherever libedit left the cursor. */
static void erase_prompt(repl *r) {
  int cols = 0;
  rl_get_screen_size(NULL, &cols);
  int point = rl_point;
  size_t used = strlen(r->chunk ? PROMPT_MORE : PROMPT) + (size_t)(point > 0 ? point : 0);
  int up = cols > 0 ? (int)(used / (size_t)cols) : 0;
  char seq[32];
  if (up > 0) snprintf(seq, sizeof seq, "\r\033[%dA\033[J", up);
  else snprintf(seq, sizeof seq, "\r\033[J");
  term_write(seq);
}

static void redraw_prompt(repl *r) {
  r->erased = 0;
  if (r->at_prompt) rl_forced_update_display();
}

static void on_console_write(void *ud, int before) {
  repl *r = ud;
  if (!before || !r->at_prompt || r->erased) return;
  erase_prompt(r);
  r->erased = 1;
}

static void on_line(char *line) {
  repl *r = active;
  r->at_prompt = 0;
  r->erased = 0;
  rl_callback_handler_remove();
  if (!line) { /* Ctrl-D on an empty line: libedit drew it as ^D */
    term_write("\r\033[K");
    term_write(r->chunk ? PROMPT_MORE : PROMPT);
    term_write("\n");
    finish(r, 0);
    return;
  }
  accept_line(r, line);
  free(line);
  if (!r->task && !r->finished) show_prompt(r);
}

static void on_keys(uv_poll_t *poll, int status, int events) {
  repl *r = poll->data;
  if (r->erased) redraw_prompt(r);
  /* Readable with nothing to read: the terminal is gone. */
  if (status < 0 || (events & UV_DISCONNECT) || bytes_waiting() == 0) {
    finish(r, 0);
    return;
  }
  /* libedit reads with a blocking read(): call it only while bytes are there. */
  do rl_callback_read_char();
  while (r->at_prompt && !r->finished && bytes_waiting() > 0);
}

static void show_prompt(repl *r) {
  set_echo(1);
  rl_callback_handler_install(r->chunk ? PROMPT_MORE : PROMPT, on_line);
  /* libedit cleared its line but updates rl_point only after the next key: erase_prompt
   * must not climb over the rows of the line before. */
  rl_point = 0;
  r->at_prompt = 1;
  r->erased = 0;
  uv_poll_start(&r->in.poll, UV_READABLE | UV_DISCONNECT, on_keys);
}

/* Like a shell: the line typed so far is dropped, a fresh prompt comes. */
static void discard_line(repl *r) {
  int erased = r->erased;
  r->at_prompt = 0;
  rl_callback_handler_remove();
  if (!erased) term_write("^C\r\n");
  end_chunk(r, 0);
  show_prompt(r);
}

static void on_winch(uv_signal_t *signal, int signum) {
  (void)signum;
  repl *r = signal->data;
  if (r->at_prompt) rl_resize_terminal();
}

/* ---- completion ---- */

static size_t shared_prefix(const char *a, const char *b, size_t limit) {
  size_t i = 0;
  while (i < limit && a[i] && a[i] == b[i]) i++;
  return i;
}

static void free_matches(char **m, size_t from) {
  for (size_t i = from; m[i]; i++) free(m[i]);
  free(m);
}

/* libedit's form: [0] what replaces the word (the candidates' common prefix), then the
 * candidates, then NULL, all from malloc: libedit frees them. */
static char **to_matches(lua_State *L, int idx) {
  size_t n = lua_rawlen(L, idx), common = 0;
  if (n == 0) return NULL;
  char **m = calloc(n + 2, sizeof *m);
  if (!m) return NULL;
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, idx, (lua_Integer)i);
    const char *s = lua_tostring(L, -1);
    m[i] = strdup(s ? s : "");
    lua_pop(L, 1);
    if (!m[i]) {
      free_matches(m, 1);
      return NULL;
    }
    common = i == 1 ? strlen(m[1]) : shared_prefix(m[1], m[i], common);
  }
  if (!(m[0] = strndup(m[1], common))) {
    free_matches(m, 1);
    return NULL;
  }
  return m;
}

static char **complete_word(const char *text, int start, int end) {
  (void)start;
  (void)end;
  rl_attempted_completion_over = 1; /* no file names when Lua has nothing */
  lua_State *L = active->L;
  int top = lua_gettop(L);
  char **matches = NULL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, active->policy);
  lua_getfield(L, -1, "complete");
  lua_pushstring(L, text);
  if (lua_pcall(L, 1, 1, 0) == LUA_OK && lua_istable(L, -1)) matches = to_matches(L, -1);
  lua_settop(L, top);
  return matches;
}

/* ---- starting and ending the editor ---- */

static void init_libedit(repl *r) {
  rl_readline_name = "vqlua";
  rl_catch_signals = 0; /* Ctrl-C belongs to the runtime (host/signal.c) */
  rl_instream = stdin;
  rl_outstream = stdout;
  rl_initialize();
  /* '.' and ':' stay inside the word, so that Tab sees "vq.sl" whole. */
  rl_basic_word_break_characters = " \t\n\"'`@$><=;|&{(,[]+-*/%^~#)}";
  rl_completion_append_character = '\0';
  rl_completion_query_items = INT_MAX; /* its question would read stdin behind our back */
  rl_attempted_completion_function = complete_word;
  r->history = history_path();
  stifle_history(HISTORY_LINES);
  if (r->history) read_history(r->history);
}

static int start_editing(repl *r) {
  uv_loop_t *loop = &r->rt->loop;
  if (tcgetattr(STDIN_FILENO, &r->tty_saved) != 0) return -1;
  if (uv_poll_init(loop, &r->in.poll, STDIN_FILENO) != 0) return -1;
  /* uv_poll_init made fd 0 non-blocking, and a terminal's fd 0 usually shares its open
   * file with 1 and 2, where writes would then fail with EAGAIN. libedit reads only when
   * the poll says there is something. */
  fcntl(STDIN_FILENO, F_SETFL, r->stdin_flags);
  r->kind = INPUT_EDIT;
  r->have_in = 1;
  r->in.poll.data = r;
  r->open_handles++;
  init_libedit(r);
  if (uv_signal_init(loop, &r->winch) == 0) {
    r->have_winch = 1;
    r->open_handles++;
    r->winch.data = r;
    uv_signal_start(&r->winch, on_winch, SIGWINCH);
  }
  vq_set_console_hook(r->rt, on_console_write, r);
  return 0;
}

/* Idempotent: also what os.exit does before a process exit. */
static void restore_terminal(repl *r) {
  if (r->kind != INPUT_EDIT || r->restored) return;
  r->restored = 1;
  if (r->at_prompt) rl_callback_handler_remove();
  r->at_prompt = 0;
  tcsetattr(STDIN_FILENO, TCSADRAIN, &r->tty_saved);
  save_history(r);
}

/* ---- lines from a pipe or a file ---- */

/* Room for at least `more` bytes after the data, moving the data to the front first. */
static int reserve(repl *r, size_t more) {
  if (r->start > 0) {
    memmove(r->buf, r->buf + r->start, r->len);
    r->start = 0;
  }
  if (r->cap - r->len >= more) return 0;
  size_t cap = r->cap ? r->cap : READ_SIZE;
  while (cap - r->len < more) cap *= 2;
  char *p = realloc(r->buf, cap);
  if (!p) return -1;
  r->buf = p;
  r->cap = cap;
  return 0;
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  repl *r = handle->data;
  (void)suggested;
  if (reserve(r, READ_SIZE) != 0) {
    *buf = uv_buf_init(NULL, 0);
    return;
  }
  *buf = uv_buf_init(r->buf + r->len, (unsigned)(r->cap - r->len));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  repl *r = stream->data;
  (void)buf;
  if (nread == 0) return;
  if (nread > 0) {
    r->len += (size_t)nread;
  } else {
    r->eof = 1;
    uv_read_stop(stream);
    r->reading = 0;
  }
  read_lines(r);
}

static void read_file(repl *r) {
  if (reserve(r, READ_SIZE) != 0) {
    r->eof = 1;
    return;
  }
  ssize_t n = read(STDIN_FILENO, r->buf + r->len, r->cap - r->len);
  if (n > 0) r->len += (size_t)n;
  else if (n == 0 || errno != EINTR) r->eof = 1;
}

/* The next line, NUL-terminated in place; at the end of input, what is left. */
static char *take_line(repl *r) {
  char *p = r->buf + r->start;
  char *nl = r->len ? memchr(p, '\n', r->len) : NULL;
  size_t n, used;
  if (nl) {
    n = (size_t)(nl - p);
    used = n + 1;
  } else if (r->eof && r->len > 0) {
    if (reserve(r, 1) != 0) return NULL;
    p = r->buf;
    n = used = r->len;
  } else {
    return NULL;
  }
  p[n] = '\0';
  if (n > 0 && p[n - 1] == '\r') p[n - 1] = '\0';
  r->start += used;
  r->len -= used;
  return p;
}

/* An unfinished statement at the end of input: say why it never ran, as lua does. */
static void end_of_input(repl *r) {
  if (r->chunk) {
    if (compile_chunk(r) == LUA_OK) lua_pop(r->L, 1);
    else print_by_policy(r, 2, "describe", 1);
    end_chunk(r, 0);
  }
  finish(r, 0);
}

static void plain_prompt(repl *r) {
  if (!r->prompts || r->prompted) return;
  console(r, 1, r->chunk ? PROMPT_MORE : PROMPT);
  r->prompted = 1;
}

static void read_lines(repl *r) {
  while (!r->finished && !r->task) {
    char *line = take_line(r);
    if (line) {
      r->prompted = 0;
      accept_line(r, line);
    } else if (r->eof) {
      end_of_input(r);
    } else if (r->kind == INPUT_FILE) {
      read_file(r);
    } else {
      plain_prompt(r);
      if (!r->reading) {
        if (uv_read_start(&r->in.stream, on_alloc, on_read) != 0) r->eof = 1;
        else r->reading = 1;
      }
      if (r->reading) return;
    }
  }
}

static int start_reading_lines(repl *r) {
  uv_loop_t *loop = &r->rt->loop;
  int rc = 0;
  r->kind = INPUT_STREAM;
  switch (uv_guess_handle(STDIN_FILENO)) {
    case UV_TTY:
      rc = uv_tty_init(loop, &r->in.tty, STDIN_FILENO, 1);
      r->have_in = rc == 0;
      r->prompts = isatty(STDOUT_FILENO);
      break;
    case UV_NAMED_PIPE:
      rc = uv_pipe_init(loop, &r->in.pipe, 0);
      r->have_in = rc == 0;
      if (rc == 0) rc = uv_pipe_open(&r->in.pipe, STDIN_FILENO);
      break;
    default:
      r->kind = INPUT_FILE; /* files and the rest: read() does not block for long */
      return 0;
  }
  if (r->have_in) {
    r->open_handles++;
    r->in.handle.data = r;
  }
  return rc;
}

/* ---- Ctrl-C and os.exit ---- */

/* On the loop, after SIGINT: the statement that runs is interrupted (a busy one was
 * already stopped by the signal handler's hook); at the prompt, the line goes. */
static void on_sigint(vq_runtime *rt, void *ud) {
  repl *r = ud;
  if (r->task) {
    r->sigints_seen = rt->sigint_count;
    vq_task_interrupt(r->task, "interrupted");
    return;
  }
  if (rt->sigint_count == r->sigints_seen) return; /* it ended the last statement */
  r->sigints_seen = rt->sigint_count;
  if (r->kind == INPUT_EDIT) {
    if (r->at_prompt) discard_line(r);
  } else if (r->prompts) { /* the terminal dropped the line already */
    end_chunk(r, 0);
    console(r, 1, "\n");
    r->prompted = 0;
    plain_prompt(r);
  } else {
    finish(r, 130);
  }
}

static int exit_status_arg(lua_State *L) {
  if (lua_isboolean(L, 1)) return lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  return (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
}

typedef struct exit_wait {
  vq_wait wait;
} exit_wait;

static void forget_exit_wait(vq_wait *w) { free(w); }

/* os.exit at the prompt ends the REPL rather than the process, so that the terminal and
 * the history are put back in order and vq_close unwinds the tasks; the caller waits
 * until then. Where it cannot wait (a luv callback), the host's os.exit ends the
 * process once the terminal is restored. */
static int repl_os_exit(lua_State *L) {
  repl *r = active;
  vq_task *t = *(vq_task **)lua_getextraspace(L);
  int status = exit_status_arg(L);
  if (!r || !t || t->co != L || t->wait || !lua_isyieldable(L)) {
    if (r) restore_terminal(r);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 0);
    return 0;
  }
  exit_wait *w = calloc(1, sizeof *w);
  if (!w) return luaL_error(L, "out of memory");
  finish(r, status);
  vq_wait_begin(L, &w->wait, forget_exit_wait);
  return vq_wait_yield(L, &w->wait);
}

static void replace_os_exit(repl *r) {
  lua_State *L = r->L;
  if (lua_getglobal(L, "os") != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  lua_getfield(L, -1, "exit");
  lua_pushvalue(L, -1);
  r->host_exit = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushcclosure(L, repl_os_exit, 1);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);
}

static void restore_os_exit(repl *r) {
  lua_State *L = r->L;
  if (r->host_exit == LUA_NOREF) return;
  if (lua_getglobal(L, "os") == LUA_TTABLE) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->host_exit);
    lua_setfield(L, -2, "exit");
  }
  lua_pop(L, 1);
  luaL_unref(L, LUA_REGISTRYINDEX, r->host_exit);
  r->host_exit = LUA_NOREF;
}

/* ---- the REPL ---- */

static void on_tick(uv_prepare_t *tick) {
  repl *r = tick->data;
  if (r->task && vq_task_done(r->task)) finish_statement(r);
  else report_failed_tasks(r, 0);
  if (r->erased) redraw_prompt(r);
}

static int load_policy(repl *r) {
  lua_State *L = r->L;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "vq.repl");
  if (lua_pcall(L, 1, 1, 0) == LUA_OK) {
    lua_getfield(L, -1, "setup");
    lua_remove(L, -2);
    if (lua_pcall(L, 0, 1, 0) == LUA_OK && lua_istable(L, -1)) {
      r->policy = luaL_ref(L, LUA_REGISTRYINDEX);
      return 0;
    }
  }
  const char *why = lua_isstring(L, -1) ? lua_tostring(L, -1) : "vq.repl.setup failed";
  console(r, 2, "vqlua: cannot start the REPL: ");
  console(r, 2, why);
  console(r, 2, "\n");
  lua_pop(L, 1);
  return -1;
}

static void greet(repl *r) {
  char text[160];
  snprintf(text, sizeof text, "vqlua %s (%s). Ctrl-C interrupts a statement, Ctrl-D leaves.\n",
           vq_version(), LUA_RELEASE);
  console(r, 1, text);
}

static int start(repl *r) {
  vq_runtime *rt = r->rt;
  r->stdin_flags = fcntl(STDIN_FILENO, F_GETFL);
  int editing = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO) && start_editing(r) == 0;
  if (!editing && start_reading_lines(r) != 0) {
    console(r, 2, "vqlua: cannot read standard input\n");
    return -1;
  }
  uv_prepare_init(&rt->loop, &r->tick);
  r->tick.data = r;
  r->open_handles++;
  uv_prepare_start(&r->tick, on_tick);
  replace_os_exit(r);
  rt->sigint_hook = on_sigint;
  rt->sigint_hook_ud = r;
  r->sigints_seen = rt->sigint_count;
  r->live_seen = rt->live_tasks;
  if (editing || r->prompts) greet(r);
  return 0;
}

static void on_closed(uv_handle_t *handle) {
  repl *r = handle->data;
  r->open_handles--;
}

static void close_handles(repl *r) {
  if (r->have_in) uv_close(&r->in.handle, on_closed);
  if (r->have_winch) uv_close((uv_handle_t *)&r->winch, on_closed);
  if (r->tick.data) uv_close((uv_handle_t *)&r->tick, on_closed);
  while (r->open_handles > 0) uv_run(&r->rt->loop, UV_RUN_NOWAIT);
}

static void stop(repl *r) {
  vq_runtime *rt = r->rt;
  rt->sigint_hook = NULL;
  rt->sigint_hook_ud = NULL;
  rt->interrupt_target = NULL;
  if (r->kind == INPUT_EDIT) vq_set_console_hook(rt, NULL, NULL);
  restore_terminal(r);
  restore_os_exit(r);
  close_handles(r);
  if (r->stdin_flags != -1) fcntl(STDIN_FILENO, F_SETFL, r->stdin_flags);
  luaL_unref(r->L, LUA_REGISTRYINDEX, r->task_ref);
  luaL_unref(r->L, LUA_REGISTRYINDEX, r->policy);
  end_chunk(r, 0);
  free(r->buf);
  free(r->history);
  free(r->last_line);
  active = NULL;
}

static int repl_run(vq_runtime *rt) {
  if (active) {
    vq_console_write(rt, 2, "vqlua: the REPL is already running\n", 35);
    return 1;
  }
  repl r;
  memset(&r, 0, sizeof r);
  r.rt = rt;
  r.L = rt->L;
  r.policy = r.host_exit = r.task_ref = LUA_NOREF;
  if (load_policy(&r) != 0) return 1;
  active = &r;
  if (start(&r) != 0) finish(&r, 1);
  resume_input(&r);
  while (!r.finished) uv_run(&rt->loop, UV_RUN_ONCE);
  stop(&r);
  return r.status;
}

static int l_run(lua_State *L) {
  lua_pushinteger(L, repl_run(vq_from_lua(L)));
  return 1;
}

int luaopen_vq_core_repl(lua_State *L) {
  static const luaL_Reg functions[] = {{"run", l_run}, {NULL, NULL}};
  /* libedit keeps its state for the life of the process; Lua would unload this module, and
   * libedit with it, at lua_close, leaving that state unreachable. Pin it. */
  Dl_info self;
  if (dladdr((void *)luaopen_vq_core_repl, &self) && self.dli_fname)
    dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
  luaL_newlib(L, functions);
  return 1;
}
