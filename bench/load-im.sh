#!/usr/bin/env bash
# The IM mix over loopback with `hongbao load --op im`: the server on one core (SERVER_CPU,
# default 0), the load generator on another (CLIENT_CPU, default 1). Every connection is one
# user that sends and pulls its stream on every PUSH; delivery latency is send -> visible in
# the recipient's pull (docs/formats/load-report.md). Scenarios, in one run:
#   chat          single chats, 200 users, 200 connections x depth 4 (closed loop)
#   chat+10k      the same users in 2 groups of 10,000 members (the rest outside the run),
#                 0.2% of sends to the group (about 60 x 10,000 copies/s), 200 x 2
#   open-60pct    single chats at 60% of the chat scenario's send rate (open loop)
#   open+10k      the open loop with 0.2% of sends to the 10k groups
#   open-20pct    single chats at 20% of the chat rate: what is left of the tail without
#                 queueing (the disk's slow commits)
# Prints one markdown table (sends/s, send and delivery latency, server CPU per send, slow
# group commits) and leaves each run's files under OUT (default target/load-im).
#
# usage: bash bench/load-im.sh [SECONDS=10]
# needs: python3 (reads summary.json)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=${OUT:-$PWD/target/load-im}
# shellcheck source=bench/http-event.sh
source bench/http-event.sh
rm -rf "$OUT" && mkdir -p "$OUT"
HZ=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Group commits so far, over all cores: "all over-10ms over-50ms" (from the server's
# hongbao_log_commit_seconds histogram), to tell the disk's stalls from queueing.
commits() {
  python3 - "http://$HTTP_ADDR/metrics" <<'PY'
import sys, urllib.request
n = {"+Inf": 0, "0.01": 0, "0.05": 0}
for line in urllib.request.urlopen(sys.argv[1]).read().decode().splitlines():
    if line.startswith("hongbao_log_commit_seconds_bucket{"):
        le = line.split('le="')[1].split('"')[0]
        if le in n:
            n[le] += int(line.rsplit(" ", 1)[1])
print(n["+Inf"], n["+Inf"] - n["0.01"], n["+Inf"] - n["0.05"])
PY
}

start_hongbao

echo "| scenario | sends/s | send p50 µs | send p99 µs | chat delivery p50 µs | p99 µs | p99.9 µs | group delivery p99 µs | copies/s | server CPU µs/send | commits > 10 / > 50 ms |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
FIRST=1
run() { # name, then hongbao load arguments
  local name=$1; shift
  local s0; s0=$(cpu_ticks "$SPID")
  local c0; c0=$(commits)
  # Each scenario has its own users (their streams start empty).
  "$BIN" load --target "$TARGET" --cpus "$CLIENT_CPU" --auth-keys "$WORK/auth.keys" --op im \
    --uid-first "$FIRST" --warmup 2 --duration "$DUR" --quiet --label "$name" \
    --out "$OUT/$name" "$@" >/dev/null 2>"$OUT/$name.err" || { cat "$OUT/$name.err"; exit 1; }
  FIRST=$(( FIRST + 1000000 ))
  local s1; s1=$(cpu_ticks "$SPID")
  local c1; c1=$(commits)
  python3 - "$OUT/$name/summary.json" "$(( s1 - s0 ))" "$HZ" "$name" "$c0" "$c1" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
server_s = int(sys.argv[2]) / int(sys.argv[3])
def series(op, outcome):
    return next((x for x in s["series"] if x["op"] == op and x["outcome"] == outcome), None)
send, chat, group = series("send", "all"), series("delivery", "chat"), series("delivery", "group")
copies = series("delivery", "all")
rate = send["per_second"]
# CPU seconds cover warm-up and the final pulls too: per send of the whole run, roughly.
total = rate * (s["measured_s"] + s["config"]["warmup_s"])
p = lambda x, k: f"{x['latency'][k]:.0f}" if x else "-"
errors = sum(s["errors"].values())
c0, c1 = (list(map(int, sys.argv[k].split())) for k in (5, 6))
print(f"| {sys.argv[4]} | {rate:,.0f} | {p(send, 'p50_us')} | {p(send, 'p99_us')} "
      f"| {p(chat, 'p50_us')} | {p(chat, 'p99_us')} | {p(chat, 'p999_us')} | {p(group, 'p99_us')} "
      f"| {copies['per_second'] if copies else 0:,.0f} | {1e6 * server_s / total:.2f} "
      f"| {' / '.join(str(b - a) for a, b in zip(c0[1:], c1[1:]))} of {c1[0] - c0[0]:,} |"
      + (f" errors: {s['errors']}" if errors else ""))
print(rate, file=open(sys.argv[1] + ".rate", "w"))
EOF
}
run chat --conns 200 --depth 4
run chat+10k --conns 200 --depth 2 --im-groups 2 --im-group-size 10000 --im-group-share 0.002
RATE=$(python3 -c "print(int(0.6 * float(open('$OUT/chat/summary.json.rate').read())))")
run open-60pct --conns 200 --depth 16 --rate "$RATE"
run open+10k --conns 200 --depth 16 --rate "$RATE" --im-groups 2 --im-group-size 10000 \
  --im-group-share 0.002
run open-20pct --conns 200 --depth 16 --rate "$(( RATE / 3 ))"
echo
echo "- command: \`bash bench/load-im.sh $DUR\` (server CPU $SERVER_CPU, load CPU $CLIENT_CPU; open loop at $RATE and $(( RATE / 3 )) sends/s)"
echo "- machine: $(nproc) x $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r)"
echo "- date: $(date -u +%F)"
echo "- delivery: send (intended time) -> the copy seen in the recipient's pull after a PUSH"
echo "- commits: the scenario's group commits (write + fdatasync) slower than 10 / 50 ms, of all;"
echo "  every send waits for one, and in the open loop so does every send due meanwhile"
