"""The devbox command line: parse, call one function, render (text or --json). No logic.

Exit codes: 0 ok, 1 a check failed, 2 usage or config error, 3 host unreachable.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer

from devbox.errors import ConfigError, DevboxError

app = typer.Typer(
    help="A hardened, GPU-ready SSH dev box on your own GPU servers, in one command.\n\n"
    "Hosts are names from your ~/.ssh/config. Start with `devbox up HOST`, then `ssh devbox-HOST`.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Team public keys in keys/: add, list, revoke, sync to boxes.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

JSON = typer.Option(False, "--json", help="Print machine-readable JSON instead of text.")
CONFIG = typer.Option(None, "--config", help="devbox.toml to use (default: ./devbox.toml, then ~/.config/devbox/devbox.toml).")
PLAYBOOK = typer.Option(None, "--playbook", "-p", help="A box profile from playbooks/ (default, cpu) or a .toml path; overrides the config.")
KEYS_DIR = typer.Option(None, "--keys", help="Team keys folder (default: ./keys, then ~/.config/devbox/keys).")


def _emit(data, as_json: bool, text: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        typer.echo(text)


def _progress(as_json: bool):
    return (lambda message: None) if as_json else (lambda message: typer.echo(f"  … {message}", err=True))


def _specs(hosts: List[str], config: Optional[Path], playbook: Optional[str]):
    from devbox.config import load_spec

    if not hosts:
        raise ConfigError("no host given", "name at least one Host from your ~/.ssh/config")
    return [load_spec(h, config, playbook) for h in hosts]


def _known_hosts(config: Optional[Path]) -> List[str]:
    """--all: every host with a devbox ssh entry or a [hosts.NAME] table."""
    from devbox import sshconfig
    from devbox.config import configured_hosts

    names = {alias[len(sshconfig.BOX_PREFIX):] for alias in sshconfig.read_entries()}
    return sorted(names | set(configured_hosts(config)))


# ---------------------------------------------------------------- image


@app.command()
def build(
    base: str = typer.Option(None, "--base", help="Base image (default: the official pytorch/pytorch CUDA runtime tag)."),
    user: str = typer.Option("dev", help="Login user inside the box."),
    uid: int = typer.Option(1000, help="UID of the login user (match the owner of your data on the host)."),
    gid: int = typer.Option(1000, help="GID of the login user."),
    refresh: str = typer.Option("", "--refresh", help="A label (e.g. today's date): a new one rebuilds with current openssh/tmux packages; `refresh` in devbox.toml does the same for up."),
    as_json: bool = JSON,
):
    """Build the box image locally. The tag is a content hash of context, base and args: same inputs reuse it."""
    from devbox.config import check_flags
    from devbox.image import DEFAULT_BASE_IMAGE, ImageSpec, build_locally

    check_flags(user=user, uid=uid, gid=gid, refresh=refresh)
    spec = ImageSpec(base or DEFAULT_BASE_IMAGE, user, uid, gid, refresh)
    result = build_locally(spec, on_progress=_progress(as_json))
    verb = "built" if result.built else "reused"
    _emit(result.as_dict(), as_json, f"{verb} {result.tag} on {result.base} (adds {result.size_added / 1e6:.1f} MB, {result.seconds:.1f} s)")


# ---------------------------------------------------------------- up / verify / status / down


@app.command()
def up(
    hosts: List[str] = typer.Argument(..., help="Hosts from your ssh config, e.g. gpu-host-3."),
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
    keys_dir: Optional[Path] = KEYS_DIR,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the steps that would run; change nothing."),
    force: bool = typer.Option(False, "--force", help="Re-create the box even if jobs are running (their logs are kept)."),
    repin: bool = typer.Option(False, "--repin", help="Accept a new box host key (only after re-making the box on purpose)."),
    verify: Optional[bool] = typer.Option(None, "--verify/--no-verify",
                                          help="Verify over SSH (default: only when up changed something; `devbox verify` re-checks any time)."),
    as_json: bool = JSON,
):
    """Provision the box on each host. Checks the host, delivers the image, starts the box, pins its key, writes `ssh devbox-HOST`, verifies."""
    from devbox.keyset import desired_keys
    from devbox.up import for_each_host, up_host

    specs = _specs(hosts, config, playbook)
    keys = desired_keys(keys_dir)
    if keys.notice and not as_json:
        typer.echo(f"note: {keys.notice}", err=True)
    progress = _progress(as_json)
    reports = for_each_host(specs, lambda s: up_host(s, keys, dry_run=dry_run, force=force, repin=repin, verify=verify, progress=progress))
    for warning in (w for r in reports for w in r.warnings):
        typer.echo(warning, err=True)
    _emit([r.as_dict() for r in reports], as_json, "\n".join(_render_up(r, dry_run) for r in reports))
    raise typer.Exit(max(r.exit_code for r in reports))


def _render_up(report, dry_run: bool) -> str:
    head = f"{report.host}: "
    if report.error:
        return head + "FAILED: " + report.error.removeprefix(head)
    lines = [head + ("would run:" if dry_run else ("changed" if report.changed else "already up to date, nothing changed"
                                                  + ("" if report.checks else "; `devbox verify` re-checks it")))
             + ("" if dry_run else f" ({report.seconds:.1f} s)")]
    lines += [f"  - {s}" for s in report.steps] or ([f"  (nothing to do: {n})" for n in report.notes] or ["  (nothing to do)"] if dry_run else [])
    lines += [f"      $ {c}" for c in report.commands]
    lines += _render_checks(report.checks)
    if not dry_run and report.exit_code == 0:
        lines.append(f"  ready: ssh {report.ssh_alias}   (VS Code: Remote-SSH → Connect to Host → {report.ssh_alias})")
    return "\n".join(lines)


def _render_checks(checks) -> list[str]:
    marks = {"ok": "ok  ", "fail": "FAIL", "skipped": "skip"}
    return [f"  [{marks[c.status]}] {c.name}" + (f": {c.detail}" if c.detail else "") for c in checks]


@app.command()
def verify(
    hosts: List[str] = typer.Argument(..., help="Hosts whose boxes to verify."),
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
    as_json: bool = JSON,
):
    """Check the box over the path you will use. Same entry, same key; each check reported; exit 1 on any failure."""
    from devbox.up import for_each_host, verify_host

    reports = for_each_host(_specs(hosts, config, playbook), verify_host)
    _emit([r.as_dict() for r in reports], as_json,
          "\n".join("\n".join([f"{r.host}: " + (f"FAILED: {r.error}" if r.error else "")] + _render_checks(r.checks)) for r in reports))
    raise typer.Exit(max(r.exit_code for r in reports))


@app.command()
def status(
    hosts: List[str] = typer.Argument(None, help="Hosts to show (or --all)."),
    all_hosts: bool = typer.Option(False, "--all", help="Every host with a devbox entry or a [hosts.NAME] table."),
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
    as_json: bool = JSON,
):
    """Show each box: state, image, uptime, port, GPUs, keys, jobs. Read from the host's labels, not a local database."""
    from devbox.status import status_host
    from devbox.up import for_each_host

    names = list(hosts or []) + (_known_hosts(config) if all_hosts else [])
    rows = for_each_host(_specs(sorted(set(names)), config, playbook), status_host)
    header = f"{'HOST':<20} {'STATE':<20} {'PORT':>6} {'UPTIME':>8} {'GPUS':<6} {'KEYS':>4} {'JOBS':>4}  IMAGE / REASON"
    text = [header] + [
        f"{r.host:<20} {r.state + (f' ({r.health})' if r.health else ''):<20} {r.port or '-':>6} {_duration(r.uptime_s):>8} {r.gpus or '-':<6} "
        f"{'-' if r.keys is None else r.keys:>4} {'-' if r.jobs is None else r.jobs:>4}  {r.reason or r.image}"
        for r in rows
    ]
    _emit([r.as_dict() for r in rows], as_json, "\n".join(text))
    raise typer.Exit(max([r.exit_code for r in rows] or [0]))


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@app.command()
def down(
    host: str = typer.Argument(..., help="Host whose box to remove."),
    purge: bool = typer.Option(False, "--purge", help="Also delete the box's volumes (your /workspace!), ssh entry and pinned key."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before --purge."),
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
    as_json: bool = JSON,
):
    """Remove the box, keeping its data. Volumes, host key and ssh entry stay unless --purge."""
    from devbox.down import down_host

    spec = _specs([host], config, playbook)[0]
    if purge and not yes:
        if not sys.stdin.isatty():
            raise ConfigError("--purge deletes volumes and needs confirmation", "add --yes to confirm without a terminal")
        typer.confirm(f"Delete the box on {host} AND its volumes ({', '.join(v.target for v in spec.all_volumes() if v.is_named)})?", abort=True)
    report = down_host(spec, purge)
    text = f"{host}: " + (f"FAILED: {report.error}" if report.error else
                          "removed " + (", ".join(report.removed) or "nothing") + ("; kept " + ", ".join(report.kept) if report.kept else ""))
    _emit(report.as_dict(), as_json, text)
    raise typer.Exit(report.exit_code)


def _box_ssh(host: str, *options: str) -> list[str]:
    """`ssh [options] -F CONFIG -- devbox-HOST`: after `--`, OpenSSH reads no more options, so
    neither the host nor a command word (`-oProxyCommand=…`) can become one."""
    from devbox import sshconfig
    from devbox.config import validate_host

    return ["ssh", *options, "-F", str(sshconfig.user_config_path()), "--", sshconfig.BOX_PREFIX + validate_host(host)]


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh(
    host: str = typer.Argument(..., help="Host whose box to enter."),
    command: List[str] = typer.Argument(None, help="Command to run in the box (after --)."),
):
    """Open a shell in the box, or run a command. Uses the OpenSSH client and devbox's entry."""
    os.execvp("ssh", [*_box_ssh(host), *(command or [])])


@app.command()
def code(
    host: str = typer.Argument(..., help="Host whose box to open in VS Code."),
    path: str = typer.Argument("/workspace", help="Folder in the box to open."),
):
    """Open VS Code Remote-SSH on the box. Prints the command when `code` is not installed."""
    import shutil

    from devbox import sshconfig
    from devbox.config import validate_host

    if not path.startswith("/"):
        raise ConfigError(f"{path!r} is not an absolute path in the box", "give a folder like /workspace")
    argv = ["code", "--remote", f"ssh-remote+{sshconfig.BOX_PREFIX}{validate_host(host)}", path]
    if not shutil.which("code"):
        typer.echo("VS Code's `code` command is not on PATH; run this where it is:\n  " + shlex.join(argv))
        raise typer.Exit(0)
    os.execvp("code", argv)


# ---------------------------------------------------------------- keys


def _store(keys_dir):
    from devbox.keys import KeyStore
    from devbox.keyset import keys_dir as resolve

    return KeyStore(resolve(keys_dir))


@keys_app.command("add")
def keys_add(
    name: str = typer.Argument(..., help="Person's name: the key is stored as keys/NAME.pub."),
    source: str = typer.Argument(..., help="Public key file, or - to read standard input."),
    all_keys: bool = typer.Option(False, "--all", help="Accept several keys in one file."),
    replace: bool = typer.Option(False, "--replace", help="Replace NAME's existing key."),
    keys_dir: Optional[Path] = KEYS_DIR,
    as_json: bool = JSON,
):
    """Validate and store NAME's public key. Private keys, DSA, RSA < 3072 and options are refused."""
    from devbox.keys import read_key_text

    text = read_key_text(sys.stdin.buffer if source == "-" else source)
    added = _store(keys_dir).add(name, text, allow_many=all_keys, replace=replace)
    rows = [{"name": name, "type": k.type, "bits": k.bits, "fingerprint": k.fingerprint} for k in added]
    _emit(rows, as_json, "\n".join(f"added {name}: {k.type} {k.bits} {k.fingerprint}" for k in added)
          + "\nrun `devbox keys sync --all` to install it on the boxes")


@keys_app.command("list")
def keys_list(keys_dir: Optional[Path] = KEYS_DIR, as_json: bool = JSON):
    """List the team's keys. Name, type, bits, SHA256 fingerprint (as ssh-keygen -lf prints it), comment."""
    store = _store(keys_dir)
    revoked = store.revoked_fingerprints() if store.directory.is_dir() else set()
    rows = [{"name": n, "type": k.type, "bits": k.bits, "fingerprint": k.fingerprint, "comment": k.comment,
             "revoked": k.fingerprint in revoked}
            for n, k in (store.list() if store.directory.is_dir() else [])]
    text = [f"{r['name']:<16} {r['bits']:>5} {r['fingerprint']}  {r['comment']} ({r['type']})"
            + ("  REVOKED: never installed (remove the file)" if r["revoked"] else "") for r in rows]
    _emit(rows, as_json, "\n".join(text) or f"no keys in {store.directory}")


@keys_app.command("gen")
def keys_gen(path: Path = typer.Argument(Path("~/.ssh/id_ed25519"), help="Where to write the private key (.pub beside it).")):
    """Make a new ed25519 key pair for you. Private key 0600 in a 0700 folder; never overwrites."""
    from devbox.keys import generate_keypair

    key = generate_keypair(path)
    typer.echo(f"wrote {path.expanduser()} and .pub: {key.type} {key.fingerprint}")


@keys_app.command("revoke")
def keys_revoke(name: str = typer.Argument(..., help="Whose key to remove."), keys_dir: Optional[Path] = KEYS_DIR, as_json: bool = JSON):
    """Revoke NAME's key. It is recorded, so every later sync and up removes it from boxes."""
    removed = _store(keys_dir).revoke(name)
    _emit([k.fingerprint for k in removed], as_json,
          "\n".join(f"revoked {name}: {k.fingerprint}" for k in removed) + "\nrun `devbox keys sync --all` to remove it from the boxes now")


@keys_app.command("sync")
def keys_sync(
    hosts: List[str] = typer.Argument(None, help="Hosts whose boxes to update (or --all)."),
    all_hosts: bool = typer.Option(False, "--all", help="Every host with a devbox entry or a [hosts.NAME] table."),
    restart: bool = typer.Option(False, "--restart", help="Also re-create each box (volumes and host key kept) so nothing a revoked person left running survives; running jobs end."),
    keys_dir: Optional[Path] = KEYS_DIR,
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
    as_json: bool = JSON,
):
    """Push keys/ to running boxes. authorized_keys is rewritten atomically, live, without a restart."""
    from devbox.keyset import desired_keys
    from devbox.sync import sync_host
    from devbox.up import for_each_host

    specs = _specs(sorted(set(list(hosts or []) + (_known_hosts(config) if all_hosts else []))), config, playbook)
    keys = desired_keys(keys_dir)
    reports = for_each_host(specs, lambda spec: sync_host(spec, keys, restart))
    text = [f"{r.host}: " + (f"FAILED: {r.error.removeprefix(r.host + ': ')}" if r.error else
                              f"{r.keys} key(s) " + ("installed" if r.changed else "already in place")
                              + ("; box re-created (volumes and host key kept, every process in it ended)" if r.restarted else ""))
            for r in reports]
    _emit([r.as_dict() for r in reports], as_json, "\n".join(text))
    raise typer.Exit(max(r.exit_code for r in reports))


# ---------------------------------------------------------------- jobs


def _job_host(host: str, config, playbook):
    from devbox.remote import Host

    return _specs([host], config, playbook)[0], Host(host)


@app.command()
def run(
    host: str = typer.Argument(..., help="Host whose box runs the job."),
    command: List[str] = typer.Argument(..., help="The command and its arguments, after --."),
    name: str = typer.Option(..., "--name", "-n", help="Job name (tmux session): letters, digits, _ -"),
    cwd: Optional[str] = typer.Option(None, "--cwd", help="Working directory in the box (default: home)."),
    env: List[str] = typer.Option([], "--env", "-e", help="NAME=VALUE for the job; repeatable."),
    replace: bool = typer.Option(False, "--replace", help="Stop a running job of the same name first."),
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
):
    """Start a long job in tmux in the box. It survives SSH drops.

    Example: devbox run gpu-host-3 --name train -- python train.py --lr 3e-4
    """
    from devbox.jobs import start_job

    spec, remote = _job_host(host, config, playbook)
    with remote:
        start_job(remote, spec, name, list(command), cwd, env, replace)
    typer.echo(f"started {name} on {host}: follow with `devbox logs {host} {name} -f`, attach with `devbox attach {host} {name}`")


@app.command()
def ps(host: str = typer.Argument(...), playbook: Optional[str] = PLAYBOOK, config: Optional[Path] = CONFIG, as_json: bool = JSON):
    """List the box's jobs. Each is running, exited N, or lost (the box was re-created while it ran)."""
    from devbox.jobs import list_jobs

    spec, remote = _job_host(host, config, playbook)
    with remote:
        jobs = list_jobs(remote, spec)
    lines = [f"{'NAME':<20} {'STATE':<10} {'STARTED':<21} {'TIME':>7}  LAST LINE"]
    lines += [f"{j.name:<20} {j.state:<10} {j.started:<21} {_duration(j.duration_s):>7}  {j.last_line}" for j in jobs]
    _emit([j.as_dict() for j in jobs], as_json, "\n".join(lines))


@app.command()
def logs(
    host: str = typer.Argument(...),
    name: str = typer.Argument(..., help="Job name."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until the job ends (Ctrl-C to stop)."),
    tail: int = typer.Option(100, "--tail", help="How many last lines to print first."),
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
):
    """Print or follow a job's log. It is kept on the box's volume, readable after the job or box is gone."""
    from devbox.jobs import logs as job_logs

    spec, remote = _job_host(host, config, playbook)
    with remote:
        job_logs(remote, spec, name, tail, follow, write=lambda text, **kw: typer.echo(text, nl=False))


@app.command()
def attach(
    host: str = typer.Argument(...),
    name: str = typer.Argument(..., help="Job name."),
    read_only: bool = typer.Option(False, "--read-only", "-r", help="Watch without being able to type into the job."),
):
    """Attach to a job's tmux session. Detach with Ctrl-b d."""
    from devbox.jobs import validate_name

    validate_name(name)
    os.execvp("ssh", [*_box_ssh(host, "-t"), "tmux", "attach-session", *(["-r"] if read_only else []), "-t", f"={name}"])


@app.command()
def stop(
    host: str = typer.Argument(...),
    name: str = typer.Argument(..., help="Job name."),
    sig: str = typer.Option("TERM", "--signal", "-s", help="Signal to send: TERM, INT, KILL, ..."),
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
    as_json: bool = JSON,
):
    """Stop a job with a signal and record how it ended."""
    from devbox.jobs import stop_job

    spec, remote = _job_host(host, config, playbook)
    with remote:
        job = stop_job(remote, spec, name, sig)
    _emit(job.as_dict(), as_json, f"{name}: {job.state}")


def main() -> None:
    """Entry point: the one place that turns DevboxError into a one-line message and exit code."""
    try:
        app()
    except DevboxError as exc:
        typer.echo(f"devbox: error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("devbox: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: one line that says so, never a traceback (unless asked)
        if os.environ.get("DEVBOX_DEBUG"):
            raise
        typer.echo(f"devbox: internal error: {type(exc).__name__}: {exc} "
                   "(please report; re-run with DEVBOX_DEBUG=1 for the traceback)", err=True)
        sys.exit(70)


if __name__ == "__main__":
    main()
