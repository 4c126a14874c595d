"""devbox.toml and playbooks -> BoxSpec: precedence and errors that name file and key."""
from pathlib import Path

import pytest

from devbox.config import BoxSpec, Volume, configured_hosts, load_spec, parse_volume
from devbox.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devbox.toml"
    path.write_text(text)
    return path


def test_no_config_gives_the_built_in_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    spec = load_spec("gpu-host-3")
    assert spec.gpus == "all" and spec.volumes == (Volume("workspace", "/workspace"),)
    assert spec.box_name == "devbox-gpu-host-3"


def test_host_table_overrides_defaults_and_playbook_flag_overrides_both(tmp_path):
    cfg = write(tmp_path, '[defaults]\ngpus = [0]\nshm_size = "4g"\n[hosts.gpu-host-3]\ngpus = [0, 1]\n')
    assert load_spec("gpu-host-3", cfg).gpus == (0, 1)
    assert load_spec("gpu-host-1", cfg).gpus == (0,)
    assert load_spec("gpu-host-3", cfg, "cpu").gpus == "none"
    assert load_spec("gpu-host-3", cfg, "cpu").shm_size == "2g"


def test_shipped_playbooks_say_what_the_issue_asks():
    default = load_spec("h", None, "default")
    assert default.gpus == "all"
    assert Volume("/data", "/data", True) in default.volumes and Volume("workspace", "/workspace") in default.volumes
    assert load_spec("h", None, "cpu").gpus == "none"


@pytest.mark.parametrize(
    "text, needle",
    [
        ('[defaults]\ngpus = "some"\n', "'gpus'"),
        ('[defaults]\ncolour = "red"\n', "unknown key 'colour'"),
        ('[defaults]\nuid = 0\n', "'uid'"),
        ('[defaults]\nvolumes = ["relative/path:/x"]\n', "'volumes'"),
        ('[defaults]\nvolumes = ["data:/etc"]\n', "'volumes'"),
        ('[defaults]\nexpose = "public"\n', "'expose'"),
        ('[defaults]\nrefresh = "next week; rm -rf /"\n', "'refresh'"),
        ("[defaults\n", "not valid TOML"),
        ('name = "x"\n', "unknown top-level key"),
    ],
)
def test_config_errors_name_the_file_and_key(tmp_path, text, needle):
    cfg = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_spec("gpu-host-3", cfg)
    assert needle in err.value.message and str(cfg) in err.value.message
    assert err.value.exit_code == 2 and err.value.remedy


def test_unknown_playbook_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        load_spec("h", None, "nope")
    assert "cpu" in err.value.remedy and "default" in err.value.remedy


def test_bad_host_name_is_refused():
    with pytest.raises(ConfigError):
        load_spec("x; rm -rf /")


def test_volume_syntax():
    assert parse_volume("/data:/data:ro") == Volume("/data", "/data", True)
    assert parse_volume("datasets:/datasets").is_named
    with pytest.raises(ValueError):
        parse_volume("a:b:c:d")


def test_spec_hash_changes_with_what_needs_a_new_container_only():
    a = BoxSpec("h", gpus="none")
    assert a.spec_hash(20000, "img:1") == BoxSpec("h", gpus="none", sources=("x",)).spec_hash(20000, "img:1")
    assert a.spec_hash(20000, "img:1") != BoxSpec("h", gpus="none", shm_size="1g").spec_hash(20000, "img:1")
    assert a.spec_hash(20000, "img:1") != a.spec_hash(20001, "img:1")
    assert a.spec_hash(20000, "img:1") != a.spec_hash(20000, "img:2")


def test_refresh_is_a_new_image_tag_only_when_set(tmp_path):
    """Unset, tags stay what they were; a new label is a new tag (and so a rebuild)."""
    from devbox.image import ImageSpec, content_tag

    plain = load_spec("h", write(tmp_path, "[defaults]\n"))
    fresh = load_spec("h", write(tmp_path, '[defaults]\nrefresh = "2026-11-23"\n'))
    assert plain.refresh == "" and fresh.refresh == "2026-11-23"
    assert content_tag(plain.image) == content_tag(ImageSpec(plain.base_image))
    assert content_tag(fresh.image) != content_tag(plain.image)
    assert content_tag(fresh.image) != content_tag(ImageSpec(plain.base_image, refresh="2026-11-24"))


