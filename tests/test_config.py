"""devbox.toml and playbooks -> BoxSpec: precedence and errors that name file and key."""
from pathlib import Path

import pytest

from devbox.config import BoxSpec, Volume, load_spec, parse_volume
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
