/* vq.core.ws: a WebSocket client on the host's loop, over libwebsockets (Debian's
 * libcurl has no WebSocket support). The host loop is lws's "foreign" libuv loop.
 *
 *   ws.connect{url=, headers=, protocols=, ca_data=, ca_file=, cert_data=, key_data=,
 *              cert_file=, key_file=, insecure=, connect_to=, timeout=, buffer=,
 *              max_message=} -> conn (after the 101) | nil, err (err.status, err.body
 *              when the server answered something else)
 *   conn:send(data [, binary]) -> true | nil, err
 *   conn:receive() -> message, "text"|"binary" | nil (closed) | nil, err
 *   conn:close([code]);  conn.protocol, conn.close_code, conn.close_reason, conn.state,
 *   conn.buffered (bytes received and not yet taken)
 *
 * One lws context per runtime, made on first use and destroyed when the runtime closes.
 * lws keeps TLS material and the subprotocols a client may accept per vhost, so each
 * distinct configuration gets a vhost of its own, kept for the runtime's life.
 * Received messages queue up to `buffer` bytes; past that lws stops reading the socket
 * until receive() drains the queue. Sends queue likewise and wait when the queue is full.
 *
 * lws's handles never keep the loop alive: a task waiting on a connection does (through
 * one timer), so that an idle connection does not stop a runbook from ending.
 * lws logs nothing (VQ_WS_DEBUG=1 in the environment shows its log on stderr). */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <libwebsockets.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "vq.h"

#define RT_KEY "vq.ws.runtime"
#define CONN_MT "vq.ws.conn"
#define DEFAULT_BUFFER (1u << 20)
#define DEFAULT_MAX_MESSAGE (64u << 20)
#define MAX_ERROR_BODY (64u << 10)
#define CLOSE_WAIT_MS 5000
#define KEEPALIVE_MS (3600u * 1000u)

typedef struct ws_rt ws_rt;
typedef struct ws_conn ws_conn;

typedef struct buffer {
  char *data;
  size_t len, cap;
} buffer;

/* A message; outgoing ones keep LWS_PRE bytes in front of the payload for lws_write. */
typedef struct ws_msg {
  struct ws_msg *next;
  size_t len, pre;
  int binary;
  unsigned char data[];
} ws_msg;

typedef struct msg_queue {
  ws_msg *head, *tail;
  size_t bytes;
} msg_queue;

typedef struct vhost_rec {
  struct vhost_rec *next;
  unsigned char fingerprint[32];
  char name[32];
  struct lws_vhost *vh;
  SSL_CTX *ssl;
  struct lws_protocols *protocols; /* names owned; lws points at them until it ends */
} vhost_rec;

struct ws_rt {
  void **owner; /* its vq_module_slot, emptied when the runtime closes */
  uv_loop_t *loop;
  struct lws_context *ctx;
  uv_timer_t keepalive;
  int waiters;
  ws_conn *conns;
  vhost_rec *vhosts;
  unsigned long next_vhost;
};

typedef enum { W_NONE, W_OPEN, W_RECV, W_SEND, W_CLOSE } wait_kind;

/* A task waiting on a connection. A connection has two: one reader (connect, receive,
 * close) and one writer (a send that waits for room), so that a task can feed stdin while
 * another reads the output. */
typedef struct conn_wait {
  vq_wait wait;
  wait_kind kind;
  ws_conn *c;
} conn_wait;

typedef enum { S_NEW, S_RESOLVING, S_CONNECTING, S_OPEN, S_CLOSED, S_FAILED } conn_state;

struct ws_conn {
  conn_wait rd, wr;
  ws_rt *rt;
  ws_conn *next, *prev;
  conn_state state;
  int lua_owned, timer_open, resolving, tcp_up, request_sent, insecure, tls, wsi_gone;
  const char *verify_error; /* OpenSSL's static text for a refused certificate */
  struct lws *wsi;
  vhost_rec *vhost;
  uv_timer_t timer;
  uv_getaddrinfo_t resolve;
  char *host, *connect_host, *host_header, *path, *protocol_list, *extra_headers;
  size_t extra_len;
  int port, connect_port;
  double timeout;
  size_t limit, max_message;
  msg_queue rx, tx;
  buffer partial;
  int in_message, partial_binary, rx_paused;
  int close_requested, close_ready, close_sent_code, peer_closed, close_code;
  char close_reason[124];
  const char *err_code;
  char err_msg[200];
  long status;
  buffer body;
  char protocol[64];
};

typedef struct conn_ud {
  ws_conn *c;
} conn_ud;

/* ---- buffers and queues ---- */

static int buffer_append(buffer *b, const void *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data) return -1;
    b->data = data;
    b->cap = cap;
  }
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

static void buffer_free(buffer *b) {
  free(b->data);
  memset(b, 0, sizeof *b);
}

static ws_msg *msg_new(size_t pre, const void *data, size_t len, int binary) {
  ws_msg *m = malloc(sizeof *m + pre + len);
  if (!m) return NULL;
  m->next = NULL;
  m->len = len;
  m->pre = pre;
  m->binary = binary;
  if (len) memcpy(m->data + pre, data, len);
  return m;
}

static void queue_push(msg_queue *q, ws_msg *m) {
  if (q->tail) q->tail->next = m;
  else q->head = m;
  q->tail = m;
  q->bytes += m->len;
}

static ws_msg *queue_pop(msg_queue *q) {
  ws_msg *m = q->head;
  if (!m) return NULL;
  q->head = m->next;
  if (!q->head) q->tail = NULL;
  q->bytes -= m->len;
  return m;
}

static void queue_free(msg_queue *q) {
  ws_msg *m;
  while ((m = queue_pop(q))) free(m);
}

/* ---- waiting: a task waiting on a connection keeps the loop alive ---- */

static void on_keepalive(uv_timer_t *t) { (void)t; }

static void set_waiting(conn_wait *w, wait_kind kind) {
  ws_rt *rt = w->c->rt;
  int was = w->kind != W_NONE, is = kind != W_NONE;
  w->kind = kind;
  if (!rt || was == is) return;
  rt->waiters += is ? 1 : -1;
  if (is && rt->waiters == 1) uv_timer_start(&rt->keepalive, on_keepalive, KEEPALIVE_MS, KEEPALIVE_MS);
  if (!is && rt->waiters == 0) uv_timer_stop(&rt->keepalive);
}

