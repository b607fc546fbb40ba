"""House style is enforced by the suite: ruff lint and format must pass."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]])
def test_ruff(args):
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    out = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# Standard-library names that are newer than the oldest Python pyproject.toml admits (3.10):
# ruff's target version does not flag them, and an import of one breaks the whole CLI there.
_NEWER_THAN_310 = {
    ("datetime", "UTC"),
    ("typing", "Self"),
    ("typing", "LiteralString"),
    ("typing", "Never"),
    ("typing", "assert_never"),
    ("typing", "reveal_type"),
    ("enum", "StrEnum"),
    ("asyncio", "TaskGroup"),
    ("asyncio", "timeout"),
    ("hashlib", "file_digest"),
    ("itertools", "batched"),
}
_MODULES_NEWER_THAN_310 = {"tomllib", "wsgiref.types"}


def test_sources_run_on_the_oldest_python_admitted():
    import ast
    import re

    oldest = re.search(r'requires-python = ">=3\.(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert oldest and int(oldest.group(1)) == 10, "update this test's lists with requires-python"
    files = [
        p
        for top in ("detector", "training", "serving", "benchmarks", "scripts", "tests")
        for p in (ROOT / top).rglob("*.py")
    ]
    found = []
    for path in files:
        tree = ast.parse(path.read_text(), feature_version=(3, 10))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {(node.module, a.name) for a in node.names}
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {m}.{n}"
                    for m, n in names & _NEWER_THAN_310
                ]
                if node.module in _MODULES_NEWER_THAN_310:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.module}")
            elif isinstance(node, ast.Import):
                found += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name in _MODULES_NEWER_THAN_310
                ]
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and (node.value.id, node.attr) in _NEWER_THAN_310
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not found, "newer than Python 3.10 (pyproject admits 3.10):\n" + "\n".join(found)
