"""The bundled pair's leave-one-family-out report: rows paired on another machine are kept with
the probe they were averaged with, the shift of this run's refit is recorded and rendered, and a
group defined differently is refused (scripts/experiments/frozen_probe.py, scripts/lofo_table.py)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@functools.cache  # one module object per script, as an import gives
def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def _scores(ap: float, roc: float) -> dict:
    return {"ap": ap, "roc_auc": roc, "tpr_at_1pct_fpr": 0.1}


def _probe_row(exclude: list[str], ap: float, roc: float) -> dict:
    scored = {**_scores(ap, roc), "n_fake": 50, "n_real": 200, "chance_ap": 0.2}
    return {"exclude": exclude, "exclude_sources": [], "as_is": scored, "equalised": scored}


def _pair_row(probe_ap: float, probe_roc: float) -> dict:
    members = {"fine_tuned": _scores(0.40, 0.70), "probe": _scores(probe_ap, probe_roc),
               "pair": _scores(0.50, 0.75)}  # fmt: skip
    return {"run": "elsewhere", "as_is": members, "equalised": members}


def _reports(here_same: float, here_moved: tuple[float, float], moved_exclude: list[str]):
    previous = {
        "groups": {"same": _probe_row(["a"], 0.30, 0.60), "moved": _probe_row(["b"], 0.35, 0.65)},
        "pair": {"groups": {"same": _pair_row(0.30, 0.60), "moved": _pair_row(0.35, 0.65)}},
    }
    result = {
        "groups": {"same": _probe_row(["a"], here_same, 0.60),
                   "moved": _probe_row(moved_exclude, *here_moved),
                   "fresh": _probe_row(["c"], 0.45, 0.70)},
        "pair": {"runs": "runs/lofo", "groups": {"fresh": _pair_row(0.45, 0.70)}},
    }  # fmt: skip
    return result, previous


def test_rows_paired_elsewhere_keep_their_probe_and_record_the_refit():
    probe = _load(SCRIPTS / "experiments" / "frozen_probe.py")
    table = _load(SCRIPTS / "lofo_table.py")
    result, previous = _reports(0.30, (0.342, 0.66), ["b"])
    probe.keep_previous_pairs(result, previous)
    groups = result["pair"]["groups"]
    assert list(groups) == ["same", "moved", "fresh"]  # the hold-outs' order
    assert "probe_here" not in groups["same"]
    assert groups["moved"]["equalised"]["probe"]["ap"] == 0.35  # the probe it was averaged with
    assert groups["moved"]["probe_here"]["equalised"] == {"ap": 0.342, "roc_auc": 0.66}
    assert result["pair"]["summary"]["pair"]["equalised"]["groups"] == 3
    rendered = table.pair_table(result)
    assert "3 of 3 groups paired" in rendered
    assert "Paired earlier on features computed elsewhere: moved;" in rendered
    assert "within 0.008 of it" in rendered
    assert "Still to run" not in rendered

    again, _ = _reports(0.30, (0.35, 0.65), ["b"])  # refitted to the same numbers: nothing recorded
    probe.keep_previous_pairs(again, previous)
    assert "Paired earlier" not in table.pair_table(again)


def test_a_group_defined_differently_is_not_kept():
    probe = _load(SCRIPTS / "experiments" / "frozen_probe.py")
    result, previous = _reports(0.30, (0.35, 0.65), ["b", "b2"])
    with pytest.raises(SystemExit, match="'moved' is defined differently"):
        probe.keep_previous_pairs(result, previous)


def test_both_heads_score_features_as_logits_and_the_linear_one_is_the_probes_fit():
    import numpy as np

    from training.probe import fit_logistic

    fp = _load(SCRIPTS / "experiments" / "frozen_probe.py")
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 200)
    # a non-linear boundary: the class is whether |first feature| is large
    x = rng.normal(0, 1, (400, 4))
    x[:, 0] = np.where(y == 1, rng.choice([-1, 1], 400) * rng.uniform(2, 3, 400),
                       rng.uniform(-1, 1, 400))  # fmt: skip
    w = np.ones(400)
    linear = fp.fit_head("linear", x, y, w, 1.0, 0)
    weight, bias = fit_logistic(x, y, w, 1.0)
    np.testing.assert_allclose(linear(x), x @ weight + bias)
    mlp = fp.fit_head("mlp", x, y, w, 1.0, 0)
    z = mlp(x)
    assert z.shape == (400,) and np.isfinite(z).all()
    accuracy = lambda s: ((s > 0) == y).mean()  # noqa: E731
    assert accuracy(z) > 0.95 > 0.7 > accuracy(linear(x))  # only the MLP bends


def test_one_class_heads_learn_the_reals_only_and_rank_what_is_unlike_them_higher():
    import numpy as np

    fp = _load(SCRIPTS / "experiments" / "frozen_probe.py")
    rng = np.random.default_rng(1)
    cov = np.diag([4.0, 1.0, 0.25])  # reals spread unequally: distance is not Euclidean
    reals = rng.multivariate_normal(np.zeros(3), cov, 500)
    fakes = rng.normal(5, 1, (300, 3))
    x, y, w = np.vstack([reals, fakes]), np.repeat([0, 1], [500, 300]), np.ones(800)
    gauss = fp.fit_head("gauss", x, y, w, 1.0, 0)
    # the same reals with other training fakes: the one-class score does not move
    moved = fp.fit_head("gauss", np.vstack([reals, -fakes]), y, w, 1.0, 0)
    probe = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.5], [-6.0, -6.0, -6.0]])
    np.testing.assert_allclose(gauss(probe), moved(probe))
    z = gauss(probe)
    # 3 along the wide axis is 1.5 sd, 1.5 along the narrow one 3 sd: Mahalanobis, not L2
    assert z[0] < z[1] < z[2] < z[3]
    assert abs(float(np.median(gauss(reals)))) < 1e-9  # centred on the training reals
    assert (gauss(fakes) > np.quantile(gauss(reals), 0.99)).mean() > 0.95
    relative = fp.fit_head("relgauss", x, y, w, 1.0, 0)
    assert (relative(fakes) > np.quantile(relative(reals), 0.99)).mean() > 0.95
    both = fp.fit_head("linear+gauss", x, y, w, 1.0, 0)
    assert np.isfinite(both(probe)).all() and not np.allclose(both(probe), z)
    with pytest.raises(ValueError, match="head must be one of"):
        fp.fit_head("knn", x, y, w, 1.0, 0)
