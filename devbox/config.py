"""devbox.toml and playbooks -> one validated BoxSpec per box.

A name on the command line is a host (its own default box, `[hosts.NAME]`) or a named box
(`[boxes.NAME]`, which says its `host` and `owner`). Precedence, lowest first: built-in
defaults, the playbook named in the config, `[defaults]`, the `[hosts.NAME]` or
`[boxes.NAME]` table, and finally a `--playbook` given on the command line (an explicit
flag beats files). Errors name the file, the key and what is allowed.
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from devbox.boxid import BoxId
from devbox.errors import ConfigError
from devbox.idle import parse_duration
from devbox.image import ImageSpec
from devbox.resources import shipped_dir
from devbox.slurm import SlurmSpec, parse_slurm_table

PLAYBOOK_DIR = shipped_dir("playbooks")
HOME_MOUNT = "/home/{user}"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
SIZE_RE = re.compile(r"^[0-9]+[bkmg]?\Z", re.IGNORECASE)
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
# Accounts Debian and Ubuntu images already have (base-passwd's, apt's, sshd's, Ubuntu's own):
# the build's useradd would stop on them ("exited 9"), and root would be no sandbox at all.
SYSTEM_USERS = frozenset("root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc gnats "
                         "nobody _apt sshd messagebus systemd-network systemd-resolve systemd-timesync".split())
AUTO_BASE = "auto"          # devbox/basetag.py picks the image from the host's driver and GPUs
GPU_UUID_RE = re.compile(r"^GPU-[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\Z")
REFRESH_RE = re.compile(r"^[A-Za-z0-9._-]{0,32}\Z")
# Image extras: a package name and an optional version pin, nothing else. They reach the
# build as words (never shell text), and an option (`--index-url=…`, `-o…`) cannot start one.
APT_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,99}(=[A-Za-z0-9.+~:-]{1,100})?\Z")
PIP_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9])?(\[[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*\])?"
                    r"((===?|~=|!=|<=?|>=?)[A-Za-z0-9.*+!-]{1,60})?(,(===?|~=|!=|<=?|>=?)[A-Za-z0-9.*+!-]{1,60}){0,4}\Z")
# Mount paths travel inside `docker run --mount type=…,source=…,target=…`: a comma or
# `=` would add mount options (a second `source=/`), so paths use a plain alphabet.
PATH_RE = re.compile(r"^/[A-Za-z0-9._@+/-]*\Z")
# Box paths a volume may not cover, nor sit inside: the image's system (a mount at
# /etc/ssh would replace the hardened sshd_config) and the kernel's filesystems.
SYSTEM_TARGETS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32",
                  "/proc", "/root", "/run", "/sbin", "/sys", "/usr")
# Box paths a volume may sit inside but not replace (/opt holds the pytorch images' conda).
SHARED_TARGETS = ("/", "/home", "/opt", "/tmp", "/var")
# Host paths that make every key holder root on the host, as themselves, inside or above them.
HOST_ROOT_PATHS = ("/boot", "/dev", "/etc", "/proc", "/root", "/run", "/sys", "/var/lib/containerd",
                   "/var/lib/docker", "/var/run")
HOST_ROOT_SOCKETS = ("docker.sock", "containerd.sock", "podman.sock")
ALLOWED_KEYS = {
    "base_image": '"auto" (default: the newest official pytorch/pytorch runtime image the host\'s driver and GPUs run) '
                  "or an image reference, e.g. pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime",
    "gpus": '"all", "none", a count like 2 (any free ones, kept across re-runs), or a list of GPU indices or UUIDs '
            'like [0, 1] or ["GPU-46748a73-18ca-02c2-e029-6e440dca4aa4"]',
    "volumes": 'a list like ["workspace:/workspace", "/data:/data:ro", "shared:hf-cache:/home/dev/.cache/huggingface"] '
               '(shared:NAME is one volume every box of the host may mount)',
    "shared": "true to let this box use GPUs another box holds (on purpose); default false: an overlap is refused",
    "idle_stop": 'a duration like "2h", "30m" or "20s": the box stops itself after that long with no SSH session, '
                 'no job and its GPUs under idle_gpu_util (default: never)',
    "idle_gpu_util": "a GPU utilisation percent 0..100 under which the box's GPUs count as idle (default 5)",
    "shm_size": '"auto" (default: half the box\'s memory limit, at least 1g) or a size like "16g"',
    "memory": '"auto" (default: the host\'s memory less max(2 GiB, 10%)), a size like "64g", or "" for no limit',
    "cpus": '"auto" (default: the host\'s CPUs less one, when it has more than two), a number like 7.5, or "" for no limit',
    "user": "a login name like dev (not root, nor an account the image already has, like nobody or sshd)",
    "uid": "an integer 1..65534",
    "gid": "an integer 1..65534",
    "expose": '"loopback" (default) or "all" (publish the box port on every interface)',
    "port": "the host port for the box's sshd, 1024..65535 (default: chosen per host)",
    "playbook": "a playbook name in playbooks/ or a path to a .toml file",
    "delivery": '"auto" (default), "build" (on the host from the context), "stream" (send the missing layers over SSH), '
                '"registry" (push to `registry` once, each host pulls) or "registry,stream" (stream to a host the registry fails)',
    "registry": 'the team registry and path the image goes through, e.g. "reg.lab:5000/devbox" (no scheme, tag or options; '
                'credentials: `docker login` here and on each host)',
    "refresh": 'any label like "2026-11-23" (letters, digits, . _ -): change it to rebuild the image with today\'s openssh-server and tmux',
    "identity": "the private key the box entry logs in with, e.g. ~/.ssh/id_ed25519 (default: the first of yours whose public key the box trusts)",
    "apt": 'Debian/Ubuntu packages added to the image, names or name=version pins, e.g. ["htop", "python3-pip"]',
    "pip": 'Python packages added to the image\'s Python, names with an optional pin, e.g. ["jupyterlab", "numpy<2", "ray[default]==2.9"]',
    "ca_bundle": "the path (absolute, or ~/…) of a PEM file of CA certificates the image build and the box trust, "
                 "e.g. a TLS-intercepting proxy's: \"/usr/local/share/ca-certificates/proxy.crt\"",
    "build_stall": "seconds a build on the host may print nothing before it is stopped, 1..86400 (default 300)",
    "allow_host_root_mounts": "true to let volumes mount host paths that give root on the host (the Docker socket, /etc, /, …); every key holder becomes host root, and `up` warns each time",
    "env": 'a table of plain (not secret) variables for every shell, job and notebook, e.g. { HF_HOME = "/workspace/hf" }',
    "secrets": 'a table of variables read on this machine at `up`, e.g. { HF_TOKEN = "env:HF_TOKEN", WANDB_API_KEY = "file:~/.config/wandb/key" }',
    "git_identity": 'who commits in the box, e.g. "Ada Lovelace <ada@lab.org>"',
    "git_credentials": 'the token HTTPS git pushes use, read like a secret: "env:GH_TOKEN" (any host that asks), '
                       'or per host: { "github.com" = "env:GH_TOKEN", "git.lab.org:8443" = "file:~/.config/lab-token" }',
    "forward_agent": "true to let your ssh-agent reach the box (only on a box whose keys are one person's)",
    "dotfiles": 'a folder on this machine copied into the box\'s home at first `up`, e.g. "~/dotfiles"',
}
# Variable names a shell can export; the sources a secret may name.
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
SECRET_SOURCE_RE = re.compile(r"^(env:[A-Za-z_][A-Za-z0-9_]{0,127}|file:[^\n\r\0]{1,4096})\Z")
# "Name <email>", written into a gitconfig as a quoted value: no quotes, backslashes or controls.
GIT_IDENTITY_RE = re.compile(r'^([^<>"\\\x00-\x1f\x7f]{1,200}) <([^<>"\\\s]{1,200}@[^<>"\\\s]{1,200})>\Z')


@dataclass(frozen=True)
class Volume:
    """A mount: a named volume (box-owned, kept across re-creation), one shared by the
    host's boxes on purpose (`shared:NAME:…`, never removed with one box), or a host path."""

    source: str
    target: str
    read_only: bool = False
    shared: bool = False

    @property
    def is_named(self) -> bool:
        return "/" not in self.source

    def render(self) -> str:
        return ("shared:" if self.shared else "") + f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class BoxSpec:
    """Everything that decides one box: where it runs, who gets in, and what it is."""

    host: str
    name: str = ""                      # a named box ([boxes.NAME]); "" is the host's own box
    owner: str = ""                     # a named box's person (a name in keys/)
    admits: tuple[str, ...] = ()        # whose keys get in; () is every team key (the host's own box)
    base_image: str = AUTO_BASE
    gpus: str | tuple[int | str, ...] = "all"
    volumes: tuple[Volume, ...] = (Volume("workspace", "/workspace"),)
    shm_size: str = "auto"
    memory: str = "auto"
    cpus: str = "auto"
    user: str = "dev"
    uid: int = 1000
    gid: int = 1000
    expose: str = "loopback"
    port: int | None = None
    delivery: str = "auto"
    refresh: str = ""
    allow_host_root_mounts: bool = False
    identity: str = ""
    apt: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()           # (NAME, value), sorted
    secrets: tuple[tuple[str, str], ...] = ()       # (NAME, "env:X" | "file:PATH"): sources, never values
    git_identity: str = ""
    git_credentials: tuple[tuple[str, str], ...] = ()   # (HOST[:PORT] or "" for any, a secret's source)
    forward_agent: bool = False
    dotfiles: str = ""
    shared: bool = False
    idle_stop: int = 0                  # seconds; 0: never stops itself
    idle_gpu_util: int = 5
    gpu_count: int = 0                  # set by placement when `gpus` was a count (its choice is `gpus`)
    ca_bundle: str = ""
    build_stall: int = 300
    registry: str = ""                  # devbox/registry.py: push once from here, hosts pull
    slurm: SlurmSpec | None = None      # a Slurm box (devbox/slurm.py): the scheduler picks its host
    data_root: str = ""                 # named volumes are folders here (shared storage), not Docker volumes
    slurm_job: str = ""                 # the Slurm job the box lives in (set by placement)
    sources: tuple[str, ...] = field(default=(), compare=False)

    # Not part of the container: changing them must not re-create a box (and the
    # opt-in flag must not change the hash of configs written before it existed).
    # apt, pip and ca_bundle reach the hash through the image tag, which holds them; who gets in
    # is the keys volume's business (synced live), and so is the box's environment (env,
    # secrets, git, dotfiles: its secrets volume and home).
    HASH_EXCLUDED = ("sources", "port", "host", "delivery", "allow_host_root_mounts", "identity", "apt", "pip",
                     "ca_bundle", "build_stall", "name", "owner", "admits", "gpu_count",
                     "env", "secrets", "git_identity", "git_credentials", "dotfiles", "registry", "slurm")
    # Keys added after boxes existed: hashed only when set, so an upgrade re-creates nothing.
    # forward_agent is an sshd option of the container.
    # slurm_job: a box from an earlier job (left by a job killed uncleanly) is never taken for this job's.
    HASH_WHEN_SET = {"shared": False, "idle_stop": 0, "idle_gpu_util": 5, "forward_agent": False, "data_root": "", "slurm_job": ""}

    @property
    def box(self) -> BoxId:
        """Where the box runs and what it is called: every derived name comes from here."""
        return BoxId(self.host, self.name or self.host)

    @property
    def box_name(self) -> str:
        """The container's name."""
        return self.box.container

    @property
    def wants_gpus(self) -> bool:
        return self.gpus != "none"

    @property
    def gpu_count_wanted(self) -> int | None:
        """How many GPUs verify must see: None for "all" (whatever the host has)."""
        if self.gpus == "none":
            return 0
        if isinstance(self.gpus, int):
            return self.gpus
        return None if self.gpus == "all" else len(self.gpus)

    @property
    def image(self) -> ImageSpec:
        return ImageSpec(self.base_image, self.user, self.uid, self.gid, self.refresh, apt=self.apt, pip=self.pip, ca_bundle=self.ca_bundle)

    @property
    def home(self) -> str:
        return HOME_MOUNT.format(user=self.user)

    @property
    def keys_volume(self) -> str:
        return self.box.keys_volume

    @property
    def secrets_volume(self) -> str:
        return self.box.secrets_volume

    @property
    def network(self) -> str:
        return self.box.network

    def volume_name(self, volume: Volume) -> str:
        """The Docker volume, or with a data_root the folder on shared storage, that holds `volume`."""
        if self.data_root:
            return self.box.shared_folder(self.data_root, volume.source) if volume.shared else f"{self.data_root}/{volume.source}"
        return self.box.shared_volume(volume.source) if volume.shared else self.box.volume(volume.source)

    def mount(self, volume: Volume) -> str:
        """`docker run --mount` text for one of the box's volumes."""
        source = self.volume_name(volume) if volume.is_named else volume.source
        kind = "volume" if volume.is_named and not self.data_root else "bind"
        return f"type={kind},source={source},target={volume.target}" + (",readonly" if volume.read_only else "")

    def all_volumes(self) -> tuple[Volume, ...]:
        """The configured mounts plus the home volume (it holds the host key and jobs)."""
        return (Volume("home", self.home), *self.volumes)

    def dangerous_mounts(self) -> list[Volume]:
        """Host paths that make key holders root on the host (allowed only by the opt-in)."""
        return [v for v in self.volumes if not v.is_named and gives_host_root(v.source)]

    def spec_hash(self, port: int, image_tag: str) -> str:
        """What, if changed, needs a new container (keys do not: they sync live)."""
        data = {k: v for k, v in asdict(self).items() if k not in self.HASH_EXCLUDED
                and not (k in self.HASH_WHEN_SET and v == self.HASH_WHEN_SET[k])}
        for volume in data["volumes"]:
            if not volume["shared"]:
                del volume["shared"]          # as volumes were hashed before shared ones existed
        data.update(port=port, image=image_tag)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- files


