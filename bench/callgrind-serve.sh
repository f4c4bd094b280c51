#!/usr/bin/env bash
# Instructions per operation of one core's hot path (the phases of bench/serve.rs), counted by
# valgrind's callgrind: repeatable where wall-clock time on a shared VM is not.
#
#   bash bench/callgrind-serve.sh [OPS]        (default 200000; installs valgrind if missing)
#
# (bench/callgrind.sh counts the ticket pipeline's instructions per ticket.)
#
# Each phase of the serve bench is a never-inlined function; its inclusive instruction count
# divided by OPS is the cost of one operation as the engine runs it (batch draining included).
set -euo pipefail
ops="${1:-200000}"
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
  echo "installing valgrind (needs root and Debian packages)" >&2
  apt-get update -qq && apt-get install -y -qq valgrind >/dev/null
fi
exe=$(cargo bench --bench serve --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | grep '/deps/serve-' | tail -1)
[ -x "$exe" ] || { echo "could not build the serve bench" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$exe" --bench --ops "$ops" >/dev/null 2>"$out/log" \
  || { cat "$out/log" >&2; exit 1; }
callgrind_annotate --inclusive=yes --threshold=100 "$out/cg" >"$out/annotated" 2>/dev/null
echo "## Instructions per operation (callgrind)"
echo
echo "- command: \`bash bench/callgrind-serve.sh $ops\`"
echo "- machine: $(nproc) x $(sed -n 's/^model name[^:]*: //p' /proc/cpuinfo | head -1), $(uname -sr), $(valgrind --version)"
echo "- date: $(date +%F)"
echo
echo "| phase | instructions/op |"
echo "|---|---:|"
for phase in shakes_that_win shakes_that_win_pipelined opens shakes_that_lose peer_aes; do
  ir=$(grep -E "serve::phase_${phase} \[" "$out/annotated" | head -1 | awk '{gsub(",","",$1); print $1}')
  [ -n "$ir" ] || { echo "phase $phase not found in the profile" >&2; exit 1; }
  echo "| $phase | $(( ir / ops )) |"
done
