"""Verification over the user's own SSH path: each property proved by trying it.

The session into the box goes exactly where `ssh devbox-HOST` goes (ProxyJump through
the host to the box's loopback port), with the entry's key and the pinned host key.
Attacks (password, keyboard-interactive, root) are real login attempts that must fail.
"""
from __future__ import annotations

import json
import re
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from devbox.errors import DevboxError, HostKeyMismatch, HostUnreachable
from devbox.facts import parse_gpu_csv
from devbox.remote import stopped_answering

OK, FAIL, SKIPPED = "ok", "fail", "skipped"
GPU_PROBE = (Path(__file__).parent / "gpu_probe.py").read_text


@dataclass
class Check:
    name: str
    status: str
    detail: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Expectations:
    """What the box must look like: from the BoxSpec, or given by hand (GPU device runs)."""

    user: str
    uid: int
    gid: int
    mounts: tuple[tuple[str, bool], ...] = ()   # (target, read_only)
    gpus: int | None = 0                        # 0: none asked; None: all the host has; N: exactly N
    memlock: str | None = None                  # `ulimit -l` the box was given ("unlimited" or KiB); None: unlimited
    shm_kib: int | None = None                  # /dev/shm size it was given; None: at least MIN_SHM_KIB


# ---------------------------------------------------------------- SSH plumbing


def load_identity(path: Path | None, fingerprint: str = "") -> list:
    """The key(s) to log in with: the private key file, else (encrypted, or path None for
    an agent-only identity) ssh-agent's key with that fingerprint (all of them if none given)."""
    import paramiko

    if path is not None:
        try:
            return [paramiko.PKey.from_path(str(path))]
        except paramiko.PasswordRequiredException:
            pass
        except (OSError, paramiko.SSHException) as exc:
            raise DevboxError(f"cannot load the identity {path}: {exc}", "set IdentityFile to a readable private key") from None
    keys = [k for k in paramiko.Agent().get_keys() if not fingerprint or k.fingerprint == fingerprint]
    if not keys:
        held = f"{path} is encrypted and " if path is not None else ""
        wanted = f"the key {fingerprint}" if fingerprint else "any key"
        raise DevboxError(f"{held}ssh-agent does not hold {wanted}", f"run `ssh-add {path or '<its private key>'}`")
    return keys


def open_transport(sock, pinned_key: str, label: str):
    """An SSH transport over `sock` whose host key must equal the pinned one."""
    import paramiko

    transport = paramiko.Transport(sock)
    transport.start_client(timeout=15)
    offered = transport.get_remote_server_key()
    if f"{offered.get_name()} {offered.get_base64()}" != pinned_key:
        transport.close()
        raise HostKeyMismatch(
            f"{label}: the box's host key does not match the pinned key",
            "refusing to connect; if the box was re-made on purpose run `devbox up --repin`",
        )
    return transport


