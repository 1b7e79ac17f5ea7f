/* vq.core.dns: DNS queries with c-ares on the host's libuv loop. The mechanism only: which
 * answer counts, CNAME chains and waiting for propagation are vq.dns's (scripts/lib/vq/dns.lua).
 *
 *   dns.query{name=, type = "A"|"AAAA"|"CNAME", server=, port=, timeout=, tries=, search=}
 *     -> {rcode=, aa=, answers = {{name=, type=, ttl=, data=}, ...}}
 *      | nil, {code = "nxdomain"|"nodata"|"timeout"|"refused"|"servfail"|"resolve",
 *               message=, ares_status=, rcode=, aa=, answers=}   (the last three if answered)
 *
 * c-ares fixes the servers, the per-try timeout and the tries when a channel is made, so
 * there is one ares channel per (server, port, timeout, tries), made on first use and kept
 * until the runtime closes. Its sockets are uv_polls that ARES_OPT_SOCK_STATE_CB starts and
 * stops; one uv_timer per channel follows ares_timeout. */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <ares.h>
#include <lauxlib.h>

#include "vq.h"

#define RESOLVER_KEY "vq.dns.resolver"
#define MAX_TRIES 16

enum { TYPE_A = 1, TYPE_CNAME = 5, TYPE_AAAA = 28, CLASS_IN = 1 };

typedef struct dns_resolver dns_resolver;
typedef struct dns_channel dns_channel;
typedef struct dns_socket dns_socket;

struct dns_resolver {
  void **owner; /* its vq_module_slot, emptied when the runtime closes */
  uv_loop_t *loop;
  dns_channel *channels;
};

typedef struct channel_key {
  char server[INET6_ADDRSTRLEN]; /* "" for the system's resolvers (/etc/resolv.conf) */
  int port, timeout_ms, tries;
} channel_key;

struct dns_channel {
  channel_key key;
  dns_resolver *resolver;
  dns_channel *next;
  ares_channel ares;
  uv_timer_t timer;
  dns_socket *sockets;
  size_t live; /* queries that a task still waits for */
};

struct dns_socket {
  uv_poll_t poll;
  ares_socket_t fd;
  int events;
  dns_channel *channel;
  dns_socket *next;
};

typedef enum { Q_STARTING, Q_WAITING, Q_ABANDONED, Q_DONE } query_state;

typedef struct dns_query {
  vq_wait wait;
  lua_State *L; /* the task's own thread: vq_wait_check made sure */
  dns_channel *channel;
  query_state state;
  int nresults;
} dns_query;

static void free_handle_data(uv_handle_t *h) { free(h->data); }

/* ---- the channel on the loop ---- */

static void channel_schedule(dns_channel *c);

static void on_poll(uv_poll_t *poll, int status, int events) {
  dns_socket *s = poll->data;
  dns_channel *c = s->channel;
  /* An error (ICMP port unreachable on the connected UDP socket) is handed to c-ares as
   * readiness: its recv then sees the error and moves on to the next server or try. */
  int rd = status < 0 || (events & UV_READABLE);
  int wr = status < 0 || (events & UV_WRITABLE);
  ares_process_fd(c->ares, rd ? s->fd : ARES_SOCKET_BAD, wr ? s->fd : ARES_SOCKET_BAD);
  /* libuv stops a poll on POLLERR; c-ares may keep the socket without telling us again. */
  if (!uv_is_closing((uv_handle_t *)poll) && !uv_is_active((uv_handle_t *)poll))
    uv_poll_start(poll, s->events, on_poll);
  channel_schedule(c);
}

static dns_socket *socket_find(dns_channel *c, ares_socket_t fd) {
  for (dns_socket *s = c->sockets; s; s = s->next)
    if (s->fd == fd) return s;
  return NULL;
}

static dns_socket *socket_open(dns_channel *c, ares_socket_t fd) {
  dns_socket *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  if (uv_poll_init_socket(c->resolver->loop, &s->poll, fd) != 0) {
    free(s);
    return NULL;
  }
  s->fd = fd;
  s->channel = c;
  s->poll.data = s;
  s->next = c->sockets;
  c->sockets = s;
  return s;
}

