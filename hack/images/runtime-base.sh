#!/usr/bin/env bash
# Assembles the root filesystem of the local runtime base image, the stand-in for
# gcr.io/distroless/cc-debian12:nonroot, and writes it as a tar archive.
#
#   runtime-base.sh SOURCES WORK_DIR OUT_TAR
#
# The content is what distroless cc-debian12 holds: the files of base-files, netbase, tzdata,
# media-types, libc6, libssl3, libgcc-s1, libgomp1, libstdc++6 and gcc-12-base; the CA
# bundle (only the bundle, not the ca-certificates package and its scripts); /etc/passwd and
# /etc/group with root, nobody and nonroot (65532); /home/nonroot, /root and /tmp (1777);
# package metadata in /var/lib/dpkg/status.d for image scanners. Packages are unpacked, never
# installed: no maintainer script runs, and no shell, dpkg or apt ends up in the image.
# Ownership in the tar is numeric; mtimes are fixed so that the same packages give the same
# layer.
set -euo pipefail

sources=$1 work=$2 out=$3

packages=(base-files netbase tzdata media-types libc6 libssl3 libgcc-s1 libgomp1 libstdc++6 gcc-12-base)

# A private apt state, so that neither the host's package lists nor its sources decide what
# goes into the image (the host may point at another release or a snapshot).
apt_dir=$work/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d" "$apt_dir/debs"
cp "$sources" "$apt_dir/sources.list.d/debian.sources"
: >"$apt_dir/status"
apt_opts=(
  -o "Dir::Etc::SourceList=/dev/null"
  -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::State::status=$apt_dir/status"
  -o "Dir::Cache=$apt_dir/cache"
  -o "Debug::NoLocking=true"
  # The private directories belong to root; apt's _apt sandbox user could not write them.
  -o "APT::Sandbox::User=root"
)
apt-get "${apt_opts[@]}" -qq update
(cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" -qq download "${packages[@]}" ca-certificates)

root=$work/rootfs
mkdir -p "$root"
# The merged /usr layout of a bookworm system. Packages still ship files under /lib and /bin;
# tar keeps these symlinks instead of replacing them with directories.
mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/usr/lib" "$root/usr/lib64"
ln -s usr/bin "$root/bin"
ln -s usr/sbin "$root/sbin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"

status_dir=$root/var/lib/dpkg/status.d
mkdir -p "$status_dir"
for package in "${packages[@]}"; do
  deb=$(find "$apt_dir/debs" -name "${package}_*.deb")
  dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$root"
  dpkg-deb --field "$deb" >"$status_dir/$package"
done

# ca-certificates: only the bundle its postinst would generate (every certificate it ships,
# each ending in a newline) and its copyright, as distroless does.
ca_deb=$(find "$apt_dir/debs" -name 'ca-certificates_*.deb')
ca_dir=$work/ca-certificates
mkdir -p "$ca_dir" "$root/etc/ssl/certs" "$root/usr/share/doc/ca-certificates"
dpkg-deb -x "$ca_deb" "$ca_dir"
# awk 1 ends every file with a newline, so no two certificates share a line.
find "$ca_dir/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | while read -r cert; do
  awk 1 "$cert"
done >"$root/etc/ssl/certs/ca-certificates.crt"
cp "$ca_dir/usr/share/doc/ca-certificates/copyright" "$root/usr/share/doc/ca-certificates/copyright"
dpkg-deb --field "$ca_deb" >"$status_dir/ca-certificates"

# Accounts: the same names and ids as distroless. Their shell is a path that does not exist.
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
tty:x:5:
staff:x:50:
nonroot:x:65532:
nobody:x:65534:
EOF
# glibc reads these files only: there is no other name service in the image.
cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd:         files
group:          files
shadow:         files
hosts:          files dns
networks:       files
protocols:      files
services:       files
EOF
install -d -m 0700 -o 0 -g 0 "$root/root"
install -d -m 0755 -o 0 -g 0 "$root/home"
install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"
install -d -m 1777 -o 0 -g 0 "$root/tmp"

# The promise of this image: nothing that can run a command line.
for forbidden in sh bash dash ash busybox dpkg apt apt-get perl python3; do
  for dir in usr/bin usr/sbin usr/local/bin; do
    if [[ -e "$root/$dir/$forbidden" ]]; then
      echo "runtime-base: $dir/$forbidden is in the image" >&2
      exit 1
    fi
  done
done

tar -C "$root" --numeric-owner --sort=name --mtime=@0 -cf "$out" .