class BoxSession:
    """One authenticated SSH session into a box, running commands like `ssh box CMD`."""

    def __init__(self, connect: Callable[[], object], pinned_key: str, user: str, keys: list, label: str,
                 trusted: tuple[str, ...] = ()):
        self.connect, self.pinned_key, self.user, self.keys, self.label = connect, pinned_key, user, keys, label
        self.trusted = trusted  # the fingerprints keys/ gives the box, for a refusal's message
        self.transport = None

    def login(self, wait_s: float = 30) -> None:
        """Log in; a box that was just started gets wait_s for its sshd to answer."""
        import paramiko

        deadline = time.monotonic() + wait_s
        while True:
            try:
                transport = open_transport(self.connect(), self.pinned_key, self.label)
                break
            except (HostUnreachable, paramiko.SSHException, EOFError, OSError) as exc:
                # The host's port proxy accepts before sshd listens: "Error reading SSH
                # protocol banner" until the entrypoint has exec'd sshd.
                if time.monotonic() > deadline:
                    raise HostUnreachable(f"{self.label}: the box's sshd did not answer within {wait_s:.0f} s ({exc})",
                                          "read the box's log on the host (`docker logs` of its container), then run `devbox verify`") from None
                time.sleep(0.3)
        for key in self.keys:
            try:
                transport.auth_publickey(self.user, key)
                break
            except paramiko.AuthenticationException:
                continue
            except (paramiko.SSHException, EOFError, OSError) as exc:   # the link died before the login ended
                transport.close()
                raise stopped_answering(self.label, exc, " (during the key login)") from exc
        if not transport.is_authenticated():
            transport.close()
            offered = ", ".join(k.fingerprint for k in self.keys)
            holds = f"; the box is given {', '.join(self.trusted)} (keys/)" if self.trusted else ""
            raise HostUnreachable(f"{self.label}: key login refused for {offered}{holds}",
                                  "if keys/ changed since the box was made or synced, run `devbox keys sync`; "
                                  "else check that the private key matches its .pub")
        self.transport = transport

    def run(self, command: str, stdin: bytes | None = None, timeout: float = 120) -> tuple[int, str, str]:
        import paramiko

        from devbox.remote import _exchange

        try:
            channel = self.transport.open_session(timeout=15)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise stopped_answering(self.label, exc) from exc
        result = _exchange(channel, command, stdin, timeout, None, alias=self.label)
        return result.exit_code, result.stdout, result.stderr

    def close(self) -> None:
        if self.transport:
            self.transport.close()

    # attacks: fresh transports, each must be refused
    def allowed_methods(self) -> list[str]:
        import paramiko

        transport = open_transport(self.connect(), self.pinned_key, self.label)
        try:
            transport.auth_none(self.user)
            return ["none"]
        except paramiko.BadAuthenticationType as exc:
            return list(exc.allowed_types)
        finally:
            transport.close()

    def try_password(self, user: str, password: str = "devbox-probe") -> bool:
        return self._attempt(lambda t: t.auth_password(user, password))

    def try_keyboard_interactive(self, user: str) -> bool:
        return self._attempt(lambda t: t.auth_interactive(user, lambda title, instr, prompts: ["devbox-probe"] * len(prompts)))

    def try_key_as(self, user: str) -> bool:
        return self._attempt(lambda t: t.auth_publickey(user, self.keys[0]))

    def _attempt(self, auth) -> bool:
        """True when the server let the attempt in (which is a failure for us)."""
        import paramiko

        transport = open_transport(self.connect(), self.pinned_key, self.label)
        try:
            auth(transport)
            return transport.is_authenticated()
        except (paramiko.AuthenticationException, paramiko.SSHException):
            return False
        finally:
            transport.close()


# ---------------------------------------------------------------- the checks
#
# The in-box checks take a runner, `run(command, stdin=None, timeout=120) -> (code, out, err)`:
# a BoxSession over SSH (what `verify` uses), `docker exec`, or a local shell (`LocalRunner`)
# run the same checks. Only the login attacks need an SSH session of their own.

Runner = Callable[..., tuple[int, str, str]]


def check(name: str, passed: bool, detail: str = "") -> Check:
    return Check(name, OK if passed else FAIL, detail)


class LocalRunner:
    """The checks against this machine's own shell (tests, the GPU evidence script)."""

    def run(self, command: str, stdin: bytes | None = None, timeout: float = 120) -> tuple[int, str, str]:
        import subprocess

        done = subprocess.run(["sh", "-c", command], input=stdin, capture_output=True, timeout=timeout)
        return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


