"""Installed packages made on the fly: a plugin as pip would install it, for the entry-point
tests (put its folder on the path; ``importlib.metadata`` finds the ``.dist-info``)."""

from __future__ import annotations

from pathlib import Path


def install_plugin(
    site: Path, dist: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str]
) -> Path:
    """A package as pip installs it, in ``site`` (put it on the path): its modules and a
    ``.dist-info`` with ``entry_points`` ({group: {name: "module[:attr]"}})."""
    site.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (site / f"{name}.py").write_text(source)
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
        for group, eps in entry_points.items()
    ))  # fmt: skip
    return site
