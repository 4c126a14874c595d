"""The devbox command line: parse, call one function, render (text or --json). No logic.

Each command calls into devbox/commands/ and hands what comes back to devbox.result.render.
Exit codes: 0 ok, 1 a check failed, 2 usage or config error, 3 host unreachable.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from devbox.errors import ConfigError, DevboxError

app = typer.Typer(
    help="A hardened, GPU-ready SSH dev box on your own GPU servers, in one command.\n\n"
    "Hosts are names from your ~/.ssh/config; each has its own box. Boxes are `[boxes.NAME]` tables in devbox.toml "
    "(a box per person on a shared server). Start with `devbox up HOST` (or `devbox up BOX`), then `ssh devbox-HOST` "
    "(`ssh devbox-BOX`). Every command that takes a HOST takes a BOX too.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Team public keys in keys/: add, list, revoke, sync to boxes.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
secrets_app = typer.Typer(help="The box's env, secrets and git settings from devbox.toml: sync them live.", no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")

JSON = typer.Option(False, "--json", help="Print machine-readable JSON instead of text.")
CONFIG = typer.Option(None, "--config", help="devbox.toml to use (default: ./devbox.toml, then ~/.config/devbox/devbox.toml).")
PLAYBOOK = typer.Option(None, "--playbook", "-p", help="A box profile from playbooks/ (default, cpu) or a .toml path; overrides the config.")
KEYS_DIR = typer.Option(None, "--keys", help="Team keys folder (default: ./keys, then ~/.config/devbox/keys).")
ALL_HOSTS = typer.Option(False, "--all", help="Every host with a devbox entry or a [hosts.NAME] table.")
PARALLEL = typer.Option(16, "--parallel", "-P", min=1, max=256,
                        help="Hosts worked on at once (one SSH connection each); a host that does not answer "
                             "waits out its ConnectTimeout (default 10 s) in its own slot.")


def show(items, as_json: bool, note: str = "", one: bool = False, exit_code: int | None = None, printed: bool = False) -> None:
    """The one place output is printed; exits with the worst host's code when asked.
    `printed`: the rows are already out (row_printer), only the note is left."""
    from devbox.result import printable, render, worst_exit

    items = items if isinstance(items, list) else [items]
    if not printed:
        typer.echo(render(items, as_json, note, one))
    elif note:
        typer.echo(note)
    for warning in (w for item in items for w in getattr(item, "warnings", [])):
        typer.echo(printable(warning), err=True)
    if exit_code is not None or any(hasattr(item, "exit_code") for item in items):
        raise typer.Exit(exit_code if exit_code is not None else worst_exit(items))


def progress_printer(as_json: bool):
    from devbox.progress import Reporter

    return Reporter.for_cli(as_json)


def specs(hosts, config, playbook, every_host: bool = False):
    from devbox.config import load_specs

    return load_specs(list(hosts or []), config, playbook, every_host)


def per_host(items, result_type, work, parallel: int = 16):
    from devbox.result import for_each_host

    return for_each_host(items, result_type.start, work, max_workers=parallel)


def row_printer(items, as_json: bool, rows=None):
    """Over several hosts in text, each row as soon as its host is done; else None (all at the end)."""
    from devbox.result import RowPrinter

    return RowPrinter(typer.echo, rows) if not as_json and len(items) > 1 else None


def show_per_host(items, result_type, work, parallel: int, as_json: bool, rows=None) -> None:
    """Run work on every host and show the rows, each as soon as it is ready;
    `rows(result)`: the rows one result prints (default: itself)."""
    from devbox.result import for_each_host

    printer = row_printer(items, as_json, rows)
    results = for_each_host(items, result_type.start, work, max_workers=parallel, on_done=printer)
    show([row for result in results for row in (rows(result) if rows else [result])], as_json, printed=printer is not None)


# ---------------------------------------------------------------- image


@app.command()
def build(
    base: str = typer.Option(None, "--base", help="Base image (default: the official pytorch/pytorch CUDA runtime tag)."),
    user: str = typer.Option("dev", help="Login user inside the box."),
    uid: int = typer.Option(1000, help="UID of the login user (match the owner of your data on the host)."),
    gid: int = typer.Option(1000, help="GID of the login user."),
    refresh: str = typer.Option("", "--refresh", help="A label (e.g. today's date): a new one rebuilds with current openssh/tmux packages; `refresh` in devbox.toml does the same for up."),
    apt: List[str] = typer.Option([], "--apt", help="An extra Debian/Ubuntu package (name or name=version); repeatable, like `apt` in devbox.toml."),
    pip: List[str] = typer.Option([], "--pip", help="An extra Python package (name with an optional pin); repeatable, like `pip` in devbox.toml."),
    ca_bundle: str = typer.Option("", "--ca-bundle", help="A PEM file of CA certificates the build and the box trust, like `ca_bundle` in devbox.toml."),
    as_json: bool = JSON,
):
    """Build the box image locally. The tag is a content hash of context, base and args: same inputs reuse it."""
    from devbox.config import check_flags
    from devbox.image import DEFAULT_BASE_IMAGE, ImageSpec, build_locally

    check_flags(user=user, uid=uid, gid=gid, refresh=refresh)
    extras = check_flags(apt=list(apt), pip=list(pip), **({"ca_bundle": str(Path(ca_bundle).expanduser().resolve())} if ca_bundle else {}))
    show(build_locally(ImageSpec(base or DEFAULT_BASE_IMAGE, user, uid, gid, refresh, **extras), on_progress=progress_printer(as_json)),
         as_json, one=True)


# ---------------------------------------------------------------- up / verify / status / down


@app.command()
def up(
    hosts: List[str] = typer.Argument(..., help="Hosts from your ssh config (e.g. gpu-host-3) or boxes from devbox.toml (e.g. alice-3)."),
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
    keys_dir: Optional[Path] = KEYS_DIR,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the steps and the exact commands that would run; change nothing."),
    force: bool = typer.Option(False, "--force", help="Re-create the box even if jobs are running (their logs are kept)."),
    repin: bool = typer.Option(False, "--repin", help="Accept a new box host key (only after re-making the box on purpose)."),
    verify: Optional[bool] = typer.Option(None, "--verify/--no-verify",
                                          help="Verify over SSH (default: only when up changed something; `devbox verify` re-checks any time)."),
    wait: str = typer.Option("10m", "--wait", help="A Slurm box: how long to wait while its job is queued (e.g. 30s, 10m, 2h); "
                             "the job stays queued after that (exit 3)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="A Slurm box: submit (or find) its job and return at once; "
                                 "state `queued`, exit 0. Run `devbox up` again once it runs."),
    parallel: int = PARALLEL,
    as_json: bool = JSON,
):
    """Provision the box on each host. Checks the host, delivers the image, starts the box, pins its key, writes `ssh devbox-HOST`, verifies.

    A Slurm box ([boxes.NAME] with slurm = {…}) first gets its batch job: queued is a state (the job id, Slurm's reason and
    the position are shown while it waits; Ctrl-C leaves it queued), then the box starts on the job's node with its GPUs."""
    from devbox.commands.up import UpResult, up_box
    from devbox.idle import parse_duration
    from devbox.keyset import KeySource

    try:
        wait_s = parse_duration(wait)
    except ValueError as exc:
        raise ConfigError(f"bad value for --wait: {exc}", "give a duration like 30s, 10m or 2h") from None
    boxes = specs(hosts, config, playbook)
    keys = KeySource(keys_dir)
    if (notice := keys.check()) and not as_json:
        typer.echo(f"note: {notice}", err=True)
    progress = progress_printer(as_json)
    show_per_host(boxes, UpResult, lambda spec, result: up_box(spec, result, keys, wait_s=wait_s, no_wait=no_wait, dry_run=dry_run,
                                                              force=force, repin=repin, verify=verify, progress=progress),
                  parallel, as_json)


