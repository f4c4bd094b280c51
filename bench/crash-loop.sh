#!/usr/bin/env bash
# The crash drill: N rounds (default 100) of pipelined shake/open load on a two-core server
# that is killed with SIGKILL (one round in four: stopped with SIGTERM) at a random moment and
# restarted on the same data, 20 rounds per data directory. A client records every
# acknowledged open; at the end every acknowledged open must be a durable claim of its user,
# no envelope claimed twice, no claim of an envelope not issued to its user, and at a SIGTERM
# no durable claim left unanswered. Prints the totals; exit 0 only if all hold.
#
#   bash bench/crash-loop.sh 1000                # about 15 minutes on 2 cores
#   HONGBAO_CRASH_SEED=42 bash bench/crash-loop.sh 50   # a run again, same random choices
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-100}"
echo "crash drill: $rounds rounds, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(uname -r)"
HONGBAO_CRASH_ROUNDS="$rounds" cargo test --release --test serve_crash -- --nocapture 2>&1 |
    grep --line-buffered -E "^crash test|test result|panicked|assertion"
