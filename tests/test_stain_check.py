"""The brightfield check (issue 19, bug 7): a fluorescence slide ended as "done, 0 cells, purity
n/a (no tissue found on the slide)". Now a slide that is not brightfield H&E is named at once and
failed with one line, and no real or synthetic H&E slide is rejected.

Measured on the thumbnails (8 µm/px) when this was written:

============================  =======  =====  =================  =========  ============
slide                         kind     dark   brightfield share  glass      brown tissue
============================  =======  =====  =================  =========  ============
CMU-1-Small-Region.svs        bright   0 %    99.8 %             64 %       0 %
synth_025 / synth_05          bright   0 %    100 %              54 / 56 %  0 %
synth_empty                   bright   0 %    100 %              100 %      (no tissue)
pattern slide (test colours)  bright   0.6 %  49 %               0.7 %      16 %
DAPI on black (from synth_05) fluor.   87 %   0 %                0 %        (no tissue)
grey single channel           fluor.   86 %   0 %                0 %        (no tissue)
3-channel composite           fluor.   50 %   0 %                0 %        (no tissue)
IHC, DAB for eosin (seed 12)  ihc      0 %    100 %              53 %       38 %
H&E thumbnails in 75 % black  bright   75 %   99.6-100 %         3-16 %     0 %
============================  =======  =====  =================  =========  ============
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import write_tiny_checkpoint
from helpers import run_cli

from wsi_ocelot.errors import NotBrightfieldError, SlideFormatError
from wsi_ocelot.slide import open_slide
from wsi_ocelot.slide.mask import tissue_mask_from_image
from wsi_ocelot.slide.stain_check import (
    StainCheck,
    classify_stain,
    require_brightfield,
)
from wsi_ocelot.synthetic.tiff import write_pyramidal_tiff

DAB = np.array([0.27, 0.57, 0.78]) / np.linalg.norm(
    [0.27, 0.57, 0.78]
)  # DAB's optical density (Ruifrok & Johnston)


# -- synthetic slides that are not brightfield H&E ------------------------------------------
def _fluorescence_from_he(img: np.ndarray, channels: str, seed: int = 0) -> np.ndarray:
    """A fluorescence picture of the same tissue as an H&E render: black background with
    camera noise, nuclei bright (haematoxylin absorbs red, eosin hardly does). ``channels``:
    ``dapi`` (blue), ``grey`` (one channel shown grey) or ``composite`` (DAPI blue, a green
    cytoplasm channel where eosin was, a sparse red marker)."""
    od = -np.log(np.maximum(img, 1) / 255.0)
    nuclei = np.clip((od[..., 0] - 0.25) / 0.5, 0, 1)
    cytoplasm = np.clip((od[..., 1] - od[..., 0] - 0.05) / 0.3, 0, 1)
    rng = np.random.default_rng(seed)

    def channel(signal: np.ndarray | float) -> np.ndarray:
        return np.clip(rng.normal(6, 3, nuclei.shape) + signal, 0, 255).astype(np.uint8)

    if channels == "dapi":
        return np.stack([channel(0), channel(0), channel(240 * nuclei)], -1)
    if channels == "grey":
        return np.repeat(channel(240 * nuclei)[..., None], 3, -1)
    marker = cytoplasm * (rng.random(nuclei.shape) < 0.3)
    return np.stack([channel(120 * marker), channel(200 * cytoplasm), channel(240 * nuclei)], -1)


def _ihc_render(seed: int = 12, size: int = 1024, mpp: float = 0.5) -> np.ndarray:
    """A synthetic IHC slide: the synthetic H&E tissue model with DAB in place of eosin, 1.5×
    as strong as the (pale) synthetic eosin: a brown cytoplasmic/stromal marker on a
    haematoxylin counterstain. At 1× the thumbnail is 22 % brown, at 1.5× 38 %, at 2× 47 %."""
    from wsi_ocelot.synthetic.render import render_um
    from wsi_ocelot.synthetic.slide import make_synthetic_slide

    model = make_synthetic_slide(mpp=mpp, size=(size, size), seed=seed).model
    ihc = dataclasses.replace(
        model, stain=dataclasses.replace(model.stain, e_vec=DAB, e_gain=1.5 * model.stain.e_gain)
    )
    return render_um(ihc, 0, 0, size, size, mpp)


@pytest.fixture(scope="module")
def not_he(synth_05, tmp_path_factory) -> dict[str, object]:
    """Slides (0.5 µm/px TIFFs) that are not brightfield H&E, made from synth_05's tissue."""
    out = tmp_path_factory.mktemp("not_he")
    with open_slide(synth_05) as s:
        he = s.read_region((0, 0), 0, s.dimensions)
    paths: dict[str, object] = {}
    for name in ("dapi", "grey", "composite"):
        paths[name] = out / f"{name}.tiff"
        write_pyramidal_tiff(paths[name], _fluorescence_from_he(he, name), 0.5)
    paths["ihc"] = out / "ihc.tiff"
    write_pyramidal_tiff(paths["ihc"], _ihc_render(), 0.5)
    return paths


