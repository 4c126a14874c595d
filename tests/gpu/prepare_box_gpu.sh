#!/usr/bin/env bash
# Prepare what tests/gpu/run_box_gpu.sh needs on a GPU machine without Docker, sshd or network,
# in one folder (default: .gpucarry in the repo root; give it to the device tool's `carry`):
#   box.tar.xz, box-image.json  the box image devbox builds from tests/gpu/box-device.toml
#                               (`docker export`, docs/man/info/locale translations left out, xz)
#                               and its config (Env, Entrypoint, User, WorkingDir, tag)
#   box-seccomp.json            the seccomp filter this machine's Docker gives such a box
#   debs/                       Debian bookworm's runc, tini (Docker's --init) and OpenSSH
#                               (sshd for the host stand-in, ssh/sftp for the laptop side)
#   whl/                        paramiko, fabric and their needs for the machine's Python 3.12
# Runs here, as root, with Docker and the Ubuntu 24.04 stand-in base (make ubuntu-bases).
set -euo pipefail
CARRY="${1:-.gpucarry}"
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
mkdir -p "$CARRY/debs" "$CARRY/whl"

echo "== box image (devbox's own build of tests/gpu/box-device.toml)"
tag="$(cd "$REPO" && "$PY" - <<'PY'
from pathlib import Path
from devbox.config import load_spec
from devbox.image import build_locally
spec = load_spec("device", Path("tests/gpu/box-device.toml"))
print(build_locally(spec.image).tag)
PY
)"
echo "$tag"
docker image inspect "$tag" --format '{{json .Config}}' | "$PY" -c \
    'import json, sys; c = json.load(sys.stdin); c["Tag"] = sys.argv[1]; json.dump(c, sys.stdout, indent=1)' "$tag" >"$CARRY/box-image.json"
# The seccomp filter Docker gives a box (no capabilities): the device has no Docker to make it.
"$PY" "$REPO/tests/gpu/docker_spec.py" seccomp "$tag" >"$CARRY/box-seccomp.json"
if [ "$(cat "$CARRY/box.tag" 2>/dev/null)" != "$tag" ]; then
    cid="$(docker create "$tag")"
    # Left out: documentation and message translations only (nothing a check or a user runs).
    docker export "$cid" | tar --delete --wildcards 'usr/share/doc/*' 'usr/share/man/*' 'usr/share/info/*' \
        'usr/share/locale/*' | xz -9 -T0 >"$CARRY/box.tar.xz"
    docker rm "$cid" >/dev/null
    echo "$tag" >"$CARRY/box.tag"
fi

echo "== debs (Debian bookworm)"
(cd "$CARRY/debs" && apt-get download -q runc tini openssh-server openssh-client openssh-sftp-server \
    libwrap0 libnsl2 libtirpc3 libcrypt1 libaudit1 libcap-ng0 libpam0g libsystemd0 libselinux1 libpcre2-8-0 \
    libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libkeyutils1 libcom-err2 libssl3 zlib1g libcap2 \
    libgcrypt20 libgpg-error0 liblzma5 libzstd1 liblz4-1 libedit2 libbsd0 libmd0 libtinfo6 libseccomp2 2>&1 | grep -v "^W:" || true)

echo "== wheels (cp312, manylinux)"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_26_x86_64 -d "$CARRY/whl" \
    paramiko==5.1.0 cryptography==50.0.2 bcrypt==5.0.0 PyNaCl==1.6.2 cffi==2.1.1 pycparser==3.12 invoke==2.2.1 \
    fabric==3.2.3 decorator==5.3.1 deprecated==1.3.1 wrapt==2.5.2
du -sh "$CARRY"/*; du -sh "$CARRY"
