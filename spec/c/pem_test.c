/* The PEM loader of vq.core.tls on malformed input: each case must be nil, err naming the
 * input (code "tls", file, reason), never a partial success. The plugin is loaded the way a
 * script loads it (require), so this test links the runtime only, not OpenSSL. */
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "vq.h"

#define FIXTURES "spec/fixtures/tls/"
#define NAME "case.pem"
#define PASSPHRASE "pem-test-passphrase"

static int failures;

static void fail(const char *what, const char *detail) {
  fprintf(stderr, "%s: %s\n", what, detail);
  failures++;
}

typedef struct text {
  char data[16384];
  size_t len;
} text;

static void put(text *t, const char *s, size_t n) {
  if (t->len + n > sizeof t->data) {
    fail("test input", "too long");
    return;
  }
  memcpy(t->data + t->len, s, n);
  t->len += n;
}

static void put_str(text *t, const char *s) { put(t, s, strlen(s)); }
static void put_text(text *t, const text *s) { put(t, s->data, s->len); }

static void fixture(text *t, const char *name) {
  char path[256];
  snprintf(path, sizeof path, FIXTURES "%s", name);
  FILE *f = fopen(path, "rb");
  t->len = 0;
  if (!f) {
    fail(path, "cannot open (run from the source tree)");
    return;
  }
  t->len = fread(t->data, 1, sizeof t->data, f);
  fclose(f);
}

/* t becomes s with every `from` replaced by `to`; returns t. */
static const text *replaced(text *t, const text *s, const char *from, const char *to) {
  size_t n = strlen(from);
  t->len = 0;
  for (size_t i = 0; i < s->len;) {
    if (i + n <= s->len && memcmp(s->data + i, from, n) == 0) {
      put_str(t, to);
      i += n;
    } else {
      put(t, s->data + i++, 1);
    }
  }
  return t;
}

static size_t offset_of(const text *s, const char *needle) {
  size_t n = strlen(needle);
  for (size_t i = 0; i + n <= s->len; i++)
    if (memcmp(s->data + i, needle, n) == 0) return i;
  return s->len;
}

/* Calls core[loader](input, NAME, passphrase), leaving its two results on the stack. */
static int call_loader(lua_State *L, const char *what, const char *loader, const text *in,
                       const char *passphrase) {
  lua_settop(L, 0);
  lua_getglobal(L, "require");
  lua_pushstring(L, "vq.core.tls");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    fail("require vq.core.tls", lua_tostring(L, -1));
    return 0;
  }
  lua_getfield(L, -1, loader);
  lua_pushlstring(L, in->data, in->len);
  lua_pushstring(L, NAME);
  if (passphrase) lua_pushstring(L, passphrase);
  else lua_pushnil(L);
  if (lua_pcall(L, 3, 2, 0) != LUA_OK) {
    fail(what, lua_tostring(L, -1));
    return 0;
  }
  return 1;
}

static int field_is(lua_State *L, int idx, const char *key, const char *want) {
  lua_getfield(L, idx, key);
  const char *got = lua_tostring(L, -1);
  int same = got && strcmp(got, want) == 0;
  lua_pop(L, 1);
  return same;
}

static void expect_error(lua_State *L, const char *what, const char *loader, const text *in,
                         const char *passphrase, const char *reason, const char *fragment) {
  if (!call_loader(L, what, loader, in, passphrase)) return;
  if (!lua_isnil(L, -2) || !lua_istable(L, -1)) {
    fail(what, "accepted, want nil, err");
    return;
  }
  lua_getfield(L, -1, "message");
  const char *message = lua_tostring(L, -1);
  lua_pop(L, 1);
  char detail[600];
  snprintf(detail, sizeof detail, "want reason %s and \"%s\", got: %s", reason, fragment,
           message ? message : "(no message)");
  if (!message || !strstr(message, fragment) || strncmp(message, NAME, strlen(NAME)) != 0 ||
      !field_is(L, -1, "code", "tls") || !field_is(L, -1, "file", NAME) ||
      !field_is(L, -1, "reason", reason))
    fail(what, detail);
}

