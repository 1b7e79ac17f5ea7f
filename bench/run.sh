#!/bin/sh
# Benchmarks (not tests: nothing here gates CI). Run from the top folder: make bench.
set -eu
VQLUA=${VQLUA:-build/vqlua}
command -v hyperfine >/dev/null || { echo "bench needs hyperfine (apt-get install hyperfine)"; exit 1; }

echo "== start-up: vqlua -e '' against lua5.4 -e ''"
hyperfine -N --warmup 20 --runs 300 --export-json /tmp/vq-startup.json \
  "$VQLUA -e ''" "lua5.4 -e ''" >/dev/null
$VQLUA -e '
  local json = require "cjson"
  local f = assert(io.open("/tmp/vq-startup.json")) local r = json.decode(f:read("a")) f:close()
  local vq, lua = r.results[1].median, r.results[2].median
  print(("start-up: vqlua %.2f ms, lua5.4 %.2f ms (medians): %.2fx (target <= 2x)")
    :format(vq * 1000, lua * 1000, vq / lua))'

echo "== scheduler"
for i in 1 2 3; do $VQLUA bench/sched_bench.lua; done

if [ -f bench/codec_bench.lua ]; then
  echo "== codecs"
  $VQLUA bench/codec_bench.lua
fi

echo "== simulator: log streaming"
$VQLUA bench/sim_logs_bench.lua

echo "== kube client against kubectl, on the simulator (bench/kube_bench.sh realk8s for the real apiserver)"
bash bench/kube_bench.sh sim
