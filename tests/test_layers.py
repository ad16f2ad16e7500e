"""The layers of docs/architecture.md hold (import-linter's contracts in pyproject.toml), and
the check fails when a forbidden import is planted; no import cycle anywhere in the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("importlinter")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    sibling = Path(sys.executable).with_name(
        "lint-imports"
    )  # the one installed with this Python's packages
    exe = str(sibling) if sibling.is_file() else shutil.which("lint-imports") or "lint-imports"
    return subprocess.run(
        [exe, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_layer_contracts_hold():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize(
    "module, planted",
    [
        ("wsi_ocelot/slide/mask.py", "import wsi_ocelot.inference.engine  # planted"),
        ("wsi_ocelot/model/branches.py", "from wsi_ocelot.outputs import geojson  # planted"),
        ("wsi_ocelot/purity/purity.py", "import training.train  # planted"),
        # the import synthetic/__main__.py once had: synthetic data sits below the CLI
        ("wsi_ocelot/synthetic/__main__.py", "from wsi_ocelot.cli import main  # planted"),
        ("wsi_ocelot/metrics/matching.py", "from wsi_ocelot.inference import peaks  # planted"),
        ("wsi_ocelot/config.py", "import wsi_ocelot.weights  # planted"),
        ("training/losses.py", "from wsi_ocelot.cohort import run_cohort  # planted"),
    ],
)
def test_a_planted_forbidden_import_breaks_the_contract(tmp_path, module, planted):
    for name in ("wsi_ocelot", "training"):
        shutil.copytree(
            ROOT / name,
            tmp_path / name,
            ignore=shutil.ignore_patterns("*.safetensors", "__pycache__"),
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / module
    target.write_text(target.read_text() + "\n" + planted + "\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0 and "BROKEN" in proc.stdout, proc.stdout[-3000:]


def _cycles(package: str) -> list[list[str]]:
    """The package's import cycles (modules that reach each other), imports inside functions
    and under TYPE_CHECKING included: the layers contract cannot see a cycle inside a layer."""
    import grimp  # import-linter's graph builder

    g = grimp.build_graph(package, exclude_type_checking_imports=False)
    found: list[list[str]] = []
    for a in sorted(g.modules):
        for b in sorted(g.find_modules_directly_imported_by(a)):
            if a < b and g.chain_exists(importer=b, imported=a):
                found.append(list(g.find_shortest_chain(importer=b, imported=a) or ()) + [b])
    return found


def test_no_import_cycle_in_the_package():
    assert _cycles("wsi_ocelot") == []


def test_a_planted_type_only_cycle_is_found(tmp_path, monkeypatch):
    pkg = tmp_path / "cyclepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyclepkg import b\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cyclepkg import a\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycles("cyclepkg") == [["cyclepkg.b", "cyclepkg.a", "cyclepkg.b"]]


def test_every_module_of_the_package_has_a_layer():
    """Each subpackage and top-level module of wsi_ocelot is named in the layers contract (a new
    one must be given its place), and every name there exists or is marked optional."""
    import re
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (layers,) = [
        c["layers"] for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers"
    ]
    named = {}
    for layer in layers:
        for part in re.split(r"[|:]", layer):
            part = part.strip()
            optional = part.startswith("(")
            named[part.strip("()").removeprefix("wsi_ocelot.")] = optional
    pkg = ROOT / "wsi_ocelot"
    present = {p.name for p in pkg.iterdir() if (p / "__init__.py").is_file()} | {
        p.stem for p in pkg.glob("*.py") if p.stem not in ("__init__", "__main__")
    }
    assert not present - set(named), f"not in the layers contract: {sorted(present - set(named))}"
    assert not {m for m, opt in named.items() if not opt} - present


def test_code_cites_only_files_in_the_repository():
    import re

    cited = {}
    for path in (
        list((ROOT / "wsi_ocelot").rglob("*.py"))
        + list((ROOT / "training").rglob("*.py"))
        + list((ROOT / "benchmarks").rglob("*.py"))
    ):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b", text):
            if text[m.start() - 1 : m.start()] == '"' == text[m.end() : m.end() + 1]:
                continue  # a whole string literal: a file the code writes (model_card.md), not a citation
            cited.setdefault(m.group(1), path)
    missing = {
        ref: str(p.relative_to(ROOT))
        for ref, p in cited.items()
        if not any(
            (base / ref).is_file() for base in (ROOT, p.parent, ROOT / "benchmarks" / "results")
        )
    }
    assert not missing, missing
    assert "docs/architecture.md" in cited and "docs/formats.md" in cited


def test_architecture_names_each_concepts_module():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for module in (
        "slide/_slide.py",
        "tiling/dataset.py",
        "inference/tissue_map.py",
        "inference/borders.py",
        "inference/background.py",
        "inference/engine.py",
        "purity/",
        "atomic.py",
        "model/precision.py",
        "inference/run_metadata.py",
        "outputs/cells_table.py",
        "inference/slide_run.py",
        "inference/sinks.py",
        "inference/run_setup.py",
        "cells.py",
        "constants.py",
        "model/device.py",
        "inference/predictor.py",
        "cohort/outcome.py",
        "synthetic/command.py",
    ):
        assert module in text, module
        assert (ROOT / "wsi_ocelot" / module).exists(), module