static void expect_certs(lua_State *L, const char *what, const text *in, int count) {
  if (!call_loader(L, what, "load_certs", in, NULL)) return;
  if (!lua_istable(L, -2) || (int)lua_rawlen(L, -2) != count) {
    fail(what, lua_isstring(L, -1) || lua_istable(L, -1) ? luaL_tolstring(L, -1, NULL)
                                                         : "wrong number of certificates");
    return;
  }
  lua_rawgeti(L, -2, 1);
  if (!field_is(L, -1, "subject", "CN = pem-test.example.test")) fail(what, "wrong subject");
}

static void expect_key(lua_State *L, const char *what, const text *in, const char *passphrase) {
  if (!call_loader(L, what, "load_key", in, passphrase)) return;
  if (!lua_isuserdata(L, -2)) {
    fail(what, luaL_tolstring(L, -1, NULL));
    return;
  }
  if (!field_is(L, -2, "type", "EC")) fail(what, "not an EC key");
}

static void certificate_cases(lua_State *L, const text *cert, const text *key) {
  static const text empty = {{0}, 0};
  text t = {{0}, 0};
  expect_certs(L, "a certificate", cert, 1);
  put_text(&t, cert);
  put_text(&t, cert);
  expect_certs(L, "two certificates", &t, 2);
  expect_certs(L, "CRLF line ends", replaced(&t, cert, "\n", "\r\n"), 1);

  expect_error(L, "empty", "load_certs", &empty, NULL, "empty", "case.pem is empty");
  t.len = 0;
  put_str(&t, " \n\t\r\n");
  expect_error(L, "blank", "load_certs", &t, NULL, "empty", "is empty");
  t.len = 0;
  put_str(&t, "hello, world\n");
  expect_error(L, "not PEM", "load_certs", &t, NULL, "not_pem", "no -----BEGIN line");
  t.len = 0;
  put(&t, "\x30\x82\x01\x0a\x02\x82\x01\x01\x00", 9);
  expect_error(L, "DER", "load_certs", &t, NULL, "not_pem", "looks like DER");

  t.len = 0;
  put(&t, cert->data, cert->len / 2);
  expect_error(L, "cut in half", "load_certs", &t, NULL, "malformed",
               "line 1: malformed or truncated");
  t.len = 0;
  put(&t, cert->data, offset_of(cert, "\n") + 1);
  expect_error(L, "only the BEGIN line", "load_certs", &t, NULL, "malformed",
               "malformed or truncated");
  t.len = 0;
  put(&t, cert->data, offset_of(cert, "-----END"));
  expect_error(L, "no END line", "load_certs", &t, NULL, "malformed", "malformed or truncated");
  expect_error(L, "mismatched END", "load_certs",
               replaced(&t, cert, "-----END CERTIFICATE-----", "-----END PRIVATE KEY-----"), NULL,
               "malformed", "malformed or truncated");
  t.len = 0;
  put_text(&t, cert);
  memcpy(t.data + offset_of(&t, "\n") + 5, "!!!!", 4);
  expect_error(L, "bad base64", "load_certs", &t, NULL, "malformed", "line 1: malformed");
  expect_error(L, "a key labelled CERTIFICATE", "load_certs",
               replaced(&t, key, "PRIVATE KEY", "CERTIFICATE"), NULL, "malformed",
               "block 1 (line 1) is not a valid certificate");

  t.len = 0;
  put_text(&t, cert);
  put_str(&t, "# a comment\n");
  put_text(&t, cert);
  expect_error(L, "text between blocks", "load_certs", &t, NULL, "stray_text",
               "line 13: text outside a PEM block");
  t.len = 0;
  put_str(&t, "subject=CN = pem-test.example.test\n");
  put_text(&t, cert);
  expect_error(L, "text before", "load_certs", &t, NULL, "stray_text", "line 1: text outside");
  t.len = 0;
  put_text(&t, cert);
  put(&t, "\0", 1);
  expect_error(L, "a NUL after", "load_certs", &t, NULL, "stray_text", "line 13: text outside");
  t.len = 0;
  put(&t, cert->data, cert->len - 1); /* END line and the next BEGIN glued together */
  put_text(&t, cert);
  expect_error(L, "glued blocks", "load_certs", &t, NULL, "malformed", "malformed or truncated");

  expect_error(L, "a key", "load_certs", key, NULL, "wrong_type",
               "is a private key, not a certificate");
  t.len = 0;
  put_text(&t, cert);
  put_text(&t, key);
  expect_error(L, "a certificate and its key", "load_certs", &t, NULL, "wrong_type",
               "block 2 (line 13) is a private key");
}

