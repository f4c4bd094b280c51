#!/usr/bin/env bash
# User-space instructions per HTTP shake request of `hongbao serve` (one core) under wrk, on
# each network path (--net uring, --net glommio), unpipelined and at pipeline depth 16.
# callgrind counts are repeatable where wall-clock rates on a shared VM are not; kernel work
# (most of an unpipelined request) is not counted.
#
# usage: bash bench/callgrind-http.sh [SECONDS=8] [CONNECTIONS=16]
# needs: valgrind, wrk (apt-get install valgrind wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-8}
CONNS=${2:-16}
for tool in valgrind callgrind_control wrk taskset; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install valgrind wrk)"; exit 2; }
done
KILL_SIGNAL=KILL
# shellcheck source=bench/http-event.sh
source bench/http-event.sh

measure() { # net depth -> instructions per request
  local net=$1 depth=$2 out="$WORK/cg-$1-$2"
  valgrind --tool=callgrind --callgrind-out-file="$out.%p" "$BIN" serve \
    --tickets "$WORK/ev/event/A" --keyring "$WORK/ev/keys/demo.keyring" --data "$WORK/data-$net-$depth" \
    --auth-keys "$WORK/auth.keys" --cores 1 --cpus 0 --rehearse --listen 127.0.0.1:0 \
    --http 127.0.0.1:0 --net "$net" > "$out.serve" 2>/dev/null &
  local pid=$!
  echo "$pid" > "$WORK/serve.pid"
  for _ in $(seq 600); do grep -q ready "$out.serve" 2>/dev/null && break; sleep 0.1; done
  local url="http://$(grep -o 'http [0-9.:]*' "$out.serve" | cut -d' ' -f2)"
  # Warm up (valgrind translates code on first use: the first seconds under callgrind serve
  # only hundreds of requests), then count from zero.
  taskset -c 1 wrk -t1 -c"$CONNS" -d6s -s bench/wrk/shake.lua "$url" -- "$WORK/tokens.txt" "$depth" >/dev/null
  callgrind_control -z "$pid" >/dev/null
  local n
  n=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" -s bench/wrk/shake.lua "$url" -- "$WORK/tokens.txt" "$depth" |
    awk '/requests in/ {print $1}')
  callgrind_control -d "$pid" >/dev/null
  sleep 0.5
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local ir
  ir=$(grep -h '^summary:\|^totals:' "$out".* 2>/dev/null | awk '{s += $2} END {print s}')
  awk -v ir="$ir" -v n="$n" 'BEGIN {printf "%d %d", n, ir / n}'
}

echo "## HTTP shake: user-space instructions per request (callgrind, wrk $CONNS connections, ${DUR}s)"
echo
echo "- command: \`bash bench/callgrind-http.sh $DUR $CONNS\`"
echo "- machine: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), Linux $(uname -r), $(valgrind --version)"
echo "- date: $(date -u +%Y-%m-%d)"
echo
echo "| depth | network path | requests counted | instructions per request |"
echo "|---:|---|---:|---:|"
for depth in 1 16; do
  for net in uring glommio; do
    read -r n per <<<"$(measure "$net" "$depth")"
    echo "| $depth | --net $net | $n | $per |"
  done
done
