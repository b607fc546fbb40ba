"""The source revision a result or a checkpoint was made from."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

__all__ = ["git_commit"]


def _git(*args: str) -> subprocess.CompletedProcess:
    here = Path(__file__).resolve().parent
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=here, timeout=5)


def git_commit() -> str:
    """Short commit hash of the source tree (``-dirty`` when tracked files changed), or
    ``unknown`` outside a git checkout of this project (an installed copy inside some other
    repository, a virtual environment in a user's project, is not that project's commit).
    ``SYNTHDETECT_COMMIT`` names it for a tree copied without its ``.git`` (a container, a
    remote GPU machine)."""
    if os.environ.get("SYNTHDETECT_COMMIT"):
        return os.environ["SYNTHDETECT_COMMIT"]
    try:
        top = _git("rev-parse", "--show-toplevel")
        source_root = Path(__file__).resolve().parents[1]
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != source_root:
            return "unknown"
        head = _git("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