def run_checks(session: BoxSession, expect: Expectations) -> list[Check]:
    """Every check; the login attacks (each a fresh SSH handshake) run alongside the rest."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        attacks = [pool.submit(session.allowed_methods), pool.submit(session.try_password, session.user),
                   pool.submit(session.try_keyboard_interactive, session.user), pool.submit(session.try_key_as, "root")]
        inside = box_checks(session.run, expect)
        refused = auth_checks(*(attack.result() for attack in attacks))
    return [Check("key login", OK, f"as {session.user}")] + refused + inside


def box_checks(run: Runner, expect: Expectations) -> list[Check]:
    """What must hold inside the box, asked through `run`."""
    checks = identity_checks(BoxProbe.read(run), expect) + [tmux_check(run)]
    checks += [mount_check(run, target, read_only) for target, read_only in expect.mounts]
    return checks + runtime_checks(run, expect) + gpu_checks(run, expect.gpus)


MIN_SHM_KIB = 1 << 20   # 1 GiB: Docker's 64 MiB default is what crashes NCCL's ncclShmOpen


def runtime_checks(run: Runner, expect: Expectations) -> list[Check]:
    """The limits NCCL needs, as the login really has them: locked memory and /dev/shm."""
    out = run("echo \"memlock=$(ulimit -l)\"; df -Pk /dev/shm | tail -1")[1]
    memlock = re.search(r"memlock=(\S+)", out)
    shm = re.search(r"^\S+\s+(\d+)\s", out, re.MULTILINE)
    got_memlock, got_shm = memlock.group(1) if memlock else "?", int(shm.group(1)) if shm else None
    want_memlock = expect.memlock or "unlimited"
    shm_ok = got_shm is not None and (got_shm == expect.shm_kib if expect.shm_kib else got_shm >= MIN_SHM_KIB)
    want_shm = f"{expect.shm_kib} KiB" if expect.shm_kib else f">= {MIN_SHM_KIB} KiB"
    return [check("memlock (ulimit -l)", got_memlock == want_memlock, f"{got_memlock} (want {want_memlock})"),
            check("/dev/shm size", shm_ok, f"{got_shm} KiB (want {want_shm})")]


def auth_checks(methods: list[str], password_in: bool, keyboard_in: bool, root_in: bool) -> list[Check]:
    def refused(name: str, got_in: bool) -> Check:
        return check(name, not got_in, "login succeeded!" if got_in else "")

    return [check("only publickey offered", methods == ["publickey"], ",".join(methods)),
            refused("password refused", password_in), refused("keyboard-interactive refused", keyboard_in),
            refused("root login refused", root_in)]


class ShellProbe:
    """Facts read in the box with one command (COMMAND) and parsed once (parse)."""

    COMMAND = ""

    @classmethod
    def read(cls, run: Runner):
        return cls.parse(run(cls.COMMAND)[1])

    @classmethod
    def of(cls, found: dict[str, str]):
        """The probe from what the command printed; names it does not know are left out."""
        return cls(**{k: v for k, v in found.items() if k in cls.__dataclass_fields__})

    @classmethod
    def parse(cls, text: str):
        """`key=value` lines (a value may hold spaces: an error message)."""
        return cls.of({k: v.strip() for k, v in (line.split("=", 1) for line in text.splitlines() if "=" in line)})


@dataclass(frozen=True)
class BoxProbe(ShellProbe):
    """Who the login is and what it may do, read in one command and parsed once."""

    COMMAND = (
        'echo "uid=$(id -u) gid=$(id -g) user=$(id -un)"; '
        'grep -E "^(CapEff|NoNewPrivs):" /proc/self/status; '
        # Twice, 0.5 s apart, counting only processes root in both: a `docker exec` into the box
        # (a health check, another devbox) is root for an instant before it drops to the user.
        'roots() { grep -l "^Uid:[[:space:]]*0[[:space:]]" /proc/[0-9]*/status 2>/dev/null; }; '
        'first=$(roots); [ -z "$first" ] || sleep 0.5; '
        'echo "root_procs=$({ echo "$first"; roots; } | grep . | sort | uniq -d | wc -l)"; '
        'if command -v sudo >/dev/null 2>&1; then sudo -n true 2>/dev/null && echo sudo=works || echo sudo=refused; else echo sudo=absent; fi'
    )
    uid: str = "?"
    gid: str = "?"
    user: str = "?"
    cap_eff: str = "?"
    no_new_privs: str = "?"
    root_procs: str = "?"
    sudo: str = "?"

    @classmethod
    def parse(cls, text: str) -> "BoxProbe":
        """`key=value` words and `Key:<tab>value` /proc lines."""
        found: dict[str, str] = {}
        for line in text.splitlines():
            match = re.match(r"^(\w+):\s+(\S+)$", line)
            pairs = [match.groups()] if match else [w.split("=", 1) for w in line.split() if "=" in w]
            found.update({k: v for k, v in pairs})
        names = {"CapEff": "cap_eff", "NoNewPrivs": "no_new_privs"}
        return cls.of({names.get(k, k): v for k, v in found.items()})

    @property
    def has_capabilities(self) -> bool:
        return self.cap_eff == "?" or self.cap_eff.strip("0") != ""


def identity_checks(probe: BoxProbe, expect: Expectations) -> list[Check]:
    return [
        check("uid/gid", probe.uid == str(expect.uid) and probe.gid == str(expect.gid) and probe.uid != "0",
              f"{probe.user} {probe.uid}:{probe.gid} (want {expect.uid}:{expect.gid}, never 0)"),
        check("no root process", probe.root_procs == "0", f"{probe.root_procs} processes with uid 0"),
        check("no capabilities", not probe.has_capabilities, f"CapEff {probe.cap_eff}"),
        check("no new privileges", probe.no_new_privs == "1", f"NoNewPrivs {probe.no_new_privs}"),
        check("no sudo", probe.sudo != "works", f"sudo {probe.sudo}"),
    ]


def tmux_check(run: Runner) -> Check:
    name = "devbox-verify"
    code, out, err = run(f"tmux new-session -d -s {name} 'sleep 60' && tmux has-session -t ={name} && tmux kill-session -t ={name} && tmux -V")
    lines = (out or err).strip().splitlines()
    return check("tmux", code == 0, lines[-1] if lines else "")


def mount_check(run: Runner, target: str, read_only: bool) -> Check:
    probe = shlex.quote(f"{target}/.devbox-verify-write")
    code, out, err = run(f"touch {probe} && rm -f {probe}")
    if read_only:
        return check(f"mount {target} read-only", code != 0, "writable!" if code == 0 else "write refused")
    return check(f"mount {target} writable", code == 0, err.strip()[:120])


GPU_CHECKS = ("nvidia-smi", "torch cuda", "gpu count", "cuda matmul", "nccl all-reduce")
# A private temp file: concurrent verifies never share it, nobody else owns it.
RUN_GPU_PROBE = ('f=$(mktemp /tmp/devbox-gpu-probe.XXXXXX) && cat > "$f" && '
                 '{ if command -v python3 >/dev/null; then python3 "$f"; else python "$f"; fi; }; rc=$?; rm -f "$f"; exit $rc')


def gpu_checks(run: Runner, wanted: int | None) -> list[Check]:
    """nvidia-smi, torch and a CUDA op; 'skipped' (never 'ok') when no GPUs were asked."""
    if wanted == 0:
        return [Check(n, SKIPPED, "gpus = none") for n in GPU_CHECKS]
    code, out, err = run("nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader,nounits")
    gpus, smi_error = parse_gpu_csv(out)
    listed = "; ".join(f"{g.index}: {g.name} (driver {g.driver}, {g.memory_mib} MiB)" for g in gpus)
    smi = check("nvidia-smi", code == 0 and bool(gpus), listed or (smi_error or err.strip())[:200])
    code, out, err = run(RUN_GPU_PROBE, stdin=GPU_PROBE().encode(), timeout=300)
    report = last_json(out) or {"error": (err.strip() or out.strip())[-300:] or f"probe exited {code}"}
    return [smi] + torch_checks(report, wanted, len(gpus))


def last_json(text: str) -> dict | None:
    """The last JSON object line of a program's output (the probe prints one)."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def torch_checks(report: dict, wanted: int | None, smi_count: int) -> list[Check]:
    """Judge the probe's JSON report (pure: unit-tested with recorded reports)."""
    if "error" in report:
        return [Check("torch cuda", FAIL, report["error"])] + [Check(n, FAIL, "") for n in GPU_CHECKS[2:]]
    count = report.get("device_count", 0)
    want = smi_count if wanted is None else wanted
    return [
        check("torch cuda", bool(report.get("cuda_available")),
              f"torch {report.get('torch')} cuda {report.get('cuda')} available={report.get('cuda_available')}"),
        check("gpu count", count == want and count > 0, f"torch sees {count}, want {want}"),
        check("cuda matmul", bool(report.get("matmul_ok")), f"max abs error vs CPU {report.get('matmul_max_abs_err')}"),
        check("nccl all-reduce", bool(report.get("nccl_ok")), str(report.get("nccl", ""))[:200]) if count > 1
        else Check("nccl all-reduce", SKIPPED, "one GPU"),
    ]