# ---------------------------------------------------------------- the whole run spec (issue 13)


@pytest.mark.parametrize("text, needle", [
    ('[defaults]\nvolumes = ["workspace:/home/dev"]\n', "/home/dev overlaps /home/dev (the login home"),
    ('[defaults]\nvolumes = ["workspace:/home/dev/data"]\n', "the login home"),
    ('[defaults]\nvolumes = ["a:/workspace", "b:/workspace/x"]\n', "/workspace/x overlaps /workspace"),
    ('[defaults]\nvolumes = ["a:/workspace", "b:/workspace/"]\n', "/workspace overlaps /workspace"),
    ('[defaults]\nvolumes = ["home:/data"]\n', "volume name 'home' is used twice"),
    ('[defaults]\nvolumes = ["a:/x", "a:/y"]\n', "volume name 'a' is used twice"),
    # the user comes from another layer than the volume: checked on the merged spec
    ('[defaults]\nvolumes = ["w:/home/alice"]\n[hosts.gpu-host-3]\nuser = "alice"\n', "login home of user 'alice'"),
])
def test_mounts_that_overlap_each_other_or_the_login_home_are_refused(tmp_path, text, needle):
    with pytest.raises(ConfigError) as err:
        load_spec("gpu-host-3", write(tmp_path, text))
    assert needle in err.value.message and f"{tmp_path / 'devbox.toml'} [defaults]: bad value for 'volumes'" in err.value.message
    assert err.value.exit_code == 2 and err.value.remedy


def test_a_home_elsewhere_is_fine(tmp_path):
    spec = load_spec("h", write(tmp_path, '[defaults]\nvolumes = ["w:/home/dev"]\nuser = "alice"\n'))
    assert [v.target for v in spec.all_volumes()] == ["/home/alice", "/home/dev"]


@pytest.mark.parametrize("target", [
    "/", "//", "/etc", "/etc/", "//etc", "/etc/.", "/x/../etc", "/etc/ssh", "/etc/devbox/keys", "/usr/bin", "/./usr", "/home", "/home/",
    "/proc", "/sys", "/dev", "/run", "/root", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/var", "/tmp", "/opt",
])
def test_system_targets_are_refused_however_they_are_spelled(tmp_path, target):
    with pytest.raises(ConfigError) as err:
        load_spec("h", write(tmp_path, f'[defaults]\nvolumes = ["w:{target}"]\n'))
    assert "'volumes'" in err.value.message


def test_targets_are_normalised_and_ordinary_ones_pass():
    assert parse_volume("w:/workspace/").target == "/workspace"
    assert parse_volume("/data/./x/:/data/../mnt/d:ro") == Volume("/data/x", "/mnt/d", True)
    for fine in ("w:/var/cache/x", "w:/opt/models", "w:/tmp/scratch", "w:/mnt/data"):
        assert parse_volume(fine)


@pytest.mark.parametrize("entry", [
    "/data,source=/:/x",       # --mount is CSV: a comma would add a second source=/
    "/data:/x,readonly=false",
    "/data:/x y",
    "w:/x\n",
    "w\n:/x",
])
def test_mount_paths_cannot_smuggle_mount_options(entry):
    with pytest.raises(ValueError):
        parse_volume(entry)


ROOT_GIVING = ["/var/run/docker.sock", "/run/docker.sock", "/home/ops/docker.sock", "/run/containerd/containerd.sock",
               "/", "//", "/etc", "/etc/", "/etc/shadow", "/root", "/root/.ssh", "/var/run", "/run", "/proc", "/proc/1/root",
               "/sys", "/dev", "/dev/sda", "/boot", "/var/lib/docker", "/var/lib/docker/volumes", "/var", "/var/lib",
               "/x/../etc", "/var/run/../run/docker.sock"]


@pytest.mark.parametrize("source", ROOT_GIVING)
def test_host_paths_that_give_host_root_are_refused_by_default(tmp_path, source):
    with pytest.raises(ConfigError) as err:
        load_spec("h", write(tmp_path, f'[defaults]\nvolumes = ["{source}:/mnt/host"]\n'))
    assert "root on the host" in err.value.message and "allow_host_root_mounts = true" in err.value.remedy


