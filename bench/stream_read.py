"""`python -m bench.stream_read`: why remote.Host.run has its own channel loop.

Sends the same bytes to `cat > /dev/null` on a bed host (a real sshd on loopback) through
devbox's Host.run and through Fabric's Connection.run(in_stream=...), interleaved, and
prints the MB/s of each. invoke's runner reads a non-terminal in_stream a few bytes per
loop with `input_sleep` (0.01 s) between reads: a multi-GB `docker load` would take days.
Small sizes only (the default 256 KiB), or the Fabric side runs for hours.
"""
from __future__ import annotations

import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import testbed as tb  # noqa: E402


def main(kib: int = 256, runs: int = 3) -> None:
    from devbox.remote import Host
    from devbox.sshconfig import load_user_config

    work = Path(tempfile.mkdtemp(prefix="devbox-bench-stream-", dir="/var/lib"))
    bed = tb.start_testbed(work, ["stream-host"])
    home = Path(tempfile.mkdtemp(prefix="devbox-bench-home-"))
    laptop = tb.make_laptop(home, bed)
    os.environ["HOME"] = str(home)
    data = b"0123456789abcdef" * (kib << 6)   # text: invoke decodes what it reads
    megabytes = kib / 1024
    rates: dict[str, list[float]] = {"devbox Host.run": [], "fabric Connection.run(in_stream)": []}
    try:
        host = Host("stream-host", load_user_config(laptop.ssh_config))
        for _ in range(runs):
            start = time.monotonic()
            host.run("cat > /dev/null", stdin=data, timeout=None)
            rates["devbox Host.run"].append(megabytes / (time.monotonic() - start))
            start = time.monotonic()
            host.connection.run("cat > /dev/null", in_stream=io.BytesIO(data), hide=True)
            rates["fabric Connection.run(in_stream)"].append(megabytes / (time.monotonic() - start))
        host.close()
    finally:
        bed.stop()
    for name, values in rates.items():
        print(f"{name:<36} {kib} KiB: median {statistics.median(values) * 1024:10.2f} KiB/s  "
              f"({', '.join(f'{v * 1024:.2f}' for v in values)})")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
