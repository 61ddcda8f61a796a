#!/usr/bin/env bash
# Builds the project's container images from the shipped Dockerfile on a machine without an
# image registry, and saves them as OCI archives that a containerd can import.
#
#   localhost/audit-operator:dev   Dockerfile --target operator
#   localhost/audit-consumer:dev   Dockerfile --target consumer
#   localhost/audit-pause:1        the kubelet's pod sandbox image (hack/images/pause)
#
# The Dockerfile is built unchanged: only its base images are substituted, through its
# BUILDER_IMAGE and RUNTIME_IMAGE build arguments, by local images with the same content
# made from Debian packages (hack/images/runtime-base.sh, hack/images/builder-base.sh).
# Those two are rebuilt only when their recipe, the Debian sources or the host's Rust
# toolchain change; everything else is podman's layer cache, so a rerun with nothing changed
# builds nothing and rewrites no archive.
#
# Every build runs with --network=none. The crates the build step compiles are vendored on
# the host first (`cargo vendor`, again only when Cargo.lock changes) and mounted read-only
# where the local builder base's cargo configuration expects them. Why not let cargo fetch
# from crates.io inside the build: podman's default bridge network is not allowed here, and
# on the host's network cargo in the container needs every CA certificate the host trusts for
# outbound HTTPS (on this machine it failed with "self-signed certificate in certificate
# chain"); a builder image should not carry a machine's private CAs.
#
# Needs root (podman's system storage, mmdebstrap, file ownership in the images); installs
# podman and mmdebstrap from Debian when they are missing. Archives and state live in a
# cache outside the repository (AUDIT_TESTENV_CACHE, like hack/testenv.sh). The last line
# of standard output is the absolute path of the directory holding the archives and
# images.list (name and file of each image); progress goes to standard error. Each archive
# holds one image whose OCI ref.name is its full name, so `ctr -n k8s.io images import FILE`
# gives it exactly the name a pod spec uses.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
workspace=$(cd "$here/.." && pwd)
recipes=$here/images

log() { echo "images: $*" >&2; }
die() {
  log "$*"
  exit 1
}

if [[ $EUID -ne 0 ]]; then
  die "needs root: podman's system storage (where the test node's images come from), mmdebstrap and the images' file ownership"
