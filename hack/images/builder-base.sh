#!/usr/bin/env bash
# Assembles the root filesystem of the local builder base image, the stand-in for
# rust:<version>-bookworm, and writes it as a tar archive.
#
#   builder-base.sh SOURCES TOOLCHAIN_DIR OUT_TAR
#
# A minimal Debian bookworm (same release as the runtime base, so the binaries link against
# the glibc they run with) with what the Dockerfile's build step uses: a C compiler and libc
# headers (cc links Rust binaries; ring compiles C), CA certificates, coreutils' `install`.
# The Rust toolchain is the one this machine already has, copied without its documentation
# and laid out as in the official rust image: toolchains under RUSTUP_HOME=/usr/local/rustup,
# the commands in CARGO_HOME=/usr/local/cargo/bin (symlinks instead of rustup's proxies: the
# build never switches toolchains).
#
# One difference from the official image, cargo-config.toml: cargo takes crates.io's crates
# from a directory mounted at /usr/local/cargo/vendor (`cargo vendor` of the workspace, done
# on the host by hack/images.sh) and never touches the network, so the build runs with
# --network=none.
set -euo pipefail

sources=$1 toolchain=$2 out=$3
cargo_config=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/cargo-config.toml

release=$("$toolchain/bin/rustc" -vV | sed -n 's/^release: //p')
host=$("$toolchain/bin/rustc" -vV | sed -n 's/^host: //p')
# The official image names its toolchain by version, not by channel.
toolchain_name="$release-$host"
export toolchain toolchain_name cargo_config

# The hooks run in mmdebstrap's own shell, with the new root as "$1" and the toolchain from
# the variables exported above.
# shellcheck disable=SC2016
mmdebstrap --quiet --variant=minbase --include=gcc,libc6-dev,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --customize-hook='mkdir -p "$1/usr/local/rustup/toolchains/$toolchain_name" "$1/usr/local/cargo/bin"' \
  --customize-hook='tar -C "$toolchain/" --exclude=./share/doc -c . | tar -C "$1/usr/local/rustup/toolchains/$toolchain_name" -x' \
  --customize-hook='install -m 0644 "$cargo_config" "$1/usr/local/cargo/config.toml"' \
  --customize-hook='for bin in "$1/usr/local/rustup/toolchains/$toolchain_name/bin/"*; do ln -s "../../rustup/toolchains/$toolchain_name/bin/${bin##*/}" "$1/usr/local/cargo/bin/${bin##*/}"; done' \
  bookworm "$out" "$sources"
