"""One manifest over several corpora: ``synthdetect corpus merge A B ... --out DIR``.

A training run reads one manifest, and its checkpoint records that manifest's sha256, so a mix
of corpora (the offline corpus of the project's own generators and the corpus of pinned public
sources, say) is itself described by one file. Rows keep every column of their corpus; paths are
rewritten relative to the new manifest. The images stay where they are.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

from training.corpus import MANIFEST_FIELDS
from training.datasets import file_key

__all__ = ["merge_manifests"]


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    manifest = path / "manifest.csv" if path.is_dir() else path
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:  # a spreadsheet's BOM
            reader = csv.DictReader(fh)
            rows = list(reader)
            for n, r in enumerate(rows, 2):  # line numbers as an editor shows them (1: header)
                if None in r or None in r.values():  # DictReader's marks of a ragged row
                    more = "more" if None in r else "fewer"
                    raise ValueError(f"{manifest} row {n}: {more} fields than the header")
            return list(reader.fieldnames or []), [
                {
                    **r,
                    "path": str(manifest.parent / r["path"]),
                    # the aligned fake's real twin, a path like ``path``
                    **({"pair": str(manifest.parent / r["pair"])} if r.get("pair") else {}),
                }
                for r in rows
            ]
    except (OSError, UnicodeDecodeError, csv.Error, KeyError) as exc:
        raise ValueError(f"{manifest}: cannot read the manifest ({exc})") from None


def merge_manifests(inputs: list[Path], out: Path, exclude_pools: tuple[str, ...] = ()) -> dict:
    """Write ``out/manifest.csv`` (and ``merge.json``) from ``inputs``; returns merge.json's dict.

    Refuses a source id that appears in two inputs (the same source could land on both sides of
    a split), a source file (``repo`` and ``src_path``) that two inputs both cut images from
    (their builders name sources differently, and split them independently), an image listed
    twice, and a merge that keeps no rows.
    """
    if len(inputs) < 2:
        raise ValueError("merge needs at least two corpora")
    out = Path(out)
    if (out / "manifest.csv").exists():
        raise ValueError(f"{out / 'manifest.csv'} exists; choose a new --out directory")
    fields = list(MANIFEST_FIELDS)
    merged: list[dict[str, str]] = []
    owner: dict[str, Path] = {}
    file_owner: dict[tuple[str, str], tuple[Path, str]] = {}
    info = {"schema": 1, "inputs": []}
    for path in inputs:
        columns, rows = _rows(Path(path))
        missing = {"path", "label", "split", "source_id"} - set(columns)
        if missing:
            raise ValueError(f"{path}: manifest lacks columns {sorted(missing)}")
        fields += [c for c in columns if c not in fields]
        kept = [r for r in rows if r.get("pool", "") not in exclude_pools]
        for r in kept:
            first = owner.setdefault(r["source_id"], Path(path))
            if first != Path(path):
                raise ValueError(f"source {r['source_id']!r} is in both {first} and {path}")
            if r.get("repo") and r.get("src_path"):
                file = (r["repo"], r["src_path"])
                where = file_owner.setdefault(file, (Path(path), r["source_id"]))
                if where[0] != Path(path):
                    raise ValueError(
                        f"{file[0]}:{file[1]} is a source of both {where[0]} (source "
                        f"{where[1]!r}) and {path} (source {r['source_id']!r}): crops of one "
                        "image could land on two splits; build one of them without it (corpus "
                        "build --no-wild leaves the wild-train images out) or leave its pool out "
                        f"(--exclude-pools {r.get('pool') or 'POOL'})"
                    )
        manifest = Path(path) / "manifest.csv" if Path(path).is_dir() else Path(path)
        info["inputs"].append(
            {
                "manifest": str(manifest),
                "sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
                "rows": len(rows),
                "kept": len(kept),
            }
        )
        merged += kept
    if not merged:
        excluded = f" (--exclude-pools {','.join(exclude_pools)})" if exclude_pools else ""
        raise ValueError(f"no rows left to merge{excluded}")
    seen: dict[object, int] = {}
    for i, r in enumerate(merged):  # the same file by any spelling (a/../b, absolute)
        first = seen.setdefault(file_key(r["path"]), i)
        if first != i:
            raise ValueError(
                f"an image is listed twice across the inputs: {merged[first]['path']} "
                f"({merged[first]['label']}) and {r['path']} ({r['label']})"
            )
    # corpus sources keeps each repository on one side of the split (its groups share
    # photographers, prompts and post-processing); corpora built apart (--families) do not
    splits_of: dict[str, set[str]] = {}
    for r in merged:
        if r.get("repo"):
            splits_of.setdefault(r["repo"], set()).add(r["split"])
    spread = sorted(repo for repo, splits in splits_of.items() if len(splits) > 1)
    if spread:
        raise ValueError(
            f"repository {spread[0]} is on splits {sorted(splits_of[spread[0]])} across the "
            f"inputs ({len(spread)} such): its images would train and validate the same "
            "source; build those rows in one corpus sources run"
        )
    out.mkdir(parents=True, exist_ok=True)
    # between resolved paths: out reached through a symlink has another ".." than its
    # spelling (the manifest's paths then named nothing)
    home = out.resolve()
    for r in merged:
        r["path"] = Path(os.path.relpath(Path(r["path"]).resolve(), home)).as_posix()
        if r.get("pair"):
            r["pair"] = Path(os.path.relpath(Path(r["pair"]).resolve(), home)).as_posix()
    # Written whole, then moved into place: a failure never leaves a manifest a run would trust.
    partial = out / "manifest.csv.partial"
    try:
        with open(partial, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(merged)
        info["excluded_pools"] = list(exclude_pools)
        info["rows"] = len(merged)
        info["manifest_sha256"] = hashlib.sha256(partial.read_bytes()).hexdigest()
        (out / "merge.json").write_text(json.dumps(info, indent=2) + "\n")
        os.replace(partial, out / "manifest.csv")
    finally:
        partial.unlink(missing_ok=True)
    return info
