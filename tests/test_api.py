"""The public Python API: ``import wsi_ocelot`` gives the names README's "From Python" lists,
and README's example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import wsi_ocelot

ROOT = Path(__file__).resolve().parents[1]


def test_api_names_resolve_and_help_lists_them():
    import pydoc

    text = pydoc.render_doc(wsi_ocelot)
    for name in (
        "open_slide",
        "EngineConfig",
        "SlideRunner",
        "run_slide",
        "load_model",
        "run_cohort",
        "collect_jobs",
        "CohortConfig",
        "evaluate",
        "read_cells",
    ):
        assert callable(getattr(wsi_ocelot, name)), name
        assert name in text and name in wsi_ocelot.__all__
        assert getattr(wsi_ocelot, name).__doc__
    assert (
        wsi_ocelot.evaluate is __import__("wsi_ocelot.evaluation", fromlist=["x"]).evaluate_dataset
    )


def test_import_is_light():
    code = "import sys, wsi_ocelot; assert 'torch' not in sys.modules, 'torch imported by import wsi_ocelot'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.slow  # runs the CLI or Python in a subprocess
def test_readme_from_python_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## From Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"\d+ cells, purity 0\.\d{3}, tissue \d+\.\d{3} mm²", proc.stdout), proc.stdout
    assert "Tumor" in proc.stdout and "Background cell" in proc.stdout
    assert (tmp_path / "results" / "example" / "purity.json").is_file()


# -- README and docs/ as documents -----------------------------------------------------------
DOCS = [ROOT / "README.md", ROOT / "training" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(
        r"[`*\[\]()]|<[^>]*>",
        lambda m: m.group(0)[1:-1] if m.group(0).startswith("<") else "",
        heading,
    )
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_docs_links_resolve():
    """Every relative link and image in README.md, training/README.md and docs/*.md names a file that
    exists, and every #anchor a heading of that file; so do the result files cited in backticks."""
    problems = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists():
                problems.append(f"{doc.relative_to(ROOT)}: {target}: no such file")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                problems.append(f"{doc.relative_to(ROOT)}: {target}: no such heading")
        for ref in re.findall(r"`((?:[\w.-]+/)+[\w.-]+\.(?:md|png|json|yaml))`", text):
            if "<" in ref or "*" in ref or ref.split("/")[0].isupper():  # placeholders
                continue
            if not any(
                (base / ref).exists()
                for base in (ROOT, doc.parent, ROOT / "benchmarks" / "results")
            ):
                problems.append(f"{doc.relative_to(ROOT)}: `{ref}`: no such file")
    assert not problems, "\n".join(problems)


def test_readme_is_the_manual():
    """README stays a short manual (figures and reference live in docs/), keeps the two set-up
    commands (a new user's install, and the test command .ci/run runs), and says what issue #21
    asks of it: what --runtime auto picks, how to force fp32, the speed headline with its CPU, and
    the fidelity claim."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert "pip install -e . && wsi-ocelot demo" in readme
    test_command = 'pip install -e ".[dev]" && python -m pytest -m "not slow"'
    assert test_command in readme
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    runtimes = " ".join(readme.split("## Runtimes", 1)[1].split("\n## ", 1)[0].split())
    assert "--runtime auto" in runtimes and "--runtime torch --precision fp32" in runtimes
    from wsi_ocelot.inference.runtimes.spec import FIDELITY

    # what auto picks and why (the margins it asks of the gate), and the speed table's headline
    f1 = FIDELITY["cells_f1_auto"]
    assert f"fastest path whose cells agree with fp32 torch's (F1 ≥ {f1}" in runtimes
    assert f"tumour share within {FIDELITY['purity_auto']}" in runtimes
    assert "AMD EPYC" in runtimes and re.search(r"\*\*\d+\.\d×\*\* \(target 4×\)", runtimes)
    assert "**Fidelity:**" in runtimes
    for heading in (
        "## From Python",
        "## Outputs and viewers",
        "## Cohorts",
        "## Teach it your slides",
    ):
        assert readme.count(heading) == 1, heading
    assert readme.count("Import objects from file") == 1  # QuPath import described once