def find_config(explicit: Path | None = None) -> Path | None:
    """--config FILE, else ./devbox.toml, else ~/.config/devbox/devbox.toml, else none."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file {explicit} does not exist", "pass an existing file to --config")
        return explicit
    for candidate in (Path.cwd() / "devbox.toml", Path.home() / ".config" / "devbox" / "devbox.toml"):
        if candidate.is_file():
            return candidate
    return None


def _read_toml(path: Path) -> dict:
    try:
        # utf-8-sig: Windows editors start UTF-8 files with a BOM, which TOML reads as a stray statement
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})", "save the file as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", "fix the syntax at the line shown") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}", "check the path and permissions") from exc


def playbook_path(name: str, where: str = "") -> Path:
    """A playbook's file; `where` (a config file and table) prefixes errors for a named one."""
    path = Path(name)
    if path.suffix == ".toml" or "/" in name:
        if not path.is_file():
            raise ConfigError(f"{where}playbook {name} does not exist", "give a path to a .toml file")
        return path
    path = PLAYBOOK_DIR / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PLAYBOOK_DIR.glob("*.toml")))
        raise ConfigError(f"{where}no playbook named {name!r}", f"use one of: {known}, or a path to a .toml file")
    return path


def load_specs(names: list[str], config_file: Path | None = None, playbook: str | None = None,
               every_host: bool = False) -> list[BoxSpec]:
    """The specs for the hosts and boxes named (plus, with --all, every known one), in a stable order."""
    names = sorted(set(names) | set(known_hosts(config_file))) if every_host else list(dict.fromkeys(names))
    if not names:
        raise ConfigError("no host given", "name at least one Host from your ~/.ssh/config or a box from devbox.toml"
                          + (" (or --all)" if every_host else ""))
    return [load_spec(name, config_file, playbook) for name in names]


