/* vq.core.tls: certificates, keys and chains through OpenSSL 3; the judgement (what is a
 * problem, how to word it) is scripts/lib/vq/tls.lua's.
 *
 *   load_certs(pem, name) -> {cert, ...} | nil, err
 *   load_key(pem, name [, passphrase]) -> key | nil, err    key.type/bits/curve/encrypted/file,
 *                                                           key:matches(cert), key:close()
 *   verify(certs, {ca_file=, ca_dir=, at=, purpose=}) -> {ok=, errors=, chain=} | nil, err
 *   issued_by(issuer, subject) -> true | false, reason
 *   check_host(cert, host) -> matched name | false
 *   key_matches(key, cert) -> bool
 *   fetch_chain{host=, port=, sni=, timeout=} -> {certs=, protocol=, cipher=, address=} | nil, err
 *   random_bytes(n) -> bytes | nil, err                      from OpenSSL's CSPRNG
 *
 * A cert is a plain table (subject, issuer, sans, serial, dates, fingerprint, key, pem, ...):
 * certificates are public. A key is a userdata that never shows its material.
 *
 * Lua errors (out of memory) must not leak OpenSSL objects: whatever is alive while Lua
 * values are pushed sits in a guard userdata whose __gc frees it. */
#include <arpa/inet.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "vq.h"

#define GUARD_MT "vq.tls.guard"
#define KEY_MT "vq.tls.key"
#define SYSTEM_STORE_KEY "vq.tls.system_store"
#define MAX_VERIFY_ERRORS 32
#define DEFAULT_FETCH_TIMEOUT 10.0

/* ---- guards: OpenSSL objects owned by a userdata while Lua may raise ---- */

typedef void (*release_fn)(void *object);

typedef struct guard {
  void *object;
  release_fn release;
} guard;

static int guard_gc(lua_State *L) {
  guard *g = lua_touserdata(L, 1);
  if (g->object) g->release(g->object);
  g->object = NULL;
  return 0;
}

static guard *guard_push(lua_State *L, release_fn release) {
  guard *g = lua_newuserdatauv(L, sizeof *g, 0);
  g->object = NULL;
  g->release = release;
  luaL_setmetatable(L, GUARD_MT);
  return g;
}

/* Release now rather than at the next collection, and take the guard off the stack. */
static void guard_drop(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  guard *g = lua_touserdata(L, idx);
  if (g->object) g->release(g->object);
  g->object = NULL;
  lua_remove(L, idx);
}

static void release_bio(void *p) { BIO_free(p); }
static void release_certs(void *p) { sk_X509_pop_free(p, X509_free); }
static void release_names(void *p) { GENERAL_NAMES_free(p); }
static void release_store(void *p) { X509_STORE_free(p); }

/* A scratch memory BIO on top of the stack, for the printing OpenSSL does into BIOs. */
static BIO *scratch_bio(lua_State *L) {
  guard *g = guard_push(L, release_bio);
  g->object = BIO_new(BIO_s_mem());
  if (!g->object) luaL_error(L, "out of memory");
  return g->object;
}

static void push_bio_text(lua_State *L, BIO *bio) {
  char *data = NULL;
  long len = BIO_get_mem_data(bio, &data);
  lua_pushlstring(L, data ? data : "", len > 0 ? (size_t)len : 0);
  (void)BIO_reset(bio);
}

/* ---- problems: what went wrong, described before anything is pushed ---- */

typedef struct problem {
  char message[400];
  const char *reason; /* a short token a runbook can branch on */
  int line, block;
} problem;

static void set_problem(problem *p, const char *reason, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(p->message, sizeof p->message, fmt, ap);
  va_end(ap);
  p->reason = reason;
}

/* The first error OpenSSL queued, as its reason text; the queue is emptied. */
static const char *openssl_reason(void) {
  unsigned long e = ERR_peek_error();
  const char *r = NULL;
  if (e && ERR_SYSTEM_ERROR(e)) r = strerror(ERR_GET_REASON(e));
  else if (e) r = ERR_reason_error_string(e);
  ERR_clear_error();
  return r ? r : "unknown OpenSSL error";
}

/* "x.crt is empty", "x.crt: line 3: ...": the message names the file. */
static void name_the_file(problem *p, const char *file) {
  char message[sizeof p->message];
  int sentence = strncmp(p->message, "is ", 3) == 0;
  int n = snprintf(message, sizeof message, "%s%s%s", file, sentence ? " " : ": ", p->message);
  if (n > 0) memcpy(p->message, message, sizeof message); /* cut short if it must be */
}

static int push_problem(lua_State *L, const char *file, const problem *p) {
  vq_push_error(L, "tls", "%s", p->message);
  if (file) {
    lua_pushstring(L, file);
    lua_setfield(L, -2, "file");
  }
  lua_pushstring(L, p->reason);
  lua_setfield(L, -2, "reason");
  if (p->line > 0) {
    lua_pushinteger(L, p->line);
    lua_setfield(L, -2, "line");
  }
  if (p->block > 0) {
    lua_pushinteger(L, p->block);
    lua_setfield(L, -2, "block");
  }
  return 2;
}

/* ---- describing a certificate ---- */

static void set_string(lua_State *L, const char *key, const char *value) {
  lua_pushstring(L, value);
  lua_setfield(L, -2, key);
}

static void set_integer(lua_State *L, const char *key, lua_Integer value) {
  lua_pushinteger(L, value);
  lua_setfield(L, -2, key);
}

static void set_boolean(lua_State *L, const char *key, int value) {
  lua_pushboolean(L, value);
  lua_setfield(L, -2, key);
}

/* As `openssl x509 -subject` prints it: "C = US, O = Example, CN = host". */
static void set_name(lua_State *L, BIO *bio, const char *key, const X509_NAME *name) {
  unsigned long flags = (XN_FLAG_ONELINE | ASN1_STRFLGS_UTF8_CONVERT) & ~ASN1_STRFLGS_ESC_MSB;
  X509_NAME_print_ex(bio, name, 0, flags);
  push_bio_text(L, bio);
  lua_setfield(L, -2, key);
}

static void set_common_name(lua_State *L, const X509_NAME *name) {
  int i = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
  if (i < 0) return;
  ASN1_STRING *value = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i));
  unsigned char *utf8 = NULL;
  int len = ASN1_STRING_to_UTF8(&utf8, value);
  if (len < 0) return;
  char cn[256];
  snprintf(cn, sizeof cn, "%.*s", len, (const char *)utf8);
  OPENSSL_free(utf8);
  set_string(L, "cn", cn);
}

