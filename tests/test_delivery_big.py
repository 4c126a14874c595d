"""Multi-GB delivery and resume on the bed (slow: minutes; `-m slow`, DEVBOX_SLOW=1 or
`make bench`). The image is bench/bigimage.py's PyTorch-sized one with devbox's layers."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import testbed as tb
from devbox.delivery import PARTIAL_LABEL, Rewrite, host_chains, inspect_local
from test_delivery import clean_engine, cut_route, engine_layers, layer_sizes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import bigimage  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def big_laptop(engine_laptop, testbed):
    """The own-engine host (it has the Debian base only) and a project on the big image."""
    laptop = engine_laptop
    laptop.tag = bigimage.ensure_box_image(tb.BASE_IMAGE)
    (laptop.work / "devbox.toml").write_text(
        f'[defaults]\nplaybook = "cpu"\nbase_image = "{bigimage.BIG_IMAGE}"\ndelivery = "stream"\n')
    clean_engine(laptop.engine, laptop.tag)
    yield laptop
    clean_engine(laptop.engine, laptop.tag)


def test_a_multi_gb_image_crosses_whole_and_runs(big_laptop):
    laptop = big_laptop
    image = inspect_local(laptop.tag)
    base = json.loads(laptop.engine.docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", tb.BASE_IMAGE).stdout)
    reports, _ = laptop.devbox.json("up", laptop.engine_host, "--no-verify", expect=0)
    sizes = layer_sizes(laptop.tag)
    lacking = sum(sizes[d] for d in image.diff_ids if d not in base)
    assert lacking > 3e9 and lacking <= reports[0]["bytes_sent"] <= 1.01 * lacking
    assert laptop.engine.docker("image", "inspect", laptop.tag).returncode == 0


def test_a_cut_multi_gb_delivery_resumes_with_only_what_the_host_lacks(big_laptop, tmp_path):
    """The link drops after 2.5 GB: one line, exit 3; what was committed stays on the host
    (how much depends on the order `docker save` writes the layers in: Rewrite decides
    it from the names, so the test asks it); the next `up` sends exactly the rest."""
    laptop = big_laptop
    image = inspect_local(laptop.tag)
    done = laptop.devbox("up", cut_route(laptop, tmp_path, 2500 << 20), "--no-verify")
    assert done.returncode == 3 and "the link dropped" in done.stdout and "Traceback" not in done.stderr, done.stdout + done.stderr
    kept = {d for layers in engine_layers(laptop.engine) for d in layers}
    assert laptop.engine.docker("image", "inspect", laptop.tag).returncode != 0
    rewrite = Rewrite(image, host_chains(engine_layers(laptop.engine)))
    reports, _ = laptop.devbox.json("up", laptop.engine_host, "--no-verify", expect=0)
    sizes = layer_sizes(laptop.tag)
    lacking = sum(sizes[d] for d, there in zip(image.diff_ids, rewrite.present) if not there)
    assert lacking <= reports[0]["bytes_sent"] <= lacking + (1 << 20)
    assert set(image.diff_ids) - kept, "the cut came before the image was whole"
    assert laptop.engine.docker("image", "ls", "-q", "--filter", f"label={PARTIAL_LABEL}").stdout.split() == []
