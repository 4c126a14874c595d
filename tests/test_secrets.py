"""Issue 22 on the real bed: env, secrets and git settings reach the box's shells, jobs and git,
and a secret's value is nowhere else (inspect, logs, process lists, devbox's own output)."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import testbed as tb
from conftest import SUFFIX

HERE = Path(__file__).parent


def box_id(name: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.Id}}", name], capture_output=True, text=True, check=True).stdout.strip()


class ProcSampler:
    """Reads every process's /proc/PID/cmdline and environ on this machine (the fake hosts' sshd
    sessions, their docker CLIs and dockerd, writer containers, the boxes) until stopped; keeps
    each distinct command line, and each (cgroup, environ) pair, that holds one of `needles`."""

    def __init__(self, needles: list[str]):
        self.needles = [n.encode() for n in needles]
        self.hits: set[bytes] = set()
        self.environ_hits: set[tuple[bytes, bytes]] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self, pid: str, what: str) -> bytes:
        try:
            with open(f"/proc/{pid}/{what}", "rb") as handle:
                return handle.read()
        except OSError:
            return b""

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    line, environ = self._read(entry.name, "cmdline"), self._read(entry.name, "environ")
                    if any(n in line for n in self.needles):
                        self.hits.add(line)
                    if any(n in environ for n in self.needles):
                        cgroup = self._read(entry.name, "cgroup")
                        if cgroup:   # empty: the process ended between the two reads, so where it ran is unknown
                            self.environ_hits.add((cgroup, environ))
            self.samples += 1

    def environ_outside(self, box_id: str, laptop_marker: bytes) -> list[bytes]:
        """Environments holding a value, other than the box's own processes (its shells and jobs
        export them by design) and the laptop's devbox (given the value in its environment)."""
        return [env for cgroup, env in self.environ_hits if box_id.encode() not in cgroup and laptop_marker not in env]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def write_config(laptop, extra: str = "", host_extra: str = "") -> None:
    (laptop.work / "devbox.toml").write_text(
        f'[defaults]\nplaybook = "cpu"\nbase_image = "{tb.BASE_IMAGE}"\n{extra}\n'
        f'[hosts.{laptop.host1}]\n'
        'env = { PLAIN_VAR = "plain value 1" }\n'
        'secrets = { TOKEN_A = "env:DEVBOX_TEST_TOKEN_A", TOKEN_B = "file:~/tokens/b" }\n'
        'git_identity = "Ada Lovelace <ada@lab.org>"\n'
        f'{host_extra}\n')


@pytest.fixture
def secret_laptop(laptop):
    """The laptop with a box config that has an env var, a secret from an env var and one from a file."""
    laptop.values = {"A": "sekretA-" + secrets.token_hex(12), "B": "sekretB-" + secrets.token_hex(12)}
    laptop.devbox.env["DEVBOX_TEST_TOKEN_A"] = laptop.values["A"]
    (laptop.home / "tokens").mkdir()
    (laptop.home / "tokens" / "b").write_text(laptop.values["B"] + "\n")   # as `echo` writes it
    write_config(laptop)
    return laptop


def box_says(laptop, *command: str) -> str:
    done = laptop.ssh(f"devbox-{laptop.host1}", *command)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def assert_absent(where: str, text: str | bytes, values) -> None:
    data = text.encode() if isinstance(text, str) else text
    for value in values:
        assert value.encode() not in data, f"a secret's value is in {where}"


