"""`devbox jupyter`: JupyterLab as a devbox job on the box's 127.0.0.1, reached through an SSH tunnel.

The server is an ordinary job (tmux, logged, `devbox ps/logs/stop` see it) listening on the
box's loopback only; its token lives in the home volume (0600). No port is published on the
host: the laptop reaches it with `ssh -L` through the box's own entry (devbox/tunnel.py).
"""
from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Callable

from devbox.box import box_sh, running_box
from devbox.commands.forward import box_tunnel, require_entry
from devbox.config import BoxSpec
from devbox.errors import ConfigError, DevboxError
from devbox.jobs import Job, list_jobs, start_job, stop_job
from devbox.remote import Host
from devbox.tunnel import Forward, free_port, port_number, require_free, run_until_interrupted

JOB = "jupyter"
BOX_PORT = 8888
STATE = '"$HOME/.devbox/jupyter"'
NO_JUPYTER_EXIT = 40
DIED_EXIT = 41
# The token comes from the file at start, never on a command line (`ps`, the job's `command`).
SERVER = ('export JUPYTER_TOKEN="$(cat "$HOME/.devbox/jupyter/token")" && '
          f'exec jupyter-lab --no-browser --ip=127.0.0.1 --port={BOX_PORT} --ServerApp.port_retries=0')


@dataclass
class JupyterSession:
    host: str
    url: str
    local_port: int
    job: str = JOB

    def json_line(self) -> str:
        return json.dumps({"url": self.url, "local_port": self.local_port, "job": self.job})

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        return (f"JupyterLab on {self.host}: {self.url}\n"
                f"  Ctrl-C closes the tunnel; the server keeps running (`devbox jupyter {self.host} --stop` ends it,"
                f" `devbox logs {self.host} {self.job}` shows its log)")


def _prepare() -> str:
    """One round trip: JupyterLab is there, the token exists (0600), the answer says whether it runs."""
    return (f"command -v jupyter-lab >/dev/null 2>&1 || exit {NO_JUPYTER_EXIT}; "
            f"umask 077; mkdir -p {STATE} && {{ [ -s {STATE}/token ] || cat > {STATE}/token; }} && chmod 600 {STATE}/token && "
            f"cat {STATE}/token && echo && {{ tmux has-session -t ={JOB} 2>/dev/null && echo running || echo stopped; }}")


def _wait_listening(timeout_s: int) -> str:
    """In the box: wait until 127.0.0.1:BOX_PORT listens (/proc/net/tcp, state 0A), or the job ends."""
    addr = f"0100007F:{BOX_PORT:04X}"
    return (f"i=0; while [ $i -lt {timeout_s * 5} ]; do "
            f"grep -q ' {addr} 00000000:0000 0A' /proc/net/tcp && exit 0; "
            f"tmux has-session -t ={JOB} 2>/dev/null || {{ tail -n 3 \"$HOME/.devbox/jobs/{JOB}/log\" >&2; exit {DIED_EXIT}; }}; "
            "sleep 0.2; i=$((i+1)); done; exit 1")


def start_server(host: Host, spec: BoxSpec, timeout_s: int = 120) -> str:
    """Start the server job unless it runs; wait until it listens; return its token."""
    running_box(host, spec, "run JupyterLab")
    done = box_sh(host, spec, _prepare(), stdin=secrets.token_hex(24).encode(), check=False)
    if done.exit_code == NO_JUPYTER_EXIT:
        raise ConfigError(f"the box on {spec.box.name} has no JupyterLab",
                          f'add pip = ["jupyterlab"] to devbox.toml ([defaults] or its [hosts.NAME] / [boxes.NAME] table) and run `devbox up {spec.box.name}`')
    if not done.ok:
        raise DevboxError(f"{spec.box.name}: could not prepare JupyterLab: {done.stderr.strip()[:200]}", f"check `devbox status {spec.box.name}`")
    token, state = (done.stdout.split() + ["", ""])[:2]
    if state != "running":
        root = "/workspace" if any(v.target == "/workspace" for v in spec.volumes) else "~"
        start_job(host, spec, JOB, ["sh", "-c", SERVER], cwd=root)   # its folder is the notebooks' root
    waited = box_sh(host, spec, _wait_listening(timeout_s), check=False, timeout=timeout_s + 30)
    if not waited.ok:
        why = waited.stderr.strip().splitlines()[-1] if waited.stderr.strip() else f"not listening after {timeout_s} s"
        raise DevboxError(f"{spec.box.name}: JupyterLab did not start: {why}", f"see `devbox logs {spec.box.name} {JOB}`")
    return token


def answers(url: str) -> bool:
    """The server answers through the tunnel (`/api` needs no token)."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
    try:
        with direct.open(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def open_jupyter(spec: BoxSpec, local_port: int | None, announce: Callable[[JupyterSession], None],
                 say: Callable[[str], None]) -> None:
    """Server up, tunnel open, URL announced once it answers; then hold the tunnel until Ctrl-C."""
    port = (require_free(port_number(str(local_port), "--port"), "pass another --port, or leave --port out to get a free one")
            if local_port is not None else free_port())
    require_entry(spec.box.name)
    with Host(spec.host) as host:
        token = start_server(host, spec)
    base = f"http://127.0.0.1:{port}"
    tunnel = box_tunnel(spec.box.name, [Forward(BOX_PORT, port)], lambda: answers(f"{base}/api"), say)
    tunnel.open()
    announce(JupyterSession(spec.box.name, f"{base}/lab?token={token}", port))
    run_until_interrupted(tunnel)


def stop_jupyter(spec: BoxSpec) -> Job | None:
    with Host(spec.host) as host:
        if not any(job.name == JOB for job in list_jobs(host, spec)):
            raise ConfigError(f"JupyterLab has never run on {spec.box.name}", f"start it with `devbox jupyter {spec.box.name}`")
        return stop_job(host, spec, JOB)