static void push_ip(lua_State *L, const ASN1_OCTET_STRING *ip) {
  char text[INET6_ADDRSTRLEN] = "?";
  int len = ASN1_STRING_length(ip);
  const unsigned char *bytes = ASN1_STRING_get0_data(ip);
  if (len == 4) inet_ntop(AF_INET, bytes, text, sizeof text);
  else if (len == 16) inet_ntop(AF_INET6, bytes, text, sizeof text);
  lua_pushstring(L, text);
}

/* sans = {dns = {...}, ip = {...}} */
static void set_sans(lua_State *L, const X509 *x) {
  guard *g = guard_push(L, release_names);
  GENERAL_NAMES *names = g->object = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
  lua_createtable(L, 0, 2);
  lua_newtable(L);
  lua_newtable(L);
  int n = names ? sk_GENERAL_NAME_num(names) : 0;
  for (int i = 0; i < n; i++) {
    const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
    if (gn->type == GEN_DNS) {
      lua_pushlstring(L, (const char *)ASN1_STRING_get0_data(gn->d.dNSName),
                      (size_t)ASN1_STRING_length(gn->d.dNSName));
      lua_rawseti(L, -3, (lua_Integer)lua_rawlen(L, -3) + 1);
    } else if (gn->type == GEN_IPADD) {
      push_ip(L, gn->d.iPAddress);
      lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    }
  }
  lua_setfield(L, -3, "ip");
  lua_setfield(L, -2, "dns");
  lua_setfield(L, -3, "sans");
  guard_drop(L, -1);
}

/* key_time (epoch seconds) and key_time_iso ("2025-01-31T12:00:00Z"); returns the epoch. */
static time_t set_time(lua_State *L, const char *key, const ASN1_TIME *t) {
  struct tm tm;
  if (!t || !ASN1_TIME_to_tm(t, &tm)) return 0;
  time_t epoch = timegm(&tm);
  set_integer(L, key, (lua_Integer)epoch);
  char iso[32], iso_key[64];
  strftime(iso, sizeof iso, "%Y-%m-%dT%H:%M:%SZ", &tm);
  snprintf(iso_key, sizeof iso_key, "%s_iso", key);
  set_string(L, iso_key, iso);
  return epoch;
}

static lua_Integer floor_days(double seconds) {
  double days = seconds / 86400.0;
  lua_Integer whole = (lua_Integer)days;
  return (days < 0 && (double)whole != days) ? whole - 1 : whole;
}

/* "AB:CD:...", as `openssl x509 -fingerprint -sha256` prints it. */
static void set_fingerprint(lua_State *L, const X509 *x) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (!X509_digest(x, EVP_sha256(), md, &n)) {
    ERR_clear_error();
    return;
  }
  char hex[EVP_MAX_MD_SIZE * 3 + 1];
  for (unsigned int i = 0; i < n; i++) snprintf(hex + 3 * i, 4, "%02X:", md[i]);
  hex[n ? 3 * n - 1 : 0] = '\0';
  set_string(L, "fingerprint", hex);
}

static void set_serial(lua_State *L, const X509 *x) {
  BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
  char *hex = bn ? BN_bn2hex(bn) : NULL;
  BN_free(bn);
  if (!hex) return;
  char serial[128];
  snprintf(serial, sizeof serial, "%s", hex);
  OPENSSL_free(hex);
  set_string(L, "serial", serial);
}

static const char *key_type_name(const EVP_PKEY *pkey) {
  switch (EVP_PKEY_get_base_id(pkey)) {
    case EVP_PKEY_RSA: return "RSA";
    case EVP_PKEY_RSA_PSS: return "RSA-PSS";
    case EVP_PKEY_EC: return "EC";
    case EVP_PKEY_ED25519: return "Ed25519";
    case EVP_PKEY_ED448: return "Ed448";
    case EVP_PKEY_DSA: return "DSA";
    default: {
      const char *name = EVP_PKEY_get0_type_name(pkey);
      return name ? name : "unknown";
    }
  }
}

/* The curve by its NIST name when it has one ("P-256"), else OpenSSL's ("brainpoolP256r1"). */
static int curve_name(const EVP_PKEY *pkey, char *out, size_t size) {
  char group[80];
  if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_EC ||
      !EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                      NULL)) {
    ERR_clear_error();
    return 0;
  }
  const char *nist = EC_curve_nid2nist(OBJ_sn2nid(group));
  snprintf(out, size, "%s", nist ? nist : group);
  return 1;
}

/* key_type, key_bits, key_curve (EC): the same fields a loaded key has. */
static void set_key_fields(lua_State *L, const EVP_PKEY *pkey, const char *prefix) {
  char key[32], curve[80];
  snprintf(key, sizeof key, "%stype", prefix);
  set_string(L, key, pkey ? key_type_name(pkey) : "unknown");
  if (!pkey) return;
  snprintf(key, sizeof key, "%sbits", prefix);
  set_integer(L, key, EVP_PKEY_get_bits(pkey));
  if (curve_name(pkey, curve, sizeof curve)) {
    snprintf(key, sizeof key, "%scurve", prefix);
    set_string(L, key, curve);
  }
}

static void set_pem(lua_State *L, BIO *bio, X509 *x) {
  if (!PEM_write_bio_X509(bio, x)) {
    ERR_clear_error();
    return;
  }
  push_bio_text(L, bio);
  lua_setfield(L, -2, "pem");
}

static void set_validity(lua_State *L, const X509 *x) {
  set_time(L, "not_before", X509_get0_notBefore(x));
  time_t not_after = set_time(L, "not_after", X509_get0_notAfter(x));
  set_integer(L, "days_left", floor_days(difftime(not_after, time(NULL))));
}

/* Pushes the table describing x. */
static void push_cert(lua_State *L, X509 *x) {
  luaL_checkstack(L, 8, "certificate description");
  BIO *bio = scratch_bio(L);
  lua_createtable(L, 0, 24);
  set_name(L, bio, "subject", X509_get_subject_name(x));
  set_name(L, bio, "issuer", X509_get_issuer_name(x));
  set_common_name(L, X509_get_subject_name(x));
  set_sans(L, x);
  set_serial(L, x);
  set_validity(L, x);
  set_fingerprint(L, x);
  set_key_fields(L, X509_get0_pubkey(x), "key_");
  set_string(L, "signature_algorithm", OBJ_nid2ln(X509_get_signature_nid(x)));
  set_integer(L, "version", X509_get_version(x) + 1);
  set_boolean(L, "self_signed", X509_self_signed(x, 1) == 1);
  set_boolean(L, "is_ca", (X509_get_extension_flags(x) & EXFLAG_CA) != 0);
  set_pem(L, bio, x);
  ERR_clear_error();
  guard_drop(L, -2);
}

/* A list of cert tables for the stack's certificates. */
static void push_cert_list(lua_State *L, STACK_OF(X509) *certs) {
  int n = certs ? sk_X509_num(certs) : 0;
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    push_cert(L, sk_X509_value(certs, i));
    lua_rawseti(L, -2, i + 1);
  }
}

