#!/bin/sh
# Run every libFuzzer target of BUILD for SECONDS each, seeded with the fixtures that suit it.
set -eu
BUILD=$1
SECONDS_EACH=${2:-60}
top=$(cd "$(dirname "$0")/../.." && pwd)
for fuzzer in "$BUILD"/*_fuzz; do
  name=$(basename "$fuzzer" _fuzz)
  corpus=$(mktemp -d)
  case $name in
    kubeconfig) cp "$top"/spec/fixtures/kubeconfig/*.yaml "$corpus"/ ;;
    yaml*) cp "$top"/spec/fixtures/yaml/*.yaml "$corpus"/ 2>/dev/null || true ;;
    properties) cp "$top"/spec/fixtures/tools/targetCluster/cluster.properties "$corpus"/ ;;
    pem*) cp "$top"/spec/fixtures/tls/* "$corpus"/ 2>/dev/null || true ;;
    base64) printf "Zm9vYmFy" > "$corpus"/plain; printf "Zm9v\nYmE=" > "$corpus"/padded ;;
  esac
  echo "== $name for ${SECONDS_EACH}s"
  (cd "$BUILD" && ./"$(basename "$fuzzer")" -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096 "$corpus")
  rm -rf "$corpus"
done
