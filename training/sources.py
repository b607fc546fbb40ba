"""Where the corpus's real images come from: pinned Debian photos, a user's folder, the wild set.

Each Debian file is pinned by package, path and sha256 (a package update that changes a file
is an error, not a silent change of the data). Only photographs are listed: the renders,
illustrations and greyscale pictures that the same packages ship are left out on purpose.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.image import DecodeLimits
from training.datasets import read_pixels
from training.debian import DebianError, extract_package, sha256_file

__all__ = [
    "DEBIAN_PHOTOS",
    "HELDOUT_PHOTOS",
    "SourcePhoto",
    "WildImage",
    "debian_photos",
    "folder_photos",
    "load_pixels",
    "wild_images",
]


@dataclass(frozen=True)
class SourcePhoto:
    source_id: str  # stable id, e.g. "debian:mate-backgrounds/Aqua"
    path: Path
    sha256: str | None = None
    licence: str = ""


_PLASMA = "plasma-workspace-wallpapers"
_MATE = "mate-backgrounds"
_L16 = "lomiri-wallpapers-16.04"
_L20 = "lomiri-wallpapers-20.04"
_OPENCV = "opencv-doc"

# (package, path inside the package, sha256, licence)
DEBIAN_PHOTOS: tuple[tuple[str, str, str, str], ...] = (
    tuple(
        (_PLASMA, f"usr/share/wallpapers/{name}/contents/images/2560x1600.jpg", sha, "GPL-2+")
        for name, sha in (
            ("BytheWater", "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f"),
            ("ColorfulCups", "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d"),
            ("DarkestHour", "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce"),
            ("EveningGlow", "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a"),
            ("FallenLeaf", "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de"),
            ("Kite", "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8"),
            ("OneStandsOut", "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd"),
            ("Path", "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8"),
            ("summer_1am", "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8"),
        )
    )
    + tuple(
        (_MATE, f"usr/share/backgrounds/mate/nature/{name}.jpg", sha, "GPL-2+")
        for name, sha in (
            ("Aqua", "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce"),
            ("Blinds", "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600"),
            ("Dune", "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91"),
            ("FreshFlower", "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e"),
            ("Garden", "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78"),
            ("GreenMeadow", "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832"),
            ("LadyBird", "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d"),
            ("RainDrops", "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16"),
            ("Storm", "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957"),
            ("TwoWings", "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb"),
            ("Wood", "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07"),
            ("YellowFlower", "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306"),
        )
    )
    + tuple(
        (_L16, f"usr/share/backgrounds/{name}.jpg", sha, "CC-BY-SA / CC-BY (per file, see package)")
        for name, sha in (
            (
                "Bridge_by_Sander_Klootwijk",
                "bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050",
            ),
            (
                "Dragonfly_by_Bolly",
                "af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3",
            ),
            (
                "Picture_0B_by_freespace",
                "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad",
            ),
            (
                "Picture_1A_by_freespace",
                "89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b",
            ),
            (
                "Wine_by_Jakkub_Mede",
                "d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74",
            ),
            (
                "aitzgorri_by_Aitzol_Berasategi",
                "66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36",
            ),
            (
                "analogpattern_by_Peter_Nerlich",
                "15372488a192b2be2eafc67bd3ed31cbfca19abe3929e925607fcbc9cb4d4202",
            ),
            (
                "free_by_Peter_Nerlich",
                "85a5453c2fed514c75973016f3d862aca62eb7ca087618822469274ac1092373",
            ),
            (
                "friends_by_Aitzol_Berasategi",
                "cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d",
            ),
            (
                "greentock_by_Peter_Nerlich",
                "e7b20e2db9dcd6e2b278ca55873c2110b35d89cd38b04d0b18728726888e6889",
            ),
            (
                "life_by_Aitzol_Berasategi",
                "4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05",
            ),
            (
                "picosdeeuropa_by_Aitzol_Berasategi",
                "414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a",
            ),
            (
                "seeding_by_Clements_Engelhardt",
                "a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f",
            ),
            (
                "sunset_by_Aitzol_Berasategi",
                "474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18",
            ),
        )
    )
    + (
        (
            _L20,
            "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",
            "6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7",
            "CC-BY-SA (see package)",
        ),
    )
)

# Photos of other scenes, cameras and eras: the heldout-real split, never used in training.
HELDOUT_PHOTOS: tuple[tuple[str, str, str, str], ...] = tuple(
    (_OPENCV, f"usr/share/doc/opencv-doc/examples/data/{name}", sha, "OpenCV samples (see package)")
    for name, sha in (
        ("fruits.jpg", "9c031d80a1c52da5eca790db896baffec6a7e52bf786cdb7bbfca5c7f880e6a1"),
        ("baboon.jpg", "1a1dd18d78eec44420af3b0b7f08ee3d41c982916cae3ce203d7ff35d754cc0f"),
        ("home.jpg", "23b8cf46a1965d0ec33459b875aed43187802834db49e0daa9fa2cc842e9d8d2"),
        ("leuvenA.jpg", "b2977cdbd9fb3f94dadd6f76cf586d145676deb8a22b5f0f42149d21c058c09f"),
        ("aloeL.jpg", "cce5736808efe80d9f04b118dbb978c344d4345672b332718c3e039a3eeb8eee"),
        ("squirrel_cls.jpg", "20bb6e8ae96918a36c9886b6d48e54eedeb3948591e1485c206bc1dc60c8dc8b"),
        ("messi5.jpg", "1d570e49654e84c7a943918537bd9e5e1ef82920152e147c834006e235be97c9"),
        ("ela_original.jpg", "b55798b35e2dcb24675f0865a2442d0e4887eeb6aff322ecb1968d936cc23e7f"),
        ("building.jpg", "742a1baad62ac82e91e718e77eedf7e85c2eddc4badfb8c87c6cbc86c45a8b07"),
        ("butterfly.jpg", "34a99716b78ded10eae87b4880de739d3e68cc7dd1a96812bb28f469d5eeaea8"),
        ("orange.jpg", "152c20d2f380ac985de25e474e1a5f06ed34b932191342099b8272a63a15a079"),
        ("apple.jpg", "e86879de3d9a807dedc742a8f464f39e6b74bbb531a1fba3583155d94997d1cd"),
        ("aero1.jpg", "d9a69191f6e3642ea361bc3c62e677b2f40fe6534b78da540f4155e0734b59ef"),
        ("aero3.jpg", "1c407146f8762b3b14a7953ff9bc4c01ed64c467d7277122e769bf7e816017a4"),
        ("right.jpg", "20972954be263a99194d1373d9a5cd8d2dc92acf69b55470b6951f3b3475017f"),
        ("stuff.jpg", "21cd00afbdd0727f445dd91c0a09633e6345ed5b05a3d2355453a1f3c314c6c5"),
        ("board.jpg", "4c9a24ba67138ad5486d550f586cc5dd1161be112f1c1bea336d6c550cdf255f"),
        ("pca_test1.jpg", "9aae52b2bf730216f7e46c662f612a417ebd43642e742e7f867f33aa734293cd"),
        ("rubberwhale1.png", "eb312435369dac9efcc92f7e098edbd9ed8d7e6dfede8b3b4d8e3702cd80b796"),
        ("smarties.png", "ad3f751c053fdcf432687c1bc0e56a61a9119d2bb2ae29365f8aa6534fc77417"),
        ("graf1.png", "1504b769303c7bde00fa578eeaad3c68e02aceabeb1242e556f1f8d19e4bdea5"),
        ("sudoku.png", "000cf81b7ce795013ae02bc9dfb0952aa34153c8c0e7fc99c81918e0738d1f09"),
        (
            "licenseplate_motion.jpg",
            "ea6fa9cea75df91bec656d1d3b903111a9c0708c6a3b88f405a5156de38ff9d6",
        ),
    )
)


def debian_photos(
    pinned: Iterable[tuple[str, str, str, str]], cache: Path, limit: int | None = None
) -> list[SourcePhoto]:
    """Fetch (once, into the cache) and verify pinned photos; ``limit`` spreads over packages."""
    entries = list(pinned)
    chosen = list(entries)
    if limit is not None and limit < len(chosen):
        # Round-robin over packages so a small corpus still spans several sources.
        by_pkg: dict[str, list[tuple[str, str, str, str]]] = {}
        for entry in chosen:
            by_pkg.setdefault(entry[0], []).append(entry)
        queues = list(by_pkg.values())
        picked: list[tuple[str, str, str, str]] = []
        while len(picked) < limit:
            for q in queues:
                if q and len(picked) < limit:
                    picked.append(q.pop(0))
        chosen = picked
    photos = []
    keep: dict[str, list[str]] = {}  # every pinned file, so later builds of other sizes reuse it
    for package, inner, _, _ in entries:
        keep.setdefault(package, []).append(inner)
    for package, inner, sha, licence in chosen:
        root = extract_package(package, cache, keep[package])
        path = root / inner
        if not path.exists():
            raise DebianError(f"{package} no longer contains {inner}")
        actual = sha256_file(path)
        if actual != sha:
            raise DebianError(
                f"{package}/{inner} changed: sha256 {actual[:12]}... != pinned {sha[:12]}..."
            )
        name = Path(inner).stem if "wallpapers/" not in inner else inner.split("/")[3]
        photos.append(SourcePhoto(f"debian:{package}/{name}", path, sha, licence))
    return photos


def folder_photos(folder: Path) -> list[SourcePhoto]:
    """A user's own real photos (--real-dir): every decodable image under ``folder``."""
    from detector.scan import IMAGE_EXTENSIONS

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise ValueError(f"--real-dir {folder}: no image files found")
    return [SourcePhoto(f"user:{p.relative_to(folder).as_posix()}", p, None, "user") for p in paths]


