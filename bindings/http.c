/* vq.core.http: the one HTTP transport. One curl multi per runtime, driven by the host's
 * libuv loop as curl's multi-uv example does (a uv_poll per socket, one uv_timer), shared
 * by every caller, so connections are reused and HTTP/2 multiplexes.
 *
 *   http.request{method=, url=, headers=, body=, timeout=, ...} -> response | nil, err
 *   http.stream{...} -> stream (after the response headers) | nil, err
 *   stream:read() -> chunk | nil (end) | nil, err;  stream:close()
 *
 * A streamed body sits in a bounded buffer: when it is full the transfer is paused
 * (CURL_WRITEFUNC_PAUSE) until the reader drains it, so memory stays flat however fast
 * the server talks. Statuses are not errors here: policy (retries, Status objects) is Lua's. */
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <lauxlib.h>
#include <openssl/crypto.h>

#include "vq.h"

#define CLIENT_KEY "vq.http.client"
#define STREAM_MT "vq.http.stream"
#define DEFAULT_BUFFER_LIMIT (1u << 20)
#define DEFAULT_MAX_BODY (512u << 20)

typedef struct http_client http_client;
typedef struct http_req http_req;

struct http_client {
  void **owner; /* its vq_module_slot, emptied when the client closes */
  CURLM *multi;
  uv_loop_t *loop;
  uv_timer_t timer;
  http_req *reqs; /* every transfer in flight, so closing the client can end them */
};

typedef struct sock_ctx {
  uv_poll_t poll;
  curl_socket_t fd;
  http_client *client;
} sock_ctx;

typedef enum { WAIT_NONE, WAIT_HEADERS, WAIT_BODY, WAIT_DONE } wait_kind;

typedef struct buffer {
  char *data;
  size_t len, cap;
} buffer;

struct http_req {
  vq_wait wait;
  wait_kind waiting;
  http_client *client;
  http_req *next, *prev;
  CURL *easy;
  struct curl_slist *headers, *connect_to;
  char errbuf[CURL_ERROR_SIZE];
  buffer body, head;       /* response body (or stream buffer) and raw header lines */
  size_t limit;            /* stream: buffer high-water mark; request: max body */
  int streaming, headers_done, done, paused, owned_by_stream;
  CURLcode result;
  long status;
};

/* ---- buffers ---- */

static int buffer_append(buffer *b, const char *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 1024; /* a thousand idle streams stay small */
    while (cap < b->len + n) cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data) return -1;
    b->data = data;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

static void buffer_free(buffer *b) {
  free(b->data);
  memset(b, 0, sizeof *b);
}

/* ---- the client: multi handle on the loop ---- */

static void check_multi_info(http_client *c);

static void on_poll(uv_poll_t *poll, int status, int events) {
  sock_ctx *s = poll->data;
  int flags = 0;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  int running;
  curl_multi_socket_action(s->client->multi, s->fd, flags, &running);
  check_multi_info(s->client);
}

static void free_sock(uv_handle_t *h) { free(h->data); }

static int on_socket(CURL *easy, curl_socket_t fd, int action, void *userp, void *socketp) {
  (void)easy;
  http_client *c = userp;
  sock_ctx *s = socketp;
  if (action == CURL_POLL_REMOVE) {
    if (s) {
      uv_poll_stop(&s->poll);
      uv_close((uv_handle_t *)&s->poll, free_sock);
      curl_multi_assign(c->multi, fd, NULL);
    }
    return 0;
  }
  if (!s) {
    s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->fd = fd;
    s->client = c;
    uv_poll_init_socket(c->loop, &s->poll, fd);
    s->poll.data = s;
    curl_multi_assign(c->multi, fd, s);
  }
  int events = 0;
  if (action != CURL_POLL_OUT) events |= UV_READABLE;
  if (action != CURL_POLL_IN) events |= UV_WRITABLE;
  uv_poll_start(&s->poll, events, on_poll);
  return 0;
}