/* ---- PEM text: OpenSSL reads the blocks; we only insist that nothing else is there ---- */

typedef struct pem_block {
  const char *name;
  const unsigned char *data;
  long len;
  size_t begin, end; /* the block's bytes in the text, BEGIN line to END line */
  int index, line;
} pem_block;

/* Called for each block; returns 0 to go on, -1 (with the problem set) to stop. */
typedef int (*block_fn)(void *ctx, const pem_block *b, problem *p);

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

static size_t skip_space(const char *s, size_t from, size_t to) {
  while (from < to && is_space(s[from])) from++;
  return from;
}

static int line_of(const char *s, size_t offset) {
  int line = 1;
  for (size_t i = 0; i < offset; i++) line += s[i] == '\n';
  return line;
}

/* The last "-----BEGIN " in [from, to): block data never contains one, text before may. */
static size_t find_begin(const char *s, size_t from, size_t to) {
  static const char marker[] = "-----BEGIN ";
  size_t found = to;
  const char *p = s + from;
  while ((p = memmem(p, (size_t)(s + to - p), marker, sizeof marker - 1))) {
    found = (size_t)(p - s);
    p++;
  }
  return found;
}

static int stray_text(const char *s, size_t from, size_t to, problem *p) {
  size_t at = skip_space(s, from, to);
  if (at == to) return 0;
  p->line = line_of(s, at);
  set_problem(p, "stray_text", "line %d: text outside a PEM block", p->line);
  return -1;
}

static void describe_unreadable(const char *s, size_t pos, size_t len, problem *p) {
  size_t begin = find_begin(s, pos, len);
  const char *why = openssl_reason();
  p->line = line_of(s, begin < len ? begin : pos);
  set_problem(p, "malformed", "line %d: malformed or truncated PEM block (%s)", p->line, why);
}

/* When no block at all was found: say what the text is instead. */
static void describe_not_pem(const char *s, size_t len, problem *p) {
  if (skip_space(s, 0, len) == len)
    set_problem(p, "empty", "is empty");
  else if ((unsigned char)s[0] == 0x30)
    set_problem(p, "not_pem", "is not PEM: it looks like DER (binary); convert it with openssl");
  else
    set_problem(p, "not_pem", "is not PEM: no -----BEGIN line");
}

typedef struct pem_walk {
  const char *text;
  size_t len, pos;
  BIO *bio;
  int count;
} pem_walk;

/* Reads the next block into b; 1 when read, 0 at the end, -1 with the problem set. */
static int next_block(pem_walk *w, pem_block *b, char **name, char **header, unsigned char **data,
                      problem *p) {
  size_t before = (size_t)BIO_pending(w->bio);
  if (!PEM_read_bio(w->bio, name, header, data, &b->len)) {
    if (ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE) {
      describe_unreadable(w->text, w->pos, w->len, p);
      return -1;
    }
    ERR_clear_error();
    if (w->count == 0) describe_not_pem(w->text, w->len, p);
    else if (stray_text(w->text, w->pos, w->len, p) == 0) return 0;
    return -1;
  }
  b->end = w->pos + (before - (size_t)BIO_pending(w->bio));
  b->begin = find_begin(w->text, w->pos, b->end);
  if (stray_text(w->text, w->pos, b->begin, p) != 0) return -1;
  b->name = *name;
  b->data = *data;
  b->index = ++w->count;
  b->line = line_of(w->text, b->begin);
  w->pos = b->end;
  return 1;
}

/* Every block of the text to fn; returns the number of blocks, or -1 with the problem set. */
static int walk_pem(const char *text, size_t len, block_fn fn, void *ctx, problem *p) {
  if (len > INT_MAX) {
    set_problem(p, "too_large", "is too large for a PEM file");
    return -1;
  }
  pem_walk w = {text, len, 0, BIO_new_mem_buf(text, (int)len), 0};
  if (!w.bio) {
    set_problem(p, "internal", "out of memory");
    return -1;
  }
  int rc = 1;
  while (rc == 1) {
    char *name = NULL, *header = NULL;
    unsigned char *data = NULL;
    pem_block b = {0};
    rc = next_block(&w, &b, &name, &header, &data, p);
    if (rc == 1 && fn(ctx, &b, p) != 0) {
      p->block = b.index;
      if (!p->line) p->line = b.line;
      rc = -1;
    }
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_clear_free(data, b.len > 0 ? (size_t)b.len : 0); /* key blocks: wipe */
  }
  BIO_free(w.bio);
  ERR_clear_error();
  return rc == 0 ? w.count : -1;
}

