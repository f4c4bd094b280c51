#!/usr/bin/env bash
# IM memory per message, hot and cold (R24): one server core (SERVER_CPU, default 0) with a
# 20-second hot window (`im.hot_s = 20`, retention passes every second), `hongbao load --op
# im` on another (CLIENT_CPU, default 1) for SECONDS of single chats (200 users, 64-byte
# bodies, both users of every chat on the one core). Prints the heap per send right after the
# load (messages in memory) and once every entry has gone cold (only log positions and the
# 24-hour appinfo memory stay), then kills the server with SIGKILL, starts it again on the
# same data and prints the recovered heap and the recovery's peak RSS (VmHWM).
#
# usage: bash bench/im-memory.sh [SECONDS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
# shellcheck source=bench/http-event.sh
source bench/http-event.sh
printf '[im]\nhot_s = 20\ncompact_every_s = 1\n' > "$WORK/hot.toml"

metric() { # NAME: summed over cores
  curl -s "http://$HTTP_ADDR/metrics" | awk -v n="$1" '$1 ~ "^"n"([{]|$)" {s += $2} END {printf "%d\n", s}'
}
wait_for() { # NAME MIN
  for _ in $(seq 600); do [ "$(metric "$1")" -ge "$2" ] && return 0; sleep 0.1; done
  echo "$1 did not reach $2" >&2; exit 1
}

start_hongbao --config hot.toml
heap0=$(metric hongbao_heap_bytes)
"$BIN" load --target "$TARGET" --cpus "$CLIENT_CPU" --auth-keys "$WORK/auth.keys" --op im \
  --conns 200 --uids 200 --depth 4 --warmup 0 --duration "$DUR" --quiet --out "$WORK/load" \
  >/dev/null
sends=$(metric hongbao_im_sends_total)
appends=$(metric hongbao_im_stream_appends_total)
heap_hot=$(metric hongbao_heap_bytes)
wait_for hongbao_im_cold_entries "$appends"
sleep 0.1
heap_cold=$(metric hongbao_heap_bytes)
kill -KILL "$SPID"
wait "$SPID" 2>/dev/null || true
rm -f "$WORK/server.pid"
start_hongbao --config hot.toml
heap_back=$(metric hongbao_heap_bytes)
hwm_kb=$(awk '/VmHWM/ {print $2}' "/proc/$SPID/status")
wait_for hongbao_im_cold_entries "$appends"
heap_back_cold=$(metric hongbao_heap_bytes)
python3 - "$sends" "$appends" "$heap0" "$heap_hot" "$heap_cold" "$heap_back" "$heap_back_cold" "$hwm_kb" <<'PY'
import sys
sends, appends, h0, hot, cold, back, back_cold, hwm_kb = map(int, sys.argv[1:])
per = lambda h: (h - h0) / sends
print(f"sends {sends:,} ({appends:,} stream entries), heap at start {h0 / 1e6:.1f} MB")
print(f"after the load, in memory: {hot / 1e6:.1f} MB, {per(hot):.0f} bytes per send")
print(f"all entries cold:          {cold / 1e6:.1f} MB, {per(cold):.0f} bytes per send")
print(f"after kill -9 and recovery: {back / 1e6:.1f} MB ({per(back):.0f} bytes per send), "
      f"cold again {back_cold / 1e6:.1f} MB ({per(back_cold):.0f} bytes per send); "
      f"recovery peak RSS (VmHWM) {hwm_kb / 1e3:.0f} MB")
PY