static void on_timeout(uv_timer_t *timer) {
  http_client *c = timer->data;
  int running;
  curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_multi_info(c);
}

static int on_timer_change(CURLM *multi, long timeout_ms, void *userp) {
  (void)multi;
  http_client *c = userp;
  if (timeout_ms < 0) {
    uv_timer_stop(&c->timer);
  } else {
    /* 0 means "now": a 0 ms timer runs on the loop's next turn (never inside this
     * callback, which must not recurse into curl) without making the poll block. */
    uv_timer_start(&c->timer, on_timeout, (uint64_t)timeout_ms, 0);
  }
  return 0;
}

/* ---- requests ---- */

static void req_link(http_client *c, http_req *r) {
  r->client = c;
  r->prev = NULL;
  r->next = c->reqs;
  if (c->reqs) c->reqs->prev = r;
  c->reqs = r;
}

static void req_unlink(http_req *r) {
  if (!r->client) return;
  if (r->prev) r->prev->next = r->next;
  else r->client->reqs = r->next;
  if (r->next) r->next->prev = r->prev;
  r->next = r->prev = NULL;
}

/* A task parked on a request that is ending (its stream closed from another task, the
 * client closing) resumes now and sees nil, {code = "closed"}: it must never be left
 * waiting on freed memory. */
static void release_waiter(http_req *r) {
  if (r->waiting == WAIT_NONE) return;
  lua_State *co = vq_wait_thread(&r->wait);
  lua_pushnil(co);
  vq_push_error_table(co, "closed", "the stream was closed");
  r->waiting = WAIT_NONE;
  vq_wait_done(&r->wait, 2);
}

/* Ends the transfer (if still on the multi) and frees what curl holds. */
static void req_stop(http_req *r) {
  release_waiter(r);
  if (r->easy) {
    if (r->client) curl_multi_remove_handle(r->client->multi, r->easy);
    curl_easy_cleanup(r->easy);
    r->easy = NULL;
  }
  curl_slist_free_all(r->headers);
  curl_slist_free_all(r->connect_to);
  r->headers = r->connect_to = NULL;
  req_unlink(r);
  r->client = NULL;
}

static void req_free(http_req *r) {
  req_stop(r);
  buffer_free(&r->body);
  buffer_free(&r->head);
  free(r);
}

static const char *error_code(CURLcode rc) {
  switch (rc) {
    case CURLE_OPERATION_TIMEDOUT: return "timeout";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: return "resolve";
    case CURLE_COULDNT_CONNECT: return "connect";
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_CRL_BADFILE: return "tls";
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM: return "connection";
    case CURLE_WRITE_ERROR: return "body_too_large";
    case CURLE_ABORTED_BY_CALLBACK: return "cancelled";
    default: return "transport";
  }
}

static int push_transport_error(lua_State *L, const http_req *r) {
  const char *detail = r->errbuf[0] ? r->errbuf : curl_easy_strerror(r->result);
  lua_pushnil(L);
  if (r->result == CURLE_WRITE_ERROR && !r->streaming)
    vq_push_error_table(L, "body_too_large", "the response body exceeds %d bytes", (int)r->limit);
  else
    vq_push_error_table(L, error_code(r->result), "%s", detail);
  lua_pushinteger(L, r->result);
  lua_setfield(L, -2, "curl_code");
  return 2;
}

/* Header lines as a table of lower-case names; repeated headers joined with ", ". */
static void push_headers(lua_State *L, const buffer *head) {
  lua_newtable(L);
  const char *p = head->data, *end = head->data + head->len;
  while (p && p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *line_end = eol ? eol : end;
    const char *colon = memchr(p, ':', (size_t)(line_end - p));
    if (colon && colon > p) {
      luaL_Buffer name;
      luaL_buffinit(L, &name);
      for (const char *q = p; q < colon; q++)
        luaL_addchar(&name, (char)((*q >= 'A' && *q <= 'Z') ? *q + 32 : *q));
      luaL_pushresult(&name);
      const char *v = colon + 1, *ve = line_end;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ')) ve--;
      lua_pushvalue(L, -1);
      lua_rawget(L, -3);
      if (lua_isstring(L, -1)) {
        lua_pushliteral(L, ", ");
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_concat(L, 3);
      } else {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(ve - v));
      }
      lua_rawset(L, -3);
    }
    p = eol ? eol + 1 : NULL;
  }
}

