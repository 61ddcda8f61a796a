#!/usr/bin/env bash
# Sets up and tears down the host side of the real test node described in
# hack/testnode.env: its address, the pod network's CNI configuration, and everything the
# node's processes change on the host. tests/src/node starts the processes in between.
#
#   hack/testnode.sh up      tear down any leftovers, then create the node's network
#   hack/testnode.sh down    remove everything a node (running, finished or crashed) left
#
# Both need root and are idempotent. `down` works from what is on the host, not from what a
# run remembers, so it also cleans up after a run that was killed: processes, containers,
# mounts, network namespaces, iptables chains, interfaces, cgroups, sysctls, log links.
#
# The caller that starts the node holds the lock TESTNODE_STATE_DIR.lock for the node's whole
# life and passes --locked; run by hand, the script takes the lock itself.
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/testnode.env
source "$here/testnode.env"

trap 'log "failed (line $LINENO): $BASH_COMMAND"' ERR

state=$TESTNODE_STATE_DIR
lock=$TESTNODE_STATE_DIR.lock
# Fixed host paths the components write to whatever their configuration says: the kubelet's
# device plugin sockets and container log links, libcni's result cache, the runc shims'
# sockets. `up` lists here those that did not exist before, which `down` removes.
host_dirs=(/var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni /run/containerd)
created_host_dirs=$state/created-host-dirs
saved_sysctls=$state/sysctl.saved

# What the kubelet (protectKernelDefaults: false) and kube-proxy may change; saved at `up`,
# put back at `down`.
sysctls=(
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes
  net.ipv4.ip_forward net.ipv4.conf.all.route_localnet
  net.bridge.bridge-nf-call-iptables net.netfilter.nf_conntrack_max
)

log() { echo "testnode: $*" >&2; }

die() {
  log "$*"
  exit 1
}

usage() { die "usage: $0 up|down [--locked]"; }

