"""Steps: each one change to a host, holding exactly what it will run.

plan.py decides which steps a host needs (pure); a step knows its commands, so
`--dry-run` prints them, and applies itself over a Host. Plain changes are a
`DockerStep` (an argv) or a `ShellStep` (a check and its apply in one round trip); the
few rich ones (build, stream, swap a box) are small classes of their own.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Callable

from devbox.config import BoxSpec
from devbox.buildlog import PID_MARK, BuildLog, apt_mirrors
from devbox.errors import CommandStalled, DevboxError
from devbox.image import context_tar, local_has_image
from devbox.remote import Host, stream_transport, stream_transport_said, why_failed

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    action: str          # a stable name for reports and tests, never dispatched on
    description: str

    def commands(self) -> list[str]:
        """What runs on the host, as a shell would read it (for --dry-run)."""
        return []

    def apply(self, host: Host, progress: Progress) -> dict:
        raise NotImplementedError


@dataclass(frozen=True)
class DockerStep(Step):
    """One docker command; `stdin` for the few that read it (the keys and secrets writers),
    named by `stdin_note` and never shown (no repr: it may hold secrets)."""

    argv: tuple[str, ...] = ()
    stdin: str | bytes | None = field(default=None, repr=False)
    stdin_note: str = "team keys"

    def commands(self) -> list[str]:
        return [shlex.join(["docker", *self.argv]) + (f" < ({self.stdin_note})" if self.stdin is not None else "")]

    def apply(self, host: Host, progress: Progress) -> dict:
        host.docker(*self.argv, stdin=self.stdin.encode() if isinstance(self.stdin, str) else self.stdin)
        return {}


@dataclass(frozen=True)
class WriteKeys(DockerStep):
    """The keys writer: with `read_keys`, what it writes is keys/ as it is when it runs (a key
    revoked while `up` built must not come back), else the keys the plan was made with."""

    read_keys: Callable[[], str] | None = None

    def apply(self, host: Host, progress: Progress) -> dict:
        content = self.read_keys() if self.read_keys else self.stdin
        host.docker(*self.argv, stdin=content.encode())
        return {}


@dataclass(frozen=True)
class ShellStep(Step):
    """A check and its apply in one script (`inspect || create`): one round trip."""

    script: str = ""
    remedy: str = ""

    def commands(self) -> list[str]:
        return [self.script]

    def apply(self, host: Host, progress: Progress) -> dict:
        done = host.run(self.script, check=False)
        if not done.ok:
            raise DevboxError(f"{host.alias}: could not {self.description}: {why_failed(done)}", self.remedy)
        return {}


@dataclass(frozen=True)
class BuildImage(Step):
    """Send the few-KB build context and build on the host: no base layer ever crosses.

    A build that prints nothing for `spec.build_stall` seconds (apt or pip waiting on a
    mirror the host cannot reach) is stopped, nothing tagged, and `fallback` (streaming
    from this machine, when it has the image) delivers instead, or one line says why.
    """

    spec: BoxSpec | None = None
    tag: str = ""
    fallback: Step | None = None

    def argv(self) -> list[str]:
        # --force-rm: a failed or stopped build leaves no intermediate container behind.
        args = ["build", "--force-rm", "--tag", self.tag, "--label", "devbox.image=ssh", "--label", f"devbox.base={self.spec.base_image}"]
        for key, value in self.spec.image.build_args().items():
            args += ["--build-arg", f"{key}={value}"]
        return args + ["-"]

    def commands(self) -> list[str]:
        shown = [word if not word.startswith("DEVBOX_CA=") else "DEVBOX_CA=(ca_bundle)" for word in self.argv()]
        return [shlex.join(["docker", *shown]) + " < (build context tar)"]

    def apply(self, host: Host, progress: Progress) -> dict:
        context = context_tar()
        log = BuildLog()

        def relay(chunk: bytes) -> None:
            for line in log.feed(chunk):
                progress(f"{self.spec.box.name}: {line}")

        # The shell's pid is docker's (exec): a stalled build is stopped by it, and the
        # engine then cancels the build. 2>&1: BuildKit writes its progress to stderr.
        command = f"echo {PID_MARK} $$; exec {shlex.join(['docker', *self.argv()])} 2>&1"
        try:
            done = host.run(command, stdin=context, on_stdout=relay, timeout=3600, idle_timeout=self.spec.build_stall, check=False)
        except CommandStalled:
            if log.pid:
                host.run(["kill", log.pid], check=False)
            stalled = log.stalled(self.spec.box.name, self.spec.build_stall, self._unreachable(host, log), self._remedy())
            if self.fallback is None:
                raise stalled from None
            progress(f"{stalled.message}: sending the image from this machine instead")
            return self.fallback.apply(host, progress)
        if not done.ok:
            raise log.failure(self.spec.box.name, done.exit_code)
        return {"delivery": "build-on-host", "bytes_sent": len(context)}

    def _unreachable(self, host: Host, log: BuildLog) -> list[str]:
        """What the stalled step was fetching from: the base's apt mirrors, or PyPI."""
        if log.kind == "pip":
            return ["pypi.org (or the index the base's pip config names)"]
        if log.kind != "apt":
            return []
        script = "cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null; true"
        sources = host.docker("run", "--rm", "--pull", "never", "--network", "none", "--entrypoint", "sh", self.spec.base_image,
                              "-c", script, check=False, timeout=60)
        return apt_mirrors(sources.stdout)

    def _remedy(self) -> str:
        return (f'set delivery = "stream" in devbox.toml and run `devbox up {self.spec.box.name}` from a machine that has the '
                f"image (`{self.spec.image.build_command()}` makes it), or let the host reach its mirror; if the build is "
                f"only slow, raise build_stall (now {self.spec.build_stall:g} s)")


