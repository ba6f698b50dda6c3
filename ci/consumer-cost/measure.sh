#!/usr/bin/env bash
# Measures what depending on agentmux-registry costs a consumer, for the host
# crate in HOST_CRATE_DIR (e.g. a checkout of an older version's host/):
# a clean release build (wall and CPU seconds, in a fresh target dir), the
# binary's size, and the median of RUNS fresh processes opening a registry and
# completing one call, each with an empty HOME and cache (the first time ever).
#   ci/consumer-cost/measure.sh HOST_CRATE_DIR [RUNS]
set -euo pipefail
host=$(realpath "$1")
runs=${2:-21}
here=$(dirname "$(realpath "$0")")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$here/Cargo.toml" "$here/src" "$work/"
sed -i "s|HOST|$host|" "$work/Cargo.toml"
# The host's own lock file, so both sides build the versions they were tested with.
cp "$host/../Cargo.lock" "$work/Cargo.lock" 2>/dev/null || true
cd "$work"
cargo fetch -q
/usr/bin/time -f "%e %U %S" -o "$work/time" \
  env CARGO_TARGET_DIR="$work/target" cargo build -q --release --offline
read -r wall user sys <"$work/time"
bin=$work/target/release/agentmux-registry-consumer-cost
size=$(stat -c %s "$bin")
times=()
for _ in $(seq "$runs"); do
  fresh=$(mktemp -d)
  times+=("$(HOME=$fresh XDG_CACHE_HOME=$fresh/cache "$bin")")
  rm -rf "$fresh"
done
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
echo "clean release build: ${wall}s wall, $(echo "$user + $sys" | bc)s CPU"
echo "binary: $size bytes ($(echo "scale=1; $size / 1048576" | bc) MiB)"
echo "fresh process, open + one call: median ${median} µs of $runs"
