#!/usr/bin/env bash
# HTTP shakes of `hongbao serve` (one core) against nginx `return 200` (one worker), both under
# the same wrk load with the same script, in one run: unpipelined and with pipeline depth 16.
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
cargo build --release --quiet
BIN=$PWD/target/release/hongbao
WORK=$(mktemp -d)
trap 'kill $(cat "$WORK"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
(cd "$WORK" && "$BIN" demo --dir ev --no-serve --seed 1 >/dev/null)
"$BIN" auth-keys --out "$WORK/auth.keys" >/dev/null
"$BIN" auth-token --auth-keys "$WORK/auth.keys" --uid 1 --count 10000 > "$WORK/tokens.txt"

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

# hongbao: one core, pinned.
taskset -c "$SERVER_CPU" "$BIN" serve --tickets "$WORK/ev/event/A" --keyring "$WORK/ev/keys/demo.keyring" \
  --data "$WORK/data" --auth-keys "$WORK/auth.keys" --cores 1 --cpus "$SERVER_CPU" --rehearse \
  --listen 127.0.0.1:0 --http 127.0.0.1:0 > "$WORK/serve.out" 2> "$WORK/serve.err" &
echo $! > "$WORK/hongbao.pid"
for _ in $(seq 100); do grep -q ready "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
HB_URL="http://$(grep -o 'http [0-9.:]*' "$WORK/serve.out" | cut -d' ' -f2)"
HB_PID=$(cat "$WORK/hongbao.pid")

# nginx: one worker, pinned to the same CPU, access log off.
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx.pidfile;
error_log $WORK/nginx.err;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 100000000;
  server { listen 127.0.0.1:18089 reuseport; location / { return 200 "ok"; } }
}
CONF
taskset -c "$SERVER_CPU" nginx -c "$WORK/nginx.conf" -p "$WORK" &
echo $! > "$WORK/nginx.pid"
sleep 1
NG_MASTER=$(cat "$WORK/nginx.pid")
NG_WORKER=$(pgrep -P "$NG_MASTER" | head -1)

echo "## HTTP shakes vs nginx return 200 (wrk, $CONNS connections, ${DUR}s each)"
echo
echo "- command: \`bash bench/http-vs-nginx.sh $DUR $CONNS\` (server CPU $SERVER_CPU, wrk CPU $CLIENT_CPU)"
echo "- machine: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), Linux $(uname -r)"
echo "- date: $(date -u +%Y-%m-%d)"
echo
echo "| depth | server | requests/s | non-2xx | server CPU µs/request | vs nginx |"
echo "|---:|---|---:|---:|---:|---:|"
for depth in 1 16; do
  a=$(cpu_ticks "$HB_PID"); read -r hb_rps hb_reqs hb_bad <<<"$(run_wrk "$HB_URL" "$depth")"; b=$(cpu_ticks "$HB_PID")
  hb_us=$(awk -v t=$((b - a)) -v hz="$HZ" -v n="$hb_reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
  a=$(cpu_ticks "$NG_WORKER"); read -r ng_rps ng_reqs ng_bad <<<"$(run_wrk http://127.0.0.1:18089 "$depth")"; b=$(cpu_ticks "$NG_WORKER")
  ng_us=$(awk -v t=$((b - a)) -v hz="$HZ" -v n="$ng_reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
  ratio=$(awk -v x="$hb_rps" -v y="$ng_rps" 'BEGIN {printf "%.2f", x / y}')
  echo "| $depth | hongbao shake | $hb_rps | $hb_bad | $hb_us | ${ratio}x |"
  echo "| $depth | nginx return 200 | $ng_rps | $ng_bad | $ng_us | 1.00x |"
done