def _thumb(path) -> tuple[np.ndarray, np.ndarray]:
    with open_slide(path) as s:
        img, ds = s.thumbnail()
    return img, tissue_mask_from_image(img, ds).mask


# -- H&E stays brightfield -----------------------------------------------------------------
@pytest.mark.real_slides
def test_real_he_is_brightfield(cmu_slide):
    with open_slide(cmu_slide) as s:  # as the engine and `info` do: the thumbnail and its mask
        img, ds = s.thumbnail()
        c = classify_stain(img, tissue_mask_from_image(img, ds).mask)
    assert c.kind == "brightfield" and c.is_brightfield
    assert (
        c.dark_fraction < 0.01 and c.brightfield_share > 0.95 and c.brown_fraction < 0.02
    )  # measured 0, 0.998, 0
    require_brightfield(cmu_slide, c)  # no error


def test_synthetic_he_and_empty_glass_are_brightfield(
    synth_025, synth_05, synth_empty, pattern_slide
):
    for p in (synth_025, synth_05):
        c = classify_stain(*_thumb(p))
        assert c.kind == "brightfield", c
        assert c.dark_fraction == 0 and c.brown_fraction is not None and c.brown_fraction < 0.02
    empty = classify_stain(*_thumb(synth_empty))
    assert (
        empty.kind == "brightfield" and empty.brown_fraction is None and empty.glass_fraction > 0.95
    )
    assert "no tissue" in empty.description
    # the tests' colour pattern (run through the engine elsewhere) is no slide at all, but not a refused one
    assert classify_stain(*_thumb(pattern_slide)).kind == "brightfield"


@pytest.mark.parametrize("crop", [False, True])
def test_he_with_black_scan_borders_stays_brightfield(synth_025, crop):
    img, _ = _thumb(synth_025)
    if crop:  # tissue only, no glass left beside it
        h, w = img.shape[:2]
        img = img[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3]
    h, w = img.shape[:2]
    padded = np.zeros((2 * h, 2 * w, 3), np.uint8)  # 75 % black
    padded[:h, :w] = img
    c = classify_stain(padded)
    assert c.dark_fraction >= 0.74 and c.kind == "brightfield", c


@pytest.mark.real_slides
def test_real_he_with_black_scan_borders_stays_brightfield(cmu_slide):
    with open_slide(cmu_slide) as s:
        img, _ = s.thumbnail()
    h, w = img.shape[:2]
    padded = np.zeros((2 * h, 2 * w, 3), np.uint8)
    padded[:h, :w] = img
    assert classify_stain(padded).kind == "brightfield"


# -- what is not H&E is named ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["dapi", "grey", "composite"])
def test_fluorescence_is_named(not_he, name):
    # Fails on the old code: no stain check existed (the slide's tissue mask is empty, so a run
    # ended "done, 0 cells, purity n/a (no tissue found on the slide)").
    c = classify_stain(*_thumb(not_he[name]))
    assert c.kind == "fluorescence", c
    assert c.dark_fraction >= 0.4 and c.brightfield_share < 0.1
    with pytest.raises(NotBrightfieldError) as err:
        require_brightfield(not_he[name], c)
    msg = str(err.value)
    assert (
        str(not_he[name]) in msg
        and "fluorescence" in msg
        and "dark background" in msg
        and "%" in msg
    )
    assert "Fix:" in msg and "--allow-non-brightfield" in msg and "\n" not in msg
    assert isinstance(err.value, SlideFormatError)