def test_secrets_reach_shells_and_jobs_and_leak_nowhere_else(secret_laptop):
    laptop, values = secret_laptop, secret_laptop.values
    canary = "canary-" + secrets.token_hex(6)   # proves the sampler sees what runs meanwhile
    needles = list(values.values())
    dry = laptop.devbox("up", laptop.host1, "--dry-run")
    dry_json = laptop.devbox("up", laptop.host1, "--dry-run", "--json")
    assert dry.returncode == 0 and dry_json.returncode == 0, dry.stderr + dry_json.stderr
    assert "2 secret(s) (TOKEN_A, TOKEN_B)" in dry.stdout, dry.stdout
    with ProcSampler(needles + [canary]) as sampler:
        subprocess.run(["sh", "-c", "sleep 0.3", canary])
        up, _ = laptop.devbox.json("up", laptop.host1)
        up_text = laptop.devbox("up", laptop.host1)
        job = laptop.devbox("run", laptop.host1, "--name", "envjob", "--", "sh", "-c", 'echo "A=$TOKEN_A B=$TOKEN_B P=$PLAIN_VAR"')
        assert job.returncode == 0, job.stderr
        ssh_plain = box_says(laptop, 'echo "A=$TOKEN_A B=$TOKEN_B P=$PLAIN_VAR"')
        ssh_login = box_says(laptop, "bash", "-lc", "'echo \"A=$TOKEN_A B=$TOKEN_B\"'")
    assert sampler.samples > 10 and any(canary.encode() in hit for hit in sampler.hits)
    sampler.hits = {hit for hit in sampler.hits if canary.encode() not in hit}
    want = f"A={values['A']} B={values['B']}"
    assert ssh_plain == want + " P=plain value 1" and ssh_login == want
    for _ in range(50):
        log = laptop.devbox("logs", laptop.host1, "envjob").stdout
        if "A=" in log:
            break
        time.sleep(0.1)
    assert log.strip() == want + " P=plain value 1"

    box = f"devbox-{laptop.host1}"
    assert [env for _, env in sampler.environ_hits if b"PLAIN_VAR=" in env], "the sampler sees the box's shells"
    outside = sampler.environ_outside(box_id(box), b"DEVBOX_TEST_TOKEN_A=")
    status = laptop.devbox("status", laptop.host1)
    status_json, _ = laptop.devbox.json("status", laptop.host1)
    assert status_json[0]["env"] == {"PLAIN_VAR": "plain value 1"} and status_json[0]["secrets"] == ["TOKEN_A", "TOKEN_B"]
    inspect = subprocess.run(["docker", "inspect", box, f"{box}.secrets"], capture_output=True, text=True).stdout
    logs = subprocess.run(["docker", "logs", box], capture_output=True, text=True)
    places = {
        "docker inspect (box and secrets volume)": inspect,
        "docker logs": logs.stdout + logs.stderr,
        "/proc/*/cmdline during up, run and ssh": b"\n".join(sampler.hits),
        "/proc/*/environ during up, run and ssh, outside the box and the laptop's devbox": b"\n".join(outside),
        "up --dry-run": dry.stdout + dry.stderr,
        "up --dry-run --json": dry_json.stdout + dry_json.stderr,
        "up --json": str(up),
        "up (text)": up_text.stdout + up_text.stderr,
        "status": status.stdout + status.stderr,
        "status --json": str(status_json),
        "the job's run.sh and command": box_says(laptop, "cat ~/.devbox/jobs/envjob/run.sh ~/.devbox/jobs/envjob/command"),
    }
    for where, text in places.items():
        assert_absent(where, text, needles)
    mounts = json.loads(subprocess.run(["docker", "inspect", "-f", "{{json .Mounts}}", box], capture_output=True, text=True).stdout)
    assert [m["RW"] for m in mounts if m["Name"] == f"{box}.secrets"] == [False], "mounted read-only in the box"
    mode = subprocess.run(["docker", "exec", box, "sh", "-c", "stat -L -c '%a %U' /etc/devbox/secrets/current/secret/TOKEN_A; "
                           "touch /etc/devbox/secrets/x 2>&1 || echo refused"], capture_output=True, text=True).stdout.split("\n")
    assert mode[0] == "400 dev" and "refused" in mode[-2], mode


