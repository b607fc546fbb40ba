"""argparse value types shared by every ``synthdetect`` command: a bad value is a usage error
(message and exit 2) before any work starts."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

__all__ = [
    "batch_size",
    "batch_sizes",
    "floats",
    "fraction",
    "output_file",
    "output_folder",
    "port",
    "positive_float",
    "positive_int",
    "positive_ints",
]


def output_file(text: str) -> Path:
    """A file the command writes at the end: not a directory (found before the work)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file path")
    return path


def output_folder(text: str) -> Path:
    """A folder the command creates or fills at the end: not an existing file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    return path


def _number(text: str, cast: type, what: str) -> Any:
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def positive_int(text: str) -> int:
    value = _number(text, int, "an integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return value


MAX_BATCH = 4096  # tiles per engine call: 1.8 GB of 192 px float32 tiles, past any GPU's sweet spot


def batch_size(text: str) -> int:
    """Tiles per engine call: 1 to ``MAX_BATCH`` (a server warms up on a full batch)."""
    value = positive_int(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"at most {MAX_BATCH} tiles per batch, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text}")
    return value


def fraction(text: str) -> float:
    """A share from 0 to 1 (a tolerance: 0 allows no change)."""
    value = _number(text, float, "a number")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be within 0..1: {text}")
    return value


def positive_ints(text: str) -> list[int]:
    """Comma-separated positive integers (batch sizes, concurrency levels)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("values must be positive integers")
    return values


def batch_sizes(text: str) -> list[int]:
    """Comma-separated batch sizes, each 1 to ``MAX_BATCH`` (100,000 asked for 82 GiB)."""
    values = positive_ints(text)
    if max(values) > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"at most {MAX_BATCH} per batch, got {max(values)}")
    return values


def floats(text: str) -> list[float]:
    """Comma-separated finite numbers (weights, C values)."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"numbers separated by commas, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"finite numbers separated by commas, got {text!r}")
    return values


def port(text: str) -> int:
    """A TCP port to listen on: 1-65535, or 0 for one the system picks."""
    value = _number(text, int, "a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, got {value}")
    return value
