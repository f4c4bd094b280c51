# Sourced by the HTTP benchmarks: builds the release binary and prepares, in a temporary
# directory, the demo event, an auth key file and 10,000 users' auth tokens for the wrk script.
# Sets BIN and WORK; servers started by the caller write their PIDs to "$WORK"/*.pid and are
# killed (with KILL_SIGNAL, default TERM) and the directory removed on exit.
cargo build --release --quiet
BIN=$PWD/target/release/hongbao
WORK=$(mktemp -d)
trap 'kill -"${KILL_SIGNAL:-TERM}" $(cat "$WORK"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
(cd "$WORK" && "$BIN" demo --dir ev --no-serve --seed 1 >/dev/null)
"$BIN" auth-keys --out "$WORK/auth.keys" >/dev/null
"$BIN" auth-token --auth-keys "$WORK/auth.keys" --uid 1 --count 10000 > "$WORK/tokens.txt"

# start_nginx PORT: nginx with one worker pinned to SERVER_CPU, access log off, answering
# `return 200 "ok"` on 127.0.0.1:PORT; sets NG_WORKER to the worker's PID.
start_nginx() {
  cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx.pidfile;
error_log $WORK/nginx.err;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 100000000;
  server { listen 127.0.0.1:$1 reuseport; location / { return 200 "ok"; } }
}
CONF
  (exec taskset -c "${SERVER_CPU:-0}" nginx -c "$WORK/nginx.conf" -p "$WORK") &
  echo $! > "$WORK/nginx.pid"
  for _ in $(seq 50); do
    NG_WORKER=$(pgrep -P "$(cat "$WORK/nginx.pid")" | head -1) && [ -n "$NG_WORKER" ] && break
    sleep 0.1
  done
}

# start_hongbao [SERVE ARGS...]: `hongbao serve` on the demo event, one core pinned to
# SERVER_CPU, on ephemeral loopback ports; waits until it is ready and sets SPID (its PID),
# TARGET (the binary address) and HTTP_ADDR (the HTTP address).
start_hongbao() {
  (cd "$WORK" && exec taskset -c "${SERVER_CPU:-0}" "$BIN" serve --tickets ev/event/A \
    --keyring ev/keys/demo.keyring --data data --auth-keys auth.keys --cores 1 \
    --cpus "${SERVER_CPU:-0}" --rehearse --listen 127.0.0.1:0 --http 127.0.0.1:0 "$@" \
    > serve.out 2> serve.err) &
  echo $! > "$WORK/server.pid"
  for _ in $(seq 100); do grep -q ready "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
  SPID=$(cat "$WORK/server.pid")
  TARGET=$(awk '/ready/ {print $5}' "$WORK/serve.out")
  HTTP_ADDR=$(grep -o 'http [0-9.:]*' "$WORK/serve.out" | cut -d' ' -f2)
}
