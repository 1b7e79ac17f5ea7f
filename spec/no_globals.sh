#!/bin/sh
# Lua modules and runbooks set no globals: a missing `local` turns a variable into one
# silently. Lists every assignment to a global in scripts/ and sim/ (luac's listing).
set -u
cd "$(dirname "$0")/.."
bad=0
for f in $(find scripts sim -name '*.lua'); do
  hits=$(luac5.4 -l -p "$f" | grep -E 'SETTABUP.*_ENV "' | sed -E 's/.*\[([0-9]+)\].*_ENV "([^"]+)".*/\1: \2/')
  if [ -n "$hits" ]; then
    echo "$hits" | sed "s|^|$f:|"
    bad=1
  fi
done
exit $bad
