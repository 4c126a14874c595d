"""`devbox verify` (and `up`'s own verification): the checks over the user's own SSH path."""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from devbox import sshconfig
from devbox.box import inspect_box, running_box
from devbox.config import BoxSpec
from devbox.errors import DevboxError
from devbox.keyset import Identity, KeySet, KeySource, choose_identity
from devbox.remote import Host
from devbox.result import HostResult
from devbox.plan import BOX_SSH_PORT
from devbox.tunnel import free_port, listening
from devbox.verify import (FAIL, OK, SKIPPED, VSCODE, BoxSession, Check, Expectations, VSCodeProbe, load_identity,
                           run_checks, vscode_check, worst)

MARKS = {OK: "ok  ", FAIL: "FAIL", SKIPPED: "skip"}


def check_lines(checks: list[Check]) -> list[str]:
    return [f"  [{MARKS[c.status]}] {c.name}" + (f": {c.detail}" if c.detail else "") for c in checks]


@dataclass
class VerifyResult(HostResult):
    ssh_alias: str = ""
    container: str = ""
    port: int | None = None
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @classmethod
    def start(cls, spec: BoxSpec) -> "VerifyResult":
        return cls(spec.box.name, ssh_alias=spec.box.ssh_alias, container=spec.box_name)

    def text(self) -> str:
        return "\n".join([f"{self.host}: " + (f"FAILED: {self.error}" if self.error else "")] + check_lines(self.checks))


def identity_for(host: Host, spec: BoxSpec, keys: KeySet) -> Identity:
    """The user's key that the box trusts: what the entry and verify log in with.

    Not simply the host's IdentityFile: an ops key reaches the host, a personal one the box.
    """
    files = host.ssh_config.lookup(host.alias).get("identityfile", [])
    return choose_identity(keys, spec.identity, tuple(files), spec.box.name)


