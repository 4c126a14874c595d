"""Progress of a transfer (devbox/progress.py): plain lines with rate and ETA off a
terminal, a tqdm bar on one, nothing with --json; tqdm never imported for `--help`."""
from __future__ import annotations

import io
import subprocess
import sys

from devbox.progress import BarMeter, LineMeter, NoMeter, Reporter, meter


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_come_at_each_tenth_with_rate_and_eta():
    said, clock = [], Clock()
    lines = LineMeter(said.append, "gpu-1", 1_000_000_000, now=clock)
    for step in range(1, 21):
        clock.now = step * 0.5                      # 100 MB/s
        lines.update(step * 50_000_000)
    assert len(said) == 10
    assert said[0] == "gpu-1: sent 100.0 MB of 1.0 GB (10%), 100.0 MB/s, ETA 0:09"
    assert said[-1].startswith("gpu-1: sent 1.0 GB of 1.0 GB (100%)")
    lines.close(1_000_000_000)
    assert said[-1] == "gpu-1: sent 1.0 GB in 10.0 s (100.0 MB/s)"


def test_without_a_known_total_lines_still_say_bytes_and_rate():
    said, clock = [], Clock()
    lines = LineMeter(said.append, "gpu-1", None, now=clock)
    clock.now = 2.0
    lines.update(300_000_000)
    assert said == ["gpu-1: sent 300.0 MB, 150.0 MB/s"]


def test_json_mode_says_nothing_at_all(capsys):
    quiet = Reporter.for_cli(as_json=True)
    quiet("a step")
    transfer = quiet.transfer("gpu-1", 100)
    transfer.update(50)
    transfer.close(100)
    assert isinstance(transfer, NoMeter)
    assert capsys.readouterr() == ("", "")


def test_any_plain_callable_gets_lines():
    said = []
    transfer = meter(said.append, "gpu-1", 10)
    transfer.update(10)
    assert said and said[0].startswith("gpu-1: sent 10 B of 10 B (100%)")


def test_a_terminal_gets_a_bar_with_bytes_rate_and_eta_per_host():
    screen = io.StringIO()
    one, two = BarMeter(screen, "gpu-1", 2_000_000_000), BarMeter(screen, "gpu-2", 1_000_000_000)
    assert (one.row, two.row) == (0, 1)         # a line of its own per host
    one.update(500_000_000)
    two.update(1_000_000_000)
    one.bar.refresh()
    one.close(2_000_000_000)
    two.close(1_000_000_000)
    text = screen.getvalue()
    assert "gpu-1" in text and "gpu-2" in text and "2.00G/2.00G" in text and "B/s" in text and "<" in text


def test_help_and_the_progress_module_do_not_import_tqdm():
    probe = "import sys, devbox.cli, devbox.progress, devbox.steps, devbox.delivery; print('tqdm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"