static void push_response_head(lua_State *L, http_req *r) {
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, r->status);
  lua_setfield(L, -2, "status");
  push_headers(L, &r->head);
  lua_setfield(L, -2, "headers");
  char *ip = NULL;
  if (r->easy && curl_easy_getinfo(r->easy, CURLINFO_PRIMARY_IP, &ip) == CURLE_OK && ip) {
    lua_pushstring(L, ip);
    lua_setfield(L, -2, "ip");
  }
  long version = 0;
  if (r->easy && curl_easy_getinfo(r->easy, CURLINFO_HTTP_VERSION, &version) == CURLE_OK) {
    lua_pushstring(L, version == CURL_HTTP_VERSION_2_0 ? "2" : "1.1");
    lua_setfield(L, -2, "http_version");
  }
}

/* The waiting task gets what it waited for; returns the count pushed. */
static int push_wait_result(lua_State *L, http_req *r) {
  if (r->waiting == WAIT_DONE) {
    if (r->result != CURLE_OK) return push_transport_error(L, r);
    push_response_head(L, r);
    lua_pushlstring(L, r->body.data ? r->body.data : "", r->body.len);
    lua_setfield(L, -2, "body");
    return 1;
  }
  if (r->waiting == WAIT_HEADERS) {
    if (!r->headers_done && r->result != CURLE_OK) return push_transport_error(L, r);
    lua_pushboolean(L, 1);
    return 1;
  }
  /* WAIT_BODY: the stream's read() continues and takes from the buffer itself */
  lua_pushboolean(L, 1);
  return 1;
}

static void wake(http_req *r) {
  if (r->waiting == WAIT_NONE) return;
  lua_State *co = vq_wait_thread(&r->wait);
  int n = push_wait_result(co, r);
  r->waiting = WAIT_NONE;
  vq_wait_done(&r->wait, n);
}

static void finish(http_req *r, CURLcode rc) {
  r->done = 1;
  r->result = rc;
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
  if (!r->streaming) {
    wake(r);
    req_free(r);
    return;
  }
  wake(r);
}

static void check_multi_info(http_client *c) {
  CURLMsg *msg;
  int pending;
  while ((msg = curl_multi_info_read(c->multi, &pending))) {
    if (msg->msg != CURLMSG_DONE) continue;
    http_req *r = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
    if (r) finish(r, msg->data.result);
  }
}

static size_t on_header(char *p, size_t size, size_t n, void *userp) {
  http_req *r = userp;
  size_t len = size * n;
  int blank = len <= 2 && (len == 0 || p[0] == '\r' || p[0] == '\n');
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) r->head.len = 0; /* a new block: 1xx, redirect */
  else if (!blank && buffer_append(&r->head, p, len) != 0) return 0;
  if (blank) {
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 200) {
      r->status = status;
      r->headers_done = 1;
      if (r->waiting == WAIT_HEADERS) wake(r);
    }
  }
  return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *userp) {
  http_req *r = userp;
  size_t len = size * n;
  if (r->streaming && r->body.len >= r->limit) {
    r->paused = 1;
    return CURL_WRITEFUNC_PAUSE;
  }
  if (!r->streaming && r->body.len + len > r->limit) return 0; /* -> CURLE_WRITE_ERROR */
  if (buffer_append(&r->body, p, len) != 0) return 0;
  if (r->waiting == WAIT_BODY) wake(r);
  return len;
}

