#!/usr/bin/env bash
# Prove `devbox verify`'s checks over a real SSH session on a real NVIDIA GPU.
#
# Runs as root on a GPU machine with no sshd, no Docker and no network (the workplace's
# device machines), from the repo root, with two carried folders:
#   .whl/        paramiko and its wheels for the machine's python3 (see docs/evidence/README.md)
#   .carry/debs/ Debian bookworm's openssh-server and the libraries it links to
# It unpacks sshd into a private folder (never into /), makes a non-root login user,
# starts the box's own sshd_config as that user (no capabilities, no-new-privileges,
# in its own PID namespace when the kernel allows: what the box container gives), then
# runs tests/gpu with pytest, which connects with paramiko and runs devbox.verify.run_checks.
# Results go to $OUT (gpu-report.json, nvidia-smi outputs, sshd.log, env.txt).
set -euo pipefail

REPO="$(pwd)"
OUT="${OUT:-/tmp/devbox-gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# NVLink multicast stays off on the shared multi-GPU hosts (KINDS.md); sshd passes
# these on to sessions through SetEnv below, since sessions do not inherit them.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1

LOGIN="${DEVBOX_GPU_USER:-devgpu}"
PORT="${DEVBOX_GPU_SSH_PORT:-2222}"
PRIV=/tmp/devbox-gpu-ssh
ART="$PRIV/artifacts"
PY="$(command -v python3)"
step() { echo "== $*"; }

step "python packages (.whl -> /tmp/site)"
if [ -z "${DEVBOX_GPU_NO_WHEELS:-}" ]; then   # set it where python3 already has paramiko (a dry run)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$REPO"
else
    export PYTHONPATH="$REPO"
fi

rm -rf "$PRIV"
mkdir -p "$PRIV/root" "$PRIV/lib" "$ART"
chmod 755 "$PRIV" "$PRIV/root" "$PRIV/lib"

step "nvidia-smi"
nvidia-smi | tee "$OUT/nvidia-smi.txt"
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader,nounits | tee "$OUT/nvidia-smi-query.csv"
nvidia-smi -L | tee "$ART/nvidia-smi-L.txt"
nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n1 | tee "$ART/driver.txt"
cp "$OUT/nvidia-smi.txt" "$OUT/nvidia-smi-query.csv" "$ART/"

step "environment"
{
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "kernel: $(uname -r)"
    grep PRETTY_NAME /etc/os-release || true
    echo "python3: $PY ($("$PY" --version 2>&1))"
    echo "PATH=$PATH"
    echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
    "$PY" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "count", torch.cuda.device_count())' || true
    "$PY" -c 'import paramiko, cryptography, pytest; print("paramiko", paramiko.__version__, "cryptography", cryptography.__version__, "pytest", pytest.__version__)' || true
    echo "tmux: $(command -v tmux || echo absent) $(tmux -V 2>/dev/null || true)"
    echo "sudo: $(command -v sudo || echo absent)"
    ls -l /dev/nvidia* 2>&1 | head -20 || true
} 2>&1 | tee "$OUT/env.txt"
"$PY" -c 'import torch; print(torch.__version__)' >"$ART/torch.txt" || true