/* The struct stays valid until the close callback: on_poll may still look at it. */
static void socket_close(dns_channel *c, dns_socket *s) {
  dns_socket **p = &c->sockets;
  while (*p != s) p = &(*p)->next;
  *p = s->next;
  uv_poll_stop(&s->poll);
  uv_close((uv_handle_t *)&s->poll, free_handle_data);
}

static void on_sock_state(void *data, ares_socket_t fd, int readable, int writable) {
  dns_channel *c = data;
  dns_socket *s = socket_find(c, fd);
  if (!readable && !writable) {
    if (s) socket_close(c, s);
    return;
  }
  if (!s && !(s = socket_open(c, fd))) return; /* unwatched: its query times out */
  s->events = (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0);
  uv_poll_start(&s->poll, s->events, on_poll);
}

/* c-ares 1.18 cannot cancel one query: a cancelled one stays in the channel (its callback
 * frees it). Once no task waits on the channel, ares_cancel ends what is left, closing the
 * sockets; from this timer, as it must not run inside a c-ares callback. */
static void on_timer(uv_timer_t *timer) {
  dns_channel *c = timer->data;
  if (c->live == 0) ares_cancel(c->ares);
  else ares_process_fd(c->ares, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
  channel_schedule(c);
}

static void channel_schedule(dns_channel *c) {
  struct timeval tv;
  if (!ares_timeout(c->ares, NULL, &tv)) {
    uv_timer_stop(&c->timer);
    return;
  }
  /* rounded up: a timer that fires early finds nothing due and only re-arms */
  uint64_t ms = (uint64_t)tv.tv_sec * 1000 + ((uint64_t)tv.tv_usec + 999) / 1000;
  uv_timer_start(&c->timer, on_timer, c->live == 0 ? 0 : ms, 0);
}

static int set_server(dns_channel *c) {
  struct ares_addr_port_node node;
  memset(&node, 0, sizeof node);
  if (inet_pton(AF_INET, c->key.server, &node.addr.addr4) == 1) node.family = AF_INET;
  else if (inet_pton(AF_INET6, c->key.server, &node.addr.addr6) == 1) node.family = AF_INET6;
  else return ARES_EBADSTR;
  node.udp_port = node.tcp_port = c->key.port;
  return ares_set_servers_ports(c->ares, &node);
}

static int channel_init(dns_channel *c) {
  struct ares_options o;
  memset(&o, 0, sizeof o);
  /* SERVFAIL and REFUSED come back as such: by default c-ares 1.18 drops them, tries the
   * next server and at last reports "could not contact DNS servers". */
  o.flags = ARES_FLAG_NOCHECKRESP;
  o.timeout = c->key.timeout_ms;
  o.tries = c->key.tries;
  o.sock_state_cb = on_sock_state;
  o.sock_state_cb_data = c;
  int mask = ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_SOCK_STATE_CB;
  if (!c->key.server[0] && c->key.port != 53) {
    o.udp_port = o.tcp_port = (unsigned short)c->key.port;
    mask |= ARES_OPT_UDP_PORT | ARES_OPT_TCP_PORT;
  }
  int rc = ares_init_options(&c->ares, &o, mask);
  if (rc != ARES_SUCCESS || !c->key.server[0]) return rc;
  if ((rc = set_server(c)) != ARES_SUCCESS) ares_destroy(c->ares);
  return rc;
}

/* Ends the channel's queries (their callbacks free them) and closes its handles. */
static void channel_close(dns_channel *c) {
  ares_destroy(c->ares); /* closes its sockets through on_sock_state */
  while (c->sockets) socket_close(c, c->sockets);
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, free_handle_data);
}

/* ---- the runtime's resolver ---- */

static void resolver_close(void *ud) {
  dns_resolver *r = ud;
  while (r->channels) {
    dns_channel *c = r->channels;
    r->channels = c->next;
    channel_close(c);
  }
  ares_library_cleanup();
  if (r->owner) *r->owner = NULL;
  free(r);
}

