#!/usr/bin/env bash
# Network settings for a dedicated hongbao host (and for the host that runs the load
# generator): listen backlogs, packet backlog, ephemeral ports, TIME_WAIT reuse, socket buffer
# ceilings, the file table and the connection-tracking table.
#
# usage: tuning/net.sh [check|apply]     (docs/TUNING.md, "tuning/net.sh")
set -euo pipefail
MODE=${1:-check}
# shellcheck source=tuning/lib.sh
source "$(dirname "$0")/lib.sh"
CONF=/etc/sysctl.d/91-hongbao-net.conf

header
sysctl_min net.core.somaxconn 65535 \
  "the server listens with backlog 65,535; the kernel cuts it to this, and a burst of connects beyond it waits for SYN retries (1 s, 3 s, ...)"
sysctl_min net.ipv4.tcp_max_syn_backlog 65535 \
  "half-open connections queued per listener during a connect storm"
sysctl_min net.core.netdev_max_backlog 16384 \
  "packets queued per CPU before the stack takes them (loopback traffic too); drops show in /proc/net/softnet_stat column 2"
# Ports for outgoing connections: all of 1024..65535.
read -r PORT_LOW PORT_HIGH < /proc/sys/net/ipv4/ip_local_port_range
if [ "$PORT_LOW" -le 1024 ] && [ "$PORT_HIGH" -ge 65535 ]; then
  row net.ipv4.ip_local_port_range "$PORT_LOW $PORT_HIGH" "1024 65535" ok \
    "ports for outgoing connections (load generators): 64,512 per source address and target"
else
  row net.ipv4.ip_local_port_range "$PORT_LOW $PORT_HIGH" "1024 65535" LOW \
    "ports for outgoing connections (load generators): 64,512 per source address and target"
  SHORT=1
  CHANGES+=("sysctl:net.ipv4.ip_local_port_range=1024 65535")
fi
sysctl_eq net.ipv4.tcp_tw_reuse 1 \
  "reuse TIME_WAIT ports for new outgoing connections (2, the default, does it for loopback only)"
sysctl_min net.core.rmem_max 16777216 "ceiling for SO_RCVBUF set by a program"
sysctl_min net.core.wmem_max 16777216 "ceiling for SO_SNDBUF set by a program"
sysctl_min net.ipv4.tcp_rmem 16777216 \
  "TCP receive autotuning ceiling (the default and minimum stay: an idle connection keeps none)" 3
sysctl_min net.ipv4.tcp_wmem 16777216 \
  "TCP send autotuning ceiling: pipelined replies to a slow reader queue here, not in the server" 3
sysctl_min fs.file-max 4194304 "open files on the whole host: two per loopback connection when client and server share it"
sysctl_min net.netfilter.nf_conntrack_max 1048576 \
  "with connection tracking loaded, every connection (loopback too) takes an entry; a full table drops new SYNs ('nf_conntrack: table full' in dmesg)"

finish "$CONF"