def worst(checks: list[Check]) -> int:
    """The exit code a list of checks earns: 1 when any failed."""
    return 1 if any(c.status == FAIL for c in checks) else 0


# ---------------------------------------------------------------- VS Code Remote-SSH
#
# What VS Code needs to install and run its server in the box (its check-requirements
# script and its install flow): tar; curl or wget (else the laptop downloads and copies it);
# glibc >= 2.28 and libstdc++ with GLIBCXX >= 3.4.25; a home and /tmp it can write and exec
# in; a dynamic forward (`ssh -T -D PORT host bash`) to the port its server listens on.

VSCODE = "VS Code Remote-SSH"
MIN_GLIBC, MIN_GLIBCXX = (2, 28), (3, 4, 25)


@dataclass(frozen=True)
class VSCodeProbe(ShellProbe):
    """The box's side of VS Code's requirements, read in one command."""

    COMMAND = (
        'command -v tar >/dev/null 2>&1 && echo tar=yes || echo tar=no; '
        'if command -v curl >/dev/null 2>&1; then echo fetch=curl; elif command -v wget >/dev/null 2>&1; then echo fetch=wget; '
        'else echo fetch=; fi; '
        'echo "glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | cut -d" " -f2)"; '
        # found as VS Code does: ldconfig's cache first, then the usual folders
        'lib=$({ /sbin/ldconfig -p 2>/dev/null | grep -o "/[^ ]*libstdc++\\.so\\.6$"; '
        'ls /usr/lib/*/libstdc++.so.6 /usr/lib64/libstdc++.so.6 /usr/lib/libstdc++.so.6 2>/dev/null; } | head -n 1); '
        'echo "glibcxx=$([ -n "$lib" ] && grep -ao "GLIBCXX_3\\.4\\.[0-9]*" "$(readlink -f "$lib")" | cut -d_ -f2 '
        '| sort -t. -k3 -n | tail -n 1)"; '
        'x() { f="$1/.devbox-vscode-probe.$$"; r=$( { printf "#!/bin/sh\\necho ran\\n" > "$f" && chmod 700 "$f" && "$f"; } 2>&1); '
        'rm -f "$f"; [ "$r" = ran ] && echo ok || echo "${r:-cannot write}" | head -n 1; }; '
        'echo "home=$(x "$HOME")"; echo "tmp=$(x /tmp)"'
    )
    tar: str = "?"
    fetch: str = ""
    glibc: str = ""
    glibcxx: str = ""
    home: str = "?"
    tmp: str = "?"


