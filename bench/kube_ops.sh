#!/bin/sh
# The same 30 operations as bench/kube_ops.lua, as a bash script of kubectl calls.
# usage: kube_ops.sh KUBECTL KUBECONFIG NAMESPACE
set -eu
K="$1 --kubeconfig $2"
NS=$3
$K create namespace "$NS" >/dev/null
$K -n "$NS" create deployment web --image=nginx:1.25 --replicas=2 >/dev/null
for i in 1 2 3 4 5 6 7 8 9 10; do $K -n "$NS" get deploy web -o json >/dev/null; done
for n in 3 2 3 2 3; do $K -n "$NS" scale deploy/web --replicas=$n >/dev/null; done
for i in 1 2 3 4 5; do $K -n "$NS" annotate deploy/web --overwrite bench/step=$i >/dev/null; done
for i in 1 2 3 4 5; do $K -n "$NS" get pods -l app=web -o json >/dev/null; done
$K -n "$NS" rollout status deploy/web --timeout=120s >/dev/null
$K get ns "$NS" -o json >/dev/null
$K delete ns "$NS" --wait=false >/dev/null
