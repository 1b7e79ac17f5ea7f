/* Placeholder REPL: replaced by the line-editing one. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

int vq_repl_run(vq_runtime *rt) {
  char line[4096];
  while (fputs("> ", stdout), fflush(stdout), fgets(line, sizeof line, stdin))
    vq_run_string(rt, line, "=stdin");
  return 0;
}
