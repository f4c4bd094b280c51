#!/usr/bin/env bash
# Resource limits for a dedicated hongbao host.
#   check (default): print each limit, what we recommend and why; exit 1 if any falls short.
#   apply:           write /etc/security/limits.d/90-hongbao.conf and raise fs.nr_open, so new
#                    login sessions get the limits (running processes keep theirs).
# docs/TUNING.md explains each setting and how to verify it.
set -euo pipefail
mode=${1:-check}
memlock_kib_want=$((512 * 1024))   # glommio pins io_uring rings and buffers: 512 MiB
nofile_want=1048576                # a million sockets plus files per process
nr_open_want=$nofile_want

short=0
row() { # name current wanted why
  local ok="ok"
  if [ "$2" != "unlimited" ] && [ "$2" -lt "$3" ]; then ok="LOW"; short=1; fi
  printf '%-28s %-12s %-12s %-4s %s\n' "$1" "$2" "$3" "$ok" "$4"
}

case "$mode" in
  check)
    printf '%-28s %-12s %-12s %-4s %s\n' setting current wanted "" why
    row "ulimit -l (memlock, KiB)" "$(ulimit -l)" "$memlock_kib_want" "glommio locks io_uring memory; default 8 MiB fails under load"
    row "ulimit -n (nofile)" "$(ulimit -n)" "$nofile_want" "one descriptor per client connection"
    row "fs.nr_open" "$(cat /proc/sys/fs/nr_open)" "$nr_open_want" "kernel cap on ulimit -n"
    exit $short
    ;;
  apply)
    [ "$(id -u)" = 0 ] || { echo "apply needs root" >&2; exit 2; }
    cat > /etc/security/limits.d/90-hongbao.conf <<CONF
# Written by hongbao tuning/limits.sh apply
*    soft    memlock    $memlock_kib_want
*    hard    memlock    $memlock_kib_want
*    soft    nofile     $nofile_want
*    hard    nofile     $nofile_want
CONF
    if [ "$(cat /proc/sys/fs/nr_open)" -lt "$nr_open_want" ]; then
      sysctl -q -w fs.nr_open="$nr_open_want"
      echo "fs.nr_open = $nr_open_want" > /etc/sysctl.d/90-hongbao.conf
    fi
    echo "wrote /etc/security/limits.d/90-hongbao.conf; log in again (or use prlimit) and run: $0 check"
    ;;
  *)
    echo "usage: $0 [check|apply]" >&2
    exit 2
    ;;
esac