# Processes whose command line names the state directory: containerd, its shims (their
# -address is the node's socket), the kubelet, kube-proxy, kube-scheduler.
kill_node_processes() {
  local pid
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    [[ $pid == "$$" ]] && continue
    if { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "$state/"; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

# The pods' processes live in the node's cgroup under every controller; kill them all, then
# remove the cgroups depth first.
remove_pod_cgroups() {
  local controller group attempt
  for controller in /sys/fs/cgroup/*/; do
    group=${controller%/}$TESTNODE_CGROUP_ROOT
    [[ -d $group ]] || continue
    for attempt in $(seq 50); do
      local pids
      pids=$(find "$group" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)
      [[ -z $pids ]] && break
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
      sleep 0.1
    done
    find "$group" -depth -type d -exec rmdir {} + 2>/dev/null || true
    if [[ -d $group ]]; then
      log "cgroup $group could not be removed after $attempt attempts"
    fi
  done
}

# Overlay root filesystems, secret tmpfs, /dev/shm of sandboxes, network namespace bind
# mounts: every mount below the state directory, deepest first.
unmount_node_mounts() {
  local mount_point
  awk -v prefix="$state/" 'index($5, prefix) == 1 {print length($5), $5}' /proc/self/mountinfo |
    sort -rn | cut -d' ' -f2- |
    while read -r mount_point; do
      umount -l "$(printf '%b' "$mount_point")" 2>/dev/null || true
    done
}

# Rules of the kubelet and kube-proxy (KUBE-*) and of CNI plugins (CNI-*): the jumps into
# those chains from built-in chains, then the chains themselves.
remove_iptables_chains() {
  local iptables table rule chain
  for iptables in iptables ip6tables; do
    command -v "$iptables" >/dev/null || continue
    for table in filter nat mangle; do
      "$iptables" -t "$table" -S >/dev/null 2>&1 || continue
      "$iptables" -t "$table" -S | awk '/^-A / && $2 !~ /^(KUBE-|CNI-)/ && / -j (KUBE-|CNI-)/' |
        while read -r rule; do
          # shellcheck disable=SC2086
          eval "$iptables -t $table ${rule/-A/-D}" 2>/dev/null || true
        done
      for chain in $("$iptables" -t "$table" -S | awk '/^-N (KUBE-|CNI-)/ {print $2}'); do
        "$iptables" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$iptables" -t "$table" -S | awk '/^-N (KUBE-|CNI-)/ {print $2}'); do
        "$iptables" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

remove_links() {
  local veth
  if ip link show "$TESTNODE_BRIDGE" >/dev/null 2>&1; then
    for veth in $(ip -o link show master "$TESTNODE_BRIDGE" | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link delete "$veth" 2>/dev/null || true
    done
    ip link delete "$TESTNODE_BRIDGE"
  fi
  if ip link show "$TESTNODE_LINK" >/dev/null 2>&1; then
    # Deleting one end of the veth pair deletes the other.
    ip link delete "$TESTNODE_LINK"
  fi
}

restore_sysctls() {
  [[ -f $saved_sysctls ]] || return 0
  local name value
  while read -r name value; do
    sysctl -q -w "$name=$value" >/dev/null 2>&1 || log "could not restore $name=$value"
  done <"$saved_sysctls"
}

save_sysctls() {
  local name value
  : >"$saved_sysctls"
  for name in "${sysctls[@]}"; do
    value=$(sysctl -n "$name" 2>/dev/null) || continue
    printf '%s %s\n' "$name" "$value" >>"$saved_sysctls"
  done
}

down() {
  kill_node_processes
  remove_pod_cgroups
  # A killed shim leaves its container's processes to the cgroup sweep above; only then do
  # the mounts they held come free.
  unmount_node_mounts
  remove_iptables_chains
  remove_links
  if command -v conntrack >/dev/null; then
    conntrack -D --orig-src "$TESTNODE_POD_CIDR" >/dev/null 2>&1 || true
  fi
  restore_sysctls
  # The kubelet links every container log into this fixed directory.
  if [[ -d /var/log/containers ]]; then
    find /var/log/containers -maxdepth 1 -lname "$state/*" -delete
  fi
  if [[ -f $created_host_dirs ]]; then
    xargs -r rm -rf <"$created_host_dirs"
  fi
  # libcni caches each attachment's result under /var/lib/cni, keyed by the network name.
  rm -f /var/lib/cni/results/"$TESTNODE_CNI_NETWORK"-* 2>/dev/null || true
  rm -rf "$state"
}

up() {
  if [[ ! -d $state ]] && iptables -S 2>/dev/null | grep -q -- '-N KUBE-'; then
    die "iptables already has KUBE-* chains that are not the test node's: is this machine a Kubernetes node? Refusing to start a test node beside it."
  fi
  down
  mkdir -p "$state/cni/net.d" "$state/cni/ipam"
  local dir
  for dir in "${host_dirs[@]}"; do
    [[ -e $dir ]] || echo "$dir" >>"$created_host_dirs"
  done
  save_sysctls
  # The kubelet's cgroupRoot must exist under every controller; it creates the rest.
  local controller
  for controller in /sys/fs/cgroup/*/; do
    mkdir -p "${controller%/}$TESTNODE_CGROUP_ROOT"
  done
  # The kernel may lack the dummy driver; a veth pair whose far end stays unused is an
  # interface with carrier just the same.
  ip link add "$TESTNODE_LINK" type veth peer name "${TESTNODE_LINK}peer"
  ip address add "$TESTNODE_IP/32" dev "$TESTNODE_LINK"
  ip link set "${TESTNODE_LINK}peer" up
  ip link set "$TESTNODE_LINK" up
  # No masquerading and no default route: a pod reaches this range (the node, the Services,
  # other pods) and nothing else.
  cat >"$state/cni/net.d/10-$TESTNODE_CNI_NETWORK.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "$TESTNODE_CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$TESTNODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$state/cni/ipam",
        "ranges": [[{ "subnet": "$TESTNODE_POD_CIDR", "gateway": "$TESTNODE_POD_GATEWAY" }]],
        "routes": [{ "dst": "198.18.0.0/15" }]
      }
    }
  ]
}
JSON
}

main() {
  (($# >= 1)) || usage
  local command=$1 locked=false
  shift
  while (($#)); do
    case $1 in
      --locked) locked=true ;;
      *) usage ;;
    esac
    shift
  done
  ((EUID == 0)) || die "the test node needs root (it creates interfaces, cgroups and mounts)"
  if ! $locked; then
    exec 9>"$lock"
    flock -w 60 9 || die "another test node holds $lock"
  fi
  case $command in
    up) up ;;
    down) down ;;
    *) usage ;;
  esac
}

main "$@"