@app.command()
def verify(
    hosts: List[str] = typer.Argument(..., help="Hosts (their own boxes) or boxes to verify."),
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
    keys_dir: Optional[Path] = KEYS_DIR,
    parallel: int = PARALLEL,
    as_json: bool = JSON,
):
    """Check the box over the path you will use. Same entry, same key; each check reported; exit 1 on any failure."""
    from devbox.commands.verify import VerifyResult, verify_host
    from devbox.keyset import KeySource

    boxes = specs(hosts, config, playbook)
    keys = KeySource(keys_dir)
    keys.check()
    from devbox.scheduler import locate

    show_per_host(boxes, VerifyResult, lambda spec, result: verify_host(locate(spec), result, keys), parallel, as_json)


@app.command()
def status(
    hosts: List[str] = typer.Argument(None, help="Hosts (each with all its boxes) or boxes to show (or --all)."),
    all_hosts: bool = ALL_HOSTS,
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
    parallel: int = PARALLEL,
    as_json: bool = JSON,
):
    """Show each box: state, health, owner, image, uptime, port, GPUs, keys, jobs, and why it is kept up or stopped.

    For a HOST: its own box and every other devbox box on it (a box per person), read from the host's labels, not a local database."""
    from devbox.commands.status import BoxStatus, rows_of, status_host

    boxes = specs(hosts, config, playbook, all_hosts)
    show_per_host(boxes, BoxStatus, status_host, parallel, as_json, rows_of(boxes))