static dns_resolver *resolver_of(lua_State *L) {
  void **slot = vq_module_slot(L, RESOLVER_KEY);
  if (*slot) return *slot;
  int rc = ares_library_init(ARES_LIB_INIT_ALL);
  if (rc != ARES_SUCCESS) luaL_error(L, "c-ares: %s", ares_strerror(rc));
  dns_resolver *r = calloc(1, sizeof *r);
  if (!r) {
    ares_library_cleanup();
    luaL_error(L, "out of memory");
  }
  r->loop = vq_loop(vq_from_lua(L));
  r->owner = slot;
  *slot = r;
  vq_on_close(vq_from_lua(L), resolver_close, r);
  return r;
}

/* The channel for this key, made on first use; NULL (and *rc) when c-ares refuses. */
static dns_channel *channel_for(lua_State *L, const channel_key *k, int *rc) {
  dns_resolver *r = resolver_of(L);
  for (dns_channel *c = r->channels; c; c = c->next)
    if (memcmp(&c->key, k, sizeof *k) == 0) return c;
  dns_channel *c = calloc(1, sizeof *c);
  if (!c) luaL_error(L, "out of memory");
  c->key = *k;
  c->resolver = r;
  if ((*rc = channel_init(c)) != ARES_SUCCESS) {
    free(c);
    return NULL;
  }
  uv_timer_init(r->loop, &c->timer);
  c->timer.data = c;
  c->next = r->channels;
  r->channels = c;
  return c;
}

/* ---- reading an answer ---- */

static unsigned rd16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }

static unsigned long rd32(const unsigned char *p) {
  return (unsigned long)rd16(p) << 16 | rd16(p + 2);
}

static const char *type_name(unsigned type) {
  switch (type) {
    case TYPE_A: return "A";
    case TYPE_AAAA: return "AAAA";
    case TYPE_CNAME: return "CNAME";
    default: return NULL;
  }
}

static int push_name(lua_State *L, const unsigned char *abuf, int alen, int pos, long *used) {
  char *name;
  if (pos >= alen || ares_expand_name(abuf + pos, abuf, alen, &name, used) != ARES_SUCCESS)
    return -1;
  lua_pushstring(L, name);
  ares_free_string(name);
  return 0;
}

static int skip_questions(const unsigned char *abuf, int alen, unsigned count, int *pos) {
  for (unsigned i = 0; i < count; i++) {
    char *name;
    long used;
    if (*pos >= alen || ares_expand_name(abuf + *pos, abuf, alen, &name, &used) != ARES_SUCCESS)
      return -1;
    ares_free_string(name);
    *pos += (int)used + 4;
    if (*pos > alen) return -1;
  }
  return 0;
}

/* Pushes an address as text or a CNAME's target. */
static int push_rdata(lua_State *L, unsigned type, const unsigned char *abuf, int alen, int pos,
                      unsigned len) {
  char text[INET6_ADDRSTRLEN];
  long used;
  if (type == TYPE_CNAME) return push_name(L, abuf, alen, pos, &used);
  int family = type == TYPE_A && len == 4 ? AF_INET : type == TYPE_AAAA && len == 16 ? AF_INET6 : 0;
  if (!family || !inet_ntop(family, abuf + pos, text, sizeof text)) return -1;
  lua_pushstring(L, text);
  return 0;
}

/* Appends the record at *pos to the list on top, as {name, type, ttl, data}; records of
 * other types and classes are stepped over. -1 when the record is malformed. */
static int push_record(lua_State *L, const unsigned char *abuf, int alen, int *pos) {
  long used;
  if (push_name(L, abuf, alen, *pos, &used) != 0) return -1;
  int p = *pos + (int)used;
  unsigned rdlen = p + 10 <= alen ? rd16(abuf + p + 8) : 0;
  if (p + 10 > alen || p + 10 + (int)rdlen > alen) {
    lua_pop(L, 1);
    return -1;
  }
  unsigned type = rd16(abuf + p), class = rd16(abuf + p + 2);
  unsigned long ttl = rd32(abuf + p + 4);
  *pos = p + 10 + (int)rdlen;
  const char *tname = type_name(type);
  if (class != CLASS_IN || !tname) {
    lua_pop(L, 1);
    return 0;
  }
  if (push_rdata(L, type, abuf, alen, p + 10, rdlen) != 0) {
    lua_pop(L, 1);
    return -1;
  }
  lua_createtable(L, 0, 4);
  lua_insert(L, -3);
  lua_setfield(L, -3, "data");
  lua_setfield(L, -2, "name");
  lua_pushstring(L, tname);
  lua_setfield(L, -2, "type");
  lua_pushinteger(L, (lua_Integer)ttl);
  lua_setfield(L, -2, "ttl");
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  return 0;
}