/* ---- building a request from Lua options ---- */

static http_client *client_of(lua_State *L);

static const char *opt_string(lua_State *L, int idx, const char *key, size_t *len) {
  lua_getfield(L, idx, key);
  const char *s = lua_isstring(L, -1) ? lua_tolstring(L, -1, len) : NULL;
  lua_pop(L, 1); /* the string stays alive in the options table */
  return s;
}

static int opt_bool(lua_State *L, int idx, const char *key) {
  lua_getfield(L, idx, key);
  int b = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return b;
}

static lua_Number opt_number(lua_State *L, int idx, const char *key, lua_Number dflt) {
  lua_getfield(L, idx, key);
  lua_Number v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : dflt;
  lua_pop(L, 1);
  return v;
}

static void set_blob(CURL *easy, CURLoption opt, const char *data, size_t len) {
  struct curl_blob blob = {(void *)data, len, CURL_BLOB_COPY};
  curl_easy_setopt(easy, opt, &blob);
}

static int set_tls_options(lua_State *L, int o, http_req *r) {
  CURL *easy = r->easy;
  size_t len;
  const char *s;
  if ((s = opt_string(L, o, "ca_file", NULL))) curl_easy_setopt(easy, CURLOPT_CAINFO, s);
  if ((s = opt_string(L, o, "ca_data", &len))) set_blob(easy, CURLOPT_CAINFO_BLOB, s, len);
  if ((s = opt_string(L, o, "cert_file", NULL))) curl_easy_setopt(easy, CURLOPT_SSLCERT, s);
  if ((s = opt_string(L, o, "cert_data", &len))) set_blob(easy, CURLOPT_SSLCERT_BLOB, s, len);
  if ((s = opt_string(L, o, "key_file", NULL))) curl_easy_setopt(easy, CURLOPT_SSLKEY, s);
  if ((s = opt_string(L, o, "key_data", &len))) set_blob(easy, CURLOPT_SSLKEY_BLOB, s, len);
  if (opt_bool(L, o, "insecure")) {
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  /* Connect to another address while naming (SNI, verification) the URL's host. */
  if ((s = opt_string(L, o, "connect_to", NULL))) {
    if (!(r->connect_to = curl_slist_append(NULL, s))) return -1;
    curl_easy_setopt(easy, CURLOPT_CONNECT_TO, r->connect_to);
  }
  return 0;
}

static int set_headers(lua_State *L, int o, http_req *r) {
  lua_getfield(L, o, "headers");
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -2) == LUA_TSTRING && lua_isstring(L, -1)) {
        lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), lua_tostring(L, -1));
        struct curl_slist *h = curl_slist_append(r->headers, lua_tostring(L, -1));
        lua_pop(L, 1);
        if (!h) return -1;
        r->headers = h;
      }
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  /* libcurl would add "Expect: 100-continue" to large bodies: one more round trip. */
  struct curl_slist *h = curl_slist_append(r->headers, "Expect:");
  if (!h) return -1;
  r->headers = h;
  return 0;
}

