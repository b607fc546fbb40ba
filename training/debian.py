"""Fetching files from Debian packages into the user's cache, without root.

``apt-get download`` fetches a .deb into the cache; ``dpkg-deb -x`` unpacks it there. Nothing is
installed system-wide. If the machine's package lists are missing, a private list directory in
the cache is updated instead. Files chosen from a package are checked against pinned sha256
values by the caller, so a package update cannot silently change the data.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["DebianError", "cache_dir", "extract_package", "preload_libraries", "sha256_file"]


class DebianError(RuntimeError):
    """A package could not be fetched or unpacked (the message says how to proceed)."""


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The synthdetect cache: ``--cache-dir``, ``$SYNTHDETECT_CACHE``, or ``~/.cache/synthdetect``."""
    if override:
        path = Path(override)
    elif os.environ.get("SYNTHDETECT_CACHE"):
        path = Path(os.environ["SYNTHDETECT_CACHE"])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        path = base / "synthdetect"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_package(package: str, cache: Path, keep: list[str] | None = None) -> Path:
    """Download and unpack ``package`` under ``cache/debian/<package>``; return that root.

    With ``keep`` (paths inside the package), everything else is deleted after unpacking and
    the .deb removed, so the cache holds only the files the corpus uses.
    """
    root = cache / "debian" / package
    marker = root / ".extracted"
    want = "\n".join(sorted(keep)) if keep else "*"
    if marker.exists():
        have = marker.read_text()
        if have == "*" or all(k in have.splitlines() for k in keep or []):
            return root
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DebianError(
                f"{tool} not found: fetching Debian package {package!r} needs a Debian-based "
                "system (or pass your own photos with --real-dir)"
            )
    debs = cache / "debian" / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    deb = _download(package, debs, cache)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"unpack {deb.name}")
    if keep:
        kept = {tmp / k for k in keep}
        for path in sorted(tmp.rglob("*"), reverse=True):
            if path.is_file() or path.is_symlink():
                if path not in kept:
                    path.unlink()
            elif not any(path.iterdir()):
                path.rmdir()
        deb.unlink()
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    marker.write_text(want)
    return root


def _download(package: str, debs: Path, cache: Path) -> Path:
    existing = sorted(debs.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    first = subprocess.run(
        ["apt-get", "download", package], cwd=debs, capture_output=True, text=True
    )
    if first.returncode != 0:
        # No package lists on this machine: update a private copy in the cache and retry.
        lists = cache / "debian" / "lists"
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        opts = [f"-oDir::State::Lists={lists}", f"-oDir::Cache={cache / 'debian' / 'apt-cache'}"]
        (cache / "debian" / "apt-cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        _run(["apt-get", *opts, "update"], "update private apt lists")
        _run(["apt-get", *opts, "download", package], f"download {package}", cwd=debs)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        raise DebianError(f"apt-get download {package} produced no .deb in {debs}")
    return found[-1]


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise DebianError(f"could not {what}: {' | '.join(tail) or 'exit ' + str(out.returncode)}")


def preload_libraries(libs: dict[str, str], cache: Path) -> None:
    """Make shared libraries importable without installing them system-wide.

    ``libs`` maps a soname (``libvulkan.so.1``) to the Debian package that ships it. A library
    the system already has is used as is; otherwise the package is unpacked into the cache and
    the library loaded with RTLD_GLOBAL, which satisfies later extension modules that need it.
    """
    for soname, package in libs.items():
        try:
            ctypes.CDLL(soname, mode=ctypes.RTLD_GLOBAL)
            continue
        except OSError:
            pass
        root = extract_package(package, cache)
        candidates = sorted(root.rglob(soname))
        if not candidates:
            raise DebianError(f"{package} does not contain {soname}")
        ctypes.CDLL(str(candidates[0]), mode=ctypes.RTLD_GLOBAL)
