#!/bin/bash
# Following 50 pods where the server is the bottleneck (../shared/realk8s: its fake kubelet
# writes 5 lines a second per container): CPU time and peak RSS of vqlua's follow against
# kubectl logs -f, each for the same number of seconds. Label 50 pods bench=follow first
# (bench/README.md says how).
set -euo pipefail
cd "$(dirname "$0")/.."
VQLUA=${VQLUA:-build/vqlua}
STATE=${REALK8S_STATE:-/tmp/realk8s}
SECONDS_EACH=${1:-15}
NS=${NS:-seed-1}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# name command...: run for SECONDS_EACH, then report lines, CPU seconds, peak RSS and private
# memory (what the process holds beyond shared library pages), summed over the group.
measure() {
  local name=$1; shift
  setsid "$@" > "$tmp/$name.out" 2>/dev/null &
  local pid=$!
  sleep "$SECONDS_EACH"
  local cpu=0 rss=0 uss=0
  for p in $(pgrep -g "$pid"); do
    read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat")
    cpu=$((cpu + u + s))
    rss=$((rss + $(awk '/VmHWM/ {print $2}' "/proc/$p/status")))
    uss=$((uss + $(awk '/^Private_(Clean|Dirty)/ {t += $2} END {print t}' "/proc/$p/smaps_rollup")))
  done
  kill -- -"$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "$name: $(wc -l < "$tmp/$name.out") lines, cpu $(echo "scale=2; $cpu / 100" | bc) s," \
    "peak RSS $(echo "scale=1; $rss / 1024" | bc) MB, private $(echo "scale=1; $uss / 1024" | bc) MB"
}

measure vqlua "$VQLUA" -e "
io.stdout:setvbuf('line')
local k = assert(require('vq.kube').connect{kubeconfig = '$STATE/kubeconfig', namespace = '$NS'})
local f = k:follow{selector = 'bench=follow', since = 1, grep = 'line'}
for item in f:lines() do io.write(f.format(item, false), '\n') end"
measure kubectl sh -c "$STATE/bin/kubectl --kubeconfig $STATE/kubeconfig -n $NS logs -f -l bench=follow --since=1s --max-log-requests=50 --prefix | grep --line-buffered line"
