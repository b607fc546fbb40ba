"""The commit recorded in checkpoints and benchmark results is this project's, or unknown."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

import detector.buildinfo

pytestmark = pytest.mark.unit


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def test_an_installed_copy_inside_another_repository_does_not_claim_its_commit(
    tmp_path, monkeypatch
):
    """A virtual environment in a user's project reported that project's HEAD (and dirty
    state) as synthdetect's commit, into every checkpoint and benchmark result."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    monkeypatch.delenv("SYNTHDETECT_COMMIT", raising=False)
    project = tmp_path / "project"
    installed = project / ".venv" / "lib" / "site-packages" / "detector"
    installed.mkdir(parents=True)
    shutil.copy(detector.buildinfo.__file__, installed / "buildinfo.py")
    (project / "app.py").write_text("print('hi')\n")
    _git(project, "init", "-q")
    _git(project, "add", "app.py")
    _git(project, "commit", "-qm", "theirs")
    spec = importlib.util.spec_from_file_location("copied_buildinfo", installed / "buildinfo.py")
    copied = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copied)
    assert copied.git_commit() == "unknown"
    monkeypatch.setenv("SYNTHDETECT_COMMIT", "abc1234")
    assert copied.git_commit() == "abc1234"


def test_a_checkout_of_this_project_names_its_head(monkeypatch):
    monkeypatch.delenv("SYNTHDETECT_COMMIT", raising=False)
    root = Path(detector.buildinfo.__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    head = _git(root, "rev-parse", "--short", "HEAD")
    assert detector.buildinfo.git_commit().removesuffix("-dirty") == head
