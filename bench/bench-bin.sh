#!/usr/bin/env bash
# Builds the pipeline benchmark binary (release profile) and prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench pipeline --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "pipeline":
        print(m["executable"])'
