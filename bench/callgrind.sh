#!/usr/bin/env bash
# Instructions per ticket for the generation and verification hot loops, counted by callgrind
# (repeatable on a noisy machine). Each phase runs at two sizes; the difference divided by the
# extra tickets is the marginal cost per ticket, free of start-up and plan setup.
#
# Usage: bash bench/callgrind.sh [SMALL_TICKETS] [LARGE_TICKETS]
set -euo pipefail
cd "$(dirname "$0")/.."
small=${1:-200000}
large=${2:-400000}
if ! command -v valgrind >/dev/null; then
  echo "installing valgrind (needs root and Debian packages)" >&2
  apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
fi
bin=$(bash bench/bench-bin.sh)
work=$(mktemp -d /dev/shm/hongbao-callgrind.XXXXXX)
trap 'rm -rf "$work"' EXIT

instructions() { # phase tickets dir
  local out="$work/cg.$1.$2"
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --phase "$1" --tickets "$2" --dir "$3" >/dev/null 2>&1
  grep -E '^(summary|totals):' "$out" | head -1 | awk '{print $2}'
}

echo "## Instructions per ticket (callgrind)"
echo
echo "- command: \`bash bench/callgrind.sh $small $large\`"
echo "- machine: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), Linux $(uname -r), $(valgrind --version)"
echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo
echo "| phase | Ir at $small | Ir at $large | instructions per ticket |"
echo "|---|---:|---:|---:|"
for phase in floor gen verify; do
  a=$(instructions "$phase" "$small" "$work/s")
  b=$(instructions "$phase" "$large" "$work/l")
  echo "| $phase | $a | $b | $(( (b - a) / (large - small) )) |"
done
