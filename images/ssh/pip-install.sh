#!/bin/sh
# Build time only: install devbox.toml's `pip` list (the arguments) into the image's Python.
# A Python that pip may write to (conda in the pytorch images) gets them directly. Debian's
# and Ubuntu's system python3 is "externally managed" (PEP 668: pip would fight apt over
# /usr), so there they go into a venv at /opt/devbox/venv that still sees the system's
# packages (--system-site-packages) and comes first on PATH (the Dockerfile's ENV).
set -eu
set -f  # package specs like "numpy<2" or "ray[default]" are words, never globs
[ "$#" -gt 0 ] || exit 0
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
venv=/opt/devbox/venv
py="$(command -v python3 || command -v python || true)"
if [ -z "$py" ]; then
    echo 'devbox: pip needs a Python in the image: add apt = ["python3-pip"] to devbox.toml' >&2
    exit 1
fi
if "$py" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'; then
    "$py" -m venv --without-pip --system-site-packages "$venv"
    py="$venv/bin/python"
    # The system's pip (python3-pip) runs in the venv as its own; else bootstrap one.
    "$py" -m pip --version >/dev/null 2>&1 || "$py" -m ensurepip --default-pip >/dev/null 2>&1 || {
        echo 'devbox: the base has no pip for its python3: add apt = ["python3-pip"] to devbox.toml' >&2
        exit 1
    }
fi
"$py" -m pip --version >/dev/null 2>&1 || {
    echo "devbox: $py has no pip: add apt = [\"python3-pip\"] to devbox.toml" >&2
    exit 1
}
"$py" -m pip install "$@"