/* Sets rcode, aa and answers on the table on top; -1 when the message is malformed. */
static int push_answer(lua_State *L, const unsigned char *abuf, int alen) {
  if (!abuf || alen < 12) return -1;
  lua_pushinteger(L, abuf[3] & 0x0F);
  lua_setfield(L, -2, "rcode");
  lua_pushboolean(L, (abuf[2] & 0x04) != 0);
  lua_setfield(L, -2, "aa");
  int pos = 12;
  if (skip_questions(abuf, alen, rd16(abuf + 4), &pos) != 0) return -1;
  unsigned count = rd16(abuf + 6);
  lua_createtable(L, (int)count, 0);
  for (unsigned i = 0; i < count; i++) {
    if (push_record(L, abuf, alen, &pos) != 0) {
      lua_pop(L, 1);
      return -1;
    }
  }
  lua_setfield(L, -2, "answers");
  return 0;
}

static const char *error_code(int status) {
  switch (status) {
    case ARES_ENOTFOUND: return "nxdomain";
    case ARES_ENODATA: return "nodata";
    case ARES_ETIMEOUT: return "timeout";
    case ARES_EREFUSED: return "refused";
    case ARES_ESERVFAIL: return "servfail";
    case ARES_ECANCELLED: return "cancelled";
    default: return "resolve";
  }
}

/* The rcode a status stands for, when c-ares kept no answer (it retries SERVFAIL and
 * REFUSED on the other servers, then reports only the status). */
static int status_rcode(int status) {
  switch (status) {
    case ARES_ENODATA: return 0;
    case ARES_EFORMERR: return 1;
    case ARES_ESERVFAIL: return 2;
    case ARES_ENOTFOUND: return 3;
    case ARES_ENOTIMP: return 4;
    case ARES_EREFUSED: return 5;
    default: return -1;
  }
}

static int push_outcome(lua_State *L, int status, const unsigned char *abuf, int alen) {
  lua_checkstack(L, 8); /* pushing onto a parked task from a callback: never raise */
  if (status == ARES_SUCCESS) {
    lua_newtable(L);
    if (push_answer(L, abuf, alen) == 0) return 1;
    lua_pop(L, 1);
    status = ARES_EBADRESP;
    abuf = NULL;
  }
  lua_pushnil(L);
  vq_push_error_table(L, error_code(status), "%s", ares_strerror(status));
  lua_pushinteger(L, status);
  lua_setfield(L, -2, "ares_status");
  int rcode = status_rcode(status);
  if (rcode >= 0) {
    lua_pushinteger(L, rcode);
    lua_setfield(L, -2, "rcode");
  }
  push_answer(L, abuf, alen); /* what the server said with its error, when it said it */
  return 2;
}

/* ---- queries ---- */

static void on_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen) {
  (void)timeouts;
  dns_query *q = arg;
  /* At destruction the runtime is closing: its tasks were cancelled and the scheduler
   * can no longer resume anyone. */
  if (q->state == Q_ABANDONED || status == ARES_EDESTRUCTION) {
    free(q);
    return;
  }
  q->channel->live--;
  int n = push_outcome(q->L, status, abuf, alen);
  if (q->state == Q_STARTING) { /* c-ares answered inside ares_query: l_query returns it */
    q->state = Q_DONE;
    q->nresults = n;
    return;
  }
  vq_wait_done(&q->wait, n);
  free(q);
}

static void query_cancel(vq_wait *w) {
  dns_query *q = (dns_query *)w;
  q->state = Q_ABANDONED;
  q->channel->live--;
  channel_schedule(q->channel);
}

static const char *opt_string(lua_State *L, int idx, const char *key) {
  lua_getfield(L, idx, key);
  const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  lua_pop(L, 1); /* the string stays alive in the options table */
  return s;
}