static void wake_one(conn_wait *w, wait_kind kind) {
  if (w->kind == W_NONE || (kind != W_NONE && w->kind != kind)) return;
  lua_pushboolean(vq_wait_thread(&w->wait), 1);
  set_waiting(w, W_NONE);
  vq_wait_done(&w->wait, 1);
}

/* The waiting task (W_NONE: both) resumes; its continuation reads the connection's state. */
static void wake(ws_conn *c, wait_kind kind) {
  if (kind != W_SEND) wake_one(&c->rd, kind);
  if (kind == W_SEND || kind == W_NONE) wake_one(&c->wr, kind);
}

/* ---- the connection's life ---- */

static void conn_free(ws_conn *c) {
  if (c->rt) {
    if (c->prev) c->prev->next = c->next;
    else c->rt->conns = c->next;
    if (c->next) c->next->prev = c->prev;
  }
  queue_free(&c->rx);
  queue_free(&c->tx);
  buffer_free(&c->partial);
  buffer_free(&c->body);
  free(c->host);
  free(c->connect_host);
  free(c->host_header);
  free(c->path);
  free(c->protocol_list);
  free(c->extra_headers);
  free(c);
}

/* Freed once Lua has let go and lws, the timer and the resolver have too. */
static void conn_maybe_free(ws_conn *c) {
  if (!c->lua_owned && !c->timer_open && !c->resolving && !c->wsi) conn_free(c);
}

static void on_timer_closed(uv_handle_t *h) {
  ws_conn *c = h->data;
  c->timer_open = 0;
  conn_maybe_free(c);
}

static void conn_close_timer(ws_conn *c) {
  if (c->timer_open && !uv_is_closing((uv_handle_t *)&c->timer))
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}

static void conn_fail(ws_conn *c, const char *code, const char *fmt, ...) {
  if (c->state == S_FAILED || c->state == S_CLOSED) return;
  c->state = S_FAILED;
  c->err_code = code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->err_msg, sizeof c->err_msg, fmt, ap);
  va_end(ap);
  if (c->timer_open) uv_timer_stop(&c->timer);
  wake(c, W_NONE);
}

/* Ends the network side now: no close handshake. lws reports the close synchronously,
 * so this is never called from inside an lws callback. */
static void conn_abort(ws_conn *c) {
  if (c->state == S_RESOLVING) uv_cancel((uv_req_t *)&c->resolve);
  conn_fail(c, "closed", "the connection was closed");
  if (c->wsi) lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_SYNC);
}

static ws_conn *conn_new(ws_rt *rt) {
  ws_conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->rt = rt;
  c->rd.c = c->wr.c = c;
  c->lua_owned = 1;
  c->next = rt->conns;
  if (rt->conns) rt->conns->prev = c;
  rt->conns = c;
  uv_timer_init(rt->loop, &c->timer);
  c->timer.data = c;
  c->timer_open = 1;
  c->limit = DEFAULT_BUFFER;
  c->max_message = DEFAULT_MAX_MESSAGE;
  return c;
}

/* ---- lws callbacks ---- */

static int append_headers(ws_conn *c, void *in, size_t room) {
  unsigned char **p = in;
  c->request_sent = 1; /* so TLS, if any, is up */
  if (!c->extra_len) return 0;
  if (c->extra_len >= room) {
    conn_fail(c, "invalid", "the request headers are too large");
    return -1;
  }
  memcpy(*p, c->extra_headers, c->extra_len);
  *p += c->extra_len;
  return 0;
}

/* The server answered the upgrade. Anything but 101 fails it: keep the status and what
 * of the body (a Kubernetes Status) came with the headers. */
static void on_http_answer(ws_conn *c, struct lws *wsi) {
  c->status = (long)lws_http_client_http_response(wsi);
  if (c->status == 101) {
    if (lws_hdr_copy(wsi, c->protocol, sizeof c->protocol, WSI_TOKEN_PROTOCOL) < 0) c->protocol[0] = 0;
    return;
  }
  for (int i = 0; i < 16 && c->body.len < MAX_ERROR_BODY; i++) {
    char chunk[LWS_PRE + 4096], *p = chunk + LWS_PRE;
    int n = (int)sizeof chunk - LWS_PRE;
    size_t before = c->body.len;
    if (lws_http_client_read(wsi, &p, &n) < 0 || c->body.len == before) break;
  }
}

static void on_body(ws_conn *c, const void *in, size_t len) {
  if (c->status == 101 || c->body.len + len > MAX_ERROR_BODY) return;
  buffer_append(&c->body, in, len);
}

static void unref_poll_of(uv_handle_t *h, void *wsi) {
  if (h->type == UV_POLL && h->data == wsi) uv_unref(h);
}

static void on_open(ws_conn *c, struct lws *wsi) {
  c->state = S_OPEN;
  if (c->timer_open) uv_timer_stop(&c->timer);
  if (c->rt) uv_walk(c->rt->loop, unref_poll_of, wsi);
  wake(c, W_OPEN);
}

static void on_connect_error(ws_conn *c, const char *in, size_t len) {
  char detail[120];
  snprintf(detail, sizeof detail, "%.*s", (int)(len < sizeof detail ? len : sizeof detail - 1), in ? in : "");
  if (c->status && c->status != 101)
    conn_fail(c, "handshake", "the server answered HTTP %ld instead of switching protocols", c->status);
  else if (!c->tcp_up && strcmp(detail, "closed before established") == 0)
    conn_fail(c, "connect", "cannot connect to %s port %d (refused or unreachable)", c->connect_host, c->connect_port);
  else if (!c->tcp_up)
    conn_fail(c, "connect", "cannot connect to %s port %d (%s)", c->connect_host, c->connect_port, detail);
  else if (c->tls && c->verify_error)
    conn_fail(c, "tls", "the server's certificate was refused: %s", c->verify_error);
  else if (c->tls && !c->request_sent)
    conn_fail(c, "tls", "the TLS handshake failed (%s)", detail);
  else
    conn_fail(c, "handshake", "the WebSocket handshake failed (%s)", detail);
}

