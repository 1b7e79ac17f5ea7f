/* The redaction registry: the mask every byte of output passes through. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int failures;

static void expect(const vq_redactor *r, const char *in, const char *want) {
  size_t len;
  char *out = vq_redact(r, in, strlen(in), &len);
  const char *got = out ? out : in;
  if (strcmp(got, want) != 0) {
    fprintf(stderr, "redact(\"%s\") = \"%s\", want \"%s\"\n", in, got, want);
    failures++;
  }
  free(out);
}

int main(void) {
  vq_redactor r = {0};
  expect(&r, "nothing registered", "nothing registered");
  vq_redactor_add(&r, "hunter2", 7);
  expect(&r, "password=hunter2", "password=***");
  expect(&r, "hunter2hunter2 and hunter", "****** and hunter");
  expect(&r, "", "");
  /* A secret that contains another is masked whole, not in pieces. */
  vq_redactor_add(&r, "s3cr3t-hunter2-key", 18);
  expect(&r, "key: s3cr3t-hunter2-key!", "key: ***!");
  /* Adding the same secret twice keeps one entry. */
  vq_redactor_add(&r, "hunter2", 7);
  if (r.count != 2) {
    fprintf(stderr, "count %zu, want 2\n", r.count);
    failures++;
  }
  /* Bytes, not characters: multibyte text and NUL bytes around a secret. */
  vq_redactor_add(&r, "パスワード", strlen("パスワード"));
  expect(&r, "これはパスワードです", "これは***です");
  char with_nul[] = {'a', 0, 'h', 'u', 'n', 't', 'e', 'r', '2', 'b'};
  size_t len;
  char *out = vq_redact(&r, with_nul, sizeof with_nul, &len);
  if (!out || len != 6 || memcmp(out, "a\0***b", 6) != 0) {
    fprintf(stderr, "NUL-containing text not masked\n");
    failures++;
  }
  free(out);
  /* One-byte secrets still never leak (worst-case growth of the output). */
  vq_redactor_add(&r, "x", 1);
  expect(&r, "xxx", "*********");
  vq_redactor_free(&r);
  if (!failures) printf("redact: all checks passed\n");
  return failures ? 1 : 0;
}
