"""Issue 13, item 6: whatever a config file or a job's argv holds, only a result or our error comes out.

Hypothesis writes random TOML documents (the allowed keys, the table names and junk,
with values of every TOML type, nested) and random argv (lone surrogates included: what
Python makes of bytes that are not UTF-8). Any other exception is a traceback a user would see.
"""
from __future__ import annotations

import json
import math
import tempfile
import tomllib
from datetime import date, datetime, time
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from devbox.config import ALLOWED_KEYS, BoxSpec, configured_hosts, load_spec
from devbox.errors import ConfigError
from devbox.jobs import run_script

# Values a careless or hostile user would write, beside random ones.
NEAR_MISSES = ["all", "none", "auto", "", "16g", "-1g", "default", "cpu", "/dev/zero", "../x", "x.toml", "dev", "root",
               "loopback", "stream", "workspace:/workspace", "/data:/data:ro", "w:/home/dev", "w:/workspace/x", "w://etc",
               "/var/run/docker.sock:/s", "/:/host", "home:/x", "/a,source=/:/x", "w:/x:rw:ro", "w:/x/../etc",
               "shared:c:/x", "shared:/etc:/x", "shared:c:/home/dev/.cache/c", "shared:c:/home/dev/.devbox/x", "h", "b",
               "alice", "2h", "20s", "0s"]
KEYS = st.sampled_from(sorted(ALLOWED_KEYS) + ["defaults", "hosts", "boxes", "admins", "host", "owner", "h", "b",
                                               "gpu-host-3"]) | st.text(max_size=12)

scalars = (
    st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.booleans()
    | st.text(max_size=30)
    | st.sampled_from(NEAR_MISSES)
    | st.dates()
    | st.times()
    | st.datetimes()
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4), max_leaves=12)
tables = st.dictionaries(KEYS, values, max_size=6)
documents = st.dictionaries(
    KEYS,
    values | tables | st.fixed_dictionaries({}, optional={"h": tables, "gpu-host-3": tables, "b": tables, "x": values}),
    max_size=4,
)


def toml_value(value) -> str:
    """A tiny TOML writer: every value inline (`{…}` tables, `[…]` arrays), strings as basic strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, datetime, date, time)):
        return value.isoformat() if not isinstance(value, int) else str(value)
    if isinstance(value, float):
        return ("-inf" if value < 0 else "inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(document: dict) -> str:
    return "".join(f"{toml_value(key)} = {toml_value(value)}\n" for key, value in document.items())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.sampled_from([None, "cpu", "default"]))
def test_any_config_document_gives_a_spec_or_a_config_error(document, playbook):
    text = toml_document(document)
    assert tomllib.loads(text) == document  # the writer is right, so the loader is what is tested
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "devbox.toml"
        path.write_text(text)
        for host in ("h", "gpu-host-3", "b"):
            try:
                spec = load_spec(host, path, playbook)
            except ConfigError as exc:
                assert exc.exit_code == 2 and exc.message and exc.remedy
                continue
            assert isinstance(spec, BoxSpec)
            spec.spec_hash(20000, "img:1"), spec.all_volumes(), spec.dangerous_mounts(), spec.image
            assert spec.allow_host_root_mounts or not spec.dangerous_mounts()
        try:
            assert all(isinstance(name, str) for name in configured_hosts(path))
        except ConfigError:
            pass


# Any code point, lone surrogates included (rare when drawn at random, so some are named).
any_text = st.text(alphabet=st.characters(blacklist_categories=()), max_size=20) | st.sampled_from(
    ["\udcff", "\ud800", "caf\udce9", "-oProxyCommand=x", "$(id)", "a'b\"c", "\n", "", "~", "--"])


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["train", "j-1", "", "a.b", "x; rm -rf ~", "-t", "j\n"]) | any_text,
    st.lists(any_text, max_size=5),
    st.none() | st.sampled_from(["~", "~/w", "/workspace", "rel"]) | any_text,
    st.lists(st.sampled_from(["A=1", "B=x y", "=x", "1A=2"]) | any_text, max_size=3),
)
def test_any_job_argv_gives_a_script_or_a_config_error(name, argv, cwd, env):
    try:
        script = run_script(name, argv, cwd, env)
    except ConfigError as exc:
        assert exc.exit_code == 2 and exc.message and exc.remedy
        return
    assert isinstance(script, str) and script.encode("utf-8")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables, values)
def test_any_box_table_gives_a_spec_or_a_config_error(table, admins):
    """[boxes.b] with a host and an owner (the shape that gets past the first checks), plus random keys."""
    document = {"admins": admins, "boxes": {"b": {"host": "h", "owner": "alice", **table}}}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "devbox.toml"
        path.write_text(toml_document(document))
        try:
            spec = load_spec("b", path)
        except ConfigError as exc:
            assert exc.exit_code == 2 and exc.message and exc.remedy
            return
        assert spec.box.name == "b" and spec.box.container == "devbox-b" and "alice" in spec.admits
        spec.spec_hash(20000, "img:1"), spec.all_volumes(), spec.image
