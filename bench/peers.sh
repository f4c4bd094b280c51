#!/usr/bin/env bash
# hongbao against its peers, in one run, on loopback, each server on one core:
#   HTTP:   hongbao POST /shake  vs  nginx `return 200`          (wrk, unpipelined and depth 16)
#   binary: hongbao SHAKE        vs  redis-server LPOP of 26-byte values pushed beforehand
#           (unpipelined, depth 16 and depth 64)
#           (the same load generator, `hongbao load`, speaking our protocol and RESP; and
#           redis-benchmark -P 1 / -P 16 against redis as redis measures itself)
# Every server is pinned to SERVER_CPU (default 0) and every client to CLIENT_CPU (default 1).
# Prints one markdown table: requests/s, the ratio to the peer at the same depth, latency, and
# the server's CPU time per request (utime + stime from /proc/PID/stat over the run).
# The hongbao server runs the demo event with slot pacing on (most shakes win nothing, as in a
# real event), 10,000 users over HTTP, one user per connection over the binary protocol.
# Leaves each `hongbao load` run's files (summary.json, report.html, .hgrm) under OUT (default
# target/peers) and a side-by-side report of them in OUT/report.
#
# usage: bash bench/peers.sh [SECONDS=10] [CONNECTIONS=64]
# needs: wrk, nginx, redis-server, redis-benchmark, python3
#        (apt-get install wrk nginx-light redis-server redis-tools python3)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONNS=${2:-64}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-$PWD/target/peers}
for tool in wrk nginx redis-server redis-benchmark redis-cli python3 taskset; do
  command -v "$tool" >/dev/null || {
    echo "needs $tool (apt-get install wrk nginx-light redis-server redis-tools python3)"; exit 2; }
done
# shellcheck source=bench/http-event.sh
source bench/http-event.sh
rm -rf "$OUT" && mkdir -p "$OUT"
HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- servers -------------------------------------------------------------------------------
start_hongbao
HB_PID=$SPID
HB_BIN=$TARGET
HB_HTTP="http://$HTTP_ADDR"

NG_PORT=$(free_port)
start_nginx "$NG_PORT"

RD_PORT=$(free_port)
(cd "$WORK" && exec taskset -c "$SERVER_CPU" redis-server --port "$RD_PORT" --bind 127.0.0.1 \
  --save "" --appendonly no --daemonize no > redis.log 2>&1) &
echo $! > "$WORK/redis.pid"
RD_PID=$(cat "$WORK/redis.pid")
for _ in $(seq 100); do redis-cli -p "$RD_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
sleep 0.5

# Enough 26-byte values (a ticket record's size) that no LPOP below finds the list empty:
# generous estimates of each run's rate x its time. Pushed 100 per RPUSH command.
rb_n() { case $1 in 1) echo $((150000 * DUR)) ;; 16) echo $((1500000 * DUR)) ;; *) echo $((2000000 * DUR)) ;; esac; }
PUSH=$(( (300000 + 2500000 + 3000000) * (DUR + 2) + $(rb_n 1) + $(rb_n 16) + $(rb_n 64) ))
VALUE=$(printf 'x%.0s' $(seq 26))
# shellcheck disable=SC2046
taskset -c "$CLIENT_CPU" redis-benchmark -p "$RD_PORT" -c 16 -P 16 -n $(( PUSH / 100 + 1 )) \
  RPUSH mylist $(for _ in $(seq 100); do echo "$VALUE"; done) >/dev/null 2>&1
PUSHED=$(redis-cli -p "$RD_PORT" llen mylist)

# --- measurements ---------------------------------------------------------------------------
ROWS=$WORK/rows
: > "$ROWS"
row() { echo "$*" >> "$ROWS"; }
per_req() { awk -v t="$1" -v hz="$HZ" -v n="$2" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}'; }

wrk_run() { # pair name pid url depth
  local a b out rps reqs p50 p99
  a=$(cpu_ticks "$3")
  out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DUR}s" --latency -s bench/wrk/shake.lua \
    "$4" -- "$WORK/tokens.txt" "$5")
  b=$(cpu_ticks "$3")
  rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
  p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
  local bad; bad=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  row "$1|$5|$2|wrk|$rps|$p50|$p99|-|$(per_req $((b - a)) "$reqs")|${bad:-0} non-2xx"
}

load_run() { # pair name pid depth label, then hongbao load arguments
  local pair=$1 name=$2 pid=$3 depth=$4 label=$5; shift 5
  local a b
  a=$(cpu_ticks "$pid")
  taskset -c "$CLIENT_CPU" "$BIN" load --cpus "$CLIENT_CPU" --conns "$CONNS" --depth "$depth" \
    --warmup 2 --duration "$DUR" --quiet --label "$label" --out "$OUT/$label" "$@" >/dev/null \
    2>"$OUT/$label.err" || { cat "$OUT/$label.err"; exit 1; }
  b=$(cpu_ticks "$pid")
  python3 - "$OUT/$label/summary.json" "$((b - a))" "$HZ" "$pair|$depth|$name|hongbao load" >> "$ROWS" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
ticks, hz, head = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
main = next(x for x in s["series"] if x["outcome"] == "all" and x["op"] != "hello")
l = main["latency"]
# The CPU time covers the warm-up too: divide by the replies of the whole run.
total = s["replies_per_second"] * (s["measured_s"] + s["config"]["warmup_s"])
other = {x["outcome"]: x["count"] for x in s["series"] if x["op"] == main["op"] and x["outcome"] != "all"}
note = ", ".join(f"{k} {v}" for k, v in sorted(other.items()))
us = lambda v: f"{v / 1000:.2f}ms" if v >= 1000 else f"{v:.0f}us"
print(f"{head}|{s['replies_per_second']:.0f}|{us(l['p50_us'])}|{us(l['p99_us'])}|{us(l['p999_us'])}"
      f"|{1e6 * ticks / hz / total:.2f}|{note}")
EOF
}