static void rx_pause(ws_conn *c, struct lws *wsi) {
  if (c->rx_paused || c->rx.bytes < c->limit) return;
  c->rx_paused = 1;
  lws_rx_flow_control(wsi, 0);
}

static int on_receive(ws_conn *c, struct lws *wsi, const void *in, size_t len) {
  if (!c->in_message) {
    c->in_message = 1;
    c->partial.len = 0;
    c->partial_binary = lws_frame_is_binary(wsi);
  }
  if (c->partial.len + len > c->max_message || buffer_append(&c->partial, in, len) != 0) {
    conn_fail(c, "message_too_large", "a message exceeds max_message (%zu bytes)", c->max_message);
    lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, NULL, 0);
    return -1;
  }
  if (!lws_is_final_fragment(wsi)) return 0;
  c->in_message = 0;
  ws_msg *m = msg_new(0, c->partial.data, c->partial.len, c->partial_binary);
  if (!m) return -1;
  queue_push(&c->rx, m);
  c->partial.len = 0;
  if (c->partial.cap > c->limit) buffer_free(&c->partial);
  rx_pause(c, wsi);
  wake(c, W_RECV);
  return 0;
}

static void on_timer(uv_timer_t *t);

static int on_writeable(ws_conn *c, struct lws *wsi) {
  ws_msg *m = queue_pop(&c->tx);
  if (m) {
    int n = lws_write(wsi, m->data + m->pre, m->len, m->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT);
    int short_write = n < (int)m->len;
    free(m);
    if (short_write) return -1;
    if (c->tx.bytes < c->limit) wake(c, W_SEND);
    if (c->tx.head || c->close_requested) lws_callback_on_writable(wsi);
    return 0;
  }
  /* Everything is out: close on the next turn, from outside lws (returning -1 here makes
   * Debian's debug build of lws drop the connection without the close frame). */
  if (c->close_requested && !c->close_ready && c->timer_open) {
    c->close_ready = 1;
    uv_timer_start(&c->timer, on_timer, 0, 0);
  }
  return 0;
}

static void on_peer_close(ws_conn *c, const unsigned char *in, size_t len) {
  c->peer_closed = 1;
  c->close_code = len >= 2 ? (in[0] << 8) | in[1] : 1005;
  size_t n = len > 2 ? len - 2 : 0;
  if (n >= sizeof c->close_reason) n = sizeof c->close_reason - 1;
  if (n) memcpy(c->close_reason, in + 2, n);
  c->close_reason[n] = 0;
}

static void on_closed(ws_conn *c) {
  if (c->state == S_OPEN && !c->peer_closed && !c->close_sent_code) {
    c->close_code = 1006;
    conn_fail(c, "connection", "the connection ended without a close frame");
  } else if (c->state == S_OPEN) {
    if (!c->peer_closed) c->close_code = c->close_sent_code;
    c->state = S_CLOSED;
  }
  if (c->timer_open) uv_timer_stop(&c->timer);
  wake(c, W_NONE);
}

static void on_destroy(ws_conn *c) {
  c->wsi = NULL;
  c->wsi_gone = 1;
  if (c->state == S_CONNECTING) on_connect_error(c, "closed", 6);
  if (c->state == S_OPEN) on_closed(c);
  conn_maybe_free(c);
}

/* lws asks protocol 0's callback about the certificate after its own checks: remember why
 * OpenSSL refused it, or, when insecure, accept it whatever it is. */
static int verify_override(struct lws *wsi, void *x509_ctx, int preverify_ok) {
  ws_conn *c = wsi ? lws_wsi_user(wsi) : NULL;
  if (!c) return 0;
  if (c->insecure) X509_STORE_CTX_set_error(x509_ctx, X509_V_OK);
  else if (!preverify_ok) c->verify_error = X509_verify_cert_error_string(X509_STORE_CTX_get_error(x509_ctx));
  return 0;
}

static int on_lws(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
  if (reason == LWS_CALLBACK_OPENSSL_PERFORM_SERVER_CERT_VERIFICATION) return verify_override(wsi, user, (int)len);
  ws_conn *c = user;
  if (!c) return 0; /* the vhost's own notifications */
  switch (reason) {
    case LWS_CALLBACK_WSI_CREATE: c->tcp_up = 1; return 0;
    case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER: return append_headers(c, in, len);
    case LWS_CALLBACK_ESTABLISHED_CLIENT_HTTP: on_http_answer(c, wsi); return 0;
    case LWS_CALLBACK_RECEIVE_CLIENT_HTTP_READ: on_body(c, in, len); return 0;
    case LWS_CALLBACK_CLIENT_ESTABLISHED: on_open(c, wsi); return 0;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR: on_connect_error(c, in, len); return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE: return on_receive(c, wsi, in, len);
    case LWS_CALLBACK_CLIENT_WRITEABLE: return on_writeable(c, wsi);
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE: on_peer_close(c, in, len); return 0;
    case LWS_CALLBACK_CLIENT_CLOSED: on_closed(c); return 0;
    case LWS_CALLBACK_WSI_DESTROY: on_destroy(c); return 0;
    default: return 0;
  }
}

/* ---- TLS material: an SSL_CTX of our own, handed to the vhost ---- */

static int load_ca_pem(SSL_CTX *ssl, const char *pem, size_t len) {
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  X509_STORE *store = SSL_CTX_get_cert_store(ssl);
  int n = 0;
  X509 *x;
  while (bio && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL))) {
    if (X509_STORE_add_cert(store, x) == 1) n++;
    X509_free(x);
  }
  BIO_free(bio);
  return n > 0 ? 0 : -1;
}

static int use_cert_pem(SSL_CTX *ssl, const char *pem, size_t len) {
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
  int ok = x && SSL_CTX_use_certificate(ssl, x) == 1;
  X509_free(x);
  while (ok && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)))
    if (SSL_CTX_add0_chain_cert(ssl, x) != 1) X509_free(x);
  BIO_free(bio);
  return ok ? 0 : -1;
}

static int use_key_pem(SSL_CTX *ssl, const char *pem, size_t len) {
  BIO *bio = BIO_new_mem_buf(pem, (int)len);
  EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
  int ok = key && SSL_CTX_use_PrivateKey(ssl, key) == 1;
  EVP_PKEY_free(key);
  BIO_free(bio);
  return ok ? 0 : -1;
}