def known_hosts(config_file: Path | None = None) -> list[str]:
    """--all: every host or box with a devbox ssh entry, a [hosts.NAME] or a [boxes.NAME] table."""
    from devbox import sshconfig

    names = {alias[len(sshconfig.BOX_PREFIX):] for alias in sshconfig.read_entries()}
    return sorted(names | set(configured_hosts(config_file)))


def configured_hosts(config_file: Path | None = None) -> list[str]:
    """Host and box names that have a table in the config (for --all)."""
    path = find_config(config_file)
    if not path:
        return []
    document = _read_config(path)
    return sorted(set(document.get("hosts", {})) | set(document.get("boxes", {})))


TOP_LEVEL = {"defaults": "a table", "hosts": "[hosts.NAME] tables", "boxes": "[boxes.NAME] tables",
             "admins": 'a list of names in keys/, e.g. admins = ["ops"]'}
BOX_ONLY_KEYS = {"host": "the Host from your ~/.ssh/config the box runs on",
                 "slurm": 'instead of host, on a Slurm cluster: { login = "hpc-login", partition = "gpu", gpus = 2, '
                          'time = "8:00:00", shared_dir = "/shared/devbox" }',
                 "owner": "the person the box is for: a name in keys/ (their keys, plus admins, get in)"}


