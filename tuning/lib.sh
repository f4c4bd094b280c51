# Sourced by the tuning scripts: one row per setting (current value, wanted value, ok/LOW/
# note, why), and in apply mode the change itself, made persistent where Linux has a place for
# it (/etc/sysctl.d for sysctls, /etc/tmpfiles.d for /sys files).
#   check (default): prints the rows and what apply would change; exits 1 if anything is short.
#   apply:           root; makes the changes (run check again afterwards to see them hold).
# docs/TUNING.md explains every setting and how to verify it worked.

MODE=${MODE:-check}
SHORT=0
CHANGES=()

case "$MODE" in
  check | apply) ;;
  *) echo "usage: $0 [check|apply] (see docs/TUNING.md)" >&2; exit 2 ;;
esac
if [ "$MODE" = apply ] && [ "$(id -u)" != 0 ]; then
  echo "apply needs root" >&2
  exit 2
fi

header() {
  printf '%-44s %-22s %-22s %-5s %s\n' setting current wanted "" why
}

row() { # name current wanted verdict why
  printf '%-44s %-22s %-22s %-5s %s\n' "$1" "$2" "$3" "$4" "$5"
}

# The first number of a sysctl (or /sys) value; the whole value when it is not a number.
first_field() { awk '{print $1}' <<<"$1"; }

sysctl_path() { echo "/proc/sys/${1//.//}"; }

# sysctl_min NAME WANT WHY [FIELD]: the value (its FIELD-th number, default 1) must be >= WANT.
# apply sets that field to WANT and keeps the others.
sysctl_min() {
  local name=$1 want=$2 why=$3 field=${4:-1} path cur v
  path=$(sysctl_path "$name")
  if [ ! -e "$path" ]; then
    row "$name" "(absent)" ">= $want" "-" "$why (not in this kernel: nothing to do)"
    return
  fi
  cur=$(tr '\t' ' ' < "$path" | tr -s ' ')
  v=$(awk -v f="$field" '{print $f}' <<<"$cur")
  local shown=">= $want"
  [ "$field" = 1 ] || shown="field $field >= $want"
  if [ "$v" -ge "$want" ]; then
    row "$name" "$cur" "$shown" ok "$why"
  else
    local new
    new=$(awk -v f="$field" -v w="$want" '{ $f = w; print }' <<<"$cur")
    row "$name" "$cur" "$shown" LOW "$why"
    SHORT=1
    CHANGES+=("sysctl:$name=$new")
  fi
}

# sysctl_eq NAME WANT WHY: the value must be exactly WANT (whitespace-insensitive).
sysctl_eq() {
  local name=$1 want=$2 why=$3 path cur
  path=$(sysctl_path "$name")
  if [ ! -e "$path" ]; then
    row "$name" "(absent)" "$want" "-" "$why (not in this kernel: nothing to do)"
    return
  fi
  cur=$(tr '\t' ' ' < "$path" | tr -s ' ')
  if [ "$cur" = "$want" ]; then
    row "$name" "$cur" "$want" ok "$why"
  else
    row "$name" "$cur" "$want" LOW "$why"
    SHORT=1
    CHANGES+=("sysctl:$name=$want")
  fi
}

# sysfs_eq PATH WANT WHY [LABEL]: a /sys file must read WANT; files like THP's show the choice
# in brackets ("always [madvise] never"), which counts as that value.
sysfs_eq() {
  local path=$1 want=$2 why=$3 label=${4:-$1} cur
  if [ ! -e "$path" ]; then
    row "$label" "(absent)" "$want" "-" "$why (not on this host: nothing to do)"
    return
  fi
  cur=$(cat "$path")
  if [[ "$cur" == *"["*"]"* ]]; then
    cur=$(sed 's/.*\[\(.*\)\].*/\1/' <<<"$cur")
  fi
  if [ "$cur" = "$want" ]; then
    row "$label" "$cur" "$want" ok "$why"
  else
    row "$label" "$cur" "$want" LOW "$why"
    SHORT=1
    CHANGES+=("sysfs:$path=$want")
  fi
}

# CHANGES entries: "sysctl:NAME=VALUE", "sysfs:PATH=VALUE", "cmd:WHAT IT DOES|COMMAND", and
# "manual:WHAT TO DO" for steps a script cannot take (apply then exits 1).
# Prints what apply changes (check) or changes it (apply), then exits: 0 when nothing was
# short, 1 when something was (check) or when a change did not take (apply).
finish() {
  local conf=$1 # the /etc/sysctl.d file this script owns
  if [ ${#CHANGES[@]} -eq 0 ]; then
    echo "nothing to change"
    exit 0
  fi
  if [ "$MODE" = check ]; then
    echo "apply would:"
    local c
    for c in "${CHANGES[@]}"; do
      case $c in
        sysctl:*) echo "  sysctl -w '${c#sysctl:}'   (and keep it in $conf)" ;;
        sysfs:*) echo "  write '${c#*=}' to ${c%%=*}" | sed 's/sysfs://'
                 echo "    (and keep it in /etc/tmpfiles.d/hongbao.conf)" ;;
        cmd:*) c=${c#cmd:}; echo "  ${c%%|*}" ;;
        manual:*) echo "  by hand: ${c#manual:}" ;;
      esac
    done
    exit "$SHORT"
  fi
  local c failed=0
  for c in "${CHANGES[@]}"; do
    case $c in
      sysctl:*)
        local kv=${c#sysctl:}
        sysctl -q -w "$kv" || failed=1
        mkdir -p /etc/sysctl.d
        touch "$conf"
        grep -v "^${kv%%=*} *=" "$conf" > "$conf.new" || true
        echo "${kv%%=*} = ${kv#*=}" >> "$conf.new"
        mv "$conf.new" "$conf"
        echo "set ${kv%%=*} = ${kv#*=} (kept in $conf)"
        ;;
      sysfs:*)
        local p=${c#sysfs:}; p=${p%%=*}
        local v=${c#*=}
        if echo "$v" > "$p" 2>/dev/null; then
          mkdir -p /etc/tmpfiles.d
          touch /etc/tmpfiles.d/hongbao.conf
          grep -v " $p " /etc/tmpfiles.d/hongbao.conf > /etc/tmpfiles.d/hongbao.conf.new || true
          echo "w $p - - - - $v" >> /etc/tmpfiles.d/hongbao.conf.new
          mv /etc/tmpfiles.d/hongbao.conf.new /etc/tmpfiles.d/hongbao.conf
          echo "wrote $v to $p (kept in /etc/tmpfiles.d/hongbao.conf)"
        else
          echo "could not write $v to $p" >&2
          failed=1
        fi
        ;;
      cmd:*)
        c=${c#cmd:}
        echo "${c%%|*}"
        bash -c "${c#*|}" || failed=1
        ;;
      manual:*)
        echo "by hand (not done): ${c#manual:}" >&2
        failed=1
        ;;
    esac
  done
  exit "$failed"
}
