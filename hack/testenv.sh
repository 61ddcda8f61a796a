#!/usr/bin/env bash
# Provisions the test environment and the demo:
# - the binaries (nats-server, etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
#   kubelet, kube-proxy, kubectl, helm), built from the Go module proxy at the versions pinned
#   in hack/testenv.versions into a cache outside the repository keyed by version;
# - the deployment checkers, built the same way into the same directory: promtool (alerting
#   rules), kube-score (manifest lint) and hack/kstatus (Flux's kstatus verdict on an object);
# - versitygw, the S3-compatible object store with Object Lock for the archive output, built
#   the same way and, like the checkers, versioned beside its binary;
# - from Debian packages, installed when missing: the real node's container runtime
#   (containerd, runc, the CNI plugins, podman, iptables, conntrack), shellcheck, and lua5.1
#   (Argo CD's health checks run in a Lua 5.1 VM). That needs root; without it the script
#   says what is missing and goes on, and only the tests that need them are affected (they
#   say so).
#
# A rerun with a warm cache costs no build. Every binary is built into a temporary
# directory and moved into place only when the build succeeded, so an interrupted or failed
# build never leaves a binary that a later run would trust.
#
# The last line of standard output is the absolute path of the directory holding the
# binaries (progress goes to standard error).
#
#   hack/testenv.sh        everything the tests need (`make test`)
#   hack/testenv.sh demo   only what `make demo` runs: the checkers and the object store are
#                          the tests' alone (on 2 cores they are about 5 of the 16 cold minutes,
#                          promtool most of it), so a first demo does not wait for them
set -euo pipefail

target=${1:-test}
case $target in
  test | demo) ;;
  *)
    echo "usage: hack/testenv.sh [test|demo]" >&2
    exit 2
    ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/testenv.versions
source "$here/testenv.versions"

cache_root=${AUDIT_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/audit-operator/testenv}
key="k8s-${KUBERNETES}_etcd-${ETCD}_nats-${NATS_SERVER}_helm-${HELM}"
bin_dir="$cache_root/bin/$key"
mkdir -p "$bin_dir" "$cache_root/work"
# One provisioning at a time (parallel test binaries, a demo beside a test run); the lock
# also makes it safe to clear scratch directories left by an interrupted run.
exec 9>"$cache_root/.lock"
flock 9
rm -rf "${cache_root:?}/work/"*

# Never let the go command download a toolchain: this machine only reaches the module proxy.
export GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -trimpath" CGO_ENABLED=0

log() { echo "testenv: $*" >&2; }

# A full disk otherwise shows up later as a confusing failure (a linker error, mmdebstrap
# ending its process group, an etcd that will not start); say it first. A cold `make test`
# writes about 8 GiB (the Go builds here, the workspace's target directory, the images).
warn_when_disk_is_short() {
  local dir avail_kib
  for dir in "$cache_root" "$here/.."; do
    mkdir -p "$dir"
    avail_kib=$(df --output=avail -k "$dir" | tail -n 1)
    if ((avail_kib < 8 * 1024 * 1024)); then
      log "warning: $(cd "$dir" && pwd) has only $((avail_kib / 1024)) MiB free; a cold make test needs about 8 GiB"
    fi
  done
}
warn_when_disk_is_short

# install_binary NAME BUILD_COMMAND [VERSION]: runs BUILD_COMMAND with the target path as its
# last argument in a private temporary directory, then publishes the result atomically.
# A VERSION is for binaries outside the directory's key (the checkers): it is recorded
# beside the binary, written last, and a binary recorded with another version is rebuilt,
# so adding or bumping a checker rebuilds only that checker.
install_binary() {
  local name=$1 build=$2 version=${3:-}
  local stamp="$bin_dir/.$name.version"
  if [[ -x "$bin_dir/$name" ]] && { [[ -z $version ]] || [[ $(cat "$stamp" 2>/dev/null) == "$version" ]]; }; then
    log "$name: cached"
    return
  fi
  local scratch
  scratch=$(mktemp -d "$cache_root/work/$name.XXXXXX")
  # An interrupted build leaves only its scratch directory, never a published binary.
  trap 'rm -rf "$scratch"' EXIT
  log "$name: building (first run only; this takes minutes on 2 cores)"
  local started=$SECONDS
  # $build may carry arguments ("build_kubernetes_command kubelet"), hence no quotes.
  # shellcheck disable=SC2086
  if ! (cd "$scratch" && $build "$scratch/$name") >"$scratch/build.log" 2>&1; then
    log "$name: build failed; last lines of $scratch/build.log:"
    tail -n 30 "$scratch/build.log" >&2
    exit 1
  fi
  mv -f "$scratch/$name" "$bin_dir/$name.partial"
  mv -f "$bin_dir/$name.partial" "$bin_dir/$name"
  if [[ -n $version ]]; then
    echo "$version" >"$stamp.partial"
    mv -f "$stamp.partial" "$stamp"
  fi
  rm -rf "$scratch"
  trap - EXIT
  log "$name: built in $((SECONDS - started))s"
}

build_nats_server() {
  GOBIN="$PWD/gobin" go install "github.com/nats-io/nats-server/v2@${NATS_SERVER}"
  mv gobin/nats-server "$1"
}

build_helm() {
  GOBIN="$PWD/gobin" go install "helm.sh/helm/v3/cmd/helm@${HELM}"
  mv gobin/helm "$1"
}