static int is_private_key_block(const char *name) {
  static const char *const names[] = {PEM_STRING_PKCS8INF,     PEM_STRING_PKCS8,
                                      PEM_STRING_RSA,          PEM_STRING_ECPRIVATEKEY,
                                      PEM_STRING_DSA,          "OPENSSH PRIVATE KEY"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (strcmp(name, names[i]) == 0) return 1;
  return 0;
}

/* ---- loading certificates ---- */

static int take_certificate(void *ctx, const pem_block *b, problem *p) {
  STACK_OF(X509) *certs = ctx;
  if (is_private_key_block(b->name)) {
    set_problem(p, "wrong_type", "block %d (line %d) is a private key, not a certificate",
                b->index, b->line);
    return -1;
  }
  if (strcmp(b->name, PEM_STRING_X509) != 0 && strcmp(b->name, PEM_STRING_X509_OLD) != 0) {
    set_problem(p, "wrong_type", "block %d (line %d) is a %s, not a certificate", b->index,
                b->line, b->name);
    return -1;
  }
  const unsigned char *der = b->data;
  X509 *x = d2i_X509(NULL, &der, b->len);
  if (!x || der != b->data + b->len) {
    const char *why = x ? "extra bytes after the certificate" : openssl_reason();
    X509_free(x);
    set_problem(p, "malformed", "block %d (line %d) is not a valid certificate (%s)", b->index,
                b->line, why);
    return -1;
  }
  if (!sk_X509_push(certs, x)) {
    X509_free(x);
    set_problem(p, "internal", "out of memory");
    return -1;
  }
  return 0;
}

/* load_certs(pem, name): every block a certificate, nothing else, or nil, err. */
static int l_load_certs(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *name = luaL_optstring(L, 2, "input");
  guard *g = guard_push(L, release_certs);
  if (!(g->object = sk_X509_new_null())) return luaL_error(L, "out of memory");
  problem p = {0};
  if (walk_pem(text, len, take_certificate, g->object, &p) < 0) {
    name_the_file(&p, name);
    return push_problem(L, name, &p);
  }
  push_cert_list(L, g->object);
  return 1;
}

/* ---- private keys ---- */

typedef struct key_ud {
  EVP_PKEY *pkey;
  int encrypted;
} key_ud;

typedef struct passphrase {
  const char *text;
  size_t len;
  int asked;
} passphrase;

/* OpenSSL's default would read the terminal: an unattended run must fail, not hang. */
static int give_passphrase(char *buf, int size, int rwflag, void *u) {
  (void)rwflag;
  passphrase *pass = u;
  pass->asked = 1;
  if (!pass->text || pass->len > (size_t)size) return -1;
  memcpy(buf, pass->text, pass->len);
  return (int)pass->len;
}

typedef struct key_scan {
  size_t begin, end;
  int keys, index, line;
} key_scan;

static int take_key_block(void *ctx, const pem_block *b, problem *p) {
  key_scan *scan = ctx;
  if (strcmp(b->name, "EC PARAMETERS") == 0) return 0; /* `openssl ecparam -genkey` writes one */
  if (strcmp(b->name, "OPENSSH PRIVATE KEY") == 0) {
    set_problem(p, "wrong_type", "block %d (line %d) is an OpenSSH key, which TLS does not read",
                b->index, b->line);
    return -1;
  }
  if (!is_private_key_block(b->name)) {
    const char *what = strcmp(b->name, PEM_STRING_PUBLIC) == 0 ? "a public key" : b->name;
    set_problem(p, "wrong_type", "block %d (line %d) is %s%s, not a private key", b->index,
                b->line, what == b->name ? "a " : "", what);
    return -1;
  }
  if (++scan->keys > 1) {
    set_problem(p, "wrong_type", "holds more than one private key (block %d, line %d)", b->index,
                b->line);
    return -1;
  }
  scan->begin = b->begin;
  scan->end = b->end;
  scan->index = b->index;
  scan->line = b->line;
  return 0;
}

static void describe_key_failure(const passphrase *pass, problem *p) {
  const char *why = openssl_reason();
  if (pass->asked && !pass->text)
    set_problem(p, "encrypted", "is encrypted: a passphrase is needed");
  else if (pass->asked)
    set_problem(p, "bad_passphrase", "the passphrase does not decrypt the key");
  else
    set_problem(p, "malformed", "the private key cannot be decoded (%s)", why);
}

/* Decodes the one key block of the text into *out; 0, or -1 with the problem set. */
static int decode_key(const char *text, size_t len, passphrase *pass, EVP_PKEY **out, problem *p) {
  key_scan scan = {0};
  if (walk_pem(text, len, take_key_block, &scan, p) < 0) return -1;
  if (scan.keys == 0) {
    set_problem(p, "wrong_type", "holds no private key");
    return -1;
  }
  BIO *bio = BIO_new_mem_buf(text + scan.begin, (int)(scan.end - scan.begin));
  *out = bio ? PEM_read_bio_PrivateKey(bio, NULL, give_passphrase, pass) : NULL;
  BIO_free(bio);
  if (!*out) {
    describe_key_failure(pass, p);
    p->block = scan.index;
    p->line = scan.line;
    return -1;
  }
  ERR_clear_error();
  return 0;
}

static key_ud *check_key(lua_State *L, int idx) {
  key_ud *k = luaL_checkudata(L, idx, KEY_MT);
  if (!k->pkey) luaL_argerror(L, idx, "the key is closed");
  return k;
}

/* load_key(pem, name [, passphrase]) -> key | nil, err */
static int l_load_key(lua_State *L) {
  size_t len, pass_len = 0;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *name = luaL_optstring(L, 2, "input");
  const char *pass_text = luaL_optlstring(L, 3, NULL, &pass_len);
  key_ud *k = lua_newuserdatauv(L, sizeof *k, 1);
  k->pkey = NULL;
  k->encrypted = 0;
  luaL_setmetatable(L, KEY_MT);
  lua_pushstring(L, name);
  lua_setiuservalue(L, -2, 1);
  passphrase pass = {pass_text, pass_len, 0};
  problem p = {0};
  if (decode_key(text, len, &pass, &k->pkey, &p) < 0) {
    name_the_file(&p, name);
    return push_problem(L, name, &p);
  }
  k->encrypted = pass.asked;
  return 1;
}

static int key_close(lua_State *L) {
  key_ud *k = luaL_checkudata(L, 1, KEY_MT);
  EVP_PKEY_free(k->pkey);
  k->pkey = NULL;
  return 0;
}

static int key_info(lua_State *L) {
  key_ud *k = check_key(L, 1);
  lua_createtable(L, 0, 5);
  set_key_fields(L, k->pkey, "");
  set_boolean(L, "encrypted", k->encrypted);
  lua_getiuservalue(L, 1, 1);
  lua_setfield(L, -2, "file");
  return 1;
}

static int key_tostring(lua_State *L) {
  key_ud *k = luaL_checkudata(L, 1, KEY_MT);
  lua_getiuservalue(L, 1, 1);
  const char *file = lua_tostring(L, -1);
  if (!k->pkey) {
    lua_pushfstring(L, "private key (%s, closed)", file);
    return 1;
  }
  char curve[80];
  if (curve_name(k->pkey, curve, sizeof curve))
    lua_pushfstring(L, "private key (%s, %s %s)", file, key_type_name(k->pkey), curve);
  else
    lua_pushfstring(L, "private key (%s, %s %d bits)", file, key_type_name(k->pkey),
                    EVP_PKEY_get_bits(k->pkey));
  return 1;
}

/* ---- certificates passed back from Lua ---- */

static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  (void)buf, (void)size, (void)rwflag, (void)u;
  return -1;
}

/* The certificate of a cert table (its pem) or of a PEM string; NULL if it is neither. */
static X509 *cert_from_lua(lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  if (lua_istable(L, idx)) lua_getfield(L, idx, "pem");
  else lua_pushvalue(L, idx);
  size_t len;
  const char *pem = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
  X509 *x = NULL;
  if (pem && len <= INT_MAX) {
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    x = bio ? PEM_read_bio_X509(bio, NULL, no_passphrase, NULL) : NULL;
    BIO_free(bio);
  }
  ERR_clear_error();
  lua_pop(L, 1);
  return x;
}

/* A guarded stack of the certificates at the given argument positions (idx..idx+n-1),
 * or, with n == 0, of the list at idx. Raises on anything that is not a certificate. */
