from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from training.corpus import SIZES, WILD_DEFAULT, build_corpus


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The tiny corpus, built once per test session (Debian photos cached in the user cache)."""
    if shutil.which("apt-get") is None:
        pytest.skip("building the corpus needs apt-get (Debian-based system) for its real photos")
    out = tmp_path_factory.mktemp("corpus") / "tiny"
    build_corpus(out, SIZES["tiny"], wild_dir=WILD_DEFAULT, log=lambda m: None)
    return out