def test_a_changed_value_syncs_live_into_the_same_box(secret_laptop):
    laptop, values = secret_laptop, secret_laptop.values
    laptop.devbox.json("up", laptop.host1)
    before = box_id(f"devbox-{laptop.host1}")
    laptop.devbox.env["DEVBOX_TEST_TOKEN_A"] = new_a = "sekretA2-" + secrets.token_hex(8)
    synced, _ = laptop.devbox.json("secrets", "sync", laptop.host1)
    assert synced[0]["changed"] and synced[0]["secrets"] == ["TOKEN_A", "TOKEN_B"]
    assert_absent("secrets sync --json", str(synced), [new_a, values["B"]])
    assert box_says(laptop, "echo $TOKEN_A") == new_a
    again, _ = laptop.devbox.json("secrets", "sync", laptop.host1)
    assert again[0]["changed"] is False
    (laptop.home / "tokens" / "b").write_text(new_b := "sekretB2-" + secrets.token_hex(8))
    up, _ = laptop.devbox.json("up", laptop.host1)
    steps = up[0]["steps"]
    assert [s for s in steps if "secret" in s] and not [s for s in steps if "re-create" in s], steps
    assert box_says(laptop, "echo $TOKEN_B") == new_b
    assert box_id(f"devbox-{laptop.host1}") == before, "same container: nothing re-created"


def test_a_missing_source_is_one_line_and_changes_nothing(secret_laptop):
    laptop = secret_laptop
    laptop.devbox.json("up", laptop.host1)
    before = box_id(f"devbox-{laptop.host1}")
    del laptop.devbox.env["DEVBOX_TEST_TOKEN_A"]
    for args in (("up", laptop.host1), ("secrets", "sync", laptop.host1)):
        done = laptop.devbox(*args)
        said = [line for line in (done.stdout + done.stderr).splitlines() if "TOKEN_A" in line]
        assert done.returncode == 2 and len(said) == 1 and "env:DEVBOX_TEST_TOKEN_A" in said[0], done.stdout + done.stderr
    laptop.devbox.env["DEVBOX_TEST_TOKEN_A"] = "x"
    (laptop.home / "tokens" / "b").unlink()
    done = laptop.devbox("up", laptop.host1)
    assert done.returncode == 2 and "TOKEN_B" in done.stdout and str(laptop.home / "tokens" / "b") in done.stdout, done.stdout
    assert box_says(laptop, "echo $TOKEN_A") == laptop.values["A"], "the box kept what it had"
    assert box_id(f"devbox-{laptop.host1}") == before


@pytest.mark.parametrize("table", ['env = { "1X" = "v" }', 'env = { "A B" = "v" }', 'env = { "A=B" = "v" }', 'env = { "" = "v" }',
                                   'env = { A = "a\\u0000b" }', 'env = { A = "a\\nb" }', 'secrets = { "1X" = "env:HOME" }',
                                   'secrets = { A = "hf_notasource" }', 'env = { A = "v" }\nsecrets = { A = "env:HOME" }',
                                   'git_identity = "Ada"', 'forward_agent = "yes"'])
def test_bad_names_and_values_are_refused_with_exit_2(laptop, table):
    (laptop.work / "devbox.toml").write_text(f'[defaults]\nplaybook = "cpu"\n{table}\n')
    done = laptop.devbox("up", laptop.host1)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "hf_notasource" not in done.stderr, "a value pasted as a source is never echoed"
    assert subprocess.run(["docker", "ps", "-aq", "--filter", f"label=devbox.host={laptop.host1}"],
                          capture_output=True, text=True).stdout == ""


PUSH = ("cd /tmp && rm -rf w && git init -q w && cd w && git commit -q --allow-empty -m hello && "
        "GIT_TERMINAL_PROMPT=0 GIT_SSL_CAINFO=/tmp/test-ca.pem git push -q --force https://127.0.0.1:{port}/repo.git HEAD:refs/heads/main")