def _read_config(path: Path) -> dict:
    """devbox.toml, its top level checked: [defaults], [hosts.NAME], [boxes.NAME] and `admins`."""
    document = _read_toml(path)
    for key, value in document.items():
        if key not in TOP_LEVEL:
            raise ConfigError(f"{path}: unknown top-level key {key!r}", "allowed: [defaults], [hosts.NAME] and [boxes.NAME] tables, "
                              "and admins = [...]")
        if key == "admins":
            _parse_admins(path, value)
        elif not isinstance(value, dict):
            raise ConfigError(f"{path}: {key} must be a table", f"write it as [{key}]" if key == "defaults" else f"write [{key}.NAME] tables")
    for kind in ("hosts", "boxes"):
        for name, table in document.get(kind, {}).items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: {kind}.{name} must be a table", f"write it as [{kind}.{name}]")
            if not NAME_RE.match(name):
                raise ConfigError(f"{path}: [{kind}.{name!r}] is not a valid {'host' if kind == 'hosts' else 'box'} name",
                                  "use the Host name from your ~/.ssh/config" if kind == "hosts" else
                                  "use letters, digits, . _ - (it becomes `ssh devbox-NAME`)")
    return document


def _parse_admins(path: Path, value) -> tuple[str, ...]:
    from devbox.keys import validate_name

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: bad value for 'admins': {value!r}", f"admins must be {TOP_LEVEL['admins']}")
    for name in value:
        try:
            validate_name(name)
        except ConfigError:
            raise ConfigError(f"{path}: bad value for 'admins': {name!r} is not a key name", f"admins must be {TOP_LEVEL['admins']}") from None
    return tuple(sorted(set(value)))


def validate_host(host: str) -> str:
    """A Host alias from ~/.ssh/config; never an option (-oProxyCommand=…), a path or a space."""
    if not isinstance(host, str) or not NAME_RE.match(host):
        raise ConfigError(f"{host!r} is not a valid host name", "use the Host name from your ~/.ssh/config")
    return host


