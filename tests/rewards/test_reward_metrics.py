"""robolearn.rewards.metrics against scipy and hand-computed figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from robolearn.rewards.metrics import failure_pair_accuracy, progress_metrics, rankdata, spearman, voc


@pytest.mark.parametrize("x", [
    [3.0, 1.0, 2.0],
    [1.0, 2.0, 2.0, 3.0, 1.0, 5.0, 2.0],
    [0.5] * 6,
    [4, 4, 1, 1, 1, 9, 0, 4],
    [7.0],
])
def test_rankdata_matches_scipy(x):
    np.testing.assert_allclose(rankdata(np.array(x)), stats.rankdata(x))


def test_rankdata_random_with_ties_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 6, rng.integers(2, 40)).astype(float)
        np.testing.assert_allclose(rankdata(x), stats.rankdata(x))


def test_spearman_matches_scipy():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(3, 50))
        a = np.round(rng.normal(size=n), 1)  # rounding makes ties
        b = a + rng.normal(scale=0.5, size=n)
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(np.arange(5.0), np.arange(5.0)[::-1]) == pytest.approx(-1.0)


def test_spearman_degenerate_is_nan():
    assert math.isnan(spearman(np.ones(5), np.arange(5)))
    assert math.isnan(spearman(np.array([1.0]), np.array([2.0])))


def test_voc():
    assert voc([np.linspace(0, 1, 10), np.array([0.1, 0.2, 0.9, 0.95])]) == pytest.approx(1.0)
    assert voc([np.full(8, 0.3)]) == 0.0  # constant: 0, not nan
    assert voc([np.linspace(1, 0, 6)]) == pytest.approx(-1.0)
    # the mean over episodes; one-frame episodes are left out
    p = np.array([0.0, 0.5, 0.2, 0.9, 1.0])
    want = (stats.spearmanr(p, np.arange(5)).statistic + 1.0 + 0.0) / 3
    assert voc([p, np.arange(4.0), np.zeros(3), np.array([0.5])]) == pytest.approx(want)
    assert math.isnan(voc([])) and math.isnan(voc([np.array([1.0])]))


def test_failure_pair_accuracy_by_hand():
    # failed 0.2 vs successes 0.5, 0.2, 0.1: lower, tie (half), higher -> 1.5 / 3
    assert failure_pair_accuracy(np.array([0.2]), np.array([0.5, 0.2, 0.1])) == pytest.approx(0.5)
    # failed 0.1, 0.6 vs successes 0.6, 0.9: 0.1 < both (2), 0.6 tie + lower (1.5) -> 3.5 / 4
    assert failure_pair_accuracy(np.array([0.1, 0.6]), np.array([0.6, 0.9])) == pytest.approx(0.875)
    assert failure_pair_accuracy(np.array([0.0, 0.1]), np.array([1.0])) == 1.0
    assert failure_pair_accuracy(np.array([1.0]), np.array([0.0, 0.1])) == 0.0
    assert math.isnan(failure_pair_accuracy(np.zeros(0), np.array([1.0])))
    assert math.isnan(failure_pair_accuracy(np.array([1.0]), np.zeros(0)))


def test_progress_metrics_keys_and_values():
    scores = [{"progress": np.array([0.0, 0.4, 0.9]), "stage": np.array([0, 1, 1])},
              {"progress": np.array([0.0, 0.3, 0.2]), "stage": np.array([0, 0, 0])},
              {"progress": np.array([0.1, 0.5, 0.8]), "stage": np.array([0, 1, 2])}]
    truth = [{"progress": np.array([0.0, 0.5, 1.0]), "stage": np.array([0, 1, 2])},
             {"progress": np.array([0.0, 0.3, 0.1]), "stage": np.array([0, 1, 0])},
             {"progress": np.array([0.0, 0.5, 1.0]), "stage": np.array([0, 1, 2])}]
    out = progress_metrics(scores, truth, np.array([True, False, True]))
    assert set(out) == {"voc", "stage_accuracy", "progress_mae", "failure_pair_accuracy"}
    assert out["voc"] == pytest.approx(1.0)
    assert out["stage_accuracy"] == pytest.approx(7 / 9)
    err = [0, .1, .1, 0, 0, .1, .1, 0, .2]
    assert out["progress_mae"] == pytest.approx(np.mean(err))
    assert out["failure_pair_accuracy"] == 1.0  # 0.2 ends below 0.9 and 0.8
    # no failures: no failure ranking; no stages: no stage accuracy; no successes: no voc
    only_ok = progress_metrics([{"progress": s["progress"]} for s in scores[::2]], truth[::2], np.array([True, True]))
    assert set(only_ok) == {"voc", "progress_mae"}
    only_failed = progress_metrics(scores[1:2], truth[1:2], np.array([False]))
    assert set(only_failed) == {"stage_accuracy", "progress_mae"}
    assert progress_metrics([], [], np.zeros(0, bool)) == {}