static http_req *build_request(lua_State *L, int o, int streaming) {
  size_t url_len;
  const char *url = opt_string(L, o, "url", &url_len);
  if (!url) luaL_error(L, "http request needs a url");
  CURL *e = curl_easy_init();
  http_req *r = e ? calloc(1, sizeof *r) : NULL;
  if (!r) {
    if (e) curl_easy_cleanup(e);
    luaL_error(L, "out of memory");
    return NULL;
  }
  r->easy = e;
  r->streaming = streaming;
  r->limit = (size_t)opt_number(L, o, streaming ? "buffer" : "max_body",
                                streaming ? DEFAULT_BUFFER_LIMIT : DEFAULT_MAX_BODY);
  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)(opt_bool(L, o, "http1")
                                                     ? CURL_HTTP_VERSION_1_1
                                                     : CURL_HTTP_VERSION_2TLS));
  curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L); /* prefer multiplexing over a new connection */
  const char *method = opt_string(L, o, "method", NULL);
  if (method) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
  size_t body_len;
  const char *body = opt_string(L, o, "body", &body_len);
  if (body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body);
  }
  lua_Number buffer_size = opt_number(L, o, "buffer_size", 0); /* curl's receive buffer */
  if (buffer_size > 0) curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long)buffer_size);
  lua_Number timeout = opt_number(L, o, "timeout", 0);
  if (timeout > 0) curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
  lua_Number connect_timeout = opt_number(L, o, "connect_timeout", 10);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(connect_timeout * 1000));
  const char *proxy = opt_string(L, o, "proxy", NULL);
  curl_easy_setopt(e, CURLOPT_PROXY, proxy ? proxy : "");
  const char *unix_socket = opt_string(L, o, "unix_socket", NULL);
  if (unix_socket) curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, unix_socket);
  if (set_headers(L, o, r) != 0 || set_tls_options(L, o, r) != 0) {
    req_free(r);
    luaL_error(L, "out of memory");
  }
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
  return r;
}

/* A cancelled request ends its transfer. A stream's transfer belongs to the stream
 * object (closed by close, __close or __gc): a cancelled or timed-out read only stops
 * waiting. */
static void req_cancel(vq_wait *w) {
  http_req *r = (http_req *)w;
  r->waiting = WAIT_NONE;
  if (!r->owned_by_stream) req_free(r);
}

static void add_to_multi(lua_State *L, http_req *r) {
  http_client *c = client_of(L);
  CURLMcode mc = curl_multi_add_handle(c->multi, r->easy);
  if (mc != CURLM_OK) {
    if (!r->owned_by_stream) req_free(r);
    luaL_error(L, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
  }
  req_link(c, r);
}

static int l_request(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  vq_wait_check(L);
  http_req *r = build_request(L, 1, 0);
  add_to_multi(L, r);
  r->waiting = WAIT_DONE;
  vq_wait_begin(L, &r->wait, req_cancel);
  return vq_wait_yield(L, &r->wait);
}

/* ---- streams ---- */

typedef struct stream_ud {
  http_req *req;
} stream_ud;

static http_req *check_stream(lua_State *L) {
  stream_ud *s = luaL_checkudata(L, 1, STREAM_MT);
  return s->req;
}

/* nil, err on top: a failed transfer or a timed-out wait. */
static int is_failure(lua_State *L) {
  return lua_gettop(L) >= 2 && lua_isnil(L, -2) && lua_istable(L, -1);
}

static int stream_opened(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  int ud_idx = (int)ctx;
  if (is_failure(L)) return 2;
  lua_settop(L, ud_idx);
  stream_ud *s = lua_touserdata(L, ud_idx);
  push_response_head(L, s->req);
  buffer_free(&s->req->head); /* handed over; a long-lived stream need not keep it */
  lua_pushvalue(L, ud_idx);
  lua_setfield(L, -2, "stream");
  return 1;
}

/* Returns a response head {status, headers, stream = <stream>} once the headers are in. */
static int l_stream(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  vq_wait_check(L);
  http_req *r = build_request(L, 1, 1);
  r->owned_by_stream = 1;
  stream_ud *s = lua_newuserdatauv(L, sizeof *s, 0);
  s->req = r;
  luaL_setmetatable(L, STREAM_MT);
  int ud_idx = lua_gettop(L);
  add_to_multi(L, r);
  r->waiting = WAIT_HEADERS;
  vq_wait_begin(L, &r->wait, req_cancel);
  return vq_wait_yieldk(L, &r->wait, (lua_KContext)ud_idx, stream_opened);
}

/* Hand the buffer to Lua and let a paused transfer go on. */
static int take_buffer(lua_State *L, http_req *r) {
  lua_pushlstring(L, r->body.data, r->body.len);
  r->body.len = 0;
  if (r->paused && r->easy) {
    r->paused = 0;
    curl_easy_pause(r->easy, CURLPAUSE_CONT);
  }
  return 1;
}

static int stream_read_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  if (is_failure(L)) return 2;
  http_req *r = check_stream(L);
  if (!r) return 0;
  if (r->body.len > 0) return take_buffer(L, r);
  if (r->done && r->result != CURLE_OK) return push_transport_error(L, r);
  return 0; /* the end */
}