def load_spec(name: str, config_file: Path | None = None, playbook: str | None = None) -> BoxSpec:
    """The BoxSpec for a host's own box or a named box, from the config file (found as
    find_config does) and playbooks."""
    validate_host(name)
    path = find_config(config_file)
    document = _read_config(path) if path else {}
    box_table = document.get("boxes", {}).get(name)
    if box_table is not None:
        return _load_box(name, box_table, document, path, playbook)
    return _build_spec(name, document.get("hosts", {}).get(name, {}), f"[hosts.{name}]", document, path, playbook)


def _load_box(name: str, table: dict, document: dict, path: Path, playbook: str | None) -> BoxSpec:
    """A named box: its host (not itself a box), its owner, and who gets in (owner + admins)."""
    where = f"{path} [boxes.{name}]"
    if name.startswith("node."):
        raise ConfigError(f"{where}: box names may not start with 'node.'", "devbox names a Slurm box's node `devbox-node.BOX`: rename the box")
    if name in document.get("hosts", {}) or _is_ssh_host(name):
        raise ConfigError(f"{where}: box name {name!r} is also a host name", "rename the box: `ssh devbox-NAME` must name one box")
    host, owner = table.get("host"), table.get("owner")
    slurm = None
    if "slurm" in table:
        if host is not None:
            raise ConfigError(f"{where}: a Slurm box has no 'host': the scheduler picks the node", "remove host, or remove slurm")
        slurm = parse_slurm_table(table["slurm"], where)
        host = slurm.login
        if not NAME_RE.match(host) or host in document.get("boxes", {}):
            raise ConfigError(f"{where}: slurm.login {host!r} is not a host", "set slurm.login to the login node's Host in ~/.ssh/config")
    if not isinstance(host, str) or not NAME_RE.match(host):
        raise ConfigError(f"{where}: 'host' must be {BOX_ONLY_KEYS['host']}", f'add host = "gpu-host-3" to [boxes.{name}]')
    if host in document.get("boxes", {}):
        raise ConfigError(f"{where}: host {host!r} is a box, not a host", "set host to the Host the box runs on")
    if not isinstance(owner, str) or not owner:
        raise ConfigError(f"{where}: 'owner' must be {BOX_ONLY_KEYS['owner']}", f'add owner = "alice" to [boxes.{name}]')
    from devbox.keys import validate_name

    try:
        validate_name(owner)
    except ConfigError:
        raise ConfigError(f"{where}: bad value for 'owner': {owner!r}", f"owner must be {BOX_ONLY_KEYS['owner']}") from None
    admins = _parse_admins(path, document.get("admins", []))
    rest = {k: v for k, v in table.items() if k not in BOX_ONLY_KEYS}
    spec = _build_spec(host, rest, f"[boxes.{name}]", document, path, playbook)
    spec = _replace(spec, name=name, owner=owner, admits=tuple(sorted({owner, *admins})))
    return _slurm_box(spec, table, slurm, where) if slurm else spec


def _slurm_box(spec: BoxSpec, table: dict, slurm: SlurmSpec, where: str) -> BoxSpec:
    """A Slurm box: its GPUs are the job's (set at placement; a `gpus` of [defaults] or a
    playbook does not apply), it is published on its node's loopback only, and its data lives
    in shared_dir/NAME on every node."""
    if "gpus" in table:
        raise ConfigError(f"{where}: a Slurm box's GPUs are its job's", f"remove gpus and set slurm.gpus (now {slurm.gpus})")
    if table.get("expose", "loopback") != "loopback":
        raise ConfigError(f"{where}: a Slurm box is published on its node's 127.0.0.1 only", 'remove expose (or set "loopback")')
    return _replace(spec, slurm=slurm, data_root=f"{slurm.shared_dir}/{spec.name}", gpus="all", expose="loopback")


def _replace(spec: BoxSpec, **changes) -> BoxSpec:
    from dataclasses import replace

    return replace(spec, **changes)


def _is_ssh_host(name: str) -> bool:
    """A Host the user's ssh config names exactly (not only by a pattern)."""
    from devbox import sshconfig

    try:
        return name in sshconfig.exact_host_names()
    except ConfigError:
        return False


def _build_spec(host: str, table: dict, table_name: str, document: dict, path: Path | None, playbook: str | None) -> BoxSpec:
    layers: list[tuple[str, dict]] = []
    defaults = document.get("defaults", {})
    config_playbook = table.get("playbook", defaults.get("playbook"))
    if config_playbook:
        pb = playbook_path(str(config_playbook), f"{path} {table_name}: " if "playbook" in table else f"{path} [defaults]: ")
        layers.append((str(pb), _read_toml(pb)))
    if defaults:
        layers.append((f"{path} [defaults]", defaults))
    if table:
        layers.append((f"{path} {table_name}", table))
    if playbook:
        pb = playbook_path(playbook)
        layers.append((str(pb), _read_toml(pb)))
    merged: dict = {}
    origin: dict[str, str] = {}
    for where, layer in layers:
        fields = _validate_table(layer, where)
        for key in MERGED_TABLES & fields.keys():   # [defaults] env plus the host's own
            fields[key] = tuple(sorted({**dict(merged.get(key, ())), **dict(fields[key])}.items()))
        merged.update(fields)
        origin.update(dict.fromkeys(fields, where))
    merged.pop("playbook", None)
    spec = BoxSpec(host=host, sources=tuple(w for w, _ in layers), **merged)
    _check_mounts(spec, origin)
    _check_env_names(spec, origin)
    if spec.delivery.startswith("registry") and not spec.registry:
        raise ConfigError(f"{origin['delivery']}: delivery = {spec.delivery!r} but no registry is set",
                          'add registry = "HOST[:PORT]/PATH" (e.g. "reg.lab:5000/devbox") to devbox.toml, or choose another delivery')
    return spec