def test_the_loud_opt_in_allows_them_and_lists_them_for_the_warning(tmp_path):
    cfg = write(tmp_path, '[defaults]\nvolumes = ["/var/run/docker.sock:/var/run/docker.sock", "/data:/data"]\n'
                          '[hosts.h]\nallow_host_root_mounts = true\n')
    spec = load_spec("h", cfg)
    assert spec.allow_host_root_mounts and spec.dangerous_mounts() == [Volume("/var/run/docker.sock", "/var/run/docker.sock")]
    assert load_spec("h", write(tmp_path, '[defaults]\nvolumes = ["/data:/data", "/srv/x:/srv"]\n')).dangerous_mounts() == []
    with pytest.raises(ConfigError):
        load_spec("h", write(tmp_path, '[defaults]\nallow_host_root_mounts = "yes"\n'))


def test_the_opt_in_does_not_change_the_spec_hash_of_existing_configs():
    """Configs written before the flag existed keep their hash: an upgrade re-creates no box."""
    for spec in (BoxSpec("h"), load_spec("h", None, "default"), BoxSpec("h", gpus=(0,), user="alice")):
        opted = BoxSpec(**{**spec.__dict__, "allow_host_root_mounts": True})
        assert opted.spec_hash(20000, "img:1") == spec.spec_hash(20000, "img:1")
    assert "allow_host_root_mounts" in BoxSpec.HASH_EXCLUDED


@pytest.mark.parametrize("text, needle", [
    ("hosts = 3\n", "must be a table"), ("defaults = 3\n", "must be a table"), ('defaults = "x"\n', "must be a table"),
    ("hosts = [1]\n", "must be a table"), ("[hosts]\nh = 3\n", "must be a table"),
    ('[hosts."-oProxyCommand=x"]\n', "not a valid host name"), ('[hosts."a b"]\ngpus = "none"\n', "not a valid host name"),
])
def test_a_config_of_the_wrong_shape_is_a_config_error(tmp_path, text, needle):
    cfg = write(tmp_path, text)
    for load in (lambda: load_spec("h", cfg), lambda: configured_hosts(cfg)):
        with pytest.raises(ConfigError) as err:
            load()
        assert str(cfg) in err.value.message and needle in err.value.message and err.value.remedy


# ---------------------------------------------------------------- upgrading never re-creates a box (issue 20)


def test_a_host_s_own_box_keeps_its_names_and_spec_hash_across_the_named_box_upgrade():
    """Hashes computed by devbox at 2ad46cf (before named boxes, shared volumes, idle_stop and
    ca_bundle): an unchanged config gives the same hash, so `up` after an upgrade changes nothing."""
    from devbox.config import BoxSpec, Volume

    tag = "devbox-ssh:0123456789abcdef"
    specs = {
        "998f12d2e6528e2f": BoxSpec("gpu-host-3"),
        "b632520b5407bccf": BoxSpec("h2", gpus=(0, 1), volumes=(Volume("workspace", "/workspace"), Volume("/data", "/data", True)),
                                    shm_size="16g", uid=1001, gid=1001, apt=("jq",)),
        "4170cb753be08453": BoxSpec("h3", gpus="none", memory="", cpus="4", expose="all", refresh="2026-11-23"),
    }
    for expected, spec in specs.items():
        assert spec.spec_hash(21234, tag) == expected
    box = BoxSpec("gpu-host-3").box
    assert (box.container, box.keys_volume, box.network, box.volume("home"), box.ssh_alias) == (
        "devbox-gpu-host-3", "devbox-gpu-host-3.keys", "devbox-gpu-host-3.net", "devbox-gpu-host-3-home", "devbox-gpu-host-3")
    named = BoxSpec("gpu-host-3", name="alice-3", owner="alice", admits=("alice",))
    assert named.spec_hash(21234, tag) == specs["998f12d2e6528e2f"].spec_hash(21234, tag), "who it is for is not the container"
    assert (named.box_name, named.keys_volume, named.box.ssh_alias) == ("devbox-alice-3", "devbox-alice-3.keys", "devbox-alice-3")