rb_run() { # depth requests
  local a b out
  a=$(cpu_ticks "$RD_PID")
  out=$(taskset -c "$CLIENT_CPU" redis-benchmark -p "$RD_PORT" -c "$CONNS" -P "$1" -n "$2" -t lpop --csv 2>/dev/null)
  b=$(cpu_ticks "$RD_PID")
  # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
  echo "$out" | tr -d '"' | awk -F, -v d="$1" -v us="$(per_req $((b - a)) "$2")" '$1 == "LPOP" {
    printf "binary|%s|redis LPOP|redis-benchmark -P %s|%.0f|%.3fms|%.3fms|-|%s|\n", d, d, $2, $5, $7, us }' >> "$ROWS"
}

for depth in 1 16; do
  wrk_run http "hongbao HTTP shake" "$HB_PID" "$HB_HTTP" "$depth"
  wrk_run http "nginx return 200" "$NG_WORKER" "http://127.0.0.1:$NG_PORT/" "$depth"
done
for depth in 1 16 64; do
  load_run binary "hongbao SHAKE" "$HB_PID" "$depth" "hongbao-shake-d$depth" \
    --target "$HB_BIN" --auth-keys "$WORK/auth.keys" --no-open
  load_run binary "redis LPOP" "$RD_PID" "$depth" "redis-lpop-d$depth" \
    --target "127.0.0.1:$RD_PORT" --op redis-lpop --redis-key mylist
  rb_run "$depth" "$(rb_n "$depth")"
done
LEFT=$(redis-cli -p "$RD_PORT" llen mylist)

# --- the table -------------------------------------------------------------------------------
echo "## hongbao and its peers, one server core each ($CONNS connections, ${DUR}s per run)"
echo
echo "| protocol | depth | server | client | requests/s | vs peer | p50 | p99 | p99.9 | server CPU µs/request | notes |"
echo "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|"
python3 - "$ROWS" <<'EOF'
import sys
rows = [l.rstrip("\n").split("|") for l in open(sys.argv[1]) if l.strip()]
def peer(r):
    # The peer of a row: nginx for HTTP; redis LPOP measured by the same client for binary.
    for p in rows:
        if p[0] == r[0] and p[1] == r[1] and p[3] == r[3] and (
                p[2].startswith("nginx") or p[2].startswith("redis")):
            return p
    return None
def us(text, row):
    # "168.00us", "1.06ms", "2.1s" -> "168 µs", "1.06 ms"; wrk's percentiles of pipelined runs
    # are not timings (it reads 0 for most requests), so those are left out.
    if text in ("", "-") or (row[3] == "wrk" and row[1] != "1"):
        return "-"
    for unit, k in (("us", 1.0), ("ms", 1e3), ("s", 1e6)):
        if text.endswith(unit):
            v = float(text[: -len(unit)]) * k
            return f"{v:.0f} µs" if v < 1000 else f"{v / 1000:.2f} ms"
    return text
for r in rows:
    p = peer(r)
    ratio = f"{float(r[4]) / float(p[4]):.2f}x" if p and float(p[4]) > 0 else "-"
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {int(r[4]):,} | {ratio} | {us(r[5], r)} "
          f"| {us(r[6], r)} | {us(r[7], r)} | {r[8]} | {r[9]} |")
EOF
echo
echo "- command: \`bash bench/peers.sh $DUR $CONNS\` (servers on CPU $SERVER_CPU, clients on CPU $CLIENT_CPU)"
echo "- machine: $(nproc) x $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r)"
echo "- versions: $("$BIN" --version), $(nginx -v 2>&1 | sed 's/.*: //'), redis $(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
echo "- date: $(date -u +%F)"
echo "- vs peer: against nginx (HTTP) or redis LPOP measured by the same client at the same depth"
echo "- redis: $PUSHED values pushed before, $LEFT left after (never empty: every LPOP returned a value)"
echo "- latency: wrk's and redis-benchmark's own figures, from actual send times (wrk does not time"
echo "  pipelined requests: left out); hongbao load's from intended send times (closed loop: the same)"
"$BIN" report "$OUT"/hongbao-shake-d64 "$OUT"/redis-lpop-d64 "$OUT"/hongbao-shake-d16 \
  "$OUT"/redis-lpop-d16 "$OUT"/hongbao-shake-d1 "$OUT"/redis-lpop-d1 \
  --out "$OUT/report" >/dev/null 2>&1 && echo "- side-by-side report: $OUT/report/report.html"