MERGED_TABLES = {"env", "secrets"}


def _check_env_names(spec: BoxSpec, origin: dict[str, str]) -> None:
    """A name is plain or secret, not both: which value would a shell see?"""
    both = sorted(set(dict(spec.env)) & set(dict(spec.secrets)))
    if both:
        raise ConfigError(f"{origin.get('secrets', 'devbox.toml')}: {both[0]!r} is in both env and secrets",
                          "keep it in one of them (secrets for anything you would not paste in a chat)")


def _validate_table(table: dict, where: str) -> dict:
    """Check each key of one layer; return the BoxSpec fields it sets."""
    out: dict = {}
    for key, value in table.items():
        if key not in ALLOWED_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}", f"allowed keys: {', '.join(sorted(ALLOWED_KEYS))}")
        out[key] = _parse(key, value, f"{where}: bad value for {key!r}")
    return out


def _parse(key: str, value, what: str):
    try:
        return _PARSERS[key](value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: {exc}", f"{key} must be {ALLOWED_KEYS[key]}") from None


def check_flags(**flags) -> dict:
    """Command-line flags named like devbox.toml keys (--uid, --refresh, …), held to the same
    rules; returns them parsed (as BoxSpec holds them)."""
    return {key: _parse(key, value, f"bad value for --{key}") for key, value in flags.items()}


def _is_gpu_name(item) -> bool:
    """An index 0..63 or a `GPU-…` UUID (indices move when a card is replaced; UUIDs do not)."""
    if isinstance(item, int) and not isinstance(item, bool):
        return 0 <= item < 64
    return isinstance(item, str) and bool(GPU_UUID_RE.match(item))


MAX_GPUS = 64


def _parse_gpus(value) -> str | int | tuple[int | str, ...]:
    if value in ("all", "none"):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= MAX_GPUS:
            return value
        raise ValueError(f"{value!r}: a count is 1..{MAX_GPUS}")
    if isinstance(value, list) and any(isinstance(i, int) and not isinstance(i, bool) and not 0 <= i < MAX_GPUS for i in value):
        raise ValueError(f"{value!r}: GPU indices are 0..{MAX_GPUS - 1}")
    if isinstance(value, list) and value and all(_is_gpu_name(i) for i in value):
        return tuple(sorted(set(value), key=lambda i: (isinstance(i, str), str(i).lower() if isinstance(i, str) else i)))
    raise ValueError(repr(value))


def normal_path(path: str) -> str:
    """/x/../etc, /etc/., /etc/ and //etc all mean /etc (POSIX keeps a leading //: we do not)."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _inside(path: str, folder: str) -> bool:
    """path is folder or below it (both normal)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def gives_host_root(source: str) -> bool:
    """A host path (normal, as parse_volume leaves it) through which the box could act as root on
    the host: a container engine's socket, or a system folder, inside one or above one."""
    return source.endswith(HOST_ROOT_SOCKETS) or any(
        _inside(source, danger) or _inside(danger, source) for danger in HOST_ROOT_PATHS)


def parse_volume(text: str) -> Volume:
    """[shared:]SOURCE:TARGET[:ro|rw]; paths come back normalised, so every later check sees one spelling."""
    if not isinstance(text, str):
        raise ValueError(repr(text))
    shared = text.startswith("shared:")
    parts = text.removeprefix("shared:").split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise ValueError(f"{text!r} is not SOURCE:TARGET[:ro]")
    source, target = parts[0], parts[1]
    if not PATH_RE.match(target):
        raise ValueError(f"{text!r}: the target must be an absolute path of letters, digits and . _ @ + - /")
    target = normal_path(target)
    if any(_inside(target, system) for system in SYSTEM_TARGETS) or target in SHARED_TARGETS:
        raise ValueError(f"{text!r}: {target} is a system directory of the box")
    if "/" in source:
        if not PATH_RE.match(source):
            raise ValueError(f"{text!r}: a host path must be absolute, of letters, digits and . _ @ + - /")
        source = normal_path(source)
    elif not re.match(r"^[a-z0-9][a-z0-9_-]*\Z", source):
        raise ValueError(f"{text!r}: a volume name uses a-z, 0-9, _ and -")
    if shared and "/" in source:
        raise ValueError(f"{text!r}: shared: names a volume (shared:NAME:/path), not a host path")
    return Volume(source, target, len(parts) == 3 and parts[2] == "ro", shared)


def _parse_volumes(value) -> tuple[Volume, ...]:
    if not isinstance(value, list):
        raise ValueError("not a list")
    return tuple(parse_volume(v) for v in value)


def _check_mounts(spec: BoxSpec, origin: dict[str, str]) -> None:
    """The whole run spec, before anything is touched: Docker refuses a duplicate target only
    after the old box is gone, and the home (host key, jobs) may not be covered or nested into."""
    where = origin.get("volumes", "the built-in defaults")
    remedy = "give each volume its own target outside the others and outside " + spec.home
    mounts = spec.all_volumes()
    for i, a in enumerate(mounts):
        for b in mounts[i + 1:]:
            if i == 0 and shares_into_home(spec, b):
                continue
            if _inside(a.target, b.target) or _inside(b.target, a.target):
                home = f" (the login home of user {spec.user!r}, from {origin.get('user', 'the defaults')})" if i == 0 else ""
                raise ConfigError(f"{where}: bad value for 'volumes': {b.target} overlaps {a.target}{home}: two mounts at the same or nested paths", remedy)
            if a.is_named and a.source == b.source:
                raise ConfigError(f"{where}: bad value for 'volumes': volume name {a.source!r} is used twice"
                                  + (" (devbox keeps the login home in it)" if i == 0 else ""), "give each volume its own name")
    dangerous = spec.dangerous_mounts()
    if dangerous and not spec.allow_host_root_mounts:
        raise ConfigError(f"{where}: bad value for 'volumes': mounting host path {dangerous[0].source} makes every key holder root on the host",
                          "mount a data folder instead; only if you mean it, set allow_host_root_mounts = true in devbox.toml")


def shares_into_home(spec: BoxSpec, volume: Volume) -> bool:
    """A shared cache may sit inside the login home (`shared:hf-cache:/home/dev/.cache/huggingface`),
    below it and outside devbox's own state (host key, jobs)."""
    return (volume.shared and volume.target != spec.home and _inside(volume.target, spec.home)
            and not _inside(volume.target, f"{spec.home}/.devbox"))


def _parse_size(value) -> str:
    if value == "" or (isinstance(value, str) and SIZE_RE.match(value)):
        return value.lower()
    raise ValueError(repr(value))


def _parse_auto_size(value) -> str:
    return value if value == "auto" else _parse_size(value)


def _parse_user(value) -> str:
    name = _parse_str(USER_RE)(value)
    if name == "root":
        raise ValueError("'root' is refused: the box runs as a non-root login user")
    if name in SYSTEM_USERS:
        raise ValueError(f"{name!r} is a system account of Debian and Ubuntu images, the build could not make it")
    return name


def _parse_int(low: int, high: int):
    """A whole number in low..high (a TOML bool is not one)."""
    def parse(value) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        raise ValueError(repr(value))
    return parse


def _parse_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(repr(value))


def _parse_choice(*choices: str):
    def parse(value):
        if value in choices:
            return value
        raise ValueError(repr(value))
    return parse


def _parse_str(pattern: re.Pattern):
    def parse(value):
        if isinstance(value, str) and pattern.match(value):
            return value
        raise ValueError(repr(value))
    return parse


def _parse_packages(pattern: re.Pattern):
    """A list of package specs -> sorted, without repeats: the same set always gives the same tag."""
    def parse(value) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise ValueError("not a list")
        for item in value:
            if not isinstance(item, str) or not pattern.match(item):
                raise ValueError(f"{item!r} is not a package name with an optional version pin")
        return tuple(sorted(set(value)))
    return parse


def _check_env_name(name) -> str:
    if not isinstance(name, str) or not ENV_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a variable name (letters, digits and _, not starting with a digit)")
    return name


def _parse_env(value) -> tuple[tuple[str, str], ...]:
    """NAME = "value": a value is one line of text (no NUL, no newline: a shell exports it as is)."""
    if not isinstance(value, dict):
        raise ValueError("not a table")
    for name, item in value.items():
        _check_env_name(name)
        if not isinstance(item, str):
            raise ValueError(f"{name}: the value must be a string")
        if any(c in item for c in "\0\n\r"):
            raise ValueError(f"{name}: the value holds a NUL or a line break")
    return tuple(sorted(value.items()))


def _parse_secret_source(value) -> str:
    if isinstance(value, str) and SECRET_SOURCE_RE.match(value):
        return value
    # Never echoed: a token pasted here by mistake must not reach a terminal or a CI log.
    raise ValueError("not env:NAME or file:PATH (the value itself never goes in devbox.toml)")


def _parse_secrets(value) -> tuple[tuple[str, str], ...]:
    """NAME = "env:VAR" | "file:PATH": where to read the value on this machine (never the value)."""
    if not isinstance(value, dict):
        raise ValueError("not a table")
    parsed = []
    for name, source in value.items():
        try:
            parsed.append((_check_env_name(name), _parse_secret_source(source)))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}" if isinstance(name, str) and ENV_NAME_RE.match(name) else str(exc)) from None
    return tuple(sorted(parsed))


