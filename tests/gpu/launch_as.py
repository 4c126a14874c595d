"""Become a non-root user the way the box's container does, then exec a program.

    python3 tests/gpu/launch_as.py USER PROGRAM [ARGS...]

Used by run_on_device.sh to start sshd as the login user: supplementary groups are
dropped to the user's own, uid/gid switched (so every capability is gone), and
PR_SET_NO_NEW_PRIVS set (Docker's `no-new-privileges`), so `devbox verify`'s identity
checks see what they would see in a real box. The environment is passed on unchanged.
"""
from __future__ import annotations

import ctypes
import os
import pwd
import sys

PR_SET_NO_NEW_PRIVS = 38


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    user, program = argv[1], argv[2]
    entry = pwd.getpwnam(user)
    os.initgroups(user, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    os.chdir(entry.pw_dir)
    os.execv(program, argv[2:])
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