@app.command()
def top(
    hosts: List[str] = typer.Argument(None, help="Hosts (or boxes: their hosts) to watch (or --all)."),
    all_hosts: bool = ALL_HOSTS,
    once: bool = typer.Option(False, "--once", help="One sample and exit (with --json: for scripts)."),
    interval: float = typer.Option(2.0, "--interval", min=0.5, help="Seconds between refreshes."),
    config: Optional[Path] = CONFIG,
    as_json: bool = JSON,
):
    """Live GPU health: per GPU its utilisation, memory, temperature, power, and which box and job use it.

    One SSH session per host, one nvidia-smi query per refresh; Ctrl-C to leave.
    """
    from devbox.commands.top import top_live, top_once
    from devbox.result import worst_exit

    from devbox.scheduler import locate

    boxes = [locate(spec) for spec in specs(hosts, config, None, all_hosts)]   # a Slurm box: its job's node
    if once:
        printer = row_printer(boxes, as_json)
        show(top_once(boxes, printer), as_json, printed=printer is not None)
    raise typer.Exit(worst_exit(top_live(boxes, interval, typer.echo, as_json)))


@app.command()
def down(
    host: str = typer.Argument(..., help="Host (its own box) or box to remove."),
    purge: bool = typer.Option(False, "--purge", help="Also delete the box's volumes (your /workspace!), ssh entry and pinned key."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before --purge."),
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
    as_json: bool = JSON,
):
    """Remove the box, keeping its data. Volumes, host key and ssh entry stay unless --purge."""
    from devbox.commands.down import DownResult, down_host

    boxes = specs([host], config, playbook)
    if purge and not yes:
        if not sys.stdin.isatty():
            raise ConfigError("--purge deletes volumes and needs confirmation", "add --yes to confirm without a terminal")
        typer.confirm(f"Delete the box on {host} AND its volumes ({', '.join(v.target for v in boxes[0].all_volumes() if v.is_named)})?",
                      abort=True)
    show(per_host(boxes, DownResult, lambda spec, result: down_host(spec, result, purge)), as_json, one=True)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def ssh(
    host: str = typer.Argument(..., help="Host (its own box) or box to enter."),
    command: List[str] = typer.Argument(None, help="Command to run in the box (after --)."),
):
    """Open a shell in the box, or run a command. Uses the OpenSSH client and devbox's entry."""
    from devbox.commands.connect import box_ssh

    os.execvp("ssh", [*box_ssh(host), *(command or [])])


@app.command()
def code(
    host: str = typer.Argument(..., help="Host (its own box) or box to open in VS Code."),
    path: str = typer.Argument("/workspace", help="Folder in the box to open."),
):
    """Open VS Code Remote-SSH on the box. Prints the command when `code` is not installed."""
    import shlex
    import shutil

    from devbox.commands.connect import vscode

    argv = vscode(host, path)
    if not shutil.which("code"):
        typer.echo("VS Code's `code` command is not on PATH; run this where it is:\n  " + shlex.join(argv))
        raise typer.Exit(0)
    os.execvp("code", argv)


# ---------------------------------------------------------------- keys


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
    from devbox.commands.keys import SYNC_NOTE, add_key

    rows = add_key(keys_dir, name, sys.stdin.buffer if source == "-" else source, all_keys, replace)
    show(rows, as_json, SYNC_NOTE.format(what="install it on"))


@keys_app.command("list")
def keys_list(keys_dir: Optional[Path] = KEYS_DIR, as_json: bool = JSON):
    """List the team's keys. Name, type, bits, SHA256 fingerprint (as ssh-keygen -lf prints it), comment."""
    from devbox.commands.keys import list_keys

    rows, empty = list_keys(keys_dir)
    show(rows, as_json, "" if rows else empty)


@keys_app.command("gen")
def keys_gen(path: Path = typer.Argument(Path("~/.ssh/id_ed25519"), help="Where to write the private key (.pub beside it).")):
    """Make a new ed25519 key pair for you. Private key 0600 in a 0700 folder; never overwrites."""
    from devbox.commands.keys import generate

    typer.echo(generate(path))


@keys_app.command("revoke")
def keys_revoke(
    name: str = typer.Argument(..., help="Whose key to remove."),
    hosts: List[str] = typer.Argument(None, help="Boxes to take it off now (a `keys sync` of each), or --all."),
    all_hosts: bool = ALL_HOSTS,
    keys_dir: Optional[Path] = KEYS_DIR,
    config: Optional[Path] = CONFIG,
    parallel: int = PARALLEL,
    as_json: bool = JSON,
):
    """Revoke NAME's key. It is recorded, so every later sync and up removes it from boxes; with
    hosts (or --all), it leaves them now and each shared home's changed start-up files are listed."""
    from devbox.commands.keys import SYNC_NOTE, revoke_key

    if not hosts and not all_hosts:
        show(revoke_key(keys_dir, name), as_json, SYNC_NOTE.format(what="remove it from") + " now")
        return
    from devbox.commands.sync import SyncResult, sync_host
    from devbox.keyset import KeySource

    boxes = specs(hosts, config, None, all_hosts)   # a bad host name stops before the revocation
    revoked = revoke_key(keys_dir, name)
    keys, progress = KeySource(keys_dir), progress_printer(as_json)
    show(per_host(boxes, SyncResult, lambda spec, result: sync_host(spec, result, keys, progress=progress), parallel), as_json,
         "; ".join(row.text() for row in revoked))


@keys_app.command("sync")
def keys_sync(
    hosts: List[str] = typer.Argument(None, help="Hosts or boxes to update (or --all); each box gets its own set: a named box its owner and the admins."),
    all_hosts: bool = ALL_HOSTS,
    restart: bool = typer.Option(False, "--restart", help="Also re-create each box (volumes and host key kept) so nothing a revoked person left running survives; running jobs end."),
    keys_dir: Optional[Path] = KEYS_DIR,
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
    parallel: int = PARALLEL,
    as_json: bool = JSON,
):
    """Push keys/ to running boxes. authorized_keys is rewritten atomically, live, without a restart."""
    from devbox.commands.sync import SyncResult, sync_host
    from devbox.keyset import KeySource

    boxes = specs(hosts, config, playbook, all_hosts)
    keys = KeySource(keys_dir)
    keys.check()
    progress = progress_printer(as_json)
    show_per_host(boxes, SyncResult, lambda spec, result: sync_host(spec, result, keys, restart, progress), parallel, as_json)


@secrets_app.command("sync")
def secrets_sync(
    hosts: List[str] = typer.Argument(None, help="Hosts or boxes to update (or --all)."),
    all_hosts: bool = ALL_HOSTS,
    dotfiles: bool = typer.Option(False, "--dotfiles", help="Also copy the dotfiles folder into the box's home (files changed there are kept)."),
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
    parallel: int = PARALLEL,
    as_json: bool = JSON,
):
    """Push env, secrets and git settings to running boxes. Read here, written live; only names are shown."""
    from devbox.commands.secrets import SecretsResult, sync_secrets_host

    boxes = specs(hosts, config, playbook, all_hosts)
    from devbox.scheduler import locate

    show(per_host(boxes, SecretsResult, lambda spec, result: sync_secrets_host(locate(spec), result, dotfiles), parallel), as_json)


# ---------------------------------------------------------------- jobs


def _job_host(name: str, config, playbook, stored_ok: bool = False):
    """The box and its host. A Slurm box: on its job's node; with `stored_ok` (reading jobs),
    when no job runs, its files on shared storage through the login node."""
    from devbox.remote import Host
    from devbox.scheduler import locate

    spec = specs([name], config, playbook)[0]
    placed = locate(spec, missing_ok=stored_ok)
    return (placed, Host(placed.host)) if placed is not None else (spec, Host(spec.slurm.login))


@app.command()
def run(
    host: str = typer.Argument(..., help="Host (its own box) or box that runs the job."),
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
def ps(host: str = typer.Argument(..., help="Host (its own box) or box."), playbook: Optional[str] = PLAYBOOK, config: Optional[Path] = CONFIG, as_json: bool = JSON):
    """List the box's jobs. Each is running, exited N, or lost (the box was re-created while it ran)."""
    from devbox.jobs import Job, list_jobs

    spec, remote = _job_host(host, config, playbook, stored_ok=True)
    with remote:
        jobs = list_jobs(remote, spec)
    show(jobs, as_json, "" if jobs else Job.HEADER)


@app.command()
def logs(
    host: str = typer.Argument(..., help="Host (its own box) or box."),
    name: str = typer.Argument(..., help="Job name."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until the job ends (Ctrl-C to stop)."),
    tail: int = typer.Option(100, "--tail", help="How many last lines to print first."),
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
):
    """Print or follow a job's log. It is kept on the box's volume, readable after the job or box is gone."""
    from devbox.jobs import logs as job_logs

    spec, remote = _job_host(host, config, playbook, stored_ok=True)
    with remote:
        job_logs(remote, spec, name, tail, follow, write=lambda text, **kw: typer.echo(text, nl=False))


@app.command()
def attach(
    host: str = typer.Argument(..., help="Host (its own box) or box."),
    name: str = typer.Argument(..., help="Job name."),
    read_only: bool = typer.Option(False, "--read-only", "-r", help="Watch without being able to type into the job."),
):
    """Attach to a job's tmux session. Detach with Ctrl-b d."""
    from devbox.commands.connect import attach as attach_argv

    os.execvp("ssh", attach_argv(host, name, read_only))


@app.command()
def stop(
    host: str = typer.Argument(..., help="Host (its own box) or box."),
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
    show(job, as_json, one=True)


# ---------------------------------------------------------------- notebooks and forwards


def _announcer(as_json: bool):
    """--json: one line a script can read as soon as the tunnel answers; else the text."""
    return lambda item: typer.echo(item.json_line() if as_json else item.text())


@app.command()
def jupyter(
    host: str = typer.Argument(..., help="Host (its own box) or box that runs JupyterLab."),
    port: Optional[int] = typer.Option(None, "--port", help="Local port for the tunnel (default: a free one)."),
    stop_server: bool = typer.Option(False, "--stop", help="Stop the JupyterLab job in the box."),
    playbook: Optional[str] = PLAYBOOK,
    config: Optional[Path] = CONFIG,
    as_json: bool = JSON,
):
    """Open JupyterLab in the box through an SSH tunnel; prints http://127.0.0.1:PORT/lab?token=...

    The server is a job on the box's 127.0.0.1 (it keeps running: `devbox ps`, `devbox logs HOST jupyter`);
    no port is published on the host. Ctrl-C closes the tunnel only; --stop ends the server.
    Needs `pip = ["jupyterlab"]` in devbox.toml.
    """
    from devbox.commands.jupyter import open_jupyter, stop_jupyter

    from devbox.scheduler import locate

    spec = locate(specs([host], config, playbook)[0])
    if stop_server:
        show(stop_jupyter(spec), as_json, one=True)
        return
    open_jupyter(spec, port, _announcer(as_json), lambda line: typer.echo(line, err=True))


@app.command("forward")
def forward_ports(
    host: str = typer.Argument(..., help="Host (its own box) or box to reach."),
    ports: List[str] = typer.Argument(..., help="PORT (same port here) or PORT:LOCAL, e.g. 6006 or 6006:16006; several allowed."),
    as_json: bool = JSON,
):
    """Forward ports of the box to this machine's 127.0.0.1 (TensorBoard, a debugger) until Ctrl-C.

    Goes through `ssh devbox-HOST` (the pinned key, ProxyJump); a dropped link is re-made.
    Example: devbox forward gpu-host-3 6006 5678:15678
    """
    from devbox.commands.forward import forward

    forward(host, list(ports), _announcer(as_json), lambda line: typer.echo(line, err=True))


def main() -> None:
    """Entry point: the one place that turns DevboxError into a one-line message and exit code."""
    try:
        app()
    except DevboxError as exc:
        from devbox.result import printable

        typer.echo(f"devbox: error: {printable(exc.one_line())}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("devbox: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # a bug: one line that says so, never a traceback (unless asked)
        if os.environ.get("DEVBOX_DEBUG"):
            raise
        from devbox.result import printable

        typer.echo(f"devbox: internal error: {type(exc).__name__}: {printable(str(exc))} "
                   "(please report; re-run with DEVBOX_DEBUG=1 for the traceback)", err=True)
        sys.exit(70)


if __name__ == "__main__":
    main()