GIT_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})(:[0-9]{1,5})?\Z")


def _parse_git_credentials(value) -> tuple[tuple[str, str], ...]:
    """A source for every HTTPS host, or a table of HOST[:PORT] -> source (git asks only for those)."""
    if isinstance(value, str):
        return (("", _parse_secret_source(value)),)
    if not isinstance(value, dict) or not value:
        raise ValueError("not a source or a table of host = source")
    parsed = []
    for host, source in value.items():
        if not isinstance(host, str) or not GIT_HOST_RE.match(host):
            raise ValueError(f"{host!r} is not a host name (with an optional :port)")
        try:
            parsed.append((host, _parse_secret_source(source)))
        except ValueError as exc:
            raise ValueError(f"{host}: {exc}") from None
    return tuple(sorted(parsed))


def _parse_ca_bundle(value) -> str:
    """A path on this machine, read now: a missing or wrong file stops before any host is touched."""
    from devbox.cabundle import read_ca_bundle

    if not isinstance(value, str) or not (value.startswith("/") or value.startswith("~/")):
        raise ValueError(f"{value!r} is not an absolute path")
    path = str(Path(value).expanduser())
    read_ca_bundle(path)
    return path


# A registry reference as Docker reads one: a host Docker takes for a registry (a dot, a port
# or localhost; else `team/devbox` would mean Docker Hub), then lowercase path components.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
REGISTRY_HOST_RE = re.compile(rf"^(localhost|\[[0-9A-Fa-f:]+\]|{_LABEL}(\.{_LABEL})+|{_LABEL}(?=:))(:(?P<port>[0-9]{{1,5}}))?\Z")
REGISTRY_PATH_RE = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*\Z")


