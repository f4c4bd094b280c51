#!/usr/bin/env bash
# Every tuning script in turn (limits, network, interrupts, CPUs and memory).
#
# usage: tuning/all.sh [check|apply] [SERVING_CPUS]
#   check (default): what each script finds and what apply would change; exit 1 if anything
#                    falls short, 2 on bad usage.
#   apply:           root; every change (docs/TUNING.md says what and why; run check after).
set -uo pipefail
dir=$(dirname "$0")
mode=${1:-check}
cpus=${2:-}
case "$mode" in
  check | apply) ;;
  *) echo "usage: $0 [check|apply] [SERVING_CPUS]" >&2; exit 2 ;;
esac
worst=0
for script in limits net irq cpu; do
  echo "== tuning/$script.sh $mode${cpus:+ $cpus}"
  if [ "$script" = irq ] || [ "$script" = cpu ]; then
    bash "$dir/$script.sh" "$mode" ${cpus:+"$cpus"}
  else
    bash "$dir/$script.sh" "$mode"
  fi
  rc=$?
  [ "$rc" -gt "$worst" ] && worst=$rc
  echo
done
exit "$worst"