HOST_LAYERS = "docker image ls -q | sort -u | xargs -r docker image inspect --format '{{json .RootFS.Layers}}'"


@dataclass(frozen=True)
class StreamImage(Step):
    """Stream `docker save` straight into the host's `docker load`, minus the layers it has
    (devbox/delivery.py): no temp file, committed in parts so a cut link loses little."""

    spec: BoxSpec | None = None
    tag: str = ""

    def commands(self) -> list[str]:
        how = "ssh -F (your ssh config)" if stream_transport() == "openssh" else "(paramiko)"
        return [HOST_LAYERS, f"docker save {self.tag} (minus those layers, in parts) | {how} {self.spec.host} docker load"]

    def apply(self, host: Host, progress: Progress) -> dict:
        import json

        from devbox.delivery import Rewrite, deliver, host_chains, inspect_local, save_stream, todo_bytes

        chunks = save_stream(self.tag)   # first: the local export runs while the host is asked what it has
        try:
            lists = [json.loads(line) or [] for line in host.run(HOST_LAYERS, check=False).stdout.splitlines() if line.startswith("[")]
            rewrite = Rewrite(inspect_local(self.tag), host_chains(lists))
            missing = rewrite.present.count(False)
            total = todo_bytes(self.tag, rewrite.present)
            progress(f"{self.spec.box.name}: sending {missing} of {len(rewrite.present)} layers"
                     + (f", about {total / 1e6:.0f} MB" if total else "") + f", through {stream_transport_said()}")
            meter = _meter(progress, self.spec.host, total)
            done = deliver(host, rewrite, chunks, meter.update)
        finally:
            chunks.close()
        transport = stream_transport()
        meter.close(done.bytes_sent)
        return {"delivery": "stream-missing-layers", "transport": transport, "bytes_sent": done.bytes_sent, "layers_sent": done.layers_sent,
                "layers_skipped": done.layers_skipped}


@dataclass(frozen=True)
class PullImage(Step):
    """Through the team's registry (devbox/registry.py): pushed from here once per `up`, pulled
    by digest by the host over its own network; `fallback` (streaming) when told to."""

    spec: BoxSpec | None = None
    tag: str = ""
    fallback: Step | None = None

    def commands(self) -> list[str]:
        from devbox.registry import pull_script, remote_ref

        registry = self.spec.registry
        return [f"docker push {remote_ref(registry, self.tag)}   (on this machine, once; built here first if missing)",
                pull_script(registry, self.tag, "<digest the push reports>")]

    def apply(self, host: Host, progress: Progress) -> dict:
        from devbox.registry import publish, pull_failure, pull_script

        try:
            published = publish(self.spec.image, self.tag, self.spec.registry, progress)
            done = host.run(pull_script(self.spec.registry, self.tag, published.digest), timeout=3600, check=False)
            if not done.ok:
                raise pull_failure(self.spec.host, self.spec.registry, self.tag, done.stderr or done.stdout)
        except DevboxError as exc:
            if self.fallback is None or not local_has_image(self.tag):   # nothing here to stream either
                raise
            progress(f"{exc.message}: sending the image over SSH instead")
            return self.fallback.apply(host, progress)
        return {"delivery": "registry", "bytes_sent": published.bytes_pushed, "layers_pushed": published.layers_pushed}


def _meter(progress: Progress, host: str, total: int | None):
    """A bar on a terminal, plain lines otherwise, nothing with --json (devbox/progress.py)."""
    from devbox.progress import meter

    return meter(progress, host, total)


PORT_TAKEN = ("address already in use", "port is already allocated")
# Until the new box's sshd answers: fail fast if it stops or restarts (a broken spec).
WAIT_HEALTHY = (
    'for i in $(seq {tries}); do '
    's=$(docker container inspect -f "{{{{.State.Running}}}} {{{{.RestartCount}}}}" {name}); '
    '[ "$s" = "true 0" ] || exit 1; '
    'docker exec {name} /usr/local/bin/devbox-health --banner && exit 0; sleep 0.3; done; exit 1'
)


