#!/usr/bin/env bash
# HTTP shakes of `hongbao serve` (one core; on each network path, --net uring and --net glommio)
# against nginx `return 200` (one worker), all under the same wrk load with the same script, in
# one run: unpipelined and with pipeline depth 16.
# Server pinned to SERVER_CPU (default 0), wrk to CLIENT_CPU (default 1). Prints one markdown
# table with requests/s, ratios, and server CPU time per request from /proc/PID/stat.
#
# usage: bash bench/http-vs-nginx.sh [SECONDS=10] [CONNECTIONS=64]
# needs: wrk, nginx (apt-get install wrk nginx-light); the server runs the demo event with slot
# pacing on (most shakes win nothing, as in a real event) and 10,000 users.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${2:-64}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
for tool in wrk nginx taskset; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install wrk nginx-light)"; exit 2; }
done
# shellcheck source=bench/http-event.sh
source bench/http-event.sh

cpu_ticks() { # utime + stime of a process and its threads, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
HZ=$(getconf CLK_TCK)

run_wrk() { # url depth -> "rps requests"
  local out
  out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" -s bench/wrk/shake.lua "$1" -- "$WORK/tokens.txt" "$2")
  local rps reqs
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  local non2xx
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  echo "$rps $reqs ${non2xx:-0}"
}

# hongbao: one core, pinned; once on each network path (--net uring is the default).
start_hongbao() { # net -> sets URL_<net> and PID_<net>
  taskset -c "$SERVER_CPU" "$BIN" serve --tickets "$WORK/ev/event/A" --keyring "$WORK/ev/keys/demo.keyring" \
    --data "$WORK/data-$1" --auth-keys "$WORK/auth.keys" --cores 1 --cpus "$SERVER_CPU" --rehearse \
    --listen 127.0.0.1:0 --http 127.0.0.1:0 --net "$1" > "$WORK/serve-$1.out" 2> "$WORK/serve-$1.err" &
  echo $! > "$WORK/hongbao-$1.pid"
  for _ in $(seq 100); do grep -q ready "$WORK/serve-$1.out" 2>/dev/null && break; sleep 0.1; done
  printf -v "URL_$1" '%s' "http://$(grep -o 'http [0-9.:]*' "$WORK/serve-$1.out" | cut -d' ' -f2)"
  printf -v "PID_$1" '%s' "$(cat "$WORK/hongbao-$1.pid")"
}
start_hongbao uring
start_hongbao glommio

start_nginx 18089

echo "## HTTP shakes vs nginx return 200 (wrk, $CONNS connections, ${DUR}s each)"
echo
echo "- command: \`bash bench/http-vs-nginx.sh $DUR $CONNS\` (server CPU $SERVER_CPU, wrk CPU $CLIENT_CPU)"
echo "- machine: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), Linux $(uname -r)"
echo "- date: $(date -u +%Y-%m-%d)"
echo
echo "| depth | server | requests/s | non-2xx | server CPU µs/request | vs nginx |"
echo "|---:|---|---:|---:|---:|---:|"
measure() { # pid url depth -> "rps bad us"
  local a b rps reqs bad
  a=$(cpu_ticks "$1"); read -r rps reqs bad <<<"$(run_wrk "$2" "$3")"; b=$(cpu_ticks "$1")
  echo "$rps $bad $(awk -v t=$((b - a)) -v hz="$HZ" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')"
}
for depth in 1 16; do
  read -r hb_rps hb_bad hb_us <<<"$(measure "$PID_uring" "$URL_uring" "$depth")"
  read -r hg_rps hg_bad hg_us <<<"$(measure "$PID_glommio" "$URL_glommio" "$depth")"
  read -r ng_rps ng_bad ng_us <<<"$(measure "$NG_WORKER" http://127.0.0.1:18089 "$depth")"
  ratio() { awk -v x="$1" -v y="$ng_rps" 'BEGIN {printf "%.2f", x / y}'; }
  echo "| $depth | hongbao shake (--net uring) | $hb_rps | $hb_bad | $hb_us | $(ratio "$hb_rps")x |"
  echo "| $depth | hongbao shake (--net glommio) | $hg_rps | $hg_bad | $hg_us | $(ratio "$hg_rps")x |"
  echo "| $depth | nginx return 200 | $ng_rps | $ng_bad | $ng_us | 1.00x |"
done