step "unpack Debian's openssh-server into $PRIV/root (not /)"
for deb in .carry/debs/*.deb; do dpkg-deb -x "$deb" "$PRIV/root"; done
SSHD="$PRIV/root/usr/sbin/sshd"
# Copy in only the libraries this system lacks (ldd says "not found"); repeat for their own needs.
for _ in 1 2 3 4 5 6; do
    missing="$(LD_LIBRARY_PATH="$PRIV/lib" ldd "$SSHD" | awk '/not found/ {print $1}' | sort -u)"
    [ -z "$missing" ] && break
    for lib in $missing; do
        found="$(find "$PRIV/root" -name "$lib" | head -n1)"
        [ -n "$found" ] || { echo "no $lib in .carry/debs" >&2; exit 1; }
        cp -L "$found" "$PRIV/lib/"
        echo "carried lib: $lib"
    done
done
chmod -R a+rX "$PRIV/root" "$PRIV/lib"
{ echo "-- ldd sshd (LD_LIBRARY_PATH=$PRIV/lib)"; LD_LIBRARY_PATH="$PRIV/lib" ldd "$SSHD"; } | tee -a "$OUT/env.txt"
if LD_LIBRARY_PATH="$PRIV/lib" ldd "$SSHD" | grep -q "not found"; then echo "sshd still misses libraries" >&2; exit 1; fi

step "login user $LOGIN, keys"
id "$LOGIN" >/dev/null 2>&1 || useradd -m -s /bin/bash "$LOGIN"
usermod -p '*' "$LOGIN"   # UsePAM no refuses locked ("!") accounts, even for keys
HOME_DIR="$(getent passwd "$LOGIN" | cut -d: -f6)"
install -d -o "$LOGIN" -g "$LOGIN" -m 0700 "$HOME_DIR/.devbox" "$HOME_DIR/.devbox/hostkeys" "$HOME_DIR/workspace"
HOSTKEY="$HOME_DIR/.devbox/hostkeys/ssh_host_ed25519_key"
CLIENTKEY="$PRIV/client_ed25519"
"$PY" - "$HOSTKEY" "$CLIENTKEY" "$HOME_DIR/.devbox/authorized_keys" <<'EOF'
import os, sys
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
def make(path, comment):
    key = Ed25519PrivateKey.generate()
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(key.private_bytes(s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption()))
    pub = key.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH).decode()
    with open(path + ".pub", "w") as f:
        f.write(f"{pub} {comment}\n")
    return pub
make(sys.argv[1], "devbox-host-key")
client = make(sys.argv[2], "devbox-gpu-test")
with open(os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    f.write(f"{client} devbox-gpu-test\n")
EOF
chown "$LOGIN:$LOGIN" "$HOSTKEY" "$HOSTKEY.pub" "$HOME_DIR/.devbox/authorized_keys"
HOSTPUB="$(cut -d' ' -f1,2 "$HOSTKEY.pub")"

# What nvidia-smi says when it cannot reach the driver: the same binary, run as the login
# user (as root, NVML would re-create the device nodes) with /dev hidden behind a tmpfs.
NVSMI="$(command -v nvidia-smi)"
if unshare --mount sh -c 'mount -t tmpfs tmpfs /dev && exec "$@"' sh "$PY" "$REPO/tests/gpu/launch_as.py" "$LOGIN" "$NVSMI" \
        >"$OUT/nvidia-smi-no-driver.txt" 2>&1; then
    echo "(nvidia-smi with /dev hidden still succeeded)" >>"$OUT/nvidia-smi-no-driver.txt"
fi
echo "-- nvidia-smi as $LOGIN with /dev hidden:"; cat "$OUT/nvidia-smi-no-driver.txt"

step "sshd_config: the box's, with AllowUsers $LOGIN, 127.0.0.1:$PORT and the session environment"
CONF="$PRIV/sshd_config"
# The box reads keys from its read-only keys volume; here the login user's own file stands in.
sed -e "s/^AllowUsers .*/AllowUsers $LOGIN/" -e "s/^Port .*/Port $PORT/" \
    -e "s#^AuthorizedKeysFile .*#AuthorizedKeysFile .devbox/authorized_keys#" images/ssh/sshd_config >"$CONF"
{
    echo "ListenAddress 127.0.0.1"
    # As the Dockerfile does: sessions get the image's PATH (python3 with torch) and libraries.
    echo "SetEnv PATH=$PATH${LD_LIBRARY_PATH:+ LD_LIBRARY_PATH=$LD_LIBRARY_PATH} NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1"
} >>"$CONF"
chmod 644 "$CONF"
diff images/ssh/sshd_config "$CONF" || true
SSHD_ENV=(env -i "HOME=$HOME_DIR" "USER=$LOGIN" "LOGNAME=$LOGIN" "PATH=/usr/sbin:/usr/bin:/sbin:/bin" "LD_LIBRARY_PATH=$PRIV/lib")
"${SSHD_ENV[@]}" "$PY" "$REPO/tests/gpu/launch_as.py" "$LOGIN" "$SSHD" -t -f "$CONF" -h "$HOSTKEY"