static STACK_OF(X509) *certs_arg(lua_State *L, int idx, int n) {
  idx = lua_absindex(L, idx);
  guard *g = guard_push(L, release_certs);
  STACK_OF(X509) *certs = g->object = sk_X509_new_null();
  if (!certs) luaL_error(L, "out of memory");
  int list = n == 0;
  if (list) {
    luaL_checktype(L, idx, LUA_TTABLE);
    n = (int)lua_rawlen(L, idx);
    luaL_argcheck(L, n > 0, idx, "an empty list of certificates");
  }
  for (int i = 0; i < n; i++) {
    if (list) lua_rawgeti(L, idx, i + 1);
    X509 *x = cert_from_lua(L, list ? -1 : idx + i);
    if (list) lua_pop(L, 1);
    if (!x) luaL_argerror(L, list ? idx : idx + i, "not a certificate (a cert table or PEM)");
    if (!sk_X509_push(certs, x)) {
      X509_free(x);
      luaL_error(L, "out of memory");
    }
  }
  return certs;
}

/* ---- checks on one or two certificates ---- */

/* issued_by(issuer, subject): names, key identifiers and key usage agree, and issuer's key
 * verifies subject's signature. */
static int l_issued_by(lua_State *L) {
  STACK_OF(X509) *pair = certs_arg(L, 1, 2);
  X509 *issuer = sk_X509_value(pair, 0), *subject = sk_X509_value(pair, 1);
  int rc = X509_check_issued(issuer, subject);
  const char *why = NULL;
  if (rc != X509_V_OK) why = X509_verify_cert_error_string(rc);
  else if (X509_verify(subject, X509_get0_pubkey(issuer)) != 1)
    why = "the signature does not verify";
  ERR_clear_error();
  lua_pushboolean(L, why == NULL);
  if (!why) return 1;
  lua_pushstring(L, why);
  return 2;
}

/* Browsers' rules today: SANs only (the CN is never consulted), a wildcard only as the whole
 * left-most label; an IP address only against IP SANs. */
static int l_check_host(lua_State *L) {
  size_t len;
  STACK_OF(X509) *one = certs_arg(L, 1, 1);
  const char *host = luaL_checklstring(L, 2, &len);
  X509 *x = sk_X509_value(one, 0);
  unsigned char ip[16];
  char *matched = NULL;
  int rc;
  if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1) {
    rc = X509_check_ip_asc(x, host, 0);
  } else {
    rc = X509_check_host(x, host, len,
                         X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS | X509_CHECK_FLAG_NEVER_CHECK_SUBJECT,
                         &matched);
  }
  ERR_clear_error();
  if (rc < 0) {
    OPENSSL_free(matched);
    return vq_push_error(L, "tls", "%s is not a host name or IP address", host);
  }
  if (rc == 1) lua_pushstring(L, matched ? matched : host);
  else lua_pushboolean(L, 0);
  OPENSSL_free(matched);
  return 1;
}

static int key_matches(lua_State *L, int key_idx, int cert_idx) {
  key_ud *k = check_key(L, key_idx);
  STACK_OF(X509) *one = certs_arg(L, cert_idx, 1);
  int rc = EVP_PKEY_eq(k->pkey, X509_get0_pubkey(sk_X509_value(one, 0)));
  ERR_clear_error();
  lua_pushboolean(L, rc == 1);
  return 1;
}

static int l_key_matches(lua_State *L) { return key_matches(L, 1, 2); }

/* ---- chain verification ---- */

typedef struct verify_error {
  int depth, code;
} verify_error;

typedef struct verify_log {
  verify_error errors[MAX_VERIFY_ERRORS];
  int count;
} verify_log;

typedef struct verify_opts {
  const char *ca_file, *ca_dir;
  int has_time, check_purpose;
  time_t at;
} verify_opts;

/* Keep going after each error, so that the report lists every problem, not the first. */
static int record_error(int ok, X509_STORE_CTX *ctx) {
  if (ok) return 1;
  verify_log *log = X509_STORE_CTX_get_app_data(ctx);
  verify_error e = {X509_STORE_CTX_get_error_depth(ctx), X509_STORE_CTX_get_error(ctx)};
  for (int i = 0; i < log->count; i++)
    if (log->errors[i].depth == e.depth && log->errors[i].code == e.code) return 1;
  if (log->count < MAX_VERIFY_ERRORS) log->errors[log->count++] = e;
  return 1;
}

/* The system store is parsed once per runtime: its bundle of some 150 roots costs
 * milliseconds per parse. A CA file or folder the caller names is read each time, as a
 * runbook may be changing it. */
static X509_STORE *system_store(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, SYSTEM_STORE_KEY);
  guard *cached = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (cached && cached->object) return cached->object;
  guard *g = guard_push(L, release_store);
  X509_STORE *store = g->object = X509_STORE_new();
  if (!store || X509_STORE_set_default_paths(store) != 1) {
    lua_pop(L, 1); /* the guard frees it */
    return NULL;
  }
  lua_setfield(L, LUA_REGISTRYINDEX, SYSTEM_STORE_KEY); /* freed when Lua closes */
  return store;
}

static int load_trust(X509_STORE *store, const verify_opts *o, problem *p) {
  if (o->ca_file && X509_STORE_load_file(store, o->ca_file) != 1) {
    set_problem(p, "ca_file", "cannot load the CA bundle %s (%s)", o->ca_file, openssl_reason());
    return -1;
  }
  if (o->ca_dir && X509_STORE_load_path(store, o->ca_dir) != 1) {
    set_problem(p, "ca_dir", "cannot use the CA folder %s (%s)", o->ca_dir, openssl_reason());
    return -1;
  }
  return 0;
}

/* The trust store for o, held by a guard pushed on the stack; NULL with the problem set. */
static X509_STORE *trust_store(lua_State *L, const verify_opts *o, problem *p) {
  guard *g = guard_push(L, release_store);
  if (!o->ca_file && !o->ca_dir) {
    X509_STORE *shared = system_store(L);
    if (!shared || !X509_STORE_up_ref(shared)) {
      set_problem(p, "ca_file", "cannot load the system's CA store (%s)", openssl_reason());
      return NULL;
    }
    return g->object = shared;
  }
  X509_STORE *store = g->object = X509_STORE_new();
  if (!store) set_problem(p, "internal", "out of memory");
  return store && load_trust(store, o, p) == 0 ? store : NULL;
}

/* Verifies certs[0] with the others as untrusted helpers. Returns the chain OpenSSL built
 * (leaf to anchor, as far as it got), or NULL with the problem set. */
