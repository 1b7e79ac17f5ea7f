/* libFuzzer target: any bytes as a certificate chain or a private key (what renew_ssl reads
 * from the operator's download) must give certificates, a key or a clear error: never a
 * raise, a leak of an OpenSSL object, a hang or a sanitizer report. */
#include "harness.h"

static const char harness[] =
  "local tls = require 'vq.tls'\n"
  "local text = ...\n"
  "local certs, err = tls.parse_chain(text, 'fuzz.crt')\n"
  "if not certs then assert(err.message, 'an error says why') end\n"
  "local key = tls.parse_key(text, {name = 'fuzz.key'})\n"
  "if key then\n"
  "  for _, c in ipairs(certs or {}) do tls.key_matches(key, c) end\n"
  "  key:close()\n"
  "end\n"
  "-- a passphrase costs a key derivation: only where there is something to decrypt\n"
  "if text:find('ENCRYPTED', 1, true) then\n"
  "  local enc = tls.parse_key(text, {name = 'fuzz.key', passphrase = 'pem-test-passphrase'})\n"
  "  if enc then enc:close() end\n"
  "end\n"
  "if certs and #certs > 0 then\n"
  "  tls.check_chain(certs, {host = 'pem-test.example.test', at = 1700000000})\n"
  "end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fuzz_lua(harness, sizeof harness - 1, "pem", data, size);
}