@dataclass(frozen=True)
class SwapBox(Step):
    """Make the new box beside the old one and swap only once it is proven.

    `docker create` under a temporary name checks the whole spec (mounts, devices)
    while the old box runs on; on the same port the old one is then stopped (it holds the
    port), on another it runs on until the new one is proven (a taken port then fails with
    the old box untouched). The new one is kept only when its sshd answers; any failure
    removes it and leaves (or starts) the old one. A port another program took since the
    gather is retried with the next free one (never a configured `port`).
    """

    spec: BoxSpec | None = None
    ports: tuple[int, ...] = ()
    argv_for: Callable[[int, str], list[str]] | None = None   # (port, container name) -> `docker create` argv
    replace: bool = False
    wait_s: float = 30

    @property
    def names(self) -> tuple[str, str, str]:
        box = self.spec.box_name
        return box, f"{box}.next", f"{box}.old"

    def commands(self) -> list[str]:
        box, new, old = self.names
        swap = [f"docker rename {box} {old}", f"docker stop {old}"] if self.replace else []
        done = [f"docker rm --force {old}"] if self.replace else []
        return [shlex.join(["docker", *self.argv_for(self.ports[0], new)]), *swap, f"docker start {new}",
                f"(wait until {new}'s sshd answers)", f"docker rename {new} {box}", *done]

    def apply(self, host: Host, progress: Progress) -> dict:
        box, new, old = self.names
        host.docker("rm", "--force", new, old, check=False)   # ours: left by an interrupted `up`
        held = self._held_port(host, box) if self.replace else None
        stopped = False
        for attempt, port in enumerate(self.ports):
            self._create(host, new, port)
            if self.replace and port == held and not stopped:
                host.docker("rename", box, old)
                host.docker("stop", "--time", "10", old)
                stopped = True
            started = host.docker("start", new, check=False)
            if started.ok and self._proven(host, new):
                break
            logs = host.docker("logs", "--tail", "3", new, check=False)
            host.docker("rm", "--force", new, check=False)
            taken = not started.ok and any(t in started.stderr for t in PORT_TAKEN)
            if taken and attempt + 1 < len(self.ports):
                progress(f"{self.spec.box.name}: port {port} was taken meanwhile, trying {self.ports[attempt + 1]}")
                continue
            if taken:
                self._fail_taken(host, port, stopped)
            self._fail(host, why_failed(started) if not started.ok else f"its sshd did not answer: {why_failed(logs) or 'no log'}",
                       stopped)
        if self.replace and not stopped:
            host.docker("rename", box, old)
        host.docker("rename", new, box)
        if self.replace:
            host.docker("rm", "--force", old)
        return {"port": port}

    @staticmethod
    def _held_port(host: Host, box: str) -> int | None:
        """The host port the running box publishes (its label), which only it can free."""
        label = host.docker("container", "inspect", "-f", '{{index .Config.Labels "devbox.port"}}', box, check=False).stdout.strip()
        return int(label) if label.isdigit() else None

    def _create(self, host: Host, new: str, port: int) -> None:
        created = host.docker(*self.argv_for(port, new), check=False)
        if not created.ok:
            host.docker("rm", "--force", new, check=False)
            raise DevboxError(f"{self.spec.box.name}: Docker refused the box spec: {why_failed(created)}",
                              "fix devbox.toml and re-run; the running box was not touched", exit_code=2)

    def _proven(self, host: Host, new: str) -> bool:
        return host.run(WAIT_HEALTHY.format(tries=int(self.wait_s / 0.4), name=shlex.quote(new)), check=False).ok

    def _restore(self, host: Host, stopped: bool) -> str:
        """The old box back under its name and running; what to tell the user of it."""
        box, new, old = self.names
        if stopped:
            host.docker("rename", old, box)
            host.docker("start", box)
            return "the old box is running again; "
        return "the running box was not touched; " if self.replace else ""

    def _fail_taken(self, host: Host, port: int, stopped: bool) -> None:
        kept = self._restore(host, stopped)
        configured = " (`port` in devbox.toml)" if self.spec.port else ""
        raise DevboxError(f"{self.spec.box.name}: port {port}{configured} is taken on the host by another program",
                          f"{kept}free it (`ss -ltnp` on the host shows who holds it), or set another `port`, "
                          "or remove it to let devbox pick a free one", exit_code=2)

    def _fail(self, host: Host, why: str, stopped: bool) -> None:
        kept = self._restore(host, stopped)
        raise DevboxError(f"{self.spec.box.name}: the new box did not start ({why})",
                          kept + "fix devbox.toml or the host, then re-run `devbox up`")


def apply(host: Host, steps: list[Step], label: str, progress: Progress) -> dict:
    """Apply the steps in order; returns what they report (delivery, bytes, port)."""
    report: dict = {}
    for step in steps:
        progress(f"{label}: {step.description}")
        report.update(step.apply(host, progress))
    return report
