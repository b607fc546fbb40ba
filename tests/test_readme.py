"""The README's promises: two set-up commands, and examples that really run as shown."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SAMPLES = ROOT / "detector" / "assets" / "samples"


def _section(title: str) -> str:
    match = re.search(rf"^## {title}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_exactly_two_setup_commands():
    blocks = _blocks(_section("Set up"), "sh")
    assert len(blocks) == 1
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_make_run_output_shown_in_readme_matches_the_samples():
    shown = _blocks(_section("Set up"), "text")[0].splitlines()[1:]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "detector.cli",
            "score",
            "--json",
            *sorted(map(str, SAMPLES.iterdir())),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    actual = {Path(r["path"]).name: r["verdict"] for r in json.loads(out.stdout)}
    assert len(shown) == len(actual) == 6
    for line in shown:
        name, label, prob = line.split()[:3]
        assert actual[name]["label"] == label
        assert (prob == "-") == (actual[name]["probability"] is None)
        if prob != "-":
            assert abs(actual[name]["probability"] - float(prob)) < 1e-3
        summary = line.split(maxsplit=3)[3].removesuffix("...").strip()
        assert actual[name]["summary"].startswith(summary)


def test_usage_flags_exist():
    block = _blocks(_section("Use"), "sh")[0]
    for line in block.splitlines():
        cmd = line.split("#")[0].split()
        assert cmd[0] == "synthdetect"
        helptext = subprocess.run(
            [sys.executable, "-m", "detector.cli", cmd[1], "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        for flag in [w for w in cmd if w.startswith("-")]:
            assert flag in helptext, f"{flag} of `{line.strip()}` is not an option of {cmd[1]}"


def test_python_example_runs(tmp_path):
    code = _blocks(_section("Use"), "python")[0]
    shutil.copy(SAMPLES / "sd-webui-parameters.png", tmp_path / "x.png")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("generated 0.99")


def test_methods_table_lists_every_registered_method():
    from detector.methods import METHODS

    table = _section("Methods")
    for name in METHODS.names():
        assert f"| `{name}` |" in table
