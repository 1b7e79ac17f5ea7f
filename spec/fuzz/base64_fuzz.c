/* libFuzzer target: any bytes as base64 (a Secret's data, a kubeconfig's certificate data)
 * decode to bytes or give an error naming a position inside the text; what decodes comes
 * back the same through encode, and any bytes survive encode then decode. */
#include "harness.h"

static const char harness[] =
  "local base64 = require 'vq.base64'\n"
  "local text = ...\n"
  "assert(base64.decode(base64.encode(text)) == text, 'any bytes round-trip')\n"
  "local bytes, err = base64.decode(text)\n"
  "if not bytes then\n"
  "  assert(err.code == 'base64' and err.position >= 1 and err.position <= #text, 'a position in the text')\n"
  "  return\n"
  "end\n"
  "assert(base64.decode(base64.encode(bytes)) == bytes, 'decoded bytes round-trip')\n"
  "local digits = #text:gsub('[%s=]', '')\n"
  "assert(#bytes == digits * 3 // 4, 'three bytes for every four digits')\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fuzz_lua(harness, sizeof harness - 1, "base64", data, size);
}
