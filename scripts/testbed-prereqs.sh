#!/usr/bin/env bash
# Installs and starts what the test bed needs on a fresh Debian 12 machine (root):
# Docker engine, OpenSSH server binaries, tmux, debootstrap, rsync, a registry (Debian's
# docker-registry, distribution 2.8: tests/test_registry.py), Slurm and munge (slurm-wlm 22.05:
# tests/test_slurm_bed.py, started as plain processes), and the local base image.
set -euo pipefail
need=()
for bin in dockerd:docker.io sshd:openssh-server ssh:openssh-client debootstrap:debootstrap tmux:tmux ip:iproute2 rsync:rsync docker-registry:docker-registry \
           slurmctld:slurm-wlm munged:munge nsenter:util-linux; do
    command -v "${bin%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${bin%%:*}" ] || need+=("${bin##*:}")
done
command -v make >/dev/null 2>&1 || need+=(make)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then echo "missing packages: ${need[*]} (run as root, or apt-get install them)" >&2; exit 2; fi
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then echo "Docker engine not running (start dockerd as root)" >&2; exit 2; fi
    echo "starting dockerd"
    nohup dockerd >/var/log/devbox-dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start: see /var/log/devbox-dockerd.log" >&2; exit 3; }
fi
base="${DEVBOX_TEST_BASE:-local/debian:bookworm}"
if ! docker image inspect "$base" >/dev/null 2>&1; then
    echo "making the local base image $base (debootstrap, about 30 s)"
    rootfs="$(mktemp -d)"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/tmp/devbox-debootstrap.log
    tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
    rm -rf "$rootfs"
fi
echo "test bed prerequisites ready (docker, sshd, base image $base)"