def expectations(spec: BoxSpec, box: dict | None = None) -> Expectations:
    """From the spec, and the runtime limits from what the box was created with (its inspect)."""
    mounts = tuple((v.target, v.read_only) for v in spec.volumes)
    host_config = (box or {}).get("HostConfig") or {}
    memlock = next((u.get("Hard") for u in host_config.get("Ulimits") or [] if u.get("Name") == "memlock"), None)
    shm = host_config.get("ShmSize")
    return Expectations(spec.user, spec.uid, spec.gid, mounts, spec.gpu_count_wanted,
                        None if memlock in (None, -1) else str(memlock // 1024), shm // 1024 if shm else None)


def verify_host(spec: BoxSpec, result: VerifyResult, source: KeySource) -> None:
    """`devbox verify`: only the checks, over the already-written entry."""
    keys = source.for_box(spec)
    with Host(spec.host) as host:
        box = running_box(host, spec, "verify")
        result.port = int(box["Config"]["Labels"]["devbox.port"])
        result.checks = verify_box(host, spec, result.port, identity_for(host, spec, keys), keys.fingerprints, box)
    result.exit_code = worst(result.checks)


def verify_box(host: Host, spec: BoxSpec, port: int, identity: Identity, trusted: tuple[str, ...],
               box: dict | None = None) -> list[Check]:
    """All checks through the host tunnel with the entry's key and the pinned host key.

    The OpenSSH-client check is a separate process: it runs alongside the others.
    """
    alias = spec.box.ssh_alias
    pinned = sshconfig.pinned_keys().get(alias)
    if not pinned:
        raise DevboxError(f"no pinned host key for {alias}", f"run `devbox up {spec.box.name}` first")
    openssh = start_openssh_check(alias)
    keys = load_identity(identity.path, identity.fingerprint)
    session = BoxSession(lambda: host.open_tunnel(port), pinned, spec.user, keys, alias, trusted)
    with ThreadPoolExecutor(max_workers=1) as pool:
        client = pool.submit(vscode_client, ["-F", str(sshconfig.user_config_path())], alias) if shutil.which("ssh") else None
        try:
            session.login()
            checks = run_checks(session, expectations(spec, box or inspect_box(host, spec)))
            checks.append(vscode_check(VSCodeProbe.read(session.run), *client.result()) if client
                          else Check(VSCODE, SKIPPED, "no OpenSSH client on this machine (VS Code needs one)"))
        finally:
            session.close()
            result = finish_openssh_check(alias, openssh)
    return checks + [result]


def start_openssh_check(alias: str) -> subprocess.Popen | None:
    """The exact path VS Code Remote-SSH takes: the OpenSSH client with the user's config."""
    if not shutil.which("ssh"):
        return None
    argv = ["ssh", "-F", str(sshconfig.user_config_path()), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", alias, "true"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def finish_openssh_check(alias: str, process: subprocess.Popen | None) -> Check:
    if process is None:
        return Check("openssh client path", SKIPPED, "no ssh client on this machine")
    try:
        _, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return Check("openssh client path", FAIL, "timed out after 60 s")
    if process.returncode == 0:
        return Check("openssh client path", OK, f"ssh {alias}")
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return Check("openssh client path", FAIL, lines[-1] if lines else f"exit {process.returncode}")


# ---------------------------------------------------------------- VS Code Remote-SSH, the laptop's side


def vscode_client(options: list[str], destination: str) -> tuple[str, str]:
    """What VS Code does with the OpenSSH client: a -D forward and sftp. Returns their errors ("" when fine)."""
    return dynamic_forward_error(options, destination), sftp_error(options, destination)


def _last_line(text: str, code: int | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else f"ssh exit {code}"


def dynamic_forward_error(options: list[str], destination: str, timeout: float = 30) -> str:
    """`ssh -T -D PORT box` as VS Code opens it; through it, reach the box's own sshd port and read its banner."""
    port = free_port()
    argv = ["ssh", *options, "-T", "-D", f"127.0.0.1:{port}", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=15", "--", destination, "sleep 60"]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not listening(port):
            if process.poll() is not None:
                return _last_line(process.stderr.read(), process.returncode)
            if time.monotonic() > deadline:
                return f"no SOCKS port after {timeout:.0f} s"
            time.sleep(0.05)
        banner = socks_read(port, "127.0.0.1", BOX_SSH_PORT)
        return "" if banner.startswith(b"SSH-2.0-") else f"port {BOX_SSH_PORT} in the box answered {banner[:40]!r}"
    except OSError as exc:
        return str(exc)
    finally:
        process.terminate()
        process.wait(timeout=10)


def socks_read(socks_port: int, address: str, port: int) -> bytes:
    """SOCKS5 CONNECT (RFC 1928, no auth) through 127.0.0.1:socks_port; the first bytes the target sends."""
    with socket.create_connection(("127.0.0.1", socks_port), timeout=15) as sock:
        sock.sendall(b"\x05\x01\x00")
        if sock.recv(2) != b"\x05\x00":
            raise OSError("the SOCKS port refused the handshake")
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(address) + port.to_bytes(2, "big"))
        reply = sock.recv(10)
        if len(reply) < 2 or reply[1] != 0:
            raise OSError(f"the box refused the forwarded connection to {address}:{port}")
        return sock.recv(64)


def sftp_error(options: list[str], destination: str) -> str:
    """Copy a file into the box's home and remove it, as VS Code's fallback copies its server."""
    if not shutil.which("sftp"):
        return "no sftp client on this machine"
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "devbox-verify-sftp"
        probe.write_text("devbox\n")
        batch = f'put "{probe}" .devbox-verify-sftp\nrm .devbox-verify-sftp\n'
        argv = ["sftp", *options, "-q", "-b", "-", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "--", destination]
        try:
            done = subprocess.run(argv, input=batch, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            return "sftp timed out after 60 s"
    return "" if done.returncode == 0 else _last_line(done.stderr, done.returncode)
