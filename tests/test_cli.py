"""The command line as a user meets it: help that teaches, one-line errors, exit codes."""
import os
import subprocess
import sys

import pytest


def devbox(*args, home=None, cwd=None):
    env = {**os.environ, "HOME": str(home)} if home else None
    return subprocess.run([sys.executable, "-m", "devbox.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60)


def test_help_lists_every_command():
    out = devbox("--help").stdout
    for command in ("build", "up", "verify", "status", "down", "ssh", "code", "keys", "run", "ps", "logs", "attach", "stop", "jupyter", "forward", "top"):
        assert command in out


@pytest.mark.parametrize("args, needle", [
    (["up", "bad;host"], "not a valid host name"),
    (["up", "h", "--playbook", "nope"], "no playbook named"),
    (["up", "h", "--config", "/nonexistent.toml"], "does not exist"),
    (["run", "h", "--name", "x; rm -rf ~", "--", "true"], "invalid job name"),
    (["keys", "add", "Bad Name", "/dev/null"], "invalid name"),
])
def test_bad_input_is_one_line_with_a_remedy_and_exit_2(tmp_path, args, needle):
    done = devbox(*args, home=tmp_path, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("devbox: error: ") and done.stderr.count("\n") == 1
    assert needle in done.stderr and "(" in done.stderr


def test_bad_config_key_names_file_and_key(tmp_path):
    (tmp_path / "devbox.toml").write_text('[hosts.h]\ngpus = "many"\n')
    done = devbox("up", "h", home=tmp_path, cwd=tmp_path)
    assert done.returncode == 2 and "devbox.toml [hosts.h]" in done.stderr and "'gpus'" in done.stderr


def test_code_prints_the_exact_command_when_vscode_is_absent(tmp_path):
    env_path = "/usr/bin:/bin"
    done = subprocess.run([sys.executable, "-m", "devbox.cli", "code", "gpu-host-3"], capture_output=True, text=True,
                          env={"HOME": str(tmp_path), "PATH": env_path})
    assert done.returncode == 0
    assert "code --remote ssh-remote+devbox-gpu-host-3 /workspace" in done.stdout


def test_build_without_a_docker_engine_is_one_line_with_the_remedy(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    done = subprocess.run([sys.executable, "-m", "devbox.cli", "build"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 3
    assert done.stderr.count("\n") == 1 and "start dockerd" in done.stderr


def test_each_run_gets_its_own_host_suffix():
    """Two test runs on one engine never share box names (a real box is never touched)."""
    import subprocess
    import sys
    from pathlib import Path

    probe = "import conftest; print(conftest.HOST1)"
    env = {k: v for k, v in __import__("os").environ.items() if k != "DEVBOX_TEST_SUFFIX"}
    names = {subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).parent, env=env,
                            capture_output=True, text=True, check=True).stdout.strip() for _ in range(2)}
    assert len(names) == 2 and all(n.startswith("gpu-host-1-t") for n in names), names