fi
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if ((${#missing[@]})); then
  log "installing ${missing[*]} from Debian"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

cache_root=${AUDIT_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/audit-operator/testenv}
images_dir=$cache_root/images
state_dir=$cache_root/images-state
work_dir=$cache_root/images-work
mkdir -p "$images_dir" "$state_dir" "$work_dir"
# One build at a time on the machine (test binaries that each need the images, a demo beside
# a test run, another checkout): podman's storage and the image names in it are machine-wide,
# so an image is built and saved before another build can move its name. The lock also makes
# it safe to clear scratch space left by an interrupted run.
exec 9>/run/lock/audit-operator-images.lock
flock 9
rm -rf "${work_dir:?}/"*

# require_free_space DIR GIB WHAT: stops with a clear message when DIR's file system has less
# than GIB GiB free. A full disk otherwise surfaces as an unrelated-looking failure deep in
# mmdebstrap, podman or the linker.
require_free_space() {
  local dir=$1 need_gib=$2 what=$3 avail_kib
  mkdir -p "$dir"
  avail_kib=$(df --output=avail -k "$dir" | tail -n 1)
  if ((avail_kib < need_gib * 1024 * 1024)); then
    die "$dir has $((avail_kib / 1024)) MiB free; $what needs about $need_gib GiB. Free some space (podman image prune, cargo clean) and rerun"
  fi
}
# A cold build: the builder base and its scratch archive (1 GiB each), the build stage and
# podman's build cache holding the release target directory (1-2 GiB).
require_free_space /var/lib/containers 4 "a cold image build"
require_free_space "$cache_root" 1 "the image archives"

toolchain=$(rustc --print sysroot)
rust_release=$(rustc -vV | sed -n 's/^release: //p')
dockerfile_rust=$(sed -n 's/^ARG RUST_VERSION=//p' "$workspace/Dockerfile")
if [[ $rust_release != "$dockerfile_rust" && $rust_release != "$dockerfile_rust".* ]]; then
  log "warning: the host's Rust is $rust_release, the Dockerfile's default builder has $dockerfile_rust"
fi

runtime_base=localhost/audit-base-runtime:bookworm
builder_base=localhost/audit-base-builder:$rust_release-bookworm
pause_image=localhost/audit-pause:1
operator_image=localhost/audit-operator:dev
consumer_image=localhost/audit-consumer:dev

image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

# drop_replaced OLD_ID NAME: removes the image NAME pointed to before it was rebuilt, so that
# rebuilds do not pile up in podman's storage. Podman refuses while something still uses it
# (another tag, a container, build-cache images on top of an old base); that is left alone.
drop_replaced() {
  if [[ -n $1 && $1 != "$(image_id "$2")" ]]; then
    podman image rm "$1" >/dev/null 2>&1 || true
  fi
}

# ensure_base NAME KEY BUILD_FUNCTION IMPORT_CHANGE...: imports the tar archive that
# BUILD_FUNCTION writes to its first argument as image NAME, unless NAME already is the
# image last imported for KEY (a digest of everything the base is made from).
ensure_base() {
  local name=$1 key=$2 build=$3
  shift 3
  local state_file=$state_dir/${name//[\/:]/_}
  if [[ -f $state_file && "$(cat "$state_file")" == "$key $(image_id "$name")" ]]; then
    log "$name: cached"
    return
  fi
  log "$name: building (when its recipe, the Debian sources or the Rust toolchain change)"
  local started=$SECONDS scratch
  scratch=$(mktemp -d "$work_dir/base.XXXXXX")
  if ! "$build" "$scratch/rootfs.tar" "$scratch" >"$scratch/build.log" 2>&1; then
    log "$name: build failed; last lines of $scratch/build.log:"
    tail -n 30 "$scratch/build.log" >&2
    exit 1
  fi
  local change changes=() before
  for change in "$@"; do
    changes+=(--change "$change")
  done
  before=$(image_id "$name")
  podman import --quiet "${changes[@]}" "$scratch/rootfs.tar" "$name" >/dev/null
  echo "$key $(image_id "$name")" >"$state_file"
  drop_replaced "$before" "$name"
  rm -rf "$scratch"
  log "$name: built in $((SECONDS - started))s"
}

# The recipes run in a process group of their own: when mmdebstrap fails (a full disk, a
# package it cannot fetch) it sends SIGHUP to its whole process group, which would otherwise
# be the caller's (make, CI) and end it with status 129 before this script says what failed.
build_runtime_base() { setsid --wait bash "$recipes/runtime-base.sh" "$recipes/debian.sources" "$2" "$1"; }
build_builder_base() { setsid --wait bash "$recipes/builder-base.sh" "$recipes/debian.sources" "$toolchain" "$1"; }

runtime_key=$(cat "$recipes/runtime-base.sh" "$recipes/debian.sources" | sha256sum | cut -d' ' -f1)
builder_key=$({ cat "$recipes/builder-base.sh" "$recipes/cargo-config.toml" "$recipes/debian.sources"; rustc -vV; } | sha256sum | cut -d' ' -f1)

# The image configuration of distroless cc-debian12:nonroot.
ensure_base "$runtime_base" "$runtime_key" build_runtime_base \
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  'USER 65532' \
  'WORKDIR /home/nonroot'
# The environment of the official rust image.
ensure_base "$builder_base" "$builder_key" build_builder_base \
  'ENV RUSTUP_HOME=/usr/local/rustup' \
  'ENV CARGO_HOME=/usr/local/cargo' \
  'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  "ENV RUST_VERSION=$rust_release"

# build_image NAME PODMAN_BUILD_ARGUMENT...: builds NAME with podman's layer cache, and drops
# the image NAME pointed to before when the build replaced it.
build_image() {
  local name=$1 before
  shift
  before=$(image_id "$name")
  local started=$SECONDS
  log "$name: building (cached layers are reused)"
  podman build --pull=never --layers --tag "$name" "$@" >&2
  drop_replaced "$before" "$name"
  log "$name: done in $((SECONDS - started))s"
}

build_image "$pause_image" --network=none \
  --build-arg "BUILDER_IMAGE=$builder_base" \
  --file "$recipes/pause/Containerfile" "$recipes/pause"

# The crates of Cargo.lock, for the build step (see the top of this file). One directory per
# Cargo.lock; the marker tells a complete one from an interrupted `cargo vendor`.
lock_key=$(sha256sum "$workspace/Cargo.lock" | cut -c1-16)
vendor_dir=$cache_root/images-vendor/$lock_key
if [[ ! -f $vendor_dir.complete ]]; then
  log "vendoring the crates of Cargo.lock (when it changes)"
  rm -rf "$cache_root/images-vendor"
  mkdir -p "$cache_root/images-vendor"
  cargo vendor --quiet --locked --versioned-dirs --manifest-path "$workspace/Cargo.toml" "$vendor_dir" >/dev/null
  touch "$vendor_dir.complete"
fi

# build_target TARGET NAME: one target of the shipped Dockerfile, on the local bases.
build_target() {
  build_image "$2" --network=none \
    --volume "$vendor_dir:/usr/local/cargo/vendor:ro" \
    --build-arg "BUILDER_IMAGE=$builder_base" \
    --build-arg "RUNTIME_IMAGE=$runtime_base" \
    --target "$1" --file "$workspace/Dockerfile" "$workspace"
}
# The build stage gets a name of its own so that the image of the previous build becomes
# dangling when it is replaced, and the prune below removes it: each changed source tree
# otherwise leaves a 1 GiB stage image behind, and a day of builds fills the disk. The
# compiled crates survive in the build's cache mount, so the next build stays incremental.
build_target build localhost/audit-build:dev
build_target operator "$operator_image"
build_target consumer "$consumer_image"
podman image prune --force >/dev/null

# save_archive NAME FILE: saves NAME as an OCI archive, unless FILE already holds that image.
save_archive() {
  local name=$1 file=$images_dir/$2 id state_file
  id=$(image_id "$name")
  state_file=$state_dir/$2.id
  if [[ -f $file && -f $state_file && "$(cat "$state_file")" == "$id" ]]; then
    log "$file: up to date"
    return
  fi
  rm -f "$work_dir/archive.tar"
  podman save --quiet --format oci-archive --output "$work_dir/archive.tar" "$name"
  mv -f "$work_dir/archive.tar" "$file"
  echo "$id" >"$state_file"
  log "$file: saved $name"
}

{
  for name in "$operator_image" "$consumer_image" "$pause_image"; do
    file=$(basename "${name%%:*}").oci.tar
    save_archive "$name" "$file"
    log "$name: $(podman image inspect --format '{{.Size}}' "$name" | awk '{printf "%.1f MB", $1 / 1e6}')"
    printf '%s\t%s\n' "$name" "$file"
  done
} >"$work_dir/images.list"
mv -f "$work_dir/images.list" "$images_dir/images.list"

echo "$images_dir"