static const char *opt_string(lua_State *L, int idx, const char *key, size_t *len) {
  lua_getfield(L, idx, key);
  const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, len) : NULL;
  lua_pop(L, 1); /* the string stays alive in the options table */
  return s;
}

/* NULL and a reason (never the material itself) when something does not load. */
static SSL_CTX *make_ssl(lua_State *L, int o, const char **why) {
  SSL_CTX *ssl = SSL_CTX_new(TLS_client_method());
  if (!ssl) return *why = "cannot create a TLS context", NULL;
  SSL_CTX_set_min_proto_version(ssl, TLS1_2_VERSION);
  size_t len;
  const char *s, *ca_file = opt_string(L, o, "ca_file", NULL);
  *why = NULL;
  if ((s = opt_string(L, o, "ca_data", &len)) && load_ca_pem(ssl, s, len) != 0) *why = "ca_data holds no PEM certificate";
  else if (ca_file && SSL_CTX_load_verify_locations(ssl, ca_file, NULL) != 1) *why = "cannot load ca_file";
  else if (!s && !ca_file) SSL_CTX_set_default_verify_paths(ssl);
  if (!*why && (s = opt_string(L, o, "cert_data", &len)) && use_cert_pem(ssl, s, len) != 0) *why = "cert_data is not a PEM certificate";
  if (!*why && (s = opt_string(L, o, "key_data", &len)) && use_key_pem(ssl, s, len) != 0) *why = "key_data is not a PEM private key";
  if (!*why && (s = opt_string(L, o, "cert_file", NULL)) && SSL_CTX_use_certificate_chain_file(ssl, s) != 1) *why = "cannot load cert_file";
  if (!*why && (s = opt_string(L, o, "key_file", NULL)) && SSL_CTX_use_PrivateKey_file(ssl, s, SSL_FILETYPE_PEM) != 1) *why = "cannot load key_file";
  if (!*why && SSL_CTX_get0_privatekey(ssl) && SSL_CTX_check_private_key(ssl) != 1) *why = "the client key does not match the client certificate";
  ERR_clear_error(); /* reading PEM to its end leaves errors that curl's calls would see */
  if (*why) {
    SSL_CTX_free(ssl);
    return NULL;
  }
  return ssl;
}

/* ---- vhosts: one per configuration (subprotocols, TLS material) ---- */

static void digest_field(EVP_MD_CTX *md, lua_State *L, int o, const char *key) {
  size_t len = 0;
  const char *s = opt_string(L, o, key, &len);
  EVP_DigestUpdate(md, key, strlen(key) + 1);
  if (s) EVP_DigestUpdate(md, s, len);
  EVP_DigestUpdate(md, s ? "\1" : "\0", 1);
}

static void fingerprint(lua_State *L, int o, ws_conn *c, unsigned char out[32]) {
  static const char *const keys[] = {"ca_data", "ca_file", "cert_data", "key_data", "cert_file", "key_file"};
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  unsigned int n = 32;
  EVP_DigestInit_ex(md, EVP_sha256(), NULL);
  EVP_DigestUpdate(md, c->protocol_list ? c->protocol_list : "", c->protocol_list ? strlen(c->protocol_list) : 0);
  unsigned char flags[2] = {(unsigned char)c->tls, (unsigned char)c->insecure};
  EVP_DigestUpdate(md, flags, sizeof flags);
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) digest_field(md, L, o, keys[i]);
  EVP_DigestFinal_ex(md, out, &n);
  EVP_MD_CTX_free(md);
}

static void free_protocols(struct lws_protocols *p) {
  for (size_t i = 0; p && p[i].name; i++) free((char *)p[i].name);
  free(p);
}

static void vhost_rec_free(vhost_rec *v) {
  if (v->ssl) SSL_CTX_free(v->ssl);
  free_protocols(v->protocols);
  free(v);
}

/* The vhost's protocols: one per name the client offers (lws binds the connection to the
 * one the server picks), or a placeholder when it offers none. */
static struct lws_protocols *make_protocols(const char *list) {
  size_t n = 1;
  for (const char *p = list; p && *p; p++) n += *p == ',';
  struct lws_protocols *ps = calloc(n + 1, sizeof *ps);
  if (!ps) return NULL;
  const char *p = list ? list : "vq-ws";
  for (size_t i = 0; i < n; i++) {
    size_t len = strcspn(p, ",");
    ps[i].callback = on_lws;
    if (!(ps[i].name = strndup(p, len))) return free_protocols(ps), NULL;
    p += len + (p[len] == ',');
  }
  return ps;
}

static vhost_rec *vhost_create(ws_rt *rt, ws_conn *c, SSL_CTX *ssl, const unsigned char fp[32]) {
  vhost_rec *v = calloc(1, sizeof *v);
  if (!v || !(v->protocols = make_protocols(c->protocol_list))) return free(v), NULL;
  memcpy(v->fingerprint, fp, 32);
  snprintf(v->name, sizeof v->name, "vq-ws-%lu", ++rt->next_vhost);
  v->ssl = ssl;
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.port = CONTEXT_PORT_NO_LISTEN;
  info.protocols = v->protocols;
  info.vhost_name = v->name;
  info.gid = info.uid = -1;
  info.options = LWS_SERVER_OPTION_LIBUV | (ssl ? LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT : 0);
  info.provided_client_ssl_ctx = ssl;
  if (!(v->vh = lws_create_vhost(rt->ctx, &info))) {
    v->ssl = NULL; /* the caller still owns it */
    vhost_rec_free(v);
    return NULL;
  }
  v->next = rt->vhosts;
  rt->vhosts = v;
  return v;
}

/* The vhost for this configuration: NULL and a reason when its TLS material is bad. */
static vhost_rec *vhost_for(lua_State *L, int o, ws_conn *c, const char **why) {
  ws_rt *rt = c->rt;
  unsigned char fp[32];
  fingerprint(L, o, c, fp);
  for (vhost_rec *v = rt->vhosts; v; v = v->next)
    if (memcmp(v->fingerprint, fp, 32) == 0) return v;
  SSL_CTX *ssl = NULL;
  if (c->tls && !(ssl = make_ssl(L, o, why))) return NULL;
  vhost_rec *v = vhost_create(rt, c, ssl, fp);
  if (!v) {
    if (ssl) SSL_CTX_free(ssl);
    *why = "cannot create a libwebsockets vhost";
  }
  return v;
}

