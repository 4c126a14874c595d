#!/usr/bin/env bash
# Makes local stand-ins for the Ubuntu bases the real pytorch images use, so the tests can
# prove the box image builds and hardens on them (no registry is reachable here):
#   local/ubuntu:22.04  jammy, with the pytorch images' ENV PATH (/opt/conda/bin first)
#   local/ubuntu:24.04  noble, with the "ubuntu" user at UID/GID 1000, as the official image has
# debootstrap from the Ubuntu archive; the archive keyring .deb is checked against a pinned
# SHA-256 before debootstrap trusts it, so every package is verified. Cached: a second run
# does nothing.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "run as root (debootstrap and docker import)" >&2; exit 2; }
mirror="${DEVBOX_UBUNTU_MIRROR:-http://archive.ubuntu.com/ubuntu}"
keyring_deb="pool/main/u/ubuntu-keyring/ubuntu-keyring_2023.11.28.1_all.deb"
keyring_sha256="36de43b15853ccae0028e9a767613770c704833f82586f28eb262f0311adb8a8"
conda_path="/opt/conda/bin:/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

keyring() {
    [ -f "$work/keyring/usr/share/keyrings/ubuntu-archive-keyring.gpg" ] && return
    curl -fsS --retry 3 -o "$work/keyring.deb" "$mirror/$keyring_deb"
    echo "$keyring_sha256  $work/keyring.deb" | sha256sum -c --quiet -
    dpkg-deb -x "$work/keyring.deb" "$work/keyring"
}

make_base() {  # tag suite [docker-import --change ...]
    local tag="$1" suite="$2"; shift 2
    docker image inspect "$tag" >/dev/null 2>&1 && return
    keyring
    echo "making $tag ($suite, debootstrap, about 30 s)"
    local rootfs="$work/$suite"
    # debootstrap's "gutsy" script is the one every Ubuntu release since uses (newer
    # debootstraps symlink noble to it; Debian 12's predates noble).
    debootstrap --variant=minbase --keyring="$work/keyring/usr/share/keyrings/ubuntu-archive-keyring.gpg" \
        "$suite" "$rootfs" "$mirror" /usr/share/debootstrap/scripts/gutsy >"/tmp/devbox-debootstrap-$suite.log"
    # As the official images: the -updates and -security pockets too, so `apt-get install`
    # in the box build gets today's patched openssh-server (jammy's release pocket predates
    # the Terrapin fix, CVE-2023-48795), and on noble the "ubuntu" user at UID/GID 1000.
    if [ "$suite" = noble ]; then
        rm -f "$rootfs/etc/apt/sources.list"
        printf 'Types: deb\nURIs: %s\nSuites: noble noble-updates noble-backports\nComponents: main restricted universe multiverse\nSigned-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n\nTypes: deb\nURIs: http://security.ubuntu.com/ubuntu\nSuites: noble-security\nComponents: main restricted universe multiverse\nSigned-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n' \
            "$mirror" >"$rootfs/etc/apt/sources.list.d/ubuntu.sources"
        chroot "$rootfs" useradd -m -U -u 1000 -s /bin/bash ubuntu
    else
        printf 'deb %s %s main restricted universe multiverse\ndeb %s %s-updates main restricted universe multiverse\ndeb http://security.ubuntu.com/ubuntu %s-security main restricted universe multiverse\n' \
            "$mirror" "$suite" "$mirror" "$suite" "$suite" >"$rootfs/etc/apt/sources.list"
    fi
    tar -C "$rootfs" -c . | docker import "$@" - "$tag" >/dev/null
}

command -v debootstrap >/dev/null || { echo "debootstrap missing: run scripts/testbed-prereqs.sh first" >&2; exit 2; }
command -v curl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; }
make_base local/ubuntu:22.04 jammy --change "ENV PATH=$conda_path" --change "ENV LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64"
make_base local/ubuntu:24.04 noble
echo "Ubuntu bases ready (local/ubuntu:22.04, local/ubuntu:24.04)"
