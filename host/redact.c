/* The redaction registry: every registered secret is replaced by *** in all output. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MASK "***"

void vq_redactor_free(vq_redactor *r) {
  for (size_t i = 0; i < r->count; i++) free(r->secrets[i]);
  free(r->secrets);
  free(r->lengths);
  memset(r, 0, sizeof *r);
}

static int grow(vq_redactor *r) {
  size_t cap = r->cap ? r->cap * 2 : 8;
  char **s = realloc(r->secrets, cap * sizeof *s);
  if (!s) return -1;
  r->secrets = s;
  size_t *l = realloc(r->lengths, cap * sizeof *l);
  if (!l) return -1;
  r->lengths = l;
  r->cap = cap;
  return 0;
}

/* Keeps the list longest first, so that a secret containing another is masked whole. */
int vq_redactor_add(vq_redactor *r, const char *secret, size_t len) {
  if (len == 0) return 0;
  size_t pos = 0;
  for (; pos < r->count; pos++) {
    if (r->lengths[pos] == len && memcmp(r->secrets[pos], secret, len) == 0) return 0;
    if (r->lengths[pos] < len) break;
  }
  if (r->count == r->cap && grow(r) != 0) return -1;
  char *copy = malloc(len);
  if (!copy) return -1;
  memcpy(copy, secret, len);
  memmove(r->secrets + pos + 1, r->secrets + pos, (r->count - pos) * sizeof *r->secrets);
  memmove(r->lengths + pos + 1, r->lengths + pos, (r->count - pos) * sizeof *r->lengths);
  r->secrets[pos] = copy;
  r->lengths[pos] = len;
  r->count++;
  return 0;
}

/* The earliest match at or after p; ties go to the longest secret. */
static const char *next_match(const vq_redactor *r, const char *p, const char *end, size_t *mlen) {
  const char *best = NULL;
  for (size_t i = 0; i < r->count; i++) {
    if (r->lengths[i] > (size_t)(end - p)) continue;
    const char *m = memmem(p, (size_t)(end - p), r->secrets[i], r->lengths[i]);
    if (m && (!best || m < best)) {
      best = m;
      *mlen = r->lengths[i];
    }
  }
  return best;
}

/* Returns NULL when nothing needs masking (the caller uses text as it is); NULL with
 * *out_len == SIZE_MAX when memory ran out (the caller must not print text then). */
char *vq_redact(const vq_redactor *r, const char *text, size_t len, size_t *out_len) {
  *out_len = 0;
  if (r->count == 0) return NULL;
  const char *p = text, *end = text + len;
  size_t mlen = 0;
  const char *m = next_match(r, p, end, &mlen);
  if (!m) return NULL;
  /* The mask is never longer than what it hides (secrets of 1-2 bytes aside). */
  char *out = malloc(len + 3 * (len + 1) + 1);
  if (!out) {
    *out_len = SIZE_MAX;
    return NULL;
  }
  char *o = out;
  while (m) {
    memcpy(o, p, (size_t)(m - p));
    o += m - p;
    memcpy(o, MASK, sizeof MASK - 1);
    o += sizeof MASK - 1;
    p = m + mlen;
    m = next_match(r, p, end, &mlen);
  }
  memcpy(o, p, (size_t)(end - p));
  o += end - p;
  *o = '\0';
  *out_len = (size_t)(o - out);
  return out;
}