build_promtool() {
  GOBIN="$PWD/gobin" go install "github.com/prometheus/prometheus/cmd/promtool@${PROMTOOL}"
  mv gobin/promtool "$1"
}

build_kube_score() {
  GOBIN="$PWD/gobin" go install "github.com/zegl/kube-score/cmd/kube-score@${KUBE_SCORE}"
  mv gobin/kube-score "$1"
}

# Its Makefile sets main.Version the same way, so the store's log names the pinned release.
build_versitygw() {
  GOBIN="$PWD/gobin" go install -ldflags "-X=main.Version=${VERSITYGW}" \
    "github.com/versity/versitygw/cmd/versitygw@${VERSITYGW}"
  mv gobin/versitygw "$1"
}

# The project's own small program on Flux's kstatus library: a throwaway module requires the
# library at its pinned version, and -mod=mod resolves the program's other imports to the
# versions that library's go.mod selects, never to whatever is newest.
build_kstatus() {
  go mod init testenv.local/kstatus
  cp "$here/kstatus/main.go" .
  go get "github.com/fluxcd/cli-utils@${FLUX_CLI_UTILS}"
  go build -mod=mod -o "$1" .
}

# etcd's server module carries replace directives, so `go install` refuses it; a throwaway
# module that requires it builds the same main package.
build_etcd() {
  go mod init testenv.local/etcd
  go get "go.etcd.io/etcd/server/v3@${ETCD}"
  go build -o "$1" go.etcd.io/etcd/server/v3
}

# k8s.io/kubernetes replaces its staging modules with local paths at v0.0.0. A throwaway
# module requires it and points every staging module at its published version instead; the
# list comes from that release's own go.mod, so a version bump needs no edit here.
# No `go mod tidy`: it would try to resolve test-only dependencies of the whole tree.
prepare_kubernetes_module() {
  local staging_version="v0.${KUBERNETES#v1.}"
  go mod init testenv.local/kubernetes
  go mod edit -require "k8s.io/kubernetes@${KUBERNETES}"
  go mod download -json "k8s.io/kubernetes@${KUBERNETES}" >/dev/null
  local upstream_mod
  upstream_mod=$(go mod download -json "k8s.io/kubernetes@${KUBERNETES}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  local staging
  for staging in $(sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' "$upstream_mod"); do
    go mod edit -replace "${staging}=${staging}@${staging_version}"
  done
  local command imports="" packages=()
  for command in "${kubernetes_commands[@]}"; do
    imports+=$'\t_ "k8s.io/kubernetes/cmd/'"${command}"$'"\n'
    packages+=("k8s.io/kubernetes/cmd/${command}@${KUBERNETES}")
  done
  printf 'package tools\nimport (\n%s)\n' "$imports" >tools.go
  go get "${packages[@]}"
}

kubernetes_ldflags() {
  echo "-X k8s.io/component-base/version.gitVersion=${KUBERNETES} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "${KUBERNETES#v1.}" | cut -d. -f1)"
}

# The Kubernetes commands the tests and the demo run; every one builds from the same module.
kubernetes_commands=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

# build_kubernetes_command NAME TARGET
build_kubernetes_command() {
  prepare_kubernetes_module
  go build -ldflags "$(kubernetes_ldflags)" -o "$2" "k8s.io/kubernetes/cmd/$1"
}

# The real node's runtime, the shell linter and the Lua interpreter come from Debian: these
# commands, and the package of each.
declare -A debian_packages=(
  [containerd]=containerd
  [runc]=runc
  [/usr/lib/cni/bridge]=containernetworking-plugins
  [podman]=podman
  [iptables]=iptables
  [conntrack]=conntrack
  [shellcheck]=shellcheck
  [lua5.1]=lua5.1
)

install_debian_packages() {
  local wanted=() needed
  for needed in "${!debian_packages[@]}"; do
    if [[ $needed == /* ]]; then
      [[ -e $needed ]] && continue
    else
      command -v "$needed" >/dev/null && continue
    fi
    wanted+=("${debian_packages[$needed]}")
  done
  ((${#wanted[@]})) || { log "Debian packages: present"; return; }
  if ((EUID != 0)); then
    log "Debian packages: missing ${wanted[*]}; the real node (containerd + kubelet) needs root:"
    log "  run as root, or install them: apt-get install -y ${wanted[*]}"
    log "  until then the tests and the demo that run real containers cannot run"
    return
  fi
  log "Debian packages: installing ${wanted[*]} (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${wanted[@]}" >&2
}

install_binary nats-server build_nats_server
install_binary etcd build_etcd
for command in "${kubernetes_commands[@]}"; do
  install_binary "$command" "build_kubernetes_command $command"
done
install_binary helm build_helm
if [[ $target == test ]]; then
  install_binary promtool build_promtool "$PROMTOOL"
  install_binary kube-score build_kube_score "$KUBE_SCORE"
  install_binary versitygw build_versitygw "$VERSITYGW"
  # The program's source is part of its version: an edit rebuilds it.
  install_binary kstatus build_kstatus "${FLUX_CLI_UTILS}-$(cksum <"$here/kstatus/main.go" | cut -d' ' -f1)"
else
  log "demo: skipping the tests' checkers (promtool, kube-score, kstatus) and object store (versitygw)"
fi
install_debian_packages

echo "$bin_dir"
