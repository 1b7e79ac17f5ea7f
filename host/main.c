/* vqlua: the command line. A client of vq.h like any embedder. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/resource.h>

#include <cJSON.h>
#include <lauxlib.h>
#include <yaml.h>

#include "vq.h"

static const char usage[] =
  "usage: vqlua [options] [script [args]]\n"
  "  -e stat        run the statement\n"
  "  -l mod         require mod into the global mod (-l g=mod: into g)\n"
  "  -i             enter the REPL after the script (the REPL is also the default with no\n"
  "                 script on a terminal)\n"
  "  -v, --version  print the versions of vqlua and the libraries it runs with\n"
  "  --dry-run      every mutating call is a server-side dry run (runbooks read\n"
  "                 vq.options.dry_run)\n"
  "  --audit FILE   append a JSON-lines audit log to FILE (mode 0600)\n"
  "  --log-level L  debug, info (the default), warn or error\n"
  "  --color, --no-color\n"
  "  --rehearse     run a runbook against the built-in Kubernetes simulator, on a\n"
  "                 scratch copy of its tools dir; nothing outside is touched\n"
  "  --world W      with --rehearse: development, production (default) or a world file\n"
  "  --scenario S   with --rehearse: start the simulator with a fault scenario\n"
  "  --             stop handling options\n"
  "  -              run standard input\n"
  "Lua modules are found in VQ_PATH (':'-separated folders), then scripts/lib next to the\n"
  "binary and in the install prefix.\n";

typedef struct action {
  char kind;          /* 'e' statement, 'l' library */
  const char *value;
} action;

typedef struct cli {
  vq_options options;
  action *actions;
  int nactions;
  int interactive;
  int version;
  int rehearse;
  const char *world;
  const char **scenarios;
  int nscenarios;
  int script;         /* index of the script in argv, or 0 */
} cli;

/* libcurl and OpenSSL are loaded with the http plugin: ask it for their versions. */
static const char plugin_versions[] =
  "local ok, http = pcall(require, 'vq.core.http')\n"
  "if not ok then return 'libcurl: not found (' .. tostring(http) .. ')', '' end\n"
  "local v = http.versions()\n"
  "return 'libcurl ' .. v.curl .. (v.http2 and ' (HTTP/2)' or ''), v.openssl\n";

static void print_versions(vq_runtime *rt) {
  lua_State *L = vq_lua(rt);
  printf("vqlua %s\n", vq_version());
  printf("  %s\n", LUA_RELEASE);
  printf("  libuv %s\n", uv_version_string());
  printf("  libyaml %s\n", yaml_get_version_string());
  printf("  cJSON %s\n", cJSON_Version());
  if (luaL_dostring(L, plugin_versions) == LUA_OK) {
    printf("  %s\n  %s\n", lua_tostring(L, -2), lua_tostring(L, -1));
    lua_pop(L, 2);
  } else {
    printf("  %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
}

static int fail_usage(const char *what, const char *arg) {
  fprintf(stderr, "vqlua: %s%s%s\n%s", what, arg ? " " : "", arg ? arg : "", usage);
  return -1;
}

static int parse_level(const char *s) {
  static const char *const names[] = {"debug", "info", "warn", "error"};
  for (int i = 0; i < 4; i++)
    if (strcmp(s, names[i]) == 0) return i + 1;
  return -1;
}

/* Returns 0, 1 when the command is done (help), -1 on a usage error. */
static int parse(cli *c, int argc, char **argv) {
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) { i++; break; }
    if (a[0] != '-' || strcmp(a, "-") == 0) break;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) { fputs(usage, stdout); return 1; }
    if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) { c->version = 1; continue; }
    if (strcmp(a, "-i") == 0) { c->interactive = 1; continue; }
    if (strcmp(a, "--dry-run") == 0) { c->options.dry_run = 1; continue; }
    if (strcmp(a, "--color") == 0) { c->options.color = 1; continue; }
    if (strcmp(a, "--no-color") == 0) { c->options.color = -1; continue; }
    if (strcmp(a, "--rehearse") == 0) { c->rehearse = 1; continue; }
    if (strcmp(a, "-e") == 0 || strcmp(a, "-l") == 0 || strcmp(a, "--audit") == 0 ||
        strcmp(a, "--log-level") == 0 || strcmp(a, "--world") == 0 || strcmp(a, "--scenario") == 0) {
      if (i + 1 >= argc) return fail_usage("missing argument after", a);
      const char *value = argv[++i];
      if (strcmp(a, "--audit") == 0) c->options.audit_path = value;
      else if (strcmp(a, "--world") == 0) c->world = value;
      else if (strcmp(a, "--scenario") == 0) c->scenarios[c->nscenarios++] = value;
      else if (strcmp(a, "--log-level") == 0) {
        if ((c->options.log_level = parse_level(value)) < 0)
          return fail_usage("unknown log level", value);
      } else {
        c->actions[c->nactions++] = (action){a[1], value};
      }
      continue;
    }
    return fail_usage("unknown option", a);
  }
  c->script = i < argc ? i : 0;
  return 0;
}