static STACK_OF(X509) *run_verify(STACK_OF(X509) *certs, X509_STORE *store, const verify_opts *o,
                                  verify_log *log, problem *p) {
  X509_STORE_CTX *ctx = X509_STORE_CTX_new();
  STACK_OF(X509) *untrusted = sk_X509_dup(certs), *chain = NULL;
  if (!ctx || !untrusted) {
    set_problem(p, "internal", "out of memory");
  } else {
    X509 *leaf = sk_X509_shift(untrusted);
    if (X509_STORE_CTX_init(ctx, store, leaf, untrusted) != 1) {
      set_problem(p, "internal", "cannot verify (%s)", openssl_reason());
    } else {
      X509_STORE_CTX_set_verify_cb(ctx, record_error);
      X509_STORE_CTX_set_app_data(ctx, log);
      if (o->check_purpose) X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_SERVER);
      if (o->has_time) X509_STORE_CTX_set_time(ctx, 0, o->at);
      if (X509_verify_cert(ctx) < 0) record_error(0, ctx);
      if (!(chain = X509_STORE_CTX_get1_chain(ctx))) chain = sk_X509_new_null();
    }
  }
  sk_X509_free(untrusted);
  X509_STORE_CTX_free(ctx);
  ERR_clear_error();
  if (!chain && !p->reason) set_problem(p, "internal", "out of memory");
  return chain;
}

static const struct {
  int code;
  const char *name;
} verify_names[] = {
  {X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT, "issuer_missing"},
  {X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, "issuer_missing"},
  {X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE, "issuer_missing"},
  {X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, "self_signed"},
  {X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN, "untrusted_root"},
  {X509_V_ERR_CERT_NOT_YET_VALID, "not_yet_valid"},
  {X509_V_ERR_CERT_HAS_EXPIRED, "expired"},
  {X509_V_ERR_CERT_SIGNATURE_FAILURE, "bad_signature"},
  {X509_V_ERR_INVALID_PURPOSE, "wrong_purpose"},
  {X509_V_ERR_INVALID_CA, "not_a_ca"},
  {X509_V_ERR_PATH_LENGTH_EXCEEDED, "path_length"},
  {X509_V_ERR_CERT_UNTRUSTED, "untrusted"},
  {X509_V_ERR_CERT_REJECTED, "untrusted"},
  {X509_V_ERR_CA_MD_TOO_WEAK, "weak_signature"},
  {X509_V_ERR_EE_KEY_TOO_SMALL, "key_too_small"},
  {X509_V_ERR_CA_KEY_TOO_SMALL, "key_too_small"},
};

static const char *verify_error_name(int code) {
  for (size_t i = 0; i < sizeof verify_names / sizeof *verify_names; i++)
    if (verify_names[i].code == code) return verify_names[i].name;
  return "other";
}

static void push_verify_errors(lua_State *L, const verify_log *log) {
  lua_createtable(L, log->count, 0);
  for (int i = 0; i < log->count; i++) {
    lua_createtable(L, 0, 4);
    set_integer(L, "depth", log->errors[i].depth);
    set_integer(L, "code", log->errors[i].code);
    set_string(L, "name", verify_error_name(log->errors[i].code));
    set_string(L, "reason", X509_verify_cert_error_string(log->errors[i].code));
    lua_rawseti(L, -2, i + 1);
  }
}

static const char *opt_string(lua_State *L, int idx, const char *key) {
  lua_getfield(L, idx, key);
  const char *s = lua_tostring(L, -1); /* stays alive in the options table */
  lua_pop(L, 1);
  return s;
}

static verify_opts verify_options(lua_State *L, int idx) {
  verify_opts o = {NULL, NULL, 0, 1, 0};
  if (lua_isnoneornil(L, idx)) return o;
  luaL_checktype(L, idx, LUA_TTABLE);
  o.ca_file = opt_string(L, idx, "ca_file");
  o.ca_dir = opt_string(L, idx, "ca_dir");
  lua_getfield(L, idx, "at");
  if (!lua_isnil(L, -1)) {
    luaL_argcheck(L, lua_type(L, -1) == LUA_TNUMBER, idx, "at must be epoch seconds");
    o.has_time = 1;
    o.at = (time_t)lua_tonumber(L, -1);
  }
  lua_getfield(L, idx, "purpose");
  o.check_purpose = lua_isnil(L, -1) || lua_toboolean(L, -1);
  lua_pop(L, 2);
  return o;
}

/* verify(certs, opts) -> {ok =, errors = {{depth, code, name, reason}}, chain = {cert...}} */
static int l_verify(lua_State *L) {
  verify_opts o = verify_options(L, 2);
  STACK_OF(X509) *certs = certs_arg(L, 1, 0);
  verify_log log = {0};
  problem p = {0};
  X509_STORE *store = trust_store(L, &o, &p);
  if (!store) return push_problem(L, o.ca_file, &p);
  guard *g = guard_push(L, release_certs);
  if (!(g->object = run_verify(certs, store, &o, &log, &p))) return push_problem(L, o.ca_file, &p);
  lua_createtable(L, 0, 3);
  set_boolean(L, "ok", log.count == 0);
  push_verify_errors(L, &log);
  lua_setfield(L, -2, "errors");
  push_cert_list(L, g->object);
  lua_setfield(L, -2, "chain");
  return 1;
}

/* ---- fetching the chain a server presents: libuv TCP, OpenSSL over memory BIOs ---- */

typedef struct fetch_req {
  vq_wait wait;
  uv_loop_t *loop;
  uv_getaddrinfo_t resolve;
  uv_connect_t connect;
  uv_tcp_t tcp;
  uv_timer_t timer;
  struct addrinfo *addrs, *next_addr;
  SSL_CTX *ctx;
  SSL *ssl;
  BIO *network_in;  /* bytes read from the socket, for OpenSSL */
  BIO *network_out; /* bytes OpenSSL wants sent */
  int pending;      /* handles to close and requests to come back before the memory goes */
  int finished;     /* the task has its answer, or was cancelled: callbacks only clean up */
  int resolving, tcp_open, timer_open;
  double timeout;
  char host[256], sni[256], port_text[8];
  char read_buf[16 * 1024];
} fetch_req;

typedef struct write_chunk {
  uv_write_t req;
  fetch_req *fetch;
  uv_buf_t buf;
  char data[];
} write_chunk;

static void fetch_free_if_idle(fetch_req *r) {
  if (!r->finished || r->pending > 0) return;
  if (r->addrs) uv_freeaddrinfo(r->addrs);
  SSL_free(r->ssl); /* and the two BIOs it owns */
  SSL_CTX_free(r->ctx);
  free(r);
}

static void on_timer_closed(uv_handle_t *h) {
  fetch_req *r = h->data;
  r->pending--;
  fetch_free_if_idle(r);
}

static void connect_next(fetch_req *r);

/* Closed to try the next address, or for good. */
static void on_tcp_closed(uv_handle_t *h) {
  fetch_req *r = h->data;
  r->pending--;
  r->tcp_open = 0;
  if (r->finished) fetch_free_if_idle(r);
  else connect_next(r);
}

