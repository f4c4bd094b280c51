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
