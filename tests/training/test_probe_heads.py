"""The experiment script's family-aware probe heads (scripts/experiments/frozen_probe.py
``--lofo-head multinomial | linear-nofamily``) on synthetic features whose classes are known."""

from __future__ import annotations

import numpy as np
import pytest

from tests.training.test_pair_report import SCRIPTS, _load

pytestmark = pytest.mark.unit


def _rows(rng, families: dict[str, np.ndarray], n: int = 300, dim: int = 12):
    """Reals around 0; each family's fakes around its mean."""
    x = [rng.normal(0, 1, (n, dim))]
    y, fam = [np.zeros(n, int)], [np.array(["real"] * n)]
    for name, mean in families.items():
        x.append(rng.normal(0, 1, (n, dim)) + mean)
        y.append(np.ones(n, int))
        fam.append(np.array([name] * n))
    return np.concatenate(x), np.concatenate(y), np.concatenate(fam)


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def test_linear_nofamily_drops_what_tells_the_families_apart():
    """Families A and B share a shift along e0 and differ along e1 and e2. Without the one
    direction their means differ in, the head gives it no weight (the plain head does) and
    still separates the fakes from the reals, through what the families share."""
    probe = _load(SCRIPTS / "experiments" / "frozen_probe.py")
    e = np.eye(12)
    x, y, fam = _rows(np.random.default_rng(0), {"A": e[0] + 3 * e[1], "B": e[0] + e[2]})
    w = np.ones(len(y))
    plain = probe.fit_head("linear", x, y, w, 1.0, 0)
    nofam = probe.fit_head("linear-nofamily", x, y, w, 1.0, 0, families=fam, family_dirs=1)
    apart = x[fam == "A"].mean(0) - x[fam == "B"].mean(0)  # about 3 e1 - e2
    apart /= np.linalg.norm(apart)
    assert np.abs(nofam(x + apart) - nofam(x)).max() < 1e-6
    assert np.abs(plain(x + apart) - plain(x)).min() > 0.1
    assert _auc(nofam(x), y) > 0.8
    with pytest.raises(ValueError, match="needs each row's family"):
        probe.fit_head("linear-nofamily", x, y, w, 1.0, 0)


@pytest.mark.parametrize("families", [("A", "B"), ("A",)], ids=["two families", "one family"])
def test_multinomial_scores_any_family_against_the_reals(families):
    """log P(any family) - log P(real): every family's fakes above the reals, with one family
    (sklearn then fits a single logit) as with several."""
    probe = _load(SCRIPTS / "experiments" / "frozen_probe.py")
    e = np.eye(12)
    means = {"A": 3 * e[1], "B": 3 * e[2]}
    x, y, fam = _rows(np.random.default_rng(2), {f: means[f] for f in families})
    score = probe.fit_head("multinomial", x, y, np.ones(len(y)), 1.0, 0, families=fam)
    assert _auc(score(x), y) > 0.95
    assert score(x[y == 1]).mean() > 0 > score(x[y == 0]).mean()