def parse_registry(value) -> str:
    """`HOST[:PORT][/PATH]`, nothing else: it becomes a word of `docker push` here and
    `docker pull` on each host, so a scheme, a tag, a digest or an option is refused."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{value!r} is not a registry reference")
    if "://" in value:
        raise ValueError(f"{value!r} has a scheme: write it without (Docker chooses https, or http on 127.0.0.0/8)")
    if "@" in value or len(value) > 200:
        raise ValueError(f"{value!r} is not a registry reference (no digest, at most 200 characters)")
    host, _, path = value.partition("/")
    found = REGISTRY_HOST_RE.match(host)
    if not found or not 0 < int(found["port"] or 1) < 65536:
        raise ValueError(f"{value!r} does not start with a registry host Docker recognises (a name with a dot, a port, or localhost)")
    if path and not all(REGISTRY_PATH_RE.match(part) for part in path.split("/")):
        raise ValueError(f"{value!r} has a bad path: lowercase letters, digits and . _ - between them, no tag")
    return value


def _parse_cpus(value) -> str:
    if value in ("auto", ""):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 4096:
        return f"{value:g}"
    raise ValueError(repr(value))


_PARSERS = {
    "base_image": _parse_str(re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}\Z")),
    "gpus": _parse_gpus,
    "volumes": _parse_volumes,
    "shm_size": _parse_auto_size,
    "memory": _parse_auto_size,
    "cpus": _parse_cpus,
    "user": _parse_user,
    "uid": _parse_int(1, 65534),
    "gid": _parse_int(1, 65534),
    "expose": _parse_choice("loopback", "all"),
    "port": _parse_int(1024, 65535),
    "playbook": _parse_str(re.compile(r"^[A-Za-z0-9._/-]+\Z")),
    "delivery": _parse_choice("auto", "build", "stream", "registry", "registry,stream"),
    "registry": parse_registry,
    "refresh": _parse_str(REFRESH_RE),
    "allow_host_root_mounts": _parse_bool,
    "identity": _parse_str(re.compile(r'^[^\n\r\0"]{1,4096}\Z')),  # written into an ssh config line
    "apt": _parse_packages(APT_RE),
    "pip": _parse_packages(PIP_RE),
    "env": _parse_env,
    "secrets": _parse_secrets,
    "git_identity": _parse_str(GIT_IDENTITY_RE),
    "git_credentials": _parse_git_credentials,
    "forward_agent": _parse_bool,
    "dotfiles": _parse_str(re.compile(r"^[^\n\r\0]{1,4096}\Z")),
    "shared": _parse_bool,
    "idle_stop": parse_duration,  # devbox/idle.py
    "idle_gpu_util": _parse_int(0, 100),
    "ca_bundle": _parse_ca_bundle,
    "build_stall": _parse_int(1, 86400),
}