/* Ends everything the request holds; the memory goes when the last callback is in. */
static void fetch_teardown(fetch_req *r) {
  if (r->finished) return;
  r->finished = 1;
  if (r->resolving) uv_cancel((uv_req_t *)&r->resolve);
  if (r->tcp_open && !uv_is_closing((uv_handle_t *)&r->tcp))
    uv_close((uv_handle_t *)&r->tcp, on_tcp_closed);
  if (r->timer_open && !uv_is_closing((uv_handle_t *)&r->timer))
    uv_close((uv_handle_t *)&r->timer, on_timer_closed);
  fetch_free_if_idle(r);
}

static void fetch_cancel(vq_wait *w) { fetch_teardown((fetch_req *)w); }

static void fetch_fail(fetch_req *r, const char *code, const char *fmt, ...) {
  if (r->finished) return;
  char message[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  lua_State *co = vq_wait_thread(&r->wait);
  luaL_checkstack(co, 4, "fetch_chain");
  vq_push_error(co, code, "%s", message);
  set_string(co, "host", r->host);
  set_integer(co, "port", atoi(r->port_text));
  if (r->sni[0]) set_string(co, "sni", r->sni);
  vq_wait_done(&r->wait, 2);
  fetch_teardown(r);
}

static void set_peer_address(lua_State *L, uv_tcp_t *tcp) {
  struct sockaddr_storage addr;
  int len = sizeof addr;
  char text[INET6_ADDRSTRLEN] = "";
  if (uv_tcp_getpeername(tcp, (struct sockaddr *)&addr, &len) != 0) return;
  if (addr.ss_family == AF_INET) uv_ip4_name((struct sockaddr_in *)&addr, text, sizeof text);
  else uv_ip6_name((struct sockaddr_in6 *)&addr, text, sizeof text);
  set_string(L, "address", text);
}

static void fetch_succeed(fetch_req *r) {
  STACK_OF(X509) *chain = SSL_get_peer_cert_chain(r->ssl);
  if (!chain || sk_X509_num(chain) == 0) {
    fetch_fail(r, "tls", "%s:%s presented no certificate", r->host, r->port_text);
    return;
  }
  lua_State *co = vq_wait_thread(&r->wait);
  luaL_checkstack(co, 8, "fetch_chain");
  lua_createtable(co, 0, 8);
  push_cert_list(co, chain);
  lua_setfield(co, -2, "certs");
  set_string(co, "protocol", SSL_get_version(r->ssl));
  set_string(co, "cipher", SSL_CIPHER_get_name(SSL_get_current_cipher(r->ssl)));
  set_string(co, "host", r->host);
  set_integer(co, "port", atoi(r->port_text));
  if (r->sni[0]) set_string(co, "sni", r->sni);
  set_peer_address(co, &r->tcp);
  vq_wait_done(&r->wait, 1);
  fetch_teardown(r);
}

static void on_written(uv_write_t *w, int status) {
  write_chunk *c = w->data;
  fetch_req *r = c->fetch;
  free(c);
  if (status < 0 && status != UV_ECANCELED)
    fetch_fail(r, "connection", "cannot send to %s:%s (%s)", r->host, r->port_text,
               uv_strerror(status));
}

/* Sends what OpenSSL wrote into its output BIO. 0, or -1 when the request failed. */
static int flush_output(fetch_req *r) {
  size_t n;
  while (!r->finished && (n = BIO_ctrl_pending(r->network_out)) > 0) {
    write_chunk *c = malloc(sizeof *c + n);
    if (!c) {
      fetch_fail(r, "internal", "out of memory");
      return -1;
    }
    int got = BIO_read(r->network_out, c->data, (int)n);
    c->fetch = r;
    c->req.data = c;
    c->buf = uv_buf_init(c->data, got > 0 ? (unsigned)got : 0);
    int rc = uv_write(&c->req, (uv_stream_t *)&r->tcp, &c->buf, 1, on_written);
    if (rc < 0) {
      free(c);
      fetch_fail(r, "connection", "cannot send to %s:%s (%s)", r->host, r->port_text,
                 uv_strerror(rc));
      return -1;
    }
  }
  return r->finished ? -1 : 0;
}

static void advance_handshake(fetch_req *r) {
  ERR_clear_error();
  int rc = SSL_do_handshake(r->ssl);
  int err = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(r->ssl, rc);
  const char *why = err == SSL_ERROR_SSL ? openssl_reason() : NULL;
  ERR_clear_error();
  if (flush_output(r) < 0) return;
  if (rc == 1) fetch_succeed(r);
  else if (err != SSL_ERROR_WANT_READ)
    fetch_fail(r, "tls", "TLS handshake with %s:%s failed (%s)", r->host, r->port_text,
               why ? why : "unexpected end of the handshake");
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)suggested;
  fetch_req *r = h->data;
  *buf = uv_buf_init(r->read_buf, sizeof r->read_buf);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  fetch_req *r = s->data;
  if (r->finished || n == 0) return;
  if (n < 0) {
    fetch_fail(r, "connection", "%s:%s %s during the TLS handshake", r->host, r->port_text,
               n == UV_EOF ? "closed the connection" : uv_strerror((int)n));
    return;
  }
  if (BIO_write(r->network_in, buf->base, (int)n) != (int)n) {
    fetch_fail(r, "internal", "out of memory");
    return;
  }
  advance_handshake(r);
}

static void connect_failed(fetch_req *r, int status) {
  if (r->next_addr) {
    uv_close((uv_handle_t *)&r->tcp, on_tcp_closed); /* and on to the next address */
    return;
  }
  fetch_fail(r, "connect", "cannot connect to %s:%s (%s)", r->host, r->port_text,
             uv_strerror(status));
}

static void on_connected(uv_connect_t *c, int status) {
  fetch_req *r = c->data;
  if (r->finished) return;
  if (status < 0) {
    connect_failed(r, status);
    return;
  }
  int rc = uv_read_start((uv_stream_t *)&r->tcp, on_alloc, on_read);
  if (rc < 0) fetch_fail(r, "connection", "cannot read from %s:%s (%s)", r->host, r->port_text,
                         uv_strerror(rc));
  else advance_handshake(r);
}

static void connect_next(fetch_req *r) {
  struct addrinfo *ai = r->next_addr;
  r->next_addr = ai->ai_next;
  int rc = uv_tcp_init(r->loop, &r->tcp);
  if (rc < 0) {
    fetch_fail(r, "internal", "cannot create a socket (%s)", uv_strerror(rc));
    return;
  }
  r->tcp_open = 1;
  r->pending++;
  r->tcp.data = r;
  r->connect.data = r;
  rc = uv_tcp_connect(&r->connect, &r->tcp, ai->ai_addr, on_connected);
  if (rc < 0) connect_failed(r, rc);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  fetch_req *r = req->data;
  r->resolving = 0;
  r->pending--;
  r->addrs = r->next_addr = res;
  if (r->finished) {
    fetch_free_if_idle(r);
    return;
  }
  if (status < 0 || !res) {
    fetch_fail(r, "resolve", "cannot resolve %s (%s)", r->host, uv_strerror(status));
    return;
  }
  connect_next(r);
}