/* ---- the runtime's context ---- */

typedef struct handle_set {
  uv_handle_t **h;
  size_t n, cap;
} handle_set;

static void collect_handle(uv_handle_t *h, void *arg) {
  handle_set *s = arg;
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 64;
    uv_handle_t **hs = realloc(s->h, cap * sizeof *hs);
    if (!hs) return;
    s->h = hs;
    s->cap = cap;
  }
  s->h[s->n++] = h;
}

static void unref_new_handle(uv_handle_t *h, void *arg) {
  handle_set *before = arg;
  for (size_t i = 0; i < before->n; i++)
    if (before->h[i] == h) return;
  uv_unref(h);
}

/* lws's own handles (an idle, a timer, its wake-up pipe) stay on the loop for the
 * context's life: they must not keep a finished runbook running. */
static void create_context(ws_rt *rt) {
  handle_set before = {0};
  uv_walk(rt->loop, collect_handle, &before);
  void *loops[1] = {rt->loop};
  struct lws_context_creation_info info;
  memset(&info, 0, sizeof info);
  info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT |
                 LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
  info.port = CONTEXT_PORT_NO_LISTEN;
  info.foreign_loops = loops;
  info.pcontext = &rt->ctx;
  info.gid = info.uid = -1;
  info.pt_serv_buf_size = 32 * 1024;     /* the handshake is built here: long tokens */
  info.max_http_header_data = 32 * 1024; /* the request path: long command lines */
  info.timeout_secs = 30;
  lws_set_log_level(getenv("VQ_WS_DEBUG") ? LLL_ERR | LLL_WARN | LLL_NOTICE | LLL_INFO : 0, NULL);
  rt->ctx = lws_create_context(&info);
  if (rt->ctx) uv_walk(rt->loop, unref_new_handle, &before);
  free(before.h);
}

typedef struct owned_count {
  void *owner;
  int n;
} owned_count;

static void count_owned(uv_handle_t *h, void *arg) {
  owned_count *c = arg;
  if (h->data == c->owner) c->n++;
}

static int handles_owned_by(uv_loop_t *loop, void *owner) {
  owned_count c = {owner, 0};
  uv_walk(loop, count_owned, &c);
  return c.n;
}

/* On a foreign loop lws closes its handles asynchronously: the first destroy starts it,
 * the loop turns until lws's last handle (its idle and timer, data = the context) has
 * closed, and the second destroy frees the context. */
static void destroy_context(ws_rt *rt) {
  struct lws_context *ctx = rt->ctx;
  if (!ctx) return;
  lws_context_destroy(ctx);
  for (int i = 0; i < 1000 && rt->ctx && handles_owned_by(rt->loop, ctx); i++)
    uv_run(rt->loop, UV_RUN_NOWAIT);
  if (rt->ctx && !handles_owned_by(rt->loop, ctx)) lws_context_destroy(ctx);
}

static void free_rt(uv_handle_t *h) { free(h->data); }

static void detach_conn(ws_conn *c) {
  set_waiting(&c->rd, W_NONE);
  set_waiting(&c->wr, W_NONE);
  if (c->state == S_RESOLVING) uv_cancel((uv_req_t *)&c->resolve);
  if (c->state != S_CLOSED && c->state != S_FAILED) {
    c->state = S_FAILED;
    c->err_code = "closed";
    snprintf(c->err_msg, sizeof c->err_msg, "the runtime is closing");
  }
  conn_close_timer(c);
}

/* Runs when the runtime closes, before Lua does. */
static void rt_close(void *ud) {
  ws_rt *rt = ud;
  for (ws_conn *c = rt->conns; c; c = c->next) detach_conn(c);
  destroy_context(rt);
  while (rt->vhosts) {
    vhost_rec *v = rt->vhosts;
    rt->vhosts = v->next;
    vhost_rec_free(v);
  }
  ws_conn *c = rt->conns;
  rt->conns = NULL;
  while (c) {
    ws_conn *next = c->next;
    c->rt = NULL;
    c->next = c->prev = NULL;
    conn_maybe_free(c);
    c = next;
  }
  uv_timer_stop(&rt->keepalive);
  uv_close((uv_handle_t *)&rt->keepalive, free_rt);
  if (rt->owner) *rt->owner = NULL;
}

static ws_rt *rt_of(lua_State *L) {
  void **slot = vq_module_slot(L, RT_KEY);
  if (*slot) return *slot;
  ws_rt *rt = calloc(1, sizeof *rt);
  if (!rt) luaL_error(L, "out of memory");
  rt->loop = vq_loop(vq_from_lua(L));
  create_context(rt);
  if (!rt->ctx) {
    free(rt);
    luaL_error(L, "cannot create the libwebsockets context (is libwebsockets-evlib-uv installed?)");
  }
  uv_timer_init(rt->loop, &rt->keepalive);
  rt->keepalive.data = rt;
  *slot = rt;
  rt->owner = slot;
  vq_on_close(vq_from_lua(L), rt_close, rt);
  return rt;
}

/* ---- options ---- */

typedef struct url_parts {
  int tls, port;
  char host[256];
  const char *path;
} url_parts;

static const char *parse_scheme(const char *url, url_parts *u) {
  static const struct { const char *prefix; int tls, port; } schemes[] = {
    {"ws://", 0, 80}, {"wss://", 1, 443}, {"http://", 0, 80}, {"https://", 1, 443}};
  for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++) {
    size_t n = strlen(schemes[i].prefix);
    if (strncasecmp(url, schemes[i].prefix, n) == 0) {
      u->tls = schemes[i].tls;
      u->port = schemes[i].port;
      return url + n;
    }
  }
  return NULL;
}

