"""Where a command may write: never over one of its own inputs.

A report or an export written over the manifest it read, a model's ``model.json`` or the
memory database it exported replaced the input and exited 0 (``evaluate --out
MODEL/model.json``, ``memory export --out`` the database itself). Every command that writes a
file it was told to (``--out``) asks ``check_not_an_input`` first.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from detector.image import file_identity

__all__ = ["OutputError", "check_not_an_input", "staging_file", "staging_folder"]


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def staging_folder(out: Path) -> Path:
    """A new hidden folder beside ``out`` (its parent made if need be), on the same file
    system so that it can be renamed into place, with the permissions ``mkdir`` would give
    (``mkdtemp``'s are private to their owner). A fixed name such as ``<out>.partial`` would
    delete or reuse a folder of the user's that has it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    folder.chmod(0o777 & ~_umask())
    return folder


def staging_file(out: Path) -> tuple[int, Path]:
    """(descriptor, path) of a new hidden file beside ``out`` to write and rename into
    place, with the permissions ``open`` would give (``mkstemp``'s are private)."""
    out = Path(out)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}-", suffix=".partial", dir=out.parent)
    os.fchmod(fd, 0o666 & ~_umask())
    return fd, Path(name)