def load_pixels(path: Path) -> np.ndarray:
    """Decode a source image (EXIF orientation applied) to RGB through detector's decoder."""
    return read_pixels(path, DecodeLimits(max_pixels=80_000_000))


@dataclass(frozen=True)
class WildImage:
    path: Path
    label: str  # "real" | "fake"
    slug: str  # the source prefix, e.g. "sd-cheatsheet"
    description: str
    repo: str
    licence: str
    commit: str = ""
    src_path: str = ""  # the file's path in ``repo`` (the crop was cut from it)


# Wild generators that are GANs / VQ models rather than diffusion models.
_WILD_GAN = {"stylegan2-rosinality", "stylegan-xl", "biggan", "taming-vqgan"}


def wild_family(slug: str) -> str:
    return "wild-gan" if slug in _WILD_GAN else "wild-diffusion"


def wild_images(root: Path) -> list[WildImage]:
    """Rows of ../shared/data/wild-train/manifest.csv (empty when the folder is absent)."""
    manifest = root / "manifest.csv"
    if not manifest.exists():
        return []
    out = []
    with open(manifest, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            slug = Path(row["file"]).name.split("__")[0]
            out.append(
                WildImage(
                    root / row["file"],
                    row["label"],
                    slug,
                    row["generator_or_source"],
                    row["repo"],
                    row["license"],
                    row.get("commit") or "",
                    row.get("path_in_repo") or "",
                )
            )
    return out
