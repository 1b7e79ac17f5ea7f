/* libFuzzer target: any bytes through yaml.edit / insert / append / delete / rename /
 * uncomment with a few paths and values must give a text or nil, err: never a raise, a hang
 * or a sanitizer report (in yaml.lua's splicing or in bindings/yaml_edit.c's byte offsets).
 * The first three bytes pick the path, the value and the operation. */
#include "harness.h"

static const char harness[] =
  "local yaml = require 'vq.yaml'\n"
  "local text = ...\n"
  "local b1, b2, b3 = text:byte(1, 3)\n"
  "b1, b2, b3 = b1 or 0, b2 or 0, b3 or 0\n"
  "local paths = {'vantiq.image.tag', 'vantiq', 'a', 'a.b', 'spec.containers.1.image', 'x.1',\n"
  "  '', {'metadata', 'annotations', 'a.b'}, 'vantiq.mongodb.backup', 'b.c.d'}\n"
  "local values = {'v', 42, 1.5, true, false, yaml.null, 'multi\\nline', '', ' lead', 'no', '# not',\n"
  "  yaml.mapping{a = 1}, yaml.sequence{1, 'x'}, yaml.mapping{}, '\\u{65e5}\\u{672c}'}\n"
  "local path = paths[b1 % #paths + 1]\n"
  "local value = values[b2 % #values + 1]\n"
  "local opts = {replace = b3 & 8 ~= 0, block = b3 & 16 ~= 0, file = 'fuzz.yaml'}\n"
  "local op = b3 % 6\n"
  "local out\n"
  "if op == 0 then out = yaml.edit(text, path, value, opts)\n"
  "elseif op == 1 then out = yaml.insert(text, path, 'k', value, opts)\n"
  "elseif op == 2 then out = yaml.delete(text, path, opts)\n"
  "elseif op == 3 then out = yaml.uncomment(text, path == '' and 'a' or path, opts)\n"
  "elseif op == 4 then out = yaml.append(text, path, value, opts)\n"
  "else out = yaml.rename(text, path, 'renamed', opts) end\n"
  "if out then assert(yaml.decode_all(out), 'an edit gives a text that parses') end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fuzz_lua(harness, sizeof harness - 1, "yaml edit", data, size);
}
