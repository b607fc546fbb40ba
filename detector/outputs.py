"""Where a command may write: never over one of its own inputs.

A report or an export written over the manifest it read, a model's ``model.json`` or the
memory database it exported replaced the input and exited 0 (``evaluate --out
MODEL/model.json``, ``memory export --out`` the database itself). Every command that writes a
file it was told to (``--out``) asks ``check_not_an_input`` first.
"""

from __future__ import annotations

import os
from pathlib import Path

from detector.image import file_identity

__all__ = ["OutputError", "check_not_an_input"]


class OutputError(ValueError):
    """``--out`` names a file the command reads (the message says which)."""


def check_not_an_input(out: str | os.PathLike[str] | None, *inputs: object) -> None:
    """Refuse ``out`` when it is one of ``inputs`` (files), or a file directly inside one of
    them (folders: a model's ``model.json``, a corpus's ``manifest.csv``), by any name (a
    symlink, ``a/../b``). Inputs that are None or not paths are skipped."""
    if out is None or str(out) == "-":
        return
    target = file_identity(out)
    if target is None:  # not there yet: nothing to replace
        return
    for given in inputs:
        if not isinstance(given, str | os.PathLike):
            continue
        path = Path(given)
        try:
            files = [c for c in path.iterdir() if c.is_file()] if path.is_dir() else [path]
        except OSError:
            continue
        for file in files:
            if file_identity(file) == target:
                raise OutputError(
                    f"--out {out} is {file}, an input of this command: write the output "
                    "somewhere else"
                )