def tls_files(folder: Path) -> tuple[Path, Path, bytes]:
    """A test CA and a certificate for 127.0.0.1 signed by it: (cert, key, the CA's PEM)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name, name = (x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]) for cn in ("devbox test CA", "127.0.0.1"))
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem", ca.public_bytes(serialization.Encoding.PEM)


def test_git_push_over_https_works_with_the_credential_and_fails_without(secret_laptop, tmp_path):
    laptop = secret_laptop
    token = "ghp-" + secrets.token_hex(10)
    laptop.devbox.env["DEVBOX_TEST_GH"] = "wrong-" + secrets.token_hex(4)
    write_config(laptop, host_extra='git_credentials = "env:DEVBOX_TEST_GH"')
    laptop.devbox.json("up", laptop.host1)
    box = f"devbox-{laptop.host1}"
    repo = tmp_path / "git" / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    cert, key, ca = tls_files(tmp_path)
    subprocess.run(["docker", "exec", "-i", box, "sh", "-c", "cat > /tmp/test-ca.pem"], input=ca, check=True)
    pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", box], capture_output=True, text=True, check=True).stdout.strip()
    port = 18443
    # The server lives in the box's own network namespace: the box reaches it on its 127.0.0.1, nothing else can.
    server = subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, str(HERE / "git_http_server.py"),
                               str(repo.parent), str(port), str(cert), str(key)],
                              env={**os.environ, "GIT_TEST_USER": "x-access-token", "GIT_TEST_TOKEN": token})
    try:
        push = lambda: laptop.ssh(f"devbox-{laptop.host1}", PUSH.format(port=port), timeout=60)  # noqa: E731
        for _ in range(50):
            refused = push()
            if "Failed to connect" not in refused.stderr:
                break
            time.sleep(0.1)
        assert refused.returncode != 0 and "Authentication failed" in refused.stderr, refused.stderr   # a wrong token
        laptop.devbox.env["DEVBOX_TEST_GH"] = token
        synced, _ = laptop.devbox.json("secrets", "sync", laptop.host1)
        assert synced[0]["changed"]
        pushed = push()
        assert pushed.returncode == 0, pushed.stderr
        author = subprocess.run(["git", "--git-dir", str(repo), "log", "-1", "--format=%an <%ae>", "main"], capture_output=True, text=True)
        assert author.stdout.strip() == "Ada Lovelace <ada@lab.org>", "git_identity configured the box's git"
        assert box_says(laptop, "ls -a ~; cat ~/.gitconfig 2>/dev/null; true").count("git-credentials") == 0, "never stored in the home"
        inspect = subprocess.run(["docker", "inspect", box], capture_output=True, text=True).stdout
        assert_absent("docker inspect, secrets sync --json", inspect + str(synced), [token])

        write_config(laptop, host_extra='git_credentials = { "github.com" = "env:DEVBOX_TEST_GH" }')   # another host's token
        laptop.devbox.json("secrets", "sync", laptop.host1)
        elsewhere = push()
        assert elsewhere.returncode != 0 and "could not read Username" in elsewhere.stderr, elsewhere.stderr
        write_config(laptop, host_extra=f'git_credentials = {{ "127.0.0.1:{port}" = "env:DEVBOX_TEST_GH" }}')
        laptop.devbox.json("secrets", "sync", laptop.host1)
        assert push().returncode == 0, "the token scoped to this host"

        write_config(laptop)   # git_credentials removed
        laptop.devbox.json("secrets", "sync", laptop.host1)
        without = push()
        assert without.returncode != 0 and "could not read Username" in without.stderr, without.stderr
    finally:
        server.kill()
        server.wait()


def test_forward_agent_works_on_a_box_of_one_person_and_is_refused_for_two(secret_laptop, tmp_path):
    laptop = secret_laptop
    write_config(laptop, host_extra="forward_agent = true")
    sock = tmp_path / "agent.sock"
    agent = tb.start_agent(sock)
    try:
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", str(laptop.identity)], env=env, check=True, capture_output=True)
        mine_fp = subprocess.run(["ssh-keygen", "-lf", str(laptop.identity) + ".pub"], capture_output=True, text=True).stdout.split()[1]
        laptop.devbox.json("up", laptop.host1)   # keys/ is empty: only this laptop's key, one person
        listed = subprocess.run(["ssh", "-F", str(laptop.ssh_config), "-o", "BatchMode=yes", f"devbox-{laptop.host1}", "ssh-add -l"],
                                capture_output=True, text=True, env=env, timeout=30, stdin=subprocess.DEVNULL)
        assert mine_fp in listed.stdout, listed.stdout + listed.stderr

        alice = tb.keygen(tmp_path / "alice_ed25519", "alice")
        for name, pub in (("me", str(laptop.identity) + ".pub"), ("alice", str(alice) + ".pub")):
            assert laptop.devbox("keys", "add", name, pub).returncode == 0
        for args in (("up", laptop.host1), ("keys", "sync", laptop.host1)):
            done = laptop.devbox(*args)
            said = [line for line in (done.stdout + done.stderr).splitlines() if "forward_agent" in line]
            assert done.returncode == 2 and len(said) == 1 and "2 people (alice, me)" in said[0], done.stdout + done.stderr
        installed = subprocess.run(["docker", "exec", f"devbox-{laptop.host1}", "cat", "/etc/devbox/keys/authorized_keys"],
                                   capture_output=True, text=True).stdout
        assert "alice" not in installed, "nothing changed: alice's key never reached the box"

        # A named box of my own (owner "me", no admins) admits one person: its agent is forwarded.
        mine = f"mine{SUFFIX}"
        toml = laptop.work / "devbox.toml"
        toml.write_text(toml.read_text() + f'\n[boxes.{mine}]\nhost = "{laptop.host1}"\nowner = "me"\nforward_agent = true\n')
        laptop.devbox.json("up", mine)
        listed = subprocess.run(["ssh", "-F", str(laptop.ssh_config), "-o", "BatchMode=yes", f"devbox-{mine}", "ssh-add -l"],
                                capture_output=True, text=True, env=env, timeout=30, stdin=subprocess.DEVNULL)
        assert mine_fp in listed.stdout, listed.stdout + listed.stderr
    finally:
        agent.kill()
        agent.wait()


def test_dotfiles_are_copied_at_first_up_and_never_over_a_file_changed_in_the_box(laptop, tmp_path):
    dots = tmp_path / "dotfiles"
    (dots / ".config" / "tool").mkdir(parents=True)
    (dots / ".git").mkdir()
    (dots / ".bashrc").write_text("# mine 1\n")
    (dots / ".config" / "tool" / "tool.conf").write_text("colour = 1\n")
    (dots / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (dots / "bin").mkdir()
    (dots / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    (dots / "bin" / "hello").chmod(0o755)
    (dots / "link").symlink_to("/etc/passwd")
    toml = laptop.work / "devbox.toml"
    toml.write_text(toml.read_text() + f'dotfiles = "{dots}"\n')
    up, _ = laptop.devbox.json("up", laptop.host1)
    assert any("dotfiles" in s for s in up[0]["steps"]), up[0]["steps"]
    box_home = box_says(laptop, "cat .bashrc .config/tool/tool.conf; bin/hello; ls -a; stat -c %a bin/hello")
    assert box_home.splitlines()[:3] == ["# mine 1", "colour = 1", "hello"], "the image's skeleton .bashrc is replaced"
    assert ".git" not in box_home.split() and "link" not in box_home.split() and box_home.endswith("755")

    box_says(laptop, "echo 'colour = mine in the box' > .config/tool/tool.conf")
    (dots / ".bashrc").write_text("# mine 2\n")
    (dots / ".config" / "tool" / "tool.conf").write_text("colour = 2\n")
    again, _ = laptop.devbox.json("up", laptop.host1)
    assert box_says(laptop, "cat .bashrc") == "# mine 1", "only the first up copies; sync --dotfiles does it later"
    synced, _ = laptop.devbox.json("secrets", "sync", laptop.host1, "--dotfiles")
    assert synced[0]["dotfiles_written"] == [".bashrc"] and synced[0]["dotfiles_kept"] == [".config/tool/tool.conf"], synced
    assert box_says(laptop, "cat .bashrc .config/tool/tool.conf").splitlines() == ["# mine 2", "colour = mine in the box"]