static int stream_read(lua_State *L) {
  http_req *r = check_stream(L);
  if (!r) return 0;
  if (r->body.len > 0) return take_buffer(L, r);
  if (r->done || !r->client) return stream_read_k(L, LUA_OK, 0);
  vq_wait_check(L);
  r->waiting = WAIT_BODY;
  vq_wait_begin(L, &r->wait, req_cancel);
  lua_settop(L, 1);
  return vq_wait_yieldk(L, &r->wait, 0, stream_read_k);
}

static int stream_close(lua_State *L) {
  stream_ud *s = luaL_checkudata(L, 1, STREAM_MT);
  if (s->req) {
    req_free(s->req);
    s->req = NULL;
  }
  return 0;
}

static int stream_status(lua_State *L) {
  http_req *r = check_stream(L);
  lua_pushstring(L, !r ? "closed" : r->done ? (r->result == CURLE_OK ? "done" : "failed") : "open");
  return 1;
}

/* ---- the client's life ---- */

static void free_client(uv_handle_t *h) { free(h->data); }

/* Runs when the runtime closes (before Lua does): end every transfer, close our handles. */
static void client_close(void *ud) {
  http_client *c = ud;
  while (c->reqs) req_stop(c->reqs); /* a stream object frees its request later */
  curl_multi_cleanup(c->multi);      /* removes its sockets: their polls close */
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, free_client);
  if (c->owner) *c->owner = NULL;
}

static http_client *client_of(lua_State *L) {
  void **slot = vq_module_slot(L, CLIENT_KEY);
  if (*slot) return *slot;
  http_client *c = calloc(1, sizeof *c);
  if (!c || !(c->multi = curl_multi_init())) {
    free(c);
    luaL_error(L, "cannot create the HTTP client");
  }
  c->loop = vq_loop(vq_from_lua(L));
  uv_timer_init(c->loop, &c->timer);
  c->timer.data = c;
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_timer_change);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
  /* No per-host cap: over HTTP/1.1 every followed log or watch holds a connection for as
   * long as it runs, and a cap would starve the streams queued behind them. Callers that
   * want a limit queue their own work (k:follow's concurrency). */
  *slot = c;
  c->owner = slot;
  vq_on_close(vq_from_lua(L), client_close, c);
  return c;
}

static int l_versions(lua_State *L) {
  const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
  lua_createtable(L, 0, 3);
  lua_pushstring(L, v->version);
  lua_setfield(L, -2, "curl");
  lua_pushstring(L, OpenSSL_version(OPENSSL_VERSION));
  lua_setfield(L, -2, "openssl");
  lua_pushboolean(L, (v->features & CURL_VERSION_HTTP2) != 0);
  lua_setfield(L, -2, "http2");
  return 1;
}

static const luaL_Reg stream_methods[] = {
  {"read", stream_read}, {"close", stream_close}, {"status", stream_status}, {NULL, NULL}};

static const luaL_Reg http_functions[] = {
  {"request", l_request}, {"stream", l_stream}, {"versions", l_versions}, {NULL, NULL}};

int luaopen_vq_core_http(lua_State *L) {
  /* vqlua runs one thread: initialising here, on first use, keeps curl out of start-up. */
  curl_global_init(CURL_GLOBAL_DEFAULT);
  if (luaL_newmetatable(L, STREAM_MT)) {
    luaL_newlib(L, stream_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, stream_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, stream_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  luaL_newlib(L, http_functions);
  return 1;
}