static void on_timeout(uv_timer_t *t) {
  fetch_req *r = t->data;
  fetch_fail(r, "timeout", "no TLS handshake with %s:%s within %gs", r->host, r->port_text,
             r->timeout);
}

static int is_ip_literal(const char *s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

/* host, port, sni (default: the host unless it is an IP address; false for none), timeout */
static void fetch_options(lua_State *L, fetch_req *r) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *host = opt_string(L, 1, "host");
  luaL_argcheck(L, host && *host && strlen(host) < sizeof r->host, 1, "needs a host");
  lua_getfield(L, 1, "port");
  int is_int = 1;
  lua_Integer port = lua_isnil(L, -1) ? 443 : lua_tointegerx(L, -1, &is_int);
  luaL_argcheck(L, is_int && port > 0 && port < 65536, 1, "port must be 1 to 65535");
  lua_getfield(L, 1, "timeout");
  int is_num = 1;
  r->timeout = lua_isnil(L, -1) ? DEFAULT_FETCH_TIMEOUT : lua_tonumberx(L, -1, &is_num);
  luaL_argcheck(L, is_num && r->timeout > 0, 1, "timeout must be a positive number of seconds");
  lua_getfield(L, 1, "sni");
  const char *sni = lua_isstring(L, -1) ? lua_tostring(L, -1)
                    : (lua_isnil(L, -1) && !is_ip_literal(host)) ? host : "";
  luaL_argcheck(L, strlen(sni) < sizeof r->sni, 1, "sni too long");
  snprintf(r->host, sizeof r->host, "%s", host);
  snprintf(r->sni, sizeof r->sni, "%s", sni);
  snprintf(r->port_text, sizeof r->port_text, "%d", (int)port);
  lua_pop(L, 3);
}

/* The client side of a handshake that trusts nothing: we look at what is presented. */
static int fetch_tls_init(fetch_req *r) {
  if (!(r->ctx = SSL_CTX_new(TLS_client_method()))) return -1;
  SSL_CTX_set_verify(r->ctx, SSL_VERIFY_NONE, NULL);
  SSL_CTX_set_security_level(r->ctx, 0); /* old servers must still show their chain */
  if (!(r->ssl = SSL_new(r->ctx))) return -1;
  r->network_in = BIO_new(BIO_s_mem());
  r->network_out = BIO_new(BIO_s_mem());
  if (!r->network_in || !r->network_out) {
    BIO_free(r->network_in);
    BIO_free(r->network_out);
    return -1;
  }
  SSL_set_bio(r->ssl, r->network_in, r->network_out);
  SSL_set_connect_state(r->ssl);
  if (r->sni[0] && !SSL_set_tlsext_host_name(r->ssl, r->sni)) return -1;
  return 0;
}

static int fetch_start(fetch_req *r) {
  if (uv_timer_init(r->loop, &r->timer) != 0) return -1;
  r->timer_open = 1;
  r->pending++;
  r->timer.data = r;
  uv_timer_start(&r->timer, on_timeout, (uint64_t)(r->timeout * 1000.0 + 0.5), 0);
  struct addrinfo hints = {0};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  r->resolve.data = r;
  if (uv_getaddrinfo(r->loop, &r->resolve, on_resolved, r->host, r->port_text, &hints) != 0)
    return -1;
  r->resolving = 1;
  r->pending++;
  return 0;
}

/* fetch_chain{host=, port=, sni=, timeout=} -> {certs, protocol, cipher, address, ...} */
static int l_fetch_chain(lua_State *L) {
  vq_wait_check(L);
  guard *g = guard_push(L, free); /* until the loop owns it */
  fetch_req *r = g->object = calloc(1, sizeof *r);
  if (!r) return luaL_error(L, "out of memory");
  fetch_options(L, r);
  r->loop = vq_loop(vq_from_lua(L));
  if (fetch_tls_init(r) != 0) {
    SSL_free(r->ssl);
    SSL_CTX_free(r->ctx);
    r->ssl = NULL;
    r->ctx = NULL;
    return vq_push_error(L, "tls", "cannot set up TLS (%s)", openssl_reason());
  }
  g->object = NULL;
  if (fetch_start(r) != 0) {
    vq_push_error(L, "internal", "cannot start the connection to %s", r->host);
    fetch_teardown(r); /* no wait begun: the answer is returned, not delivered */
    return 2;
  }
  vq_wait_begin(L, &r->wait, fetch_cancel);
  return vq_wait_yield(L, &r->wait);
}

/* ---- random bytes, for passwords ---- */

#define MAX_RANDOM_BYTES (1 << 20)

/* random_bytes(n) -> bytes | nil, err */
static int l_random_bytes(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0 && n <= MAX_RANDOM_BYTES, 1, "out of range");
  luaL_Buffer b;
  unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, (size_t)n);
  if (n > 0 && RAND_bytes(out, (int)n) != 1) {
    ERR_clear_error();
    return vq_push_error(L, "tls", "OpenSSL's random generator failed");
  }
  luaL_pushresultsize(&b, (size_t)n);
  return 1;
}

/* ---- the module ---- */

static int key_index(lua_State *L) {
  luaL_checkudata(L, 1, KEY_MT);
  const char *field = luaL_checkstring(L, 2);
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "methods");
  lua_getfield(L, -1, field);
  if (!lua_isnil(L, -1)) return 1;
  key_info(L);
  lua_getfield(L, -1, field);
  return 1;
}

static int key_method_matches(lua_State *L) { return key_matches(L, 1, 2); }

static const luaL_Reg key_methods[] = {
  {"matches", key_method_matches}, {"info", key_info}, {"close", key_close}, {NULL, NULL}};

static const luaL_Reg tls_functions[] = {
  {"load_certs", l_load_certs}, {"load_key", l_load_key}, {"verify", l_verify},
  {"issued_by", l_issued_by}, {"check_host", l_check_host}, {"key_matches", l_key_matches},
  {"fetch_chain", l_fetch_chain},
  {"random_bytes", l_random_bytes}, {NULL, NULL}};

int luaopen_vq_core_tls(lua_State *L) {
  if (luaL_newmetatable(L, GUARD_MT)) {
    lua_pushcfunction(L, guard_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  if (luaL_newmetatable(L, KEY_MT)) {
    luaL_newlib(L, key_methods);
    lua_setfield(L, -2, "methods");
    lua_pushcfunction(L, key_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, key_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushcfunction(L, key_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, key_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  luaL_newlib(L, tls_functions);
  return 1;
}