step "start sshd as $LOGIN"
PIDNS=0
if unshare --pid --fork --mount-proc true 2>/dev/null; then
    PIDNS=1
    unshare --pid --fork --mount-proc --kill-child \
        "${SSHD_ENV[@]}" "$PY" "$REPO/tests/gpu/launch_as.py" "$LOGIN" "$SSHD" -D -e -f "$CONF" -h "$HOSTKEY" >"$OUT/sshd.log" 2>&1 &
else
    echo "no PID namespace here: sshd shares the machine's process table (root processes visible)"
    "${SSHD_ENV[@]}" "$PY" "$REPO/tests/gpu/launch_as.py" "$LOGIN" "$SSHD" -D -e -f "$CONF" -h "$HOSTKEY" >"$OUT/sshd.log" 2>&1 &
fi
SSHD_PID=$!
# A second sshd stands in for the GPU host itself (`devbox top` logs in to hosts, which share
# the machine's process table): the same config on the next port, no PID namespace.
HOST_PORT=$((PORT + 1))
sed "s/^Port .*/Port $HOST_PORT/" "$CONF" >"$PRIV/sshd_host_config"
chmod 644 "$PRIV/sshd_host_config"
"${SSHD_ENV[@]}" "$PY" "$REPO/tests/gpu/launch_as.py" "$LOGIN" "$SSHD" -D -e -f "$PRIV/sshd_host_config" -h "$HOSTKEY" \
    >"$PRIV/sshd-host.log" 2>&1 &
HOST_SSHD_PID=$!
# Stop sshd at the end. In the PID namespace it is unshare's child and PID 1 there (killing
# it ends the namespace); --kill-child does not reach it, since a uid change clears that.
stop_sshd() {
    local child
    for child in $(cat /proc/"$SSHD_PID"/task/*/children 2>/dev/null) "$SSHD_PID" "$HOST_SSHD_PID"; do kill -KILL "$child" 2>/dev/null || true; done
}
trap stop_sshd EXIT
for _ in $(seq 50); do
    "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', $PORT), 1).close()" 2>/dev/null && break
    sleep 0.2
done
ps -o user,pid,ppid,args -u "$LOGIN" || true

step "pytest tests/gpu"
export DEVBOX_GPU_SSH_PORT="$PORT" DEVBOX_GPU_SSH_KEY="$CLIENTKEY" DEVBOX_GPU_HOST_KEY="$HOSTPUB" \
    DEVBOX_GPU_USER="$LOGIN" DEVBOX_GPU_REPORT="$OUT/gpu-report.json" DEVBOX_GPU_ARTIFACTS="$ART" \
    DEVBOX_GPU_PIDNS="$PIDNS" DEVBOX_GPU_HOST_PORT="$HOST_PORT"
set +e
# --confcutdir: the suite's tests/conftest.py (test bed, Docker) is not needed here.
"$PY" -m pytest tests/gpu -v -rA --confcutdir=tests/gpu
rc=$?
set -e
if [ "$rc" != 0 ] && [ "$(wc -l <"$ART/nvidia-smi-query.csv")" -gt 1 ]; then
    step "diagnosis: the same GPU probe run directly (root, no SSH), NCCL_DEBUG=WARN"
    NCCL_DEBUG=WARN timeout 300 "$PY" devbox/gpu_probe.py || true
fi
step "sshd log (tail)"
tail -n 40 "$OUT/sshd.log" || true
exit $rc
