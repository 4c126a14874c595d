"""Reading a `docker build`'s output: which step runs, its last lines, and what a failure or a
stall of the build means, in one line with its remedy.

Pure: the build's output goes in (legacy builder or BuildKit's plain progress), errors come
out. Only the current step's last lines are kept, so a long build costs bounded memory.
"""
from __future__ import annotations

import re
from collections import deque

from devbox.errors import DevboxError

TAIL = 40                 # lines of the current step kept for the error
SHOWN = 6                 # of which the error shows the last ones
PID_MARK = "devbox-build-pid"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
LEGACY_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)")
KIT_STEP = re.compile(r"^#\d+ \[[^\]]*?(\d+)/(\d+)\] (.*)")
KIT_LINE = re.compile(r"^#\d+ \d+\.\d+ (.*)")
NOISE = re.compile(r"^(---> |Removing intermediate container|#\d+ (DONE|CACHED|sha256:|extracting|transferring|resolve))"
                   r"|^DEPRECATED: The legacy builder|^Install the buildx component|docs\.docker\.com/go/buildx")
EXIT = re.compile(r"(?:returned a non-zero code|exit code): (\d+)")
ERROR_LINE = re.compile(r"^(E: |ERROR|error: |Error: |fatal: )|Unable to locate package|No matching distribution|Could not find a version")
TLS_FAILED = re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|self[- ]signed certificate")
URL_HOST = re.compile(r"\bhttps?://([A-Za-z0-9.-]+(?::\d+)?)")

APT_ADVICE = ("check `apt` in devbox.toml: each name must be a package of the base's distribution and each pin a "
              "version it has (`apt-cache policy NAME` in the base lists them)")
PIP_ADVICE = "check `pip` in devbox.toml: each name and pin must exist on the index the build reaches"
TLS_ADVICE = ("a proxy between the host and the index intercepts TLS: set ca_bundle in devbox.toml to its CA "
              "certificate (PEM), e.g. ca_bundle = \"/usr/local/share/ca-certificates/proxy.crt\"")
OTHER_ADVICE = "fix devbox.toml or the base image and re-run"


def step_kind(instruction: str) -> str:
    """Which of our Dockerfile's steps this is: "apt", "pip" or "" (another)."""
    if "apt-get install" in instruction:
        return "apt"
    return "pip" if "pip-install" in instruction else ""


def describe(instruction: str) -> str:
    kind = step_kind(instruction)
    if kind == "apt":
        return "apt-get install of openssh-server, tmux, the kit and `apt`"
    if kind == "pip":
        return "pip install of `pip`"
    return instruction if len(instruction) <= 70 else instruction[:69] + "…"


def apt_mirrors(sources: str) -> list[str]:
    """The hosts an image's apt sources name (sources.list lines and deb822 `URIs:`), in order."""
    hosts = [m.group(1) for line in sources.splitlines() if not line.lstrip().startswith("#") for m in URL_HOST.finditer(line)]
    return list(dict.fromkeys(hosts))


class BuildLog:
    """Fed the build's output as it comes; knows its step, its last lines and its pid."""

    def __init__(self) -> None:
        self.step: tuple[int, int, str] | None = None
        self.tail: deque[str] = deque(maxlen=TAIL)
        self.exit_code: int | None = None
        self.pid = ""
        self._partial = ""

    def feed(self, chunk: bytes | str) -> list[str]:
        """Take a chunk of output; return the lines worth showing as progress (new steps)."""
        text = chunk.decode(errors="replace") if isinstance(chunk, bytes) else chunk
        lines = (self._partial + text).replace("\r", "\n").split("\n")
        self._partial = lines.pop()
        return [shown for line in lines if (shown := self.line(line))]

    def line(self, raw: str) -> str:
        """One line of output; returns its progress text when it starts a step."""
        line = ANSI.sub("", raw).strip()
        if line.startswith(PID_MARK + " "):
            self.pid = line.split()[1] if line.split()[1].isdigit() else ""
            return ""
        if match := LEGACY_STEP.match(line) or KIT_STEP.match(line):
            number, total, instruction = int(match.group(1)), int(match.group(2)), match.group(3).strip()
            if self.step and self.step[:2] == (number, total):
                return ""   # BuildKit repeats a step's header: still the same step
            self.step = (number, total, instruction)
            self.tail.clear()
            return f"step {number}/{total}: {describe(instruction)}"
        line = m.group(1) if (m := KIT_LINE.match(line)) else line
        if code := EXIT.search(line):   # docker's last word: the code is kept, the line (the whole RUN) is not
            self.exit_code = int(code.group(1))
        elif line and not NOISE.search(line):
            self.tail.append(line[:300])
        return ""

    @property
    def kind(self) -> str:
        return step_kind(self.step[2]) if self.step else ""

    def where(self) -> str:
        if not self.step:
            return "before its first step"
        number, total, instruction = self.step
        return f"step {number}/{total} ({describe(instruction)})"

    def last_lines(self) -> str:
        lines = list(self.tail)[-SHOWN:]
        return " | ".join(line[:160] for line in lines) or "(no output)"

    def cause(self) -> tuple[str, str]:
        """The line that says why it failed, and what to do about it."""
        lines = list(self.tail)
        if tls := [line for line in lines if TLS_FAILED.search(line)]:
            detail = TLS_FAILED.search(tls[-1]).group(0)
            return f"a TLS certificate check failed ({detail})", TLS_ADVICE
        errors = [line for line in lines if ERROR_LINE.search(line)]
        advice = {"apt": APT_ADVICE, "pip": PIP_ADVICE}.get(self.kind, OTHER_ADVICE)
        return (errors[0] if errors else lines[-1] if lines else "no output"), advice

    def failure(self, host: str, exit_code: int | None = None) -> DevboxError:
        """The build ended with an error: say where, why, and its last lines."""
        code = self.exit_code if self.exit_code is not None else exit_code
        why, advice = self.cause()
        exited = f" (exit {code})" if code is not None else ""
        return DevboxError(f"{host}: the image build failed at {self.where()}{exited}: {why}",
                           f"{advice}; the step's last lines: {self.last_lines()}")

    def stalled(self, host: str, seconds: float, unreachable: list[str], remedy: str) -> DevboxError:
        """The build printed nothing for `seconds`: name what it could not reach."""
        if unreachable:
            reach = f"could not reach {', '.join(unreachable)}"
        else:
            reach = "waited on something it could not reach"
        return DevboxError(f"{host}: the image build made no progress for {seconds:g} s at {self.where()}: the host {reach}",
                           remedy, exit_code=3)
