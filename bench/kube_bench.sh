#!/bin/bash
# vqlua's kube client against kubectl, same server, same run (benchmarks, not tests).
# usage: bench/kube_bench.sh sim            -- a simulator started here
#        bench/kube_bench.sh realk8s        -- ../shared/realk8s, started with its start.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VQLUA=${VQLUA:-build/vqlua}
TARGET=${1:-sim}
RUNS=${RUNS:-5}
tmp=$(mktemp -d)
trap 'kill $SIM_PID 2>/dev/null || true; rm -rf "$tmp"' EXIT
SIM_PID=

if [ "$TARGET" = sim ]; then
  "$VQLUA" sim/serve.lua --kubeconfig "$tmp/kubeconfig" --k8s-version v1.30.6 --speed 0.01 >"$tmp/sim.out" 2>&1 &
  SIM_PID=$!
  for _ in $(seq 50); do [ -s "$tmp/sim.out" ] && grep -q kubeconfig "$tmp/sim.out" && break; sleep 0.1; done
  KC=$tmp/kubeconfig
  KUBECTL=/usr/lib/google-cloud-sdk/bin/kubectl.1.30
else
  STATE=${REALK8S_STATE:-/tmp/realk8s}
  KC=$STATE/kubeconfig
  KUBECTL=$STATE/bin/kubectl
fi
export HOME=$tmp   # a fresh discovery cache for kubectl, as on a new machine
echo "target $TARGET, kubectl $($KUBECTL version --client -o json 2>/dev/null | grep gitVersion | head -1 | tr -d ' ",')"

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
wall() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
rss_kb() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -1; }

echo "== one get: start-up to first answer, and peak RSS"
$KUBECTL --kubeconfig "$KC" get ns default -o json >/dev/null   # warm kubectl's discovery cache
for _ in $(seq $RUNS); do wall $KUBECTL --kubeconfig "$KC" get ns default -o json; done | median > "$tmp/k1"
for _ in $(seq $RUNS); do wall "$VQLUA" -e "assert(require('vq.kube').connect{kubeconfig='$KC'}:get('ns','default'))"; done | median > "$tmp/v1"
echo "kubectl $(cat "$tmp/k1")s $(rss_kb $KUBECTL --kubeconfig "$KC" get ns default -o json) KB | vqlua $(cat "$tmp/v1")s $(rss_kb "$VQLUA" -e "assert(require('vq.kube').connect{kubeconfig='$KC'}:get('ns','default'))") KB | ratio $(echo "$(cat "$tmp/k1") / $(cat "$tmp/v1")" | bc -l | cut -c1-5)x"

echo "== 30 operations: one vqlua process against a bash script of kubectl calls"
for i in $(seq $RUNS); do wall bench/kube_ops.sh "$KUBECTL" "$KC" "bench-k$i-$$"; done | median > "$tmp/k30"
for i in $(seq $RUNS); do wall "$VQLUA" bench/kube_ops.lua "$KC" "bench-v$i-$$" "$tmp/split"; done | median > "$tmp/v30"
echo "kubectl script $(cat "$tmp/k30")s | vqlua $(cat "$tmp/v30")s | ratio $(echo "$(cat "$tmp/k30") / $(cat "$tmp/v30")" | bc -l | cut -c1-5)x (target >= 25x)"
# The last step waits for the server to finish the rollout the scales started; kubectl's
# script reaches it seconds later, when it is over. What the client spends, apart from that:
echo "vqlua inside the process: 29 operations $(cut -d' ' -f1 "$tmp/split" | median) ms, waiting for the rollout $(cut -d' ' -f2 "$tmp/split" | median) ms (medians)"
