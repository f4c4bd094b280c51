#!/usr/bin/env bash
# Peak resident memory and throughput of the real `hongbao gen` and `hongbao verify` processes on
# a large event (default 100 million tickets), measured by /usr/bin/time. Streaming generation
# and verification must keep RSS flat whatever the event size; the output size is printed beside
# it as the natural peer.
#
# Usage: bash bench/rss.sh [TICKETS] [WORKDIR]   (WORKDIR default: a fresh dir on /dev/shm;
#        pass a disk directory to include disk writes and fsync in the timings)
set -euo pipefail
cd "$(dirname "$0")/.."
tickets=${1:-100000000}
work=${2:-$(mktemp -d /dev/shm/hongbao-rss.XXXXXX)}
mkdir -p "$work"
trap 'rm -rf "$work/event" "$work/event.keyring"' EXIT
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
cargo build --release --quiet
bench=$(bash bench/bench-bin.sh)
plan=$("$bench" --phase plan --tickets "$tickets" --dir "$work")
threads=$(nproc)
measure() { # label command...
  local out
  out=$( { /usr/bin/time -f '%e %U %S %M' "${@:2}" >/dev/null; } 2>&1 | tail -1)
  read -r wall user sys rss <<<"$out"
  printf '| %s | %s | %s | %s | %s | %.1f | %.1f |\n' "$1" "$threads" "$wall" "$user" "$sys" \
    "$(echo "$rss / 1024" | bc -l)" "$(echo "$tickets / $wall / 1000000" | bc -l)"
}
echo "## Peak RSS on a ${tickets}-ticket event"
echo
echo "- command: \`bash bench/rss.sh $tickets${2:+ $2}\` (files in $work)"
echo "- machine: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r), $(free -g | awk '/Mem:/{print $2}') GiB RAM"
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo
echo "| process | threads | wall s | user s | sys s | peak RSS MiB | M tickets/s (wall) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
measure "hongbao gen" target/release/hongbao gen --plan "$plan" --out "$work/event" --keyring "$work/event.keyring" --seed 1 --quiet
measure "hongbao verify" target/release/hongbao verify --dir "$work/event" --keyring "$work/event.keyring" --quiet
echo
echo "Output size (the peer for RSS): $(du -sm "$work/event" | cut -f1) MiB of ticket files."
