"""A box's identity: which host it runs on and what it is called, and every name derived from it.

The one place that turns (host, box name) into the container, its volumes, keys volume,
network, ssh alias and pin. The default box of a host is named after the host, so a
config written before named boxes existed keeps the very same names: upgrading devbox
never renames (and so never re-creates) a box.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "devbox-"
SHARED_PREFIX = "devbox-shared-"      # volumes the boxes of one host share on purpose


def _safe(name: str) -> str:
    """Docker object names: letters, digits, _ . - (a host alias may hold more)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


@dataclass(frozen=True)
class BoxId:
    host: str        # the Host from ~/.ssh/config the box runs on
    name: str        # what the user calls the box (`devbox up NAME`, `ssh devbox-NAME`)

    @classmethod
    def default(cls, host: str) -> "BoxId":
        """A host's own box (one box per host, as before named boxes)."""
        return cls(host, host)

    @property
    def is_default(self) -> bool:
        return self.name == self.host

    @property
    def container(self) -> str:
        return PREFIX + _safe(self.name)

    @property
    def keys_volume(self) -> str:
        """The box's authorized_keys: mounted read-only in the box, written from the host."""
        return f"{self.container}.keys"

    @property
    def secrets_volume(self) -> str:
        """The box's env, secrets and git settings: mounted read-only in the box, written from the host."""
        return f"{self.container}.secrets"

    @property
    def network(self) -> str:
        """The box's own bridge network: boxes on one host cannot reach each other."""
        return f"{self.container}.net"

    def volume(self, source: str) -> str:
        """A named volume of this box (home, workspace, …): never another box's."""
        return f"{self.container}-{source}"

    @staticmethod
    def shared_volume(source: str) -> str:
        """A volume every box of the host may mount on purpose (`shared:NAME:/path`)."""
        return SHARED_PREFIX + source

    @staticmethod
    def shared_folder(data_root: str, source: str) -> str:
        """`shared:NAME` of a box on shared storage: one folder beside the boxes' own (no box
        name starts with a dot)."""
        return f"{data_root.rsplit('/', 1)[0]}/.shared/{source}"

    @property
    def node_alias(self) -> str:
        """A Slurm box's node, as devbox's ssh config names it (laptop -> login -> node)."""
        return f"{PREFIX}node.{self.name}"

    @property
    def ssh_alias(self) -> str:
        """`ssh devbox-NAME` and the pinned known_hosts key (HostKeyAlias)."""
        return PREFIX + self.name

    def __str__(self) -> str:
        return self.name
