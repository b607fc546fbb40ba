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
    """The section's code blocks in ``lang``; a test that loops over none would prove nothing."""
    found = re.findall(rf"```{lang}\n(.*?)```", text, re.S)
    assert found, f"no {lang} code block in this README section"
    return found


def test_exactly_two_setup_commands():
    blocks = _blocks(_section("Set up"), "sh")
    assert len(blocks) == 1
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["make run", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_sample_output_shown_in_readme_matches_the_samples():
    shown = _blocks(_section("Score images from the command line"), "text")[0].splitlines()[1:]
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


@pytest.mark.parametrize(
    "section",
    ["Score images from the command line", "Serve", "Train, evaluate, export", "Benchmarks"],
)
@pytest.mark.slow
def test_documented_commands_and_flags_exist(section):
    for block in _blocks(_section(section), "sh"):
        for line in block.splitlines():
            cmd = line.split("#")[0].split()
            assert cmd[0] == "synthdetect"
            words = [w for w in cmd[1:] if not w.startswith(("-", "[")) and "=" not in w]
            sub = [w for w in words[:2] if w.replace("-", "").isalpha() and w.islower()]
            helptext = subprocess.run(
                [sys.executable, "-m", "detector.cli", *sub[:2], "--help"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if helptext.returncode != 0:  # a positional argument, not a second subcommand
                helptext = subprocess.run(
                    [sys.executable, "-m", "detector.cli", sub[0], "--help"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                )
            for flag in [w.strip("[]").split("=")[0] for w in cmd if w.lstrip("[").startswith("-")]:
                assert flag in helptext.stdout, f"{flag} of `{line.strip()}` is not an option"


def test_python_example_runs(tmp_path):
    code = _blocks(_section("Score images from the command line"), "python")[0]
    shutil.copy(SAMPLES / "sd-webui-parameters.png", tmp_path / "x.png")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("generated 0.99")


def test_serve_and_make_run_agree():
    makefile = (ROOT / "Makefile").read_text()
    run_recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    assert "synthdetect serve" in run_recipe
    assert "127.0.0.1:8000" in _section("Set up")


def test_methods_table_lists_every_registered_method():
    from detector.methods import METHODS

    table = _section("Methods and fusion")
    for name in METHODS.names():
        assert f"| `{name}` |" in table


def test_backbone_list_names_every_registered_model():
    from detector.models import MODELS

    section = _section("Train, evaluate, export")
    missing = [name for name in MODELS.names() if f"`{name}`" not in section]
    assert not missing, f"README's backbone list lacks {missing}"