def test_fluorescence_with_unscanned_white_areas_is_named(not_he):
    img, tissue = _thumb(not_he["dapi"])
    h, w = img.shape[:2]
    img = np.concatenate(
        [img, np.full((h, w, 3), 255, np.uint8)], axis=1
    )  # OpenSlide's transparent areas, on white
    assert classify_stain(img).kind == "fluorescence"


def test_ihc_is_named(not_he):
    c = classify_stain(*_thumb(not_he["ihc"]))
    assert c.kind == "ihc", c
    assert c.brown_fraction >= 0.2 and c.brightfield_share > 0.9
    with pytest.raises(NotBrightfieldError, match="IHC slide.*DAB brown"):
        require_brightfield(not_he["ihc"], c)


def test_result_to_json_and_input_errors():
    c = StainCheck("fluorescence", 0.9, 0.0, 0.01, None, 0)
    assert json.loads(json.dumps(c.to_json()))["kind"] == "fluorescence"
    with pytest.raises(ValueError, match="RGB uint8"):
        classify_stain(np.zeros((4, 4), np.uint8))


# -- the engine fails such a slide first, unless told not to -------------------------------------
class _ModelWork(Exception):
    pass


def test_engine_fails_a_fluorescence_slide_before_model_work(not_he, tmp_path, monkeypatch):
    # Fails on the old code: the slide went on to the passes (and ended as "no tissue").
    import torch

    from wsi_ocelot.inference.engine import EngineConfig, SlideRunner
    from wsi_ocelot.inference.slide_run import SlideRun

    torch.set_num_threads(2)
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.safetensors")

    def model_work(self):
        raise _ModelWork

    monkeypatch.setattr(SlideRun, "passes", model_work)
    out = tmp_path / "out"
    runner = SlideRunner(ckpt, EngineConfig(device="cpu", batch_size=2, workers=0, progress=False))
    with pytest.raises(NotBrightfieldError) as err:
        runner.run(not_he["dapi"], out)
    assert "fluorescence" in err.value.one_line() and str(not_he["dapi"]) in err.value.one_line()
    assert not list(out.iterdir()), "no result and no partial folder left behind"
    runner = SlideRunner(
        ckpt, EngineConfig(device="cpu", batch_size=2, workers=0, progress=False, stain_check=False)
    )
    with pytest.raises(_ModelWork):  # the opt-out goes on to the model
        runner.run(not_he["dapi"], out)


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_info_shows_the_stain(not_he):
    # Fails on the old code: `info` printed no stain classification.
    proc = run_cli("info", str(not_he["dapi"]), timeout=300)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith("stain"))
    assert "fluorescence" in line and "dark background" in line
    proc = run_cli("info", str(not_he["ihc"]), "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    stain = json.loads(proc.stdout)["stain"]
    assert (
        stain["kind"] == "ihc" and stain["brown_fraction"] >= 0.2 and "IHC" in stain["description"]
    )


@pytest.mark.slow  # whole-slide or model runs: seconds on a 2-core CPU
@pytest.mark.parametrize("domain", ["blue-grey", "dark-pink"])
def test_he_of_other_stain_protocols_stays_brightfield(domain):
    """H&E from other labs' protocols (``synthetic.layout.STAIN_DOMAINS``): an orange eosin (as with
    saffron, HES) is pale, not a DAB deposit; an over-stained purple-pink slide is H&E too."""
    from wsi_ocelot.synthetic.layout import STAIN_DOMAINS, SyntheticParams
    from wsi_ocelot.synthetic.render import render_um
    from wsi_ocelot.synthetic.slide import make_synthetic_slide

    params = dataclasses.replace(SyntheticParams(), **STAIN_DOMAINS[domain])
    for seed in (21, 22):
        model = make_synthetic_slide(mpp=0.5, size=(1024, 1024), seed=seed, params=params).model
        check = classify_stain(render_um(model, 0, 0, 1024, 1024, 0.5))
        assert check.kind == "brightfield", (domain, seed, check)
