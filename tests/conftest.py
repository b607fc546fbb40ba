from __future__ import annotations

import pytest

from training import provenance as P

_KNOWN = {"unit", "integration", "slow", "gpu"}


def pytest_collection_modifyitems(config, items):
    """Every test declares unit or integration; gpu tests skip without a CUDA device."""
    cuda = None
    for item in items:
        marks = {m.name for m in item.iter_markers()} & _KNOWN
        if not marks & {"unit", "integration"}:
            raise pytest.UsageError(f"{item.nodeid}: mark the test unit or integration")
        if "gpu" in marks:
            if cuda is None:
                cuda = _cuda_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device; none here"))


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


@pytest.fixture(scope="session")
def scene():
    """Procedural RGB content, 320x320 (fixture pixels only)."""
    return P.synthetic_scene(7, 320, 320)


@pytest.fixture(scope="session")
def signing_chain() -> P.SigningChain:
    return P.make_signing_chain()
