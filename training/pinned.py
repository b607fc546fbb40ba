"""Files pinned in public git repositories: read by ``commit:path``, checked by blob id.

A pinned file is named by repository (``owner/name``), commit, path and git blob id. It is taken
from a local git mirror of the repository (``MIRROR/<owner>+<name>``, bare or with a work tree)
or, where no mirror is given, from a clone of the pinned commits that ``git`` fetches into the
cache (so a researcher anywhere rebuilds the same bytes). Whatever the origin, the object at
``commit:path`` must be the pinned blob, and the bytes read must hash to it: a rewritten
history, a moved file or a corrupt mirror is an error that names the row, never other data.

The sources list (``sources.csv``) pins images with their label, generator family and source
group; the weights list (``weights.csv``) pins generator weights the same way.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

__all__ = [
    "GITHUB",
    "PinnedError",
    "PinnedFile",
    "SourceRow",
    "Store",
    "git_blob_id",
    "read_sources",
    "read_weights",
]

GITHUB = "https://github.com/"
_SHA = re.compile(r"^[0-9a-f]{40}$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# family and source_group name files and folders of the corpus: no separators, no "..", no
# leading dot (``../../x`` wrote outside --out)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class PinnedError(RuntimeError):
    """A pinned file cannot be had as pinned (the message names the file and the reason)."""


@dataclass(frozen=True)
class PinnedFile:
    repo: str  # owner/name
    commit: str
    path: str
    blob_sha: str

    @property
    def where(self) -> str:
        return f"{self.repo}@{self.commit[:10]}:{self.path}"


@dataclass(frozen=True)
class SourceRow(PinnedFile):
    """One row of a sources list: a pinned image and what is known of it."""

    label: str = ""  # real | fake
    generator: str = ""  # free text, as the source states it
    family: str = ""  # coarse generator family (``camera`` for reals)
    source_group: str = ""  # the unit that must never be on two sides of a split
    licence: str = ""
    notes: str = ""
    line: int = 0  # line in the CSV (1: header), for messages

    @property
    def is_fake(self) -> bool:
        return self.label == "fake"


_SOURCE_COLUMNS = ("repo", "commit", "path", "blob_sha", "label", "family", "source_group")


def git_blob_id(data: bytes) -> str:
    """The id git gives ``data`` as a blob (what ``git hash-object`` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _breaks(row: dict) -> int:
    return sum(v.count("\n") for v in row.values() if isinstance(v, str))


def _read_csv(path: Path, required: Iterable[str]) -> list[tuple[int, dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            # the line a row starts on, as an editor shows it (a count of rows is off after a
            # blank line or a field over several lines): where it ends, less its fields' breaks
            rows = [(reader.line_num - _breaks(row), row) for row in reader]
            columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PinnedError(f"{path}: cannot read the list ({exc})") from None
    for n, row in rows:  # an unquoted comma shifted the notes (a grid's tile size was lost)
        if None in row or None in row.values():
            more = "more" if None in row else "fewer"
            raise PinnedError(
                f"{path} line {n}: {more} fields than the header's {len(columns)} (quote a "
                "value that holds a comma)"
            )
    missing = [c for c in required if c not in columns]
    if missing:
        raise PinnedError(f"{path}: missing columns {missing} (has {columns})")
    if not rows:
        raise PinnedError(f"{path}: no rows")
    return rows


def _check_pin(path: Path, n: int, row: dict[str, str]) -> None:
    where = f"{path} line {n}"
    if not _REPO.match(row["repo"] or ""):
        raise PinnedError(f"{where}: repo {row['repo']!r} is not owner/name")
    for key in ("commit", "blob_sha"):
        if not _SHA.match((row[key] or "").lower()):
            raise PinnedError(f"{where}: {key} {row[key]!r} is not a 40-digit git object id")
    parts = (row["path"] or "").split("/")
    if not row["path"] or row["path"].startswith("/") or {"..", ".", ""} & set(parts):
        raise PinnedError(f"{where}: path {row['path']!r} is not a path inside the repository")
    if any(ord(c) < 32 or ord(c) == 127 for c in row["path"]):  # git cat-file reads lines
        raise PinnedError(f"{where}: path {row['path']!r} holds a control character")


def read_sources(path: str | os.PathLike[str]) -> list[SourceRow]:
    """Rows of a sources list, checked: ids, labels, no blob listed twice."""
    path = Path(path)
    rows, seen = [], {}
    own = {f.name for f in fields(SourceRow)}
    for n, raw in _read_csv(path, _SOURCE_COLUMNS):
        _check_pin(path, n, raw)
        label = (raw["label"] or "").strip().lower()
        if label not in ("real", "fake"):
            raise PinnedError(f"{path} line {n}: label {raw['label']!r} is not real or fake")
        if not raw["source_group"] or not raw["family"]:
            raise PinnedError(f"{path} line {n}: every row needs a family and a source_group")
        for key in ("family", "source_group"):
            if not _NAME.match(raw[key].strip()):
                raise PinnedError(
                    f"{path} line {n}: {key} {raw[key]!r} is not a plain name (letters, digits, "
                    "'.', '_', '+', '-'; it names the corpus's files)"
                )
        values = {k: (v or "").strip() for k, v in raw.items() if k in own}
        values.update(label=label, commit=raw["commit"].lower(), blob_sha=raw["blob_sha"].lower())
        row = SourceRow(**values, line=n)
        if row.blob_sha in seen:
            raise PinnedError(
                f"{path} line {n}: blob {row.blob_sha} is listed twice (line {seen[row.blob_sha]})"
            )
        seen[row.blob_sha] = n
        rows.append(row)
    return rows


def read_weights(path: str | os.PathLike[str]) -> dict[str, PinnedFile]:
    """A weights list (repo, commit, path, blob_sha, ...) keyed by file name."""
    path = Path(path)
    out = {}
    for n, raw in _read_csv(path, ("repo", "commit", "path", "blob_sha")):
        _check_pin(path, n, raw)
        pin = PinnedFile(raw["repo"], raw["commit"].lower(), raw["path"], raw["blob_sha"].lower())
        out[Path(pin.path).name] = pin
    return out


def _git(args: list[str], *, stdin: bytes | None = None, timeout: float | None = None) -> bytes:
    try:
        done = subprocess.run(
            ["git", *args], input=stdin, capture_output=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise PinnedError("git is not installed (needed to read pinned repositories)") from None
    except subprocess.TimeoutExpired:
        raise PinnedError(f"git {' '.join(args[:3])} ... timed out after {timeout} s") from None
    if done.returncode != 0:
        msg = done.stderr.decode(errors="replace").strip().splitlines()
        raise PinnedError(msg[-1] if msg else f"git {args[0]} failed ({done.returncode})")
    return done.stdout


def _git_dir(folder: Path) -> Path | None:
    """The git directory of a mirror folder: bare (``repo/``, or the folder itself) or a
    clone's ``.git``."""
    for cand in (folder / "repo" / ".git", folder / "repo", folder / ".git", folder):
        if (cand / "HEAD").is_file() and (cand / "objects").is_dir():
            return cand
    return None


class Store:
    """Reads pinned files from local mirrors, or from clones it fetches into ``cache``.

    ``mirror``: a folder of ``<owner>+<name>`` mirrors (e.g. what ``fetch`` brings). Without it,
    each repository's pinned commits are fetched from ``url_base`` (GitHub by default) into
    ``cache/git/<owner>+<name>.git``; an offline machine gets an error that says to pass a mirror.
    """

    def __init__(
        self,
        mirror: Path | None = None,
        cache: Path | None = None,
        url_base: str = GITHUB,
        timeout: float = 1800.0,
    ) -> None:
        if mirror is None and cache is None:
            raise ValueError("a Store needs a mirror folder or a cache folder to clone into")
        if mirror is not None and not Path(mirror).is_dir():
            what = "is a file, not a folder" if Path(mirror).exists() else "does not exist"
            raise PinnedError(f"mirror folder {mirror} {what}")
        self.mirror = Path(mirror) if mirror is not None else None
        self.cache = Path(cache) if cache is not None else None
        self.url_base = url_base if url_base.endswith("/") else url_base + "/"
        self.timeout = timeout
        self._dirs: dict[str, Path] = {}

    def git_dir(self, repo: str, commits: Iterable[str] = ()) -> Path:
        """The git directory holding ``repo`` (with ``commits``, cloning them if need be)."""
        if repo in self._dirs:
            return self._dirs[repo]
        slug = repo.replace("/", "+")
        if self.mirror is not None:
            found = _git_dir(self.mirror / slug)
            if found is None:
                raise PinnedError(
                    f"{repo}: no git mirror at {self.mirror / slug} (expected a bare repository "
                    "or a clone there)"
                )
        else:
            found = self._clone(repo, slug, sorted(set(commits)))
        self._dirs[repo] = found
        return found

    def _clone(self, repo: str, slug: str, commits: list[str]) -> Path:
        assert self.cache is not None
        gdir = self.cache / "git" / f"{slug}.git"
        if not (gdir / "HEAD").is_file():
            gdir.parent.mkdir(parents=True, exist_ok=True)
            _git(["init", "--bare", "-q", str(gdir)])
        url = f"{self.url_base}{repo}.git"
        have = self._present(gdir, commits)
        for commit in [c for c in commits if c not in have]:
            try:  # only the pinned commit's tree, with a ref so that gc keeps it
                _git(["--git-dir", str(gdir), "fetch", "-q", "--depth", "1", "--no-tags", url,
                      f"{commit}:refs/pinned/{commit}"], timeout=self.timeout)  # fmt: skip
            except PinnedError as exc:
                raise PinnedError(
                    f"{repo}: cannot fetch commit {commit[:10]} from {url} ({exc}). Offline? "
                    "Pass --mirror DIR with a local mirror of each repository."
                ) from None
        return gdir

    @staticmethod
    def _present(gdir: Path, commits: list[str]) -> set[str]:
        if not commits:
            return set()
        out = _git(
            ["--git-dir", str(gdir), "cat-file", "--batch-check"],
            stdin="".join(f"{c}^{{commit}}\n" for c in commits).encode(),
        ).decode()
        return {
            c for c, line in zip(commits, out.splitlines(), strict=True) if "missing" not in line
        }

    def verify(self, pins: list[PinnedFile]) -> list[str]:
        """Problems with ``pins`` (one readable line each; empty when every file is as pinned).

        Checks that each commit exists and that ``commit:path`` is the pinned blob, without
        reading any content.
        """
        problems: list[str] = []
        by_repo: dict[str, list[PinnedFile]] = {}
        for pin in pins:
            by_repo.setdefault(pin.repo, []).append(pin)
        for repo, group in sorted(by_repo.items()):
            try:
                gdir = self.git_dir(repo, [p.commit for p in group])
            except PinnedError as exc:
                problems += [f"{p.where}: {exc}" for p in group]
                continue
            commits = sorted({p.commit for p in group})
            present = self._present(gdir, commits)
            queries = "".join(f"{p.commit}:{p.path}\n" for p in group).encode()
            answers = _git(["--git-dir", str(gdir), "cat-file", "--batch-check"], stdin=queries)
            for pin, line in zip(group, answers.decode().splitlines(), strict=True):
                if pin.commit not in present:
                    problems.append(f"{pin.where}: commit {pin.commit} is not in the repository")
                elif line.endswith(" missing"):
                    problems.append(
                        f"{pin.where}: no file at that path in commit {pin.commit[:10]}"
                    )
                else:
                    sha, kind = line.split()[:2]
                    if kind != "blob":
                        problems.append(f"{pin.where}: is a {kind}, not a file")
                    elif sha != pin.blob_sha:
                        problems.append(
                            f"{pin.where}: blob {sha} differs from the pinned {pin.blob_sha}"
                        )
        return problems

    def read(self, pins: list[PinnedFile]) -> Iterator[tuple[PinnedFile, bytes]]:
        """Yield (pin, bytes) for every pin, grouped by repository; each blob id is checked
        against the bytes read. Call ``verify`` first for messages about every row at once."""
        by_repo: dict[str, list[PinnedFile]] = {}
        for pin in pins:
            by_repo.setdefault(pin.repo, []).append(pin)
        for repo, group in by_repo.items():
            gdir = self.git_dir(repo, [p.commit for p in group])
            with subprocess.Popen(
                ["git", "--git-dir", str(gdir), "cat-file", "--batch"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            ) as proc:
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    for pin in group:
                        proc.stdin.write(f"{pin.commit}:{pin.path}\n".encode())
                        proc.stdin.flush()
                        header = proc.stdout.readline().decode().split()
                        if len(header) < 3 or header[1] != "blob":
                            raise PinnedError(f"{pin.where}: not a file in the repository")
                        data = proc.stdout.read(int(header[2]))
                        proc.stdout.read(1)  # the newline after each object
                        if git_blob_id(data) != pin.blob_sha:
                            raise PinnedError(
                                f"{pin.where}: content hashes to {git_blob_id(data)}, "
                                f"not the pinned blob {pin.blob_sha}"
                            )
                        yield pin, data
                finally:
                    proc.stdin.close()
                    proc.kill()
