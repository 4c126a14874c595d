#!/usr/bin/env bash
# The box itself on a real GPU (issue 24): devbox's own image under runc with devbox's own run
# arguments, every `devbox verify` check over SSH through a host (tests/gpu/box_gpu.py says how).
#
# Run as root, from a checkout, on a GPU machine without Docker, sshd or network, with the folder
# tests/gpu/prepare_box_gpu.sh made (CARRY, default .gpucarry). Arguments go to box_gpu.py
# (e.g. --gpus 1 --tag=-gpu1). Results in $OUT: box-gpu.log, box-verify.json, box-config.json,
# box-sshd.log. Nothing is unpacked into /: the debs go to $T, and only the users devbox-ops,
# devbox-nodocker and sshd (OpenSSH's privilege separation) and the group docker are added.
set -uo pipefail
REPO="$(pwd)"
CARRY="${CARRY:-$REPO/.gpucarry}"
OUT="${OUT:-/tmp/devbox-box-gpu-out}"
T=/var/lib/devbox-box-gpu-tools   # not under /tmp: sshd refuses keys below a world-writable folder
mkdir -p "$OUT"
# NVLink multicast stays off on shared multi-GPU hosts (the device's KINDS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
step() { echo "== $*"; }
{
step "machine"
date -u +%Y-%m-%dT%H:%M:%SZ; uname -r; grep PRETTY_NAME /etc/os-release; nproc; free -g | head -2
nvidia-smi -L; nvidia-smi --query-gpu=index,uuid,name,driver_version,memory.total --format=csv,noheader
ls -l /opt/torch/.venv/bin/python* 2>&1; cat /opt/torch/.venv/pyvenv.cfg 2>&1
ls /sys/fs/cgroup/cgroup.controllers >/dev/null 2>&1 && echo "cgroup2: $(cat /sys/fs/cgroup/cgroup.controllers)"

step "python packages"
if ! python3 -c 'import fabric, paramiko' 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$CARRY"/whl/*.whl
    export PYTHONPATH="/tmp/site:$REPO"
else
    export PYTHONPATH="$REPO"
fi

step "runc, tini, OpenSSH from the carried debs into $T (not /)"
rm -rf "$T"; mkdir -p "$T/root" "$T/lib" "$T/bin"
for deb in "$CARRY"/debs/*.deb; do dpkg-deb -x "$deb" "$T/root"; done
R="$T/root"
# Each program gets a wrapper in $T/bin; only libraries this system lacks go to $T/lib.
for prog in usr/sbin/runc usr/sbin/sshd usr/bin/ssh usr/bin/sftp usr/bin/ssh-keygen; do
    for _ in 1 2 3 4 5 6; do
        missing="$(LD_LIBRARY_PATH="$T/lib" ldd "$R/$prog" | awk '/not found/ {print $1}' | sort -u)"
        [ -z "$missing" ] && break
        for lib in $missing; do
            found="$(find "$R" -name "$lib" | head -n1)"
            [ -n "$found" ] || { echo "no $lib in the carried debs" >&2; exit 1; }
            cp -L "$found" "$T/lib/"; echo "carried lib: $lib"
        done
    done
    name="$(basename "$prog")"
    extra=""; [ "$name" = sftp ] && extra="-S $T/bin/ssh"   # sftp runs /usr/bin/ssh unless told
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s %s "$@"\n' "$T/lib" "$R/$prog" "$extra" >"$T/bin/$name"
    chmod 755 "$T/bin/$name"
done
chmod -R a+rX "$T"
export PATH="$T/bin:$PATH" DEVBOX_SSHD="$T/bin/sshd"
runc --version; ssh -V; "$R/usr/bin/tini-static" --version
getent group docker >/dev/null || groupadd docker
id sshd >/dev/null 2>&1 || useradd -r -M -d /run/sshd -s /usr/sbin/nologin sshd

step "box_gpu.py $*"
python3 tests/gpu/box_gpu.py --carry "$CARRY" --work /var/lib/devbox-box-gpu --out "$OUT" --runc "$T/bin/runc" \
    --init "$R/usr/bin/tini-static" "$@"
rc=$?
echo "box_gpu.py exit $rc"
exit $rc
} 2>&1 | tee -a "$OUT/box-gpu.log"
