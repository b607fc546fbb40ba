"""How often does each metadata method fire on published photos, and on published generated images?

The metadata methods' probabilities are assigned by rule (README, Methods and fusion). This reads
every file of a pinned sources list as it was published (from the git mirrors, blob-checked, not
re-encoded: the corpus's crops carry no metadata) and runs each metadata method on it: per
method and class, how many files it abstained on, scored (and at which probability) and
decided (decisive), and the files where a method argued against the file's label. A method
that fires on photos as often as on generated images carries no evidence, whatever its rule.
The invisible watermark lives in the pixels and survives some re-encoding: it is measured
again on each file re-encoded as JPEG q90 (``--quality``; the metadata is gone there), as
upload pipelines deliver files and the equalised evaluation scores them. Whole files only:
the watermark repeats over the image's 4x4-block grid in raster order from its top-left
corner, so a crop that starts elsewhere scrambles it (a first measurement on the corpus's
crops, not kept, found "likely" there about as often on photos as on generated images).

    python scripts/experiments/metadata_rates.py SOURCES.csv OUT.json --mirror DIR [--quality 90]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

from detector.image import ImageError, decode
from detector.methods import create_method
from detector.methods.base import Kind
from detector.methods.registry import method_names
from training.metadata_writers import encode
from training.pinned import Store, read_sources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--mirror", type=Path, required=True)
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the re-encoded view")
    args = ap.parse_args()
    names = method_names(Kind.METADATA, available_only=True)
    methods = {n: create_method(n) for n in names}
    rows = read_sources(args.sources)
    store = Store(mirror=args.mirror)
    views = [*names, f"invisible_watermark after JPEG q{args.quality}"]
    counts: dict[str, dict[str, Counter]] = {n: defaultdict(Counter) for n in views}
    probabilities: dict[str, dict[str, Counter]] = {n: defaultdict(Counter) for n in views}
    against, undecodable, t = [], Counter(), time.time()
    for row, data in store.read(rows):
        cls = "generated" if row.is_fake else "real"
        try:
            image = decode(data)
        except ImageError:
            undecodable[cls] += 1
            continue
        reencoded = decode(encode(image.pixels, "JPEG", quality=args.quality))
        runs = [(n, m, image) for n, m in methods.items()]
        runs.append((views[-1], methods["invisible_watermark"], reencoded))
        for name, method, img in runs:
            res = method.score([img])[0]
            outcome = "abstained" if res.abstained else "decisive" if res.decisive else "scored"
            counts[name][cls][outcome] += 1
            if not res.abstained:
                probabilities[name][cls][f"{res.probability:.2f}"] += 1
                if (res.probability > 0.5) != row.is_fake:
                    against.append({"method": name, "class": cls, "where": row.where,
                                    "family": row.family, "probability": res.probability,
                                    "decisive": res.decisive,
                                    "evidence": [e.message for e in res.evidence][:2]})  # fmt: skip
    result = {
        "what": "metadata methods on the files of a pinned sources list as published",
        "sources": str(args.sources),
        "command": f"python scripts/experiments/metadata_rates.py {args.sources} {args.out} "
        f"--mirror {args.mirror} --quality {args.quality}",
        "files": {c: sum(counts[names[0]][c].values()) for c in ("real", "generated")},
        "undecodable": dict(undecodable),
        "outcomes": {n: {c: dict(v) for c, v in counts[n].items()} for n in views},
        "probabilities": {n: {c: dict(v) for c, v in probabilities[n].items()} for n in views},
        "against_the_label": against,
        "seconds": round(time.time() - t, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for n in views:
        print(n, json.dumps(result["outcomes"][n]))
    print(f"{len(against)} results against the label")


if __name__ == "__main__":
    main()