def version(text: str) -> tuple[int, ...]:
    """'2.36' -> (2, 36); anything unreadable -> () (older than every minimum)."""
    return tuple(int(part) for part in text.split(".")) if re.match(r"^\d+(\.\d+)*$", text) else ()


def vscode_problems(probe: VSCodeProbe, forward_error: str, sftp_error: str) -> list[str]:
    """Each unmet requirement with its remedy (pure: unit-tested with recorded probes)."""
    problems = []
    if probe.tar != "yes":
        problems.append('no tar in the box (VS Code unpacks its server with it): add apt = ["tar"] to devbox.toml')
    if not probe.fetch:
        problems.append('no curl or wget in the box: set "remote.SSH.localServerDownload": "always" in VS Code '
                        '(it downloads on the laptop and copies over), or add apt = ["curl"] to devbox.toml')
    if version(probe.glibc) < MIN_GLIBC:
        problems.append(f"glibc {probe.glibc or 'unknown'} < 2.28: VS Code's server will not run; use a base_image on Ubuntu 20.04+ or Debian 10+")
    if version(probe.glibcxx) < MIN_GLIBCXX:
        problems.append(f"libstdc++ GLIBCXX {probe.glibcxx or 'not found'} < 3.4.25: VS Code's server will not run; "
                        "use a base_image on Ubuntu 20.04+ or Debian 10+")
    for where, result in (("home", probe.home), ("/tmp", probe.tmp)):
        if result != "ok":
            problems.append(f"cannot write and run a program in {where} ({result}): VS Code installs and starts its server there; "
                            "mount it without noexec and owned by the login user")
    if forward_error:
        problems.append(f"a -D forward into the box failed ({forward_error}): VS Code connects through one; "
                        "the box's sshd must allow local forwarding (AllowTcpForwarding local)")
    if sftp_error:
        problems.append(f"sftp failed ({sftp_error}): VS Code's local-download fallback copies its server over it; "
                        "the box's sshd needs `Subsystem sftp internal-sftp`")
    return problems


def vscode_check(probe: VSCodeProbe, forward_error: str, sftp_error: str) -> Check:
    problems = vscode_problems(probe, forward_error, sftp_error)
    if problems:
        return Check(VSCODE, FAIL, " | ".join(problems))
    return Check(VSCODE, OK, f"tar, {probe.fetch}, glibc {probe.glibc}, GLIBCXX {probe.glibcxx}, home and /tmp exec, -D forward, sftp")
