#!/usr/bin/env bash
# Connection scale: one server core holds IDLE idle long connections (each authenticated with
# one HELLO, opened from several 127.x source addresses) while 16 other connections keep
# shaking; the server's memory per idle connection, and the shakes with and without the idle
# crowd, in one run.
#   1. shakes only (16 connections x depth 4), then the server's anonymous memory (RssAnon)
#   2. the same shakes with IDLE idle connections held; RssAnon and the kernel's TCP memory
#      sampled once every connection is open
# Prints a markdown table; leaves both runs' files (summary.json, report.html, ...) and their
# side-by-side report under OUT (default target/conn-scale).
#
# usage: bash bench/conn-scale.sh [IDLE=200000] [SECONDS=10]
# needs: python3 and Linux 6.0 or later. Neither process needs a descriptor per connection:
#        the server holds its sockets as io_uring direct descriptors and the load generator
#        parks its idle sockets in io_uring registered-file tables (docs/ARCHITECTURE.md), so
#        the descriptor limit does not cap the run. Source addresses: 127.0.0.2 and up, 2,000
#        connections each.
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE=${1:-200000}
DUR=${2:-10}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-$PWD/target/conn-scale}
ACTIVE=16
# shellcheck source=bench/http-event.sh
source bench/http-event.sh
rm -rf "$OUT" && mkdir -p "$OUT"

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
LIMIT=$(ulimit -n)

start_hongbao --no-pacing
HTTP=$HTTP_ADDR

rss_anon() { awk '/RssAnon/ {print $2}' "/proc/$SPID/status"; }
fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
tcp_pages() { awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat; }
slab_kib() { awk '/^Slab:/ {print $2}' /proc/meminfo; }
open_conns() {
  curl -s "http://$HTTP/metrics" | awk '/^hongbao_connections_open/ {s += $2} END {print s + 0}'
}
load() { # label, then more hongbao load arguments
  local label=$1; shift
  "$BIN" load --target "$TARGET" --auth-keys "$WORK/auth.keys" --cpus "$CLIENT_CPU" \
    --conns "$ACTIVE" --depth 4 --no-open --warmup 2 --duration "$DUR" --quiet \
    --label "$label" --out "$OUT/$label" "$@" > "$OUT/$label.md" 2> "$OUT/$label.err"
}

load shakes-only
sleep 1
RSS0=$(rss_anon); TCP0=$(tcp_pages); SLAB0=$(slab_kib)

load "shakes+$IDLE-idle" --idle "$IDLE" &
LOADER=$!
RSS1=""; TCP1=""; SEEN=0
for _ in $(seq $((10 * (DUR + 120)))); do
  sleep 0.1
  kill -0 "$LOADER" 2>/dev/null || break
  SEEN=$(open_conns)
  if [ "$SEEN" -ge $((IDLE + ACTIVE)) ]; then
    sleep 1
    RSS1=$(rss_anon); TCP1=$(tcp_pages); SLAB1=$(slab_kib)
    LPID=$(pgrep -P "$LOADER" | head -1)
    SFDS=$(fds "$SPID"); LFDS=$(fds "${LPID:-$LOADER}")
    RINGS=$(curl -s "http://$HTTP/metrics" | awk '/^hongbao_net_rings/ {s += $2} END {print s + 0}')
    break
  fi
done
wait "$LOADER" || { cat "$OUT/shakes+$IDLE-idle.err"; exit 1; }

echo "## Connection scale: $IDLE idle connections on one server core"
echo
python3 - "$OUT/shakes-only/summary.json" "$OUT/shakes+$IDLE-idle/summary.json" <<'EOF'
import json, sys
print("| run | idle held | idle lost | shakes/s | p50 | p99 | p99.9 | max |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for path in sys.argv[1:]:
    s = json.load(open(path))
    sh = next(x for x in s["series"] if x["op"] == "shake" and x["outcome"] == "all")
    l = sh["latency"]
    i = s.get("idle") or {"held": 0, "lost": 0}
    us = lambda v: f"{v:.0f} µs" if v < 1000 else f"{v / 1000:.2f} ms"
    print(f"| {s['label']} | {i['held']:,} | {i['lost']:,} | {sh['per_second']:,.0f} | {us(l['p50_us'])} "
          f"| {us(l['p99_us'])} | {us(l['p999_us'])} | {us(l['max_us'])} |")
EOF
echo
if [ -n "$RSS1" ]; then
  echo "- server anonymous memory (RssAnon): $RSS0 KiB after the shakes-only run, $RSS1 KiB with every idle connection open:" \
    "$(awk -v a="$RSS0" -v b="$RSS1" -v n="$IDLE" 'BEGIN {printf "%.0f bytes (%.2f KiB)", (b - a) * 1024 / n, (b - a) / n}') per idle connection"
  echo "- kernel memory, both ends of every loopback connection together: socket buffers" \
    "(/proc/net/sockstat TCP mem) $(awk -v a="$TCP0" -v b="$TCP1" -v n="$IDLE" 'BEGIN {printf "%.0f", (b - a) * 4096 / n}')" \
    "bytes, slab (sockets, files, ...; /proc/meminfo, host-wide)" \
    "$(awk -v a="$SLAB0" -v b="$SLAB1" -v n="$IDLE" 'BEGIN {printf "%.1f KiB", (b - a) / n}') per connection"
  echo "- descriptors open with every connection open: server $SFDS, load generator $LFDS" \
    "(limit per process: $LIMIT); the server's connections spread over $RINGS io_uring rings"
else
  echo "- the server never showed all $IDLE idle connections open (last seen: $SEEN): no memory figure"
fi
OPEN_S=$(python3 -c "import json; print(round(json.load(open('$OUT/shakes+$IDLE-idle/summary.json'))['idle']['open_s'], 1))")
echo "- opening and authenticating the idle connections took $OPEN_S s"
echo "- command: \`bash bench/conn-scale.sh $IDLE $DUR\` (server CPU $SERVER_CPU, load CPU $CLIENT_CPU)"
echo "- machine: $(nproc) x $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r), $(free -g | awk '/Mem:/ {print $2}') GiB RAM"
echo "- date: $(date -u +%F)"
"$BIN" report "$OUT/shakes-only" "$OUT/shakes+$IDLE-idle" --out "$OUT/report" >/dev/null 2>&1 \
  && echo "- side-by-side report: $OUT/report/report.html"
