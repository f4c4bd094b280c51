#!/usr/bin/env bash
# CPUs and memory for a dedicated hongbao host: the frequency governor of the serving CPUs,
# transparent huge pages, reserved huge pages, automatic NUMA page migration, and isolating the
# serving CPUs from the scheduler, timer ticks and RCU callbacks (a boot-time setting).
#
# usage: tuning/cpu.sh [check|apply] [SERVING_CPUS]
#        SERVING_CPUS: the CPUs given to `hongbao serve --cpus`, e.g. 1-7 (default: every online
#        CPU; isolation is checked only when they leave at least one CPU to the host).
#        docs/TUNING.md, "tuning/cpu.sh"
set -euo pipefail
MODE=${1:-check}
# shellcheck source=tuning/lib.sh
source "$(dirname "$0")/lib.sh"
ONLINE=$(cat /sys/devices/system/cpu/online)
SERVING=${2:-$ONLINE}

expand_cpus() { # "0-2,5" -> "0 1 2 5"
  local part out=()
  IFS=, read -ra parts <<<"$1"
  for part in "${parts[@]}"; do
    if [[ $part == *-* ]]; then out+=($(seq "${part%-*}" "${part#*-}")); else out+=("$part"); fi
  done
  echo "${out[@]}"
}

header
# Frequency governor.
found=0
for c in $(expand_cpus "$SERVING"); do
  g=/sys/devices/system/cpu/cpu$c/cpufreq/scaling_governor
  [ -e "$g" ] || continue
  found=1
  sysfs_eq "$g" performance "full clock at once: 'powersave'/'schedutil' ramp up after load arrives, and that ramp is tail latency" "cpu$c governor"
done
if [ "$found" = 0 ]; then
  row "cpu governor" "(no cpufreq)" performance "-" "no frequency scaling exposed (a VM, or the clock is fixed): nothing to do"
fi

# Huge pages.
sysfs_eq /sys/kernel/mm/transparent_hugepage/enabled madvise \
  "'always' lets page faults and khugepaged compact memory under a serving thread (ms stalls); hongbao asks for none" "transparent_hugepage/enabled"
sysfs_eq /sys/kernel/mm/transparent_hugepage/defrag madvise \
  "no direct compaction on faults outside madvise'd areas" "transparent_hugepage/defrag"
HP=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
if [ "$HP" = 0 ]; then
  row vm.nr_hugepages 0 0 ok "hongbao maps no hugetlbfs pages: reserved ones would be memory nobody uses"
else
  row vm.nr_hugepages "$HP" 0 note "hongbao maps no hugetlbfs pages; these $HP are reserved for something else (left alone)"
fi

# NUMA: automatic page migration stalls the thread whose pages move.
sysctl_eq kernel.numa_balancing 0 \
  "each core's memory is its own already; automatic migration only adds page-fault stalls"

# Isolation (kernel command line; takes a reboot).
if [ "$SERVING" = "$ONLINE" ]; then
  row "isolated CPUs" "$(cat /sys/devices/system/cpu/isolated)" "(serving CPUs)" note \
    "pass the serving CPUs (leaving one or more to the host, its interrupts and the commit helpers) to check isolation"
else
  cmdline=$(cat /proc/cmdline)
  for p in isolcpus nohz_full rcu_nocbs; do
    cur=$(grep -o "\b$p=[^ ]*" <<<"$cmdline" | cut -d= -f2- || true)
    want=$SERVING
    [ "$p" = isolcpus ] && want="managed_irq,domain,$SERVING"
    if [ "$cur" = "$want" ]; then
      row "boot: $p" "$cur" "$want" ok "serving CPUs free of other tasks, timer ticks and RCU callbacks"
    else
      row "boot: $p" "${cur:-(none)}" "$want" LOW "serving CPUs free of other tasks, timer ticks and RCU callbacks"
      SHORT=1
    fi
  done
  if [ "$SHORT" = 1 ] && ! grep -q "nohz_full=$SERVING" /proc/cmdline; then
    if [ -d /etc/default/grub.d ] || [ -e /etc/default/grub ]; then
      ARGS="isolcpus=managed_irq,domain,$SERVING nohz_full=$SERVING rcu_nocbs=$SERVING"
      CHANGES+=("cmd:add '$ARGS' to the kernel command line in /etc/default/grub.d/90-hongbao.cfg (then: update-grub, reboot)|mkdir -p /etc/default/grub.d && echo 'GRUB_CMDLINE_LINUX_DEFAULT=\"\$GRUB_CMDLINE_LINUX_DEFAULT $ARGS\"' > /etc/default/grub.d/90-hongbao.cfg && echo 'now run update-grub and reboot'")
    else
      CHANGES+=("manual:no GRUB here: add isolcpus=managed_irq,domain,$SERVING nohz_full=$SERVING rcu_nocbs=$SERVING to the kernel command line of your boot loader, and reboot")
    fi
  fi
fi
finish /etc/sysctl.d/92-hongbao-cpu.conf
