"""Is this a brightfield H&E slide? A check of the thumbnail, made before any model work.

The model reads brightfield H&E only. A fluorescence (or dark-field) slide, or an IHC slide,
opens like any other and fails late and quietly: the tissue mask finds nothing on a black
background (bright blue DAPI counts as a blue pen mark), so the slide ends as "no tissue".
:func:`classify_stain` names such a slide from its thumbnail; the engine fails it with
:class:`~wsi_ocelot.errors.NotBrightfieldError` unless told otherwise.

The rule, on the thumbnail (about 8 µm/px) and the tissue mask computed from it:

* Pixels that are exactly white (255, 255, 255) are left out: that is where OpenSlide's
  transparent, never-scanned areas were composited on white.
* **Fluorescence / dark field.** A brightfield slide is lit from behind: where there is no
  tissue the camera sees bright glass, and tissue absorbs light in the stains' colours. A
  fluorescence slide emits light on black. So a slide is called ``fluorescence`` when at
  least :data:`DARK_FRACTION_MIN` of its pixels are dark (brightest channel below
  :data:`DARK_VALUE` of full scale) *and* less than :data:`BRIGHTFIELD_SHARE_MIN` of the
  rest (the lit pixels) look brightfield: glass (bright, unsaturated) or a stain colour
  (moderately saturated and not green-brightest: haematoxylin, eosin and DAB all absorb
  green). Fluorescence signal is grey (one channel shown in grey), green-yellow (FITC) or
  nearly pure channel colours (DAPI blue), saturated far beyond a stain. A
  brightfield slide with black scan borders stays brightfield: the lit part of it is glass
  and stained tissue.
* **IHC.** Each stain absorbs most in one colour channel, which names it without assuming
  stain vectors (they vary from lab to lab and scanner to scanner): haematoxylin and eosin
  both absorb green most (an H&E pixel is never blue-darkest), DAB brown absorbs blue most.
  A tissue pixel is DAB-brown when blue is its darkest channel and its hue is orange to
  yellow-brown (:data:`BROWN_HUE` degrees, at least :data:`BROWN_SATURATION_MIN` saturated)
  and dark enough to be a deposit (:data:`BROWN_VALUE_MAX`): red blood cells, red but not
  brown, and a pale orange eosin or saffron, orange but not dark, stay out. A brightfield slide is called ``ihc`` when at
  least :data:`BROWN_FRACTION_MIN` of its coloured tissue pixels are brown and its lit
  pixels look like a stained slide (:data:`IHC_BRIGHTFIELD_SHARE_MIN`; a random colour
  pattern does not). An IHC slide with little DAB (the negative areas of most markers) passes
  as brightfield: the check is built never to reject real H&E, not to catch every IHC slide.
  Known blind spot: an H&E slide so yellowed (old mounting medium) that a fifth of its tissue
  turns orange-brown would be called IHC; ``stain_check=False`` runs it.

Measured on thumbnails (the table in ``tests/test_stain_check.py``): CMU-1-Small-Region.svs
(Aperio H&E) 0 % dark, 99.8 % of the lit pixels brightfield-like, 0 % brown tissue; synthetic
H&E the same (100 %, 0 %), also inside 75 % black borders. Synthetic fluorescence (DAPI, grey,
3-channel composite): 50-87 % dark, 0 % of the lit pixels brightfield-like. Synthetic IHC
(DAB in place of eosin, 1-2× its strength, three seeds): 22-71 % brown tissue.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from wsi_ocelot.errors import NotBrightfieldError
from wsi_ocelot.slide.mask import tissue_mask_from_image

log = logging.getLogger(__name__)

#: The kinds :func:`classify_stain` tells apart.
KINDS = ("brightfield", "fluorescence", "ihc")

#: A pixel is dark when its brightest channel is below this fraction of full scale.
DARK_VALUE = 0.20
#: At least this fraction of the (scanned) thumbnail dark: a dark background, when the lit
#: pixels do not look brightfield.
DARK_FRACTION_MIN = 0.25
#: Below this share of the lit pixels looking like glass or stain, the light is emitted, not
#: transmitted.
BRIGHTFIELD_SHARE_MIN = 0.5
#: Glass: brightest channel at least this bright ...
GLASS_VALUE = 0.80
#: ... and saturation at most this.
GLASS_SATURATION_MAX = 0.15
#: A stain colour: saturation in this range (fluorescence channels are nearly pure colours).
STAIN_SATURATION = (0.08, 0.80)
#: A tissue pixel counts as coloured (its hue means something) from this saturation on.
COLOURED_SATURATION_MIN = 0.10
#: DAB brown: hue in this range (degrees; 0 is red, 60 yellow) ...
BROWN_HUE = (10.0, 60.0)
#: ... at least this saturated ...
BROWN_SATURATION_MIN = 0.15
#: ... and at most this bright (the brightest channel): DAB deposits absorb strongly, while an
#: orange eosin or a saffron (HES) colours stroma a pale orange (measured: synthetic DAB median
#: 0.77-0.82, an orange-eosin H&E's median 0.90, ``STAIN_DOMAINS["blue-grey"]``).
BROWN_VALUE_MAX = 0.85
#: IHC: at least this fraction of the coloured tissue pixels DAB-brown ...
BROWN_FRACTION_MIN = 0.20
#: ... on a slide whose lit pixels are at least this much glass or stain colours.
IHC_BRIGHTFIELD_SHARE_MIN = 0.90
#: The stain of the tissue is judged only on at least this many coloured tissue pixels.
MIN_TISSUE_PIXELS = 50


@dataclass(frozen=True)
class StainCheck:
    """What :func:`classify_stain` decided, and the numbers that decided it.

    ``dark_fraction`` and ``glass_fraction`` are fractions of the thumbnail's scanned pixels,
    ``brightfield_share`` of its lit (not dark) pixels that are glass or a stain colour, and
    ``brown_fraction`` of its coloured tissue pixels (``tissue_pixels`` of them) that are
    DAB-brown (None with fewer than :data:`MIN_TISSUE_PIXELS`).
    """

    kind: str
    dark_fraction: float
    glass_fraction: float
    brightfield_share: float
    brown_fraction: float | None
    tissue_pixels: int

    @property
    def is_brightfield(self) -> bool:
        """True for a brightfield H&E slide (the only kind the model reads)."""
        return self.kind == "brightfield"

    @property
    def evidence(self) -> str:
        """The measured numbers behind ``kind``, in words (one clause, no full stop)."""
        if self.kind == "fluorescence":
            return (
                f"dark background: {self.dark_fraction:.0%} of the thumbnail is darker than {DARK_VALUE:.0%} of full "
                f"scale, and only {self.brightfield_share:.0%} of the rest looks like glass or stain"
            )
        if self.kind == "ihc":
            return f"DAB brown: {self.brown_fraction:.0%} of the stained tissue is orange-brown, where H&E has next to none"
        tissue = (
            "no tissue to judge the stain by"
            if self.brown_fraction is None
            else f"{self.brown_fraction:.0%} of the stained tissue DAB-brown"
        )
        return f"{self.glass_fraction:.0%} glass, {self.dark_fraction:.0%} dark, {tissue}"

    @property
    def description(self) -> str:
        """``kind`` in words with its evidence, e.g. for ``wsi-ocelot info``."""
        name = {
            "brightfield": "brightfield",
            "fluorescence": "fluorescence or dark field",
            "ihc": "IHC (DAB)",
        }[self.kind]
        return f"{name} ({self.evidence})"

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (fractions rounded to 4 places)."""
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _hsv(img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (degrees, 0 where grey), saturation and value in [0, 1] of an RGB uint8 image."""
    rgb = img.astype(np.float32) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    delta = mx - mn
    safe = np.maximum(delta, 1e-6)
    hue = (
        np.where(
            mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)
        )
        * 60.0
    )
    return np.where(delta > 0, hue, 0.0), np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0.0), mx


def classify_stain(img: np.ndarray, tissue: np.ndarray | None = None) -> StainCheck:
    """Classify a slide's RGB thumbnail as brightfield H&E, fluorescence (or dark field) or
    IHC; the rule is in the module's docstring.

    Parameters
    ----------
    img
        The thumbnail ``(H, W, 3)`` uint8, e.g. ``Slide.thumbnail()[0]`` (about 8 µm/px).
    tissue
        Its tissue mask ``(H, W)`` bool (``TissueMask.mask``); None computes it.

    Returns
    -------
    StainCheck
        ``kind`` and the fractions that decided it.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {img.dtype} {img.shape}")
    if tissue is None:
        tissue = tissue_mask_from_image(img, 1.0).mask
    hue, sat, val = _hsv(img)
    scanned = ~(img == 255).all(axis=-1)
    dark = scanned & (val < DARK_VALUE)
    lit = scanned & ~dark
    glass = lit & (val >= GLASS_VALUE) & (sat <= GLASS_SATURATION_MAX)
    # a stain colour: moderately saturated, and not green-brightest (H, E and DAB all absorb green)
    green_brightest = img[..., 1] > np.maximum(img[..., 0], img[..., 2])
    stain = lit & (sat >= STAIN_SATURATION[0]) & (sat <= STAIN_SATURATION[1]) & ~green_brightest
    n_scanned, n_lit = int(scanned.sum()), int(lit.sum())
    dark_fraction = float(dark.sum()) / n_scanned if n_scanned else 0.0
    glass_fraction = float(glass.sum()) / n_scanned if n_scanned else 1.0
    share = float((glass | stain).sum()) / n_lit if n_lit else 0.0

    coloured = scanned & np.asarray(tissue, bool) & (sat >= COLOURED_SATURATION_MIN)
    n_tissue = int(coloured.sum())
    brown_fraction = None
    if n_tissue >= MIN_TISSUE_PIXELS:
        h, s, v = (
            hue[coloured],
            sat[coloured],
            val[coloured],
        )  # hue 10-60°: R ≥ G > B, blue absorbed most, and not plain red
        brown_fraction = float(
            (
                (h >= BROWN_HUE[0])
                & (h < BROWN_HUE[1])
                & (s >= BROWN_SATURATION_MIN)
                & (v <= BROWN_VALUE_MAX)
            ).mean()
        )

    if n_scanned and dark_fraction >= DARK_FRACTION_MIN and share < BRIGHTFIELD_SHARE_MIN:
        kind = "fluorescence"
    elif (
        brown_fraction is not None
        and brown_fraction >= BROWN_FRACTION_MIN
        and share >= IHC_BRIGHTFIELD_SHARE_MIN
    ):
        kind = "ihc"
    else:
        kind = "brightfield"
    result = StainCheck(kind, dark_fraction, glass_fraction, share, brown_fraction, n_tissue)
    log.debug("stain check: %s", result.description)
    return result


def require_brightfield(path: str | os.PathLike[str], check: StainCheck) -> None:
    """Raise :class:`~wsi_ocelot.errors.NotBrightfieldError` (one line: the slide, what it
    looks like and why, the fix) unless ``check`` says brightfield."""
    if check.is_brightfield:
        return
    what = {"fluorescence": "a fluorescence (or dark-field) slide", "ihc": "an IHC slide"}.get(
        check.kind, f"a {check.kind} slide"
    )
    raise NotBrightfieldError(
        path,
        f"this looks like {what}, not brightfield H&E ({check.evidence}); the model reads brightfield H&E only",
        "run brightfield H&E slides; pass --allow-non-brightfield (EngineConfig(stain_check=False)) to run it anyway",
    )