/* Splits "host[:port]" or "[v6]:port" (len bytes); -1 when malformed. */
static int parse_hostport(const char *p, size_t len, char *host, size_t cap, int *port) {
  const char *end = p + len, *colon;
  if (len && *p == '[') {
    const char *close = memchr(p, ']', len);
    if (!close) return -1;
    snprintf(host, cap, "%.*s", (int)(close - p - 1), p + 1);
    colon = close + 1 < end && close[1] == ':' ? close + 1 : NULL;
  } else {
    colon = memchr(p, ':', len);
    snprintf(host, cap, "%.*s", (int)((colon ? colon : end) - p), p);
  }
  if (colon) {
    char *stop;
    long v = strtol(colon + 1, &stop, 10);
    if (stop != end || v <= 0 || v > 65535) return -1;
    *port = (int)v;
  }
  return host[0] ? 0 : -1;
}

static int parse_url(const char *url, url_parts *u) {
  const char *p = parse_scheme(url, u);
  if (!p) return -1;
  size_t auth = strcspn(p, "/?#");
  if (memchr(p, '@', auth)) return -1; /* credentials belong in headers */
  if (parse_hostport(p, auth, u->host, sizeof u->host, &u->port) != 0) return -1;
  u->path = p + auth;
  return 0;
}

/* curl's connect_to, "HOST:PORT:CONNECT-HOST:CONNECT-PORT": connect elsewhere while the
 * URL's host still names the server (Host, SNI, verification). */
static void apply_connect_to(ws_conn *c, const char *spec) {
  char host[256] = "", to[256] = "";
  int port = 0, to_port = 0;
  if (sscanf(spec, "%255[^:]:%d:%255[^:]:%d", host, &port, to, &to_port) < 3) return;
  if ((host[0] && strcmp(host, c->host) != 0) || (port && port != c->port)) return;
  free(c->connect_host);
  c->connect_host = strdup(to);
  if (to_port) c->connect_port = to_port;
}

static char *join_path(const char *path) {
  size_t n = strcspn(path, "#");
  char *out = malloc(n + 2);
  if (!out) return NULL;
  if (n == 0 || path[0] != '/') snprintf(out, n + 2, "/%.*s", (int)n, path);
  else snprintf(out, n + 2, "%.*s", (int)n, path);
  return out;
}

static const char *set_target(lua_State *L, int o, ws_conn *c) {
  url_parts u = {0};
  const char *url = opt_string(L, o, "url", NULL);
  if (!url) return "ws.connect needs a url";
  if (parse_url(url, &u) != 0) return "the url is not a ws://, wss://, http:// or https:// URL";
  c->tls = u.tls;
  c->port = c->connect_port = u.port;
  c->host = strdup(u.host);
  c->connect_host = strdup(u.host);
  c->path = join_path(u.path);
  int v6 = strchr(u.host, ':') != NULL, dflt = u.port == (u.tls ? 443 : 80);
  size_t cap = strlen(u.host) + 16;
  if ((c->host_header = malloc(cap)))
    snprintf(c->host_header, cap, v6 ? (dflt ? "[%s]" : "[%s]:%d") : (dflt ? "%s" : "%s:%d"), u.host, u.port);
  if (!c->host || !c->connect_host || !c->path || !c->host_header) return "out of memory";
  const char *ct = opt_string(L, o, "connect_to", NULL);
  if (ct) apply_connect_to(c, ct);
  return c->connect_host ? NULL : "out of memory";
}

static int header_safe(const char *s, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') return 0;
  return 1;
}

/* The extra request headers as ready-made "Name: value\r\n" lines. */
static const char *set_headers(lua_State *L, int o, ws_conn *c) {
  buffer b = {0};
  const char *problem = NULL;
  lua_getfield(L, o, "headers");
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (!problem && lua_next(L, -2)) {
      size_t nlen, vlen;
      const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &nlen) : NULL;
      const char *value = lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER ? lua_tolstring(L, -1, &vlen) : NULL;
      if (!name || !value || !nlen || !header_safe(name, nlen) || !header_safe(value, vlen) || strchr(name, ':'))
        problem = "headers must map names to single-line values";
      else if (buffer_append(&b, name, nlen) || buffer_append(&b, ": ", 2) || buffer_append(&b, value, vlen) || buffer_append(&b, "\r\n", 2))
        problem = "out of memory";
      lua_pop(L, 1);
    }
    if (problem) lua_pop(L, 1); /* the key lua_next left */
  }
  lua_pop(L, 1);
  c->extra_headers = b.data;
  c->extra_len = b.len;
  return problem;
}

