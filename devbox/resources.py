"""The data folders devbox ships: the image's build context and the playbooks.

In the repository they stay at images/ssh and playbooks/; pyproject.toml copies them
into the wheel as devbox/images/ssh and devbox/playbooks. An installed devbox finds them
inside its package; a checkout (or an editable install, which maps only the code) finds
them beside it. Nothing else is put in those folders: the content tag hashes them.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def shipped_dir(relative: str) -> Path:
    """`relative` (e.g. "images/ssh") inside the installed package, else in the checkout."""
    installed = Path(str(files("devbox").joinpath(relative)))
    return installed if installed.is_dir() else CHECKOUT / relative
