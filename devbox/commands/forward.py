"""`devbox forward`: ports in the box reached from this machine (TensorBoard, a debugger),
through the box's own ssh entry, re-made when the link drops, until Ctrl-C."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from devbox import sshconfig
from devbox.commands.connect import box_ssh
from devbox.config import validate_host
from devbox.errors import ConfigError
from devbox.tunnel import Forward, Tunnel, forward_options, listening, parse_forward, require_free, run_until_interrupted


@dataclass
class Forwarding:
    host: str
    forwards: list[Forward] = field(default_factory=list)

    def json_line(self) -> str:
        return json.dumps({"host": self.host, "forwards": [f.as_dict() for f in self.forwards]})

    def text(self) -> str:
        lines = [f"forwarding from {sshconfig.BOX_PREFIX}{self.host} (Ctrl-C to stop; a dropped link is re-made):"]
        return "\n".join(lines + [f"  http://127.0.0.1:{f.local_port}  ->  box port {f.box_port}" for f in self.forwards])


def plan_forwards(host: str, specs: list[str]) -> Forwarding:
    """Check every PORT[:LOCAL] and that each local port is free, before anything starts."""
    validate_host(host)
    if not specs:
        raise ConfigError("no port given", f"name the box's port, e.g. `devbox forward {host} 6006` (or 6006:16006)")
    forwards = [parse_forward(text) for text in specs]
    locals_ = [f.local_port for f in forwards]
    if len(set(locals_)) != len(locals_):
        raise ConfigError("the same local port is given twice", "give each forward its own local port (PORT:LOCAL)")
    for port in locals_:
        require_free(port)
    require_entry(host)
    return Forwarding(host, forwards)


def require_entry(host: str) -> None:
    """The tunnel goes through `ssh devbox-HOST`: without the entry there is no path (nor pin)."""
    if (sshconfig.BOX_PREFIX + host) not in sshconfig.read_entries():
        raise ConfigError(f"no ssh entry {sshconfig.BOX_PREFIX}{host} on this machine", f"run `devbox up {host}` first")


def box_tunnel(host: str, forwards: list[Forward], ready: Callable[[], bool], say: Callable[[str], None]) -> Tunnel:
    return Tunnel(box_ssh(host, *forward_options(forwards)), ready, say)


def forward(host: str, specs: list[str], announce: Callable[[Forwarding], None], say: Callable[[str], None]) -> None:
    plan = plan_forwards(host, specs)
    tunnel = box_tunnel(host, plan.forwards, lambda: all(listening(f.local_port) for f in plan.forwards), say)
    tunnel.open()
    announce(plan)
    run_until_interrupted(tunnel)
