/* libFuzzer target: any bytes as a kubeconfig must give settings or a clear error, never a
 * crash, a hang or a sanitizer report. Build: cmake -DVQ_FUZZ=ON with clang. */
#include "harness.h"

static const char harness[] =
  "local config = require 'vq.kube.config'\n"
  "local text = ...\n"
  "local cfg = config.parse(text, 'fuzz.yaml')\n"
  "if cfg then config.from_config(cfg, {}) end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fuzz_lua(harness, sizeof harness - 1, "kubeconfig", data, size);
}