static const char *set_protocols(lua_State *L, int o, ws_conn *c) {
  buffer b = {0};
  const char *problem = NULL;
  lua_getfield(L, o, "protocols");
  int n = lua_istable(L, -1) ? (int)lua_rawlen(L, -1) : 0;
  for (int i = 1; i <= n && !problem; i++) {
    lua_rawgeti(L, -1, i);
    size_t len;
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
    if (!s || !len || strpbrk(s, ", \r\n\t")) problem = "protocols must be a list of tokens";
    else if ((i > 1 && buffer_append(&b, ",", 1)) || buffer_append(&b, s, len) || buffer_append(&b, "", 1)) problem = "out of memory";
    else b.len--; /* keep it NUL-terminated */
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  c->protocol_list = b.data;
  return problem;
}

static lua_Number opt_number(lua_State *L, int idx, const char *key, lua_Number dflt) {
  lua_getfield(L, idx, key);
  lua_Number v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : dflt;
  lua_pop(L, 1);
  return v;
}

static const char *configure(lua_State *L, int o, ws_conn *c) {
  const char *problem = set_target(L, o, c);
  if (!problem) problem = set_headers(L, o, c);
  if (!problem) problem = set_protocols(L, o, c);
  lua_getfield(L, o, "insecure");
  c->insecure = lua_toboolean(L, -1);
  lua_pop(L, 1);
  c->timeout = opt_number(L, o, "timeout", 0);
  lua_Number limit = opt_number(L, o, "buffer", DEFAULT_BUFFER), max = opt_number(L, o, "max_message", DEFAULT_MAX_MESSAGE);
  c->limit = limit >= 1 ? (size_t)limit : DEFAULT_BUFFER;
  c->max_message = max >= 1 ? (size_t)max : DEFAULT_MAX_MESSAGE;
  return problem;
}

/* ---- connecting ---- */

static void start_lws(ws_conn *c, const char *address) {
  struct lws_client_connect_info ci;
  memset(&ci, 0, sizeof ci);
  ci.context = c->rt->ctx;
  ci.vhost = c->vhost->vh;
  ci.address = address;
  ci.port = c->connect_port;
  ci.path = c->path;
  ci.host = c->host_header;
  ci.protocol = c->protocol_list;
  ci.local_protocol_name = c->vhost->protocols[0].name; /* bound, so lws hands us a refusal's body */
  ci.ietf_version_or_minus_one = -1;
  ci.userdata = c;
  ci.alpn = "http/1.1";
  if (c->tls) ci.ssl_connection = LCCSCF_USE_SSL;
  ci.ssl_connection |= LCCSCF_HTTP_NO_FOLLOW_REDIRECT; /* never carry credentials elsewhere */
  if (c->tls && c->insecure)
    ci.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_ALLOW_INSECURE | LCCSCF_ALLOW_EXPIRED |
                         LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK;
  c->state = S_CONNECTING;
  c->wsi_gone = 0;
  struct lws *wsi = lws_client_connect_via_info(&ci);
  if (wsi && !c->wsi_gone) c->wsi = wsi;
  if (!wsi) conn_fail(c, "connect", "cannot start the connection");
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  ws_conn *c = req->data;
  c->resolving = 0;
  char address[INET6_ADDRSTRLEN] = "";
  if (status == 0 && res) {
    const void *a = res->ai_family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr
                                               : (const void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr;
    inet_ntop(res->ai_family, a, address, sizeof address);
  }
  uv_freeaddrinfo(res);
  if (c->state != S_RESOLVING || !c->rt) return conn_maybe_free(c);
  if (status != 0 || !address[0])
    return conn_fail(c, "resolve", "cannot resolve %s (%s)", c->connect_host, status ? uv_strerror(status) : "no address");
  start_lws(c, address);
}

/* The close handshake: once what was queued is out, lws sends the close frame and waits for
 * the server's; CLOSE_WAIT_MS later the connection ends whatever happened. */
static void close_step(ws_conn *c) {
  if (c->close_ready && !c->close_sent_code && c->wsi) {
    c->close_sent_code = c->close_requested;
    uv_timer_start(&c->timer, on_timer, CLOSE_WAIT_MS, 0);
    lws_close_reason(c->wsi, (enum lws_close_status)c->close_requested, NULL, 0);
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_SYNC); /* with a reason: polite */
    return;
  }
  c->state = S_CLOSED;
  c->close_code = c->close_requested;
  if (c->wsi) lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_SYNC);
  wake(c, W_NONE);
}

/* The connect timeout, or a step of the close. */
static void on_timer(uv_timer_t *t) {
  ws_conn *c = t->data;
  if (c->state == S_OPEN && c->close_requested) return close_step(c);
  if (c->state != S_RESOLVING && c->state != S_CONNECTING) return;
  if (c->state == S_RESOLVING) uv_cancel((uv_req_t *)&c->resolve);
  conn_fail(c, "timeout", "the WebSocket connection timed out after %gs", c->timeout);
  if (c->wsi) lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_SYNC);
}

static int start_resolve(ws_conn *c) {
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  c->resolve.data = c;
  int rc = uv_getaddrinfo(c->rt->loop, &c->resolve, on_resolved, c->connect_host, NULL, &hints);
  if (rc != 0) return rc;
  c->state = S_RESOLVING;
  c->resolving = 1;
  if (c->timeout > 0) uv_timer_start(&c->timer, on_timer, (uint64_t)(c->timeout * 1000), 0);
  return 0;
}

static ws_conn *check_open(lua_State *L) {
  conn_ud *ud = luaL_checkudata(L, 1, CONN_MT);
  return ud->c;
}

/* nil, err on top: a timed-out wait. */
static int is_failure(lua_State *L) {
  return lua_gettop(L) >= 2 && lua_isnil(L, -2) && lua_istable(L, -1);
}

static int push_conn_error(lua_State *L, const ws_conn *c) {
  lua_pushnil(L);
  if (!c) {
    vq_push_error_table(L, "closed", "the connection is closed");
    return 2;
  }
  vq_push_error_table(L, c->err_code ? c->err_code : "closed", "%s", c->err_code ? c->err_msg : "the connection is closed");
  if (c->status && c->status != 101) {
    lua_pushinteger(L, c->status);
    lua_setfield(L, -2, "status");
    lua_pushlstring(L, c->body.data ? c->body.data : "", c->body.len);
    lua_setfield(L, -2, "body");
  }
  if (c->close_code) {
    lua_pushinteger(L, c->close_code);
    lua_setfield(L, -2, "close_code");
  }
  return 2;
}

static int connect_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  int ud_idx = (int)ctx;
  if (is_failure(L)) return 2;
  conn_ud *ud = lua_touserdata(L, ud_idx);
  if (ud->c && ud->c->state == S_OPEN) {
    lua_settop(L, ud_idx);
    return 1;
  }
  return push_conn_error(L, ud->c);
}

static void conn_cancel(vq_wait *wait) {
  conn_wait *w = (conn_wait *)wait;
  wait_kind kind = w->kind;
  set_waiting(w, W_NONE);
  if (kind == W_OPEN) conn_abort(w->c);
}

/* Parks the task on the connection's reader or writer slot; yields through k. */
static int wait_on(lua_State *L, ws_conn *c, wait_kind kind, lua_KContext ctx, lua_KFunction k) {
  conn_wait *w = kind == W_SEND ? &c->wr : &c->rd;
  if (w->kind != W_NONE) return luaL_error(L, "another task is already %s on this connection", kind == W_SEND ? "sending" : "receiving");
  vq_wait_check(L);
  set_waiting(w, kind);
  vq_wait_begin(L, &w->wait, conn_cancel);
  return vq_wait_yieldk(L, &w->wait, ctx, k);
}

static int l_connect(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  vq_wait_check(L);
  ws_rt *rt = rt_of(L);
  conn_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  ud->c = NULL;
  luaL_setmetatable(L, CONN_MT);
  int ud_idx = lua_gettop(L);
  if (!(ud->c = conn_new(rt))) return luaL_error(L, "out of memory");
  ws_conn *c = ud->c;
  const char *problem = configure(L, 1, c);
  if (problem) return vq_push_error(L, "invalid", "%s", problem);
  if (!(c->vhost = vhost_for(L, 1, c, &problem))) return vq_push_error(L, "tls", "%s", problem);
  int rc = start_resolve(c);
  if (rc != 0) return vq_push_error(L, "resolve", "cannot resolve the server's name (%s)", uv_strerror(rc));
  return wait_on(L, c, W_OPEN, (lua_KContext)ud_idx, connect_k);
}

