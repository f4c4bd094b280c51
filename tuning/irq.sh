#!/usr/bin/env bash
# Interrupts and packet steering for each physical NIC: its queue interrupts spread one per
# serving CPU (IRQ affinity), transmit queues mapped to the CPUs that send on them (XPS), receive
# packet steering (RPS) only when the NIC has fewer receive queues than serving CPUs, and
# irqbalance stopped (it rewrites affinities every few seconds).
#
# usage: tuning/irq.sh [check|apply] [CPUS]     CPUS: the serving CPUs, e.g. 0-7 or 2,3
#        (default: every online CPU); docs/TUNING.md, "tuning/irq.sh"
set -euo pipefail
MODE=${1:-check}
# shellcheck source=tuning/lib.sh
source "$(dirname "$0")/lib.sh"

# "0-2,5" -> "0 1 2 5"
expand_cpus() {
  local part out=()
  IFS=, read -ra parts <<<"$1"
  for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then
      out+=($(seq "${part%-*}" "${part#*-}"))
    else
      out+=("$part")
    fi
  done
  echo "${out[@]}"
}

# CPU numbers -> the kernel's hex mask ("3", "10"; 32-bit groups joined by commas above 32).
cpu_mask() {
  local groups=() c g
  for c in "$@"; do
    g=$((c / 32))
    while [ ${#groups[@]} -le "$g" ]; do groups+=(0); done
    groups[g]=$((groups[g] | (1 << (c % 32))))
  done
  local out="" i
  for ((i = ${#groups[@]} - 1; i >= 0; i--)); do
    if [ -z "$out" ]; then out=$(printf '%x' "${groups[i]}"); else out="$out,$(printf '%08x' "${groups[i]}")"; fi
  done
  echo "${out:-0}"
}

# A mask as one number-like string without commas or leading zeros, for comparisons.
norm_mask() { local m=${1//,/}; m=${m##+(0)}; m=$(sed 's/^0*//' <<<"$m"); echo "${m:-0}"; }

CPUS=$(expand_cpus "${2:-$(cat /sys/devices/system/cpu/online)}")
read -ra CPU_LIST <<<"$CPUS"
N=${#CPU_LIST[@]}

header
if pgrep -x irqbalance >/dev/null; then
  row irqbalance running stopped LOW "it moves NIC interrupts every few seconds, undoing the affinities below"
  SHORT=1
  CHANGES+=("cmd:stop and disable irqbalance|systemctl disable --now irqbalance 2>/dev/null || pkill -x irqbalance")
else
  row irqbalance "not running" stopped ok "it would move NIC interrupts, undoing the affinities below"
fi

nics=0
for dev in /sys/class/net/*; do
  nic=$(basename "$dev")
  [ -e "$dev/device" ] || continue # loopback, bridges, veth, ifb: no hardware queues
  nics=$((nics + 1))
  # The NIC's interrupts: the PCI function's MSI vectors (a virtio NIC's are on its parent).
  pci=$(readlink -f "$dev/device")
  [ -d "$pci/msi_irqs" ] || pci=$(dirname "$pci")
  irqs=()
  if [ -d "$pci/msi_irqs" ]; then
    mapfile -t irqs < <(ls "$pci/msi_irqs" | sort -n)
  fi
  rxq=$(ls -d "$dev"/queues/rx-* 2>/dev/null | wc -l)
  txq=$(ls -d "$dev"/queues/tx-* 2>/dev/null | wc -l)
  row "$nic" "${rxq} rx / ${txq} tx queues" ">= $N each" \
    "$([ "$rxq" -ge "$N" ] && echo ok || echo note)" \
    "one queue per serving CPU keeps each CPU's packets on that CPU (ethtool -L $nic combined $N, if the NIC has them)"
  # Queue interrupts, one per serving CPU in turn.
  k=0
  for irq in "${irqs[@]}"; do
    f=/proc/irq/$irq/smp_affinity_list
    [ -e "$f" ] || continue
    name=$(awk -v i="$irq:" '$1 == i {print $NF}' /proc/interrupts)
    # Configuration and admin vectors carry no packets; leave them where they are.
    case $name in *config* | *async* | *-aq*) continue ;; esac
    # Queue k's vectors (rx and tx of a pair alike) go to serving CPU k mod N: the queue number
    # is the last number of the vector's name ("virtio2-input.0", "eth0-TxRx-3",
    # "mlx5_comp3@pci:..."), or the vector's place in the list when the name has none.
    qi=$(sed -E 's/@.*//; s/^.*[^0-9]([0-9]+)$/\1/' <<<"$name")
    [[ $qi =~ ^[0-9]+$ ]] || qi=$k
    want=${CPU_LIST[qi % N]}
    cur=$(cat "$f")
    if [ "$cur" = "$want" ]; then
      row "irq $irq ($name)" "$cur" "$want" ok "interrupt of $nic on one serving CPU"
    else
      row "irq $irq ($name)" "$cur" "$want" LOW "interrupt of $nic on one serving CPU"
      SHORT=1
      CHANGES+=("sysfs:$f=$want")
    fi
    k=$((k + 1))
  done
  # RPS: only when receive queues are fewer than serving CPUs.
  for q in "$dev"/queues/rx-*; do
    [ -e "$q/rps_cpus" ] || continue
    if [ "$rxq" -lt "$N" ]; then want=$(cpu_mask "${CPU_LIST[@]}"); else want=0; fi
    cur=$(cat "$q/rps_cpus")
    if [ "$(norm_mask "$cur")" = "$(norm_mask "$want")" ]; then
      row "$nic $(basename "$q") rps_cpus" "$cur" "$want" ok "spread receive work over the serving CPUs only when queues are fewer"
    else
      row "$nic $(basename "$q") rps_cpus" "$cur" "$want" LOW "spread receive work over the serving CPUs only when queues are fewer"
      SHORT=1
      CHANGES+=("sysfs:$q/rps_cpus=$want")
    fi
  done
  # XPS: serving CPU j sends on queue j mod txq.
  t=0
  for q in "$dev"/queues/tx-*; do
    if [ -e "$q/xps_cpus" ]; then
      mine=()
      for ((j = 0; j < N; j++)); do
        [ $((j % txq)) -eq "$t" ] && mine+=("${CPU_LIST[j]}")
      done
      want=$(cpu_mask "${mine[@]}")
      if ! cur=$(cat "$q/xps_cpus" 2>/dev/null); then
        row "$nic $(basename "$q") xps_cpus" "(unsupported)" "-" "-" "a single-queue device has no XPS: nothing to do"
        t=$((t + 1))
        continue
      fi
      if [ "$(norm_mask "$cur")" = "$(norm_mask "$want")" ]; then
        row "$nic $(basename "$q") xps_cpus" "$cur" "$want" ok "each CPU sends on its own queue: no lock shared between CPUs"
      else
        row "$nic $(basename "$q") xps_cpus" "$cur" "$want" LOW "each CPU sends on its own queue: no lock shared between CPUs"
        SHORT=1
        CHANGES+=("sysfs:$q/xps_cpus=$want")
      fi
    else
      row "$nic $(basename "$q") xps_cpus" "(absent)" "-" "-" "the kernel or driver has no XPS for this queue: nothing to do"
    fi
    t=$((t + 1))
  done
done
if [ "$nics" = 0 ]; then
  row "(no physical NIC)" "-" "-" "-" "only loopback and virtual interfaces: nothing to steer"
fi
finish /etc/sysctl.d/91-hongbao-net.conf
