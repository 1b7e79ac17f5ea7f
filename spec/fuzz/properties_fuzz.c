/* libFuzzer target: any bytes as a cluster.properties must parse to properties or a clear
 * error, and every edit (set, uncomment, delete) must give a text that reads back as meant
 * or nil, err: never a raise, a hang or a sanitizer report. The first bytes pick the key
 * and the value, so that the fuzzer steers the edits too. */
#include "harness.h"

static const char harness[] =
  "local props = require 'vq.properties'\n"
  "local text = ...\n"
  "local map, entries = props.parse(text, {file = 'fuzz.properties'})\n"
  "if not map then assert(entries.line and entries.file, 'an error names its line') return end\n"
  "local keys = {'requiredRemote', 'provider', 'a b', 'k=v', '#x', '\\u{65e5}'}\n"
  "if entries[1] then keys[#keys + 1] = entries[1].key; keys[#keys + 1] = entries[#entries].key end\n"
  "local values = {'false', ' lead', 'x\\ny\\\\', '=v', '\\u{65e5}\\u{672c}', '', 'a \\\\'}\n"
  "local b1, b2 = text:byte(1, 2)\n"
  "local key = keys[(b1 or 0) % #keys + 1]\n"
  "local value = values[(b2 or 0) % #values + 1]\n"
  "local out = props.set(text, key, value)\n"
  "if out then assert(props.get(out, key) == value, 'set reads back') end\n"
  "out = props.uncomment(text, key, (b1 or 0) % 2 == 0 and value or nil)\n"
  "if out then assert(props.get(out, key) ~= nil, 'uncomment sets the key') end\n"
  "out = props.delete(text, key)\n"
  "if out then assert(props.get(out, key) == nil, 'delete removes the key') end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fuzz_lua(harness, sizeof harness - 1, "properties", data, size);
}