/* ---- the connection object ---- */

static void rx_resume(ws_conn *c) {
  if (!c->rx_paused || c->rx.bytes >= c->limit / 2 || !c->wsi || !c->rt) return;
  c->rx_paused = 0;
  lws_rx_flow_control(c->wsi, 1);
  lws_cancel_service(c->rt->ctx); /* what lws buffered meanwhile is read on its next turn */
}

static int take_message(lua_State *L, ws_conn *c) {
  ws_msg *m = queue_pop(&c->rx);
  lua_pushlstring(L, (const char *)m->data, m->len);
  lua_pushstring(L, m->binary ? "binary" : "text");
  free(m);
  rx_resume(c);
  return 2;
}

/* No message and none to come: nil when the connection closed cleanly, else nil, err. */
static int receive_end(lua_State *L, ws_conn *c) {
  if (c && c->state == S_CLOSED && !c->err_code) {
    lua_pushnil(L);
    return 1;
  }
  return push_conn_error(L, c);
}

static int conn_receive(lua_State *L);

static int receive_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  if (is_failure(L)) return 2;
  ws_conn *c = check_open(L);
  if (c && c->rx.head) return take_message(L, c);
  if (c && c->state == S_OPEN) return conn_receive(L); /* woken for another reason: wait on */
  return receive_end(L, c);
}

static int conn_receive(lua_State *L) {
  ws_conn *c = check_open(L);
  if (c && c->rx.head) return take_message(L, c);
  if (!c || c->state != S_OPEN || !c->rt) return receive_end(L, c);
  lua_settop(L, 1);
  return wait_on(L, c, W_RECV, 0, receive_k);
}

static int send_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  if (is_failure(L)) return 2;
  ws_conn *c = check_open(L);
  if (!c || c->state != S_OPEN) return push_conn_error(L, c);
  lua_pushboolean(L, 1);
  return 1;
}

static int conn_send(lua_State *L) {
  ws_conn *c = check_open(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  int binary = lua_toboolean(L, 3);
  if (!c || c->state != S_OPEN || c->close_requested || !c->wsi) return push_conn_error(L, c);
  ws_msg *m = msg_new(LWS_PRE, data, len, binary);
  if (!m) return luaL_error(L, "out of memory");
  queue_push(&c->tx, m);
  lws_callback_on_writable(c->wsi);
  if (c->tx.bytes <= c->limit) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_settop(L, 1);
  return wait_on(L, c, W_SEND, 0, send_k);
}

/* Starts the close handshake (after what is queued is sent); true if it started. */
static int start_close(ws_conn *c, int code) {
  if (!c || c->state != S_OPEN || !c->wsi || c->close_requested) return 0;
  c->close_requested = code;
  uv_timer_start(&c->timer, on_timer, CLOSE_WAIT_MS, 0);
  lws_callback_on_writable(c->wsi);
  return 1;
}

static int close_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  if (is_failure(L)) return 2;
  lua_pushboolean(L, 1);
  return 1;
}

/* close([code]): waits (in a task) until the server answers the close, CLOSE_WAIT_MS at most;
 * not when another task is receiving: that one learns the end. */
static int conn_close(lua_State *L) {
  ws_conn *c = check_open(L);
  int code = (int)luaL_optinteger(L, 2, LWS_CLOSE_STATUS_NORMAL);
  luaL_argcheck(L, code == 1000 || (code >= 3000 && code <= 4999), 2, "1000 or 3000-4999");
  if (!start_close(c, code) || c->rd.kind != W_NONE) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_settop(L, 1);
  return wait_on(L, c, W_CLOSE, 0, close_k);
}

/* __close: start the close handshake without waiting. */
static int conn_tbc_close(lua_State *L) {
  start_close(check_open(L), LWS_CLOSE_STATUS_NORMAL);
  return 0;
}

static int conn_gc(lua_State *L) {
  conn_ud *ud = luaL_checkudata(L, 1, CONN_MT);
  ws_conn *c = ud->c;
  if (!c) return 0;
  ud->c = NULL;
  set_waiting(&c->rd, W_NONE);
  set_waiting(&c->wr, W_NONE);
  if (c->rt) conn_abort(c);
  c->lua_owned = 0;
  conn_close_timer(c);
  conn_maybe_free(c);
  return 0;
}

static const char *state_name(const ws_conn *c) {
  if (!c || c->state == S_CLOSED || c->state == S_FAILED) return "closed";
  return c->close_requested ? "closing" : "open";
}

static int conn_index(lua_State *L) {
  ws_conn *c = check_open(L);
  const char *key = luaL_checkstring(L, 2);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  if (strcmp(key, "protocol") == 0 && c && c->protocol[0]) lua_pushstring(L, c->protocol);
  else if (strcmp(key, "close_code") == 0 && c && c->close_code) lua_pushinteger(L, c->close_code);
  else if (strcmp(key, "close_reason") == 0 && c && c->close_reason[0]) lua_pushstring(L, c->close_reason);
  else if (strcmp(key, "state") == 0) lua_pushstring(L, state_name(c));
  else if (strcmp(key, "buffered") == 0) lua_pushinteger(L, c ? (lua_Integer)c->rx.bytes : 0);
  else lua_pushnil(L);
  return 1;
}

static int conn_tostring(lua_State *L) {
  ws_conn *c = check_open(L);
  lua_pushfstring(L, "ws connection (%s)", state_name(c));
  return 1;
}

static const luaL_Reg conn_methods[] = {
  {"send", conn_send}, {"receive", conn_receive}, {"close", conn_close}, {NULL, NULL}};

static const luaL_Reg ws_functions[] = {{"connect", l_connect}, {NULL, NULL}};

int luaopen_vq_core_ws(lua_State *L) {
  if (luaL_newmetatable(L, CONN_MT)) {
    luaL_newlib(L, conn_methods);
    lua_pushcclosure(L, conn_index, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, conn_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, conn_tbc_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, conn_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  luaL_newlib(L, ws_functions);
  return 1;
}