static lua_Number opt_number(lua_State *L, int idx, const char *key, lua_Number dflt) {
  lua_getfield(L, idx, key);
  lua_Number v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : dflt;
  lua_pop(L, 1);
  return v;
}

static void read_key(lua_State *L, int o, channel_key *k) {
  memset(k, 0, sizeof *k); /* compared with memcmp */
  const char *server = opt_string(L, o, "server");
  if (server) {
    unsigned char probe[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, server, probe) != 1 && inet_pton(AF_INET6, server, probe) != 1)
      luaL_error(L, "dns: server must be an IP address, not '%s'", server);
    strcpy(k->server, server); /* an address that inet_pton read fits */
  }
  lua_Number port = opt_number(L, o, "port", 53);
  lua_Number timeout = opt_number(L, o, "timeout", 5);
  lua_Number tries = opt_number(L, o, "tries", 2);
  luaL_argcheck(L, port >= 1 && port <= 65535, 1, "port out of range");
  luaL_argcheck(L, timeout > 0 && timeout <= 3600, 1, "timeout out of range");
  luaL_argcheck(L, tries >= 1 && tries <= MAX_TRIES, 1, "tries out of range");
  k->port = (int)port;
  k->timeout_ms = timeout * 1000 < 1 ? 1 : (int)(timeout * 1000 + 0.5);
  k->tries = (int)tries;
}

static int check_type(lua_State *L, int o) {
  const char *type = opt_string(L, o, "type");
  if (!type || strcmp(type, "A") == 0) return TYPE_A;
  if (strcmp(type, "AAAA") == 0) return TYPE_AAAA;
  if (strcmp(type, "CNAME") == 0) return TYPE_CNAME;
  return luaL_error(L, "dns: type must be A, AAAA or CNAME, not '%s'", type);
}

static int l_query(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  const char *name = opt_string(L, 1, "name");
  if (!name || !*name) return luaL_error(L, "dns query needs a name");
  int type = check_type(L, 1);
  channel_key key;
  read_key(L, 1, &key);
  lua_getfield(L, 1, "search");
  int search = lua_toboolean(L, -1);
  lua_pop(L, 1);
  vq_wait_check(L);
  int rc = ARES_SUCCESS;
  dns_channel *c = channel_for(L, &key, &rc);
  if (!c) return vq_push_error(L, "resolve", "cannot set up DNS resolution: %s", ares_strerror(rc));
  dns_query *q = calloc(1, sizeof *q);
  if (!q) return luaL_error(L, "out of memory");
  q->L = L;
  q->channel = c;
  c->live++;
  if (search) ares_search(c->ares, name, CLASS_IN, type, on_answer, q);
  else ares_query(c->ares, name, CLASS_IN, type, on_answer, q);
  channel_schedule(c);
  if (q->state == Q_DONE) {
    int n = q->nresults;
    free(q);
    return n;
  }
  q->state = Q_WAITING;
  vq_wait_begin(L, &q->wait, query_cancel);
  return vq_wait_yield(L, &q->wait);
}

/* How many channels and waiting queries there are (for specs and diagnostics). */
static int l_stats(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, RESOLVER_KEY); /* the slot, if a query made it */
  dns_resolver **ud = lua_touserdata(L, -1);
  lua_Integer channels = 0, live = 0, sockets = 0;
  for (dns_channel *c = ud && *ud ? (*ud)->channels : NULL; c; c = c->next) {
    channels++;
    live += (lua_Integer)c->live;
    for (dns_socket *s = c->sockets; s; s = s->next) sockets++;
  }
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, channels);
  lua_setfield(L, -2, "channels");
  lua_pushinteger(L, live);
  lua_setfield(L, -2, "waiting");
  lua_pushinteger(L, sockets);
  lua_setfield(L, -2, "sockets");
  return 1;
}

static int l_version(lua_State *L) {
  lua_pushstring(L, ares_version(NULL));
  return 1;
}

static const luaL_Reg dns_functions[] = {
  {"query", l_query}, {"stats", l_stats}, {"version", l_version}, {NULL, NULL}};

int luaopen_vq_core_dns(lua_State *L) {
  luaL_newlib(L, dns_functions);
  return 1;
}