static void key_cases(lua_State *L, const text *key, const text *encrypted, const text *cert) {
  static const text empty = {{0}, 0};
  text t = {{0}, 0};
  expect_key(L, "a key", key, NULL);
  expect_key(L, "an encrypted key with its passphrase", encrypted, PASSPHRASE);
  expect_key(L, "a key with CRLF line ends", replaced(&t, key, "\n", "\r\n"), NULL);

  expect_error(L, "an encrypted key without a passphrase", "load_key", encrypted, NULL, "encrypted",
               "case.pem is encrypted: a passphrase is needed");
  expect_error(L, "a wrong passphrase", "load_key", encrypted, "not-it", "bad_passphrase",
               "the passphrase does not decrypt the key");
  char long_passphrase[2001];
  memset(long_passphrase, 'x', sizeof long_passphrase - 1);
  long_passphrase[sizeof long_passphrase - 1] = '\0';
  expect_error(L, "a passphrase longer than OpenSSL takes", "load_key", encrypted, long_passphrase,
               "bad_passphrase", "does not decrypt");

  expect_error(L, "empty", "load_key", &empty, NULL, "empty", "case.pem is empty");
  expect_error(L, "a certificate", "load_key", cert, NULL, "wrong_type",
               "is a CERTIFICATE, not a private key");
  t.len = 0;
  put_text(&t, key);
  put_text(&t, key);
  expect_error(L, "two keys", "load_key", &t, NULL, "wrong_type", "more than one private key");
  t.len = 0;
  put(&t, key->data, key->len / 2);
  expect_error(L, "a truncated key", "load_key", &t, NULL, "malformed", "malformed or truncated");
  t.len = 0;
  put_str(&t, "Bag Attributes\n");
  put_text(&t, key);
  expect_error(L, "text before the key", "load_key", &t, NULL, "stray_text",
               "line 1: text outside");
  expect_error(L, "a certificate labelled PRIVATE KEY", "load_key",
               replaced(&t, cert, "CERTIFICATE", "PRIVATE KEY"), NULL, "malformed",
               "the private key cannot be decoded");
  t.len = 0;
  put_str(&t, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaA==\n"
              "-----END OPENSSH PRIVATE KEY-----\n");
  expect_error(L, "an OpenSSH key", "load_key", &t, NULL, "wrong_type", "OpenSSH");
}

int main(void) {
  static text cert, key, encrypted;
  fixture(&cert, "pem-test.crt");
  fixture(&key, "pem-test.key");
  fixture(&encrypted, "pem-test.enc.key");
  vq_runtime *rt = vq_new(&(vq_options){.color = -1});
  if (!rt) return 1;
  lua_State *L = vq_lua(rt);
  certificate_cases(L, &cert, &key);
  key_cases(L, &key, &encrypted, &cert);
  lua_settop(L, 0);
  vq_close(rt);
  if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
  else printf("pem: all checks passed\n");
  return failures ? 1 : 0;
}