static int valid_name(const char *s, size_t len) {
  if (len == 0) return 0;
  for (size_t i = 0; i < len; i++)
    if (!(s[i] == '_' || s[i] == '.' || s[i] == '-' || (s[i] >= '0' && s[i] <= '9') ||
          (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')))
      return 0;
  return 1;
}

/* -l mod sets the global named by mod's last component (-l vq.kube: kube); -l g=mod sets g. */
static int run_library(vq_runtime *rt, const char *spec) {
  const char *eq = strchr(spec, '=');
  const char *mod = eq ? eq + 1 : spec;
  const char *dot = strrchr(mod, '.');
  const char *global = eq ? spec : dot ? dot + 1 : mod;
  size_t global_len = eq ? (size_t)(eq - spec) : strcspn(global, "-");
  if (!valid_name(mod, strlen(mod)) || !valid_name(global, global_len)) {
    fprintf(stderr, "vqlua: -l takes a module name or global=module, not '%s'\n", spec);
    return 2;
  }
  char code[600];
  snprintf(code, sizeof code, "_G['%.*s'] = require('%s')", (int)global_len, global, mod);
  return vq_run_string(rt, code, "=(command line)");
}

static int run_actions(vq_runtime *rt, const cli *c) {
  for (int i = 0; i < c->nactions; i++) {
    int status = c->actions[i].kind == 'e'
                   ? vq_run_string(rt, c->actions[i].value, "=(command line)")
                   : run_library(rt, c->actions[i].value);
    if (status != 0) return status;
  }
  return 0;
}

/* --rehearse: vq.rehearse starts the simulator on this loop, points the runbook at it,
 * runs the runbook (arg as for a script) and stops the simulator. */
static int run_rehearsal(vq_runtime *rt, cli *c, int argc, char **argv) {
  lua_State *L = vq_lua(rt);
  lua_createtable(L, c->nscenarios, 2);
  if (c->world) {
    lua_pushstring(L, c->world);
    lua_setfield(L, -2, "world");
  }
  for (int i = 0; i < c->nscenarios; i++) {
    lua_pushstring(L, c->scenarios[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, LUA_REGISTRYINDEX, "vq.rehearse");
  vq_set_args(rt, argc, argv, c->script);
  return vq_run_string(rt, "return require('vq.rehearse').main(arg)", "=(rehearsal)");
}

static int run(vq_runtime *rt, cli *c, int argc, char **argv) {
  if (c->rehearse) return run_rehearsal(rt, c, argc, argv);
  int status = run_actions(rt, c);
  if (status != 0) return status;
  if (c->script) {
    const char *path = strcmp(argv[c->script], "-") == 0 ? NULL : argv[c->script];
    status = vq_run_file(rt, path, argc, argv, c->script);
    if (status != 0 || !c->interactive) return status;
  } else if (c->nactions > 0 && !c->interactive) {
    return 0;
  } else if (!c->interactive && !isatty(0)) {
    return vq_run_file(rt, NULL, argc, argv, argc - 1);
  }
  return vq_repl_run(rt);
}

/* A runbook following a thousand containers holds a thousand sockets: take the hard
 * limit on open files rather than the 1024 a login shell usually leaves. */
static void raise_open_files_limit(void) {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
}

int main(int argc, char **argv) {
  cli c = {0};
  raise_open_files_limit();
  c.options.argv0 = argv[0];
  c.actions = calloc((size_t)argc, sizeof *c.actions);
  c.scenarios = calloc((size_t)argc, sizeof *c.scenarios);
  if (!c.actions || !c.scenarios) return 1;
  int parsed = parse(&c, argc, argv);
  if (parsed != 0) {
    free(c.actions);
    free(c.scenarios);
    return parsed > 0 ? 0 : 2;
  }
  if (c.rehearse && !c.script) {
    free(c.actions);
    free(c.scenarios);
    fail_usage("--rehearse needs a runbook:", "vqlua --rehearse scripts/<runbook>.lua");
    return 2;
  }
  vq_runtime *rt = vq_new(&c.options);
  if (!rt) {
    fprintf(stderr, "vqlua: cannot create the runtime\n");
    return 1;
  }
  int status = 0;
  if (c.version) print_versions(rt);
  if (!c.version || c.script || c.nactions || c.interactive) status = run(rt, &c, argc, argv);
  vq_close(rt);
  free(c.actions);
  free(c.scenarios);
  return status;
}
