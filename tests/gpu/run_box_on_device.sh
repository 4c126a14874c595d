#!/usr/bin/env bash
# Stretch (issue 12): the box image under runc on a GPU machine without Docker, GPUs passed in,
# then devbox's verify checks over SSH into it. Carried: .carry/box/rootfs.tar.gz (the box image
# built here on local/debian:bookworm, `docker export`, docs/locales stripped) and .carry/box/runc_*.deb.
set -uo pipefail
REPO="$(pwd)"; OUT="${OUT:-/tmp/devbox-box-out}"; mkdir -p "$OUT"
step() { echo "== $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$REPO"
W=/tmp/devbox-box; rm -rf "$W"; mkdir -p "$W/bundle/rootfs" "$W/runc" "$W/home" "$W/keys"
step "runc (Debian bookworm's) and the box rootfs"
dpkg-deb -x .carry/box/runc_*.deb "$W/runc" && RUNC="$W/runc/usr/sbin/runc" && "$RUNC" --version
tar -C "$W/bundle/rootfs" -xzf .carry/box/rootfs.tar.gz
step "keys: a client key for the login, the keys volume, the home volume (uid 1000)"
python3 - "$W" <<'PY'
import sys
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
w = sys.argv[1]; k = Ed25519PrivateKey.generate()
open(f"{w}/client", "wb").write(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption()))
pub = k.public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH).decode()
open(f"{w}/keys/authorized_keys", "w").write(f"restrict,pty {pub} devbox-device\n")
PY
chmod 600 "$W/client"; chmod 755 "$W/keys"; chmod 644 "$W/keys/authorized_keys"; chown -R 1000:1000 "$W/home"
step "config.json from devbox.plan.run_args for this machine"
python3 tests/gpu/oci_box.py config "$W/bundle" "$W/home" "$W/keys" >"$W/bundle/config.json" || exit 1
python3 -c "import json; d=json.load(open('$W/bundle/config.json')); print(d['annotations']['devbox.run_args']); print('rlimits', d['process']['rlimits']); print('devices', [x['path'] for x in d['linux']['devices']])"
step "runc run"
cd "$W/bundle" && "$RUNC" run -d devbox-device >"$OUT/box.log" 2>&1; rc=$?; cd "$REPO"
echo "runc run: exit $rc"; cat "$OUT/box.log"
"$RUNC" list
for _ in $(seq 50); do [ -s "$W/home/.devbox/hostkeys/ssh_host_ed25519_key.pub" ] && python3 -c "import socket; socket.create_connection(('127.0.0.1', 2222), 1)" 2>/dev/null && break; sleep 0.2; done
"$RUNC" exec devbox-device sh -c 'id; ulimit -l; df -k /dev/shm | tail -1; grep -E "^(CapEff|NoNewPrivs)" /proc/self/status; nvidia-smi -L' 2>&1
step "devbox verify's checks over SSH into the box"
python3 tests/gpu/oci_box.py verify 2222 "$(cut -d' ' -f1,2 "$W/home/.devbox/hostkeys/ssh_host_ed25519_key.pub")" "$W/client" | tee "$OUT/box-verify.json"
"$RUNC" delete -f devbox-device
cp "$W/bundle/config.json" "$OUT/box-config.json"
