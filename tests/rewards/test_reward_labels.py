"""robolearn.rewards.labels: stage segments, stage priors, and SARM-style progress labels (plain and
failure-aware), on hand-built annotations whose labels are computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from robolearn.data.format import DatasetError
from robolearn.data.stages import StageAnnotation
from robolearn.rewards.labels import UNFINISHED_TAU_CAP, episode_labels, segments, stage_statistics

NAMES = ["a", "b", "c"]
PRIORS = np.array([0.2, 0.3, 0.5])
CUM = np.array([0.0, 0.2, 0.5])


def test_segments_runs_of_equal_ids():
    assert segments(np.array([0, 0, 1, 1, 1, 2, 0, 0])) == [(0, 0, 1), (1, 2, 4), (2, 5, 5), (0, 6, 7)]
    assert segments(np.array([3])) == [(3, 0, 0)]
    assert segments(np.array([1, 1, 1])) == [(1, 0, 2)]
    ids = np.array([0, 0, 0, 1, 2, 2, 1, 1, 2, 2, 2])
    ann = StageAnnotation.from_stage_ids(ids, NAMES)
    assert [(NAMES.index(n), s, e) for n, s, e in zip(ann.names, ann.start_frames, ann.end_frames)] == segments(ids)
    np.testing.assert_array_equal(ann.stage_ids(len(ids), NAMES), ids)


def test_stage_statistics_priors_from_successes_only():
    ok1 = StageAnnotation(NAMES, [0, 4, 10], [3, 9, 19])  # 4, 6, 10 of 20 frames
    ok2 = StageAnnotation(NAMES, [0, 5, 7], [4, 6, 9])  # 5, 2, 3 of 10 frames
    failed = StageAnnotation(["a", "b"], [0, 18], [17, 19])  # would pull the a share up a lot
    priors, mean_frames = stage_statistics([(ok1, 20, True), (failed, 20, False), (ok2, 10, True)], NAMES)
    np.testing.assert_allclose(priors, [(0.2 + 0.5) / 2, (0.3 + 0.2) / 2, (0.5 + 0.3) / 2], atol=1e-6)
    assert priors.sum() == pytest.approx(1.0, abs=1e-6)
    assert priors.dtype == np.float32 and mean_frames.dtype == np.float32
    np.testing.assert_allclose(mean_frames, [(4 + 5) / 2, (6 + 2) / 2, (10 + 3) / 2])
    # the failed episode alone changes nothing: the same figures without it
    p2, m2 = stage_statistics([(ok1, 20, True), (ok2, 10, True)], NAMES)
    np.testing.assert_array_equal(p2, priors)
    np.testing.assert_array_equal(m2, mean_frames)


def test_stage_statistics_without_successes_uses_every_episode():
    ann = StageAnnotation(NAMES, [0, 2, 5], [1, 4, 9])
    priors, mean_frames = stage_statistics([(ann, 10, False), (ann, 10, None)], NAMES)
    np.testing.assert_allclose(priors, [0.2, 0.3, 0.5], atol=1e-6)
    # a failed episode's last segment is still counted as completed by the statistics
    np.testing.assert_allclose(mean_frames, [2, 3, 5])


def test_stage_statistics_regression_segment_is_not_completed():
    # a b a b c: the first b is followed by an earlier stage (a regression): it is not a completed b
    ann = StageAnnotation(["a", "b", "a", "b", "c"], [0, 2, 4, 6, 10], [1, 3, 5, 9, 11])
    priors, mean_frames = stage_statistics([(ann, 12, True)], NAMES)
    np.testing.assert_allclose(priors, [4 / 12, 6 / 12, 2 / 12], atol=1e-6)
    np.testing.assert_allclose(mean_frames, [2, 4, 2])


def test_stage_statistics_unseen_stage_gets_a_small_share():
    ann = StageAnnotation(NAMES, [0, 2, 5], [1, 4, 9])
    priors, mean_frames = stage_statistics([(ann, 10, True)], NAMES + ["d"])
    assert priors.sum() == pytest.approx(1.0, abs=1e-6)
    assert 0 < priors[3] < 0.01
    np.testing.assert_allclose(priors[:3] / priors[:3].sum(), [0.2, 0.3, 0.5], atol=1e-6)
    assert mean_frames[3] == pytest.approx(np.mean([2, 3, 5]))  # no completed d: the mean of the others


def test_stage_statistics_without_episodes_raises():
    with pytest.raises(DatasetError, match="no annotated episodes"):
        stage_statistics([], NAMES)


def test_successful_episode_labels():
    starts, ends, length = [0, 4, 10], [3, 9, 19], 20
    ann = StageAnnotation(NAMES, starts, ends)
    lab = episode_labels(ann, length, NAMES, PRIORS, np.array([4.0, 6.0, 10.0]), success=True)
    assert lab.stage.dtype == np.int64 and lab.progress.dtype == np.float32
    np.testing.assert_array_equal(lab.stage, [0] * 4 + [1] * 6 + [2] * 10)
    assert lab.progress[0] == 0.0 and lab.progress[-1] == pytest.approx(1.0)
    assert np.all(np.diff(lab.progress) >= -1e-7)
    # at each stage's first frame the progress is the cumulative prior of the finished stages, at its last
    # frame the cumulative prior including it
    np.testing.assert_allclose(lab.progress[starts], CUM, atol=1e-6)
    np.testing.assert_allclose(lab.progress[ends], CUM + PRIORS, atol=1e-6)
    # tau is linear in time within each stage
    for s, e in zip(starts, ends):
        np.testing.assert_allclose(lab.tau[s:e + 1], np.arange(e - s + 1) / (e - s), atol=1e-6)
    np.testing.assert_allclose(lab.progress, CUM[lab.stage] + lab.tau * PRIORS[lab.stage], atol=1e-6)
    np.testing.assert_allclose(lab.time, np.arange(length) / (length - 1), atol=1e-7)


# stages a, b, c, then back to a (the cube was dropped); the failure began at frame 10, inside c
FAILED = StageAnnotation(["a", "b", "c", "a"], [0, 4, 8, 12], [3, 7, 11, 29])
FAILED_LEN, FAILURE_STEP = 30, 10
MEAN_FRAMES = np.array([4.0, 4.0, 8.0])


def test_failure_aware_labels_fall_at_a_regression_and_freeze_after_the_failure():
    lab = episode_labels(FAILED, FAILED_LEN, NAMES, PRIORS, MEAN_FRAMES, success=False,
                         failure_step=FAILURE_STEP, failure_aware=True)
    # completed segments (a, b: the next segment is a later stage) are linear
    np.testing.assert_allclose(lab.tau[0:4], np.arange(4) / 3, atol=1e-6)
    np.testing.assert_allclose(lab.tau[4:8], np.arange(4) / 3, atol=1e-6)
    # the unfinished c grows with its mean duration (8 frames), capped, until the failure began
    np.testing.assert_allclose(lab.tau[8:10], [0.0, 1 / 8 * UNFINISHED_TAU_CAP], atol=1e-6)
    # from the failure step the segment under way is frozen, and what follows makes no progress
    np.testing.assert_allclose(lab.tau[10:12], 2 / 8 * UNFINISHED_TAU_CAP, atol=1e-6)
    np.testing.assert_array_equal(lab.tau[12:], 0.0)
    assert lab.tau[8:12].max() < UNFINISHED_TAU_CAP
    # progress falls at the regression (c -> a) and never rises after the failure step
    assert lab.progress[12] < lab.progress[11]
    assert lab.progress[12] == pytest.approx(0.0)
    assert np.all(np.diff(lab.progress[FAILURE_STEP:]) <= 1e-7)
    assert lab.progress.max() < CUM[2] + PRIORS[2]  # c was never completed
    np.testing.assert_allclose(lab.progress[10], 0.5 + 2 / 8 * UNFINISHED_TAU_CAP * 0.5, atol=1e-6)
    np.testing.assert_allclose(lab.time, np.arange(FAILED_LEN) / (FAILED_LEN - 1), atol=1e-7)


def test_failure_aware_unfinished_tau_is_capped_without_failure_step():
    lab = episode_labels(FAILED, FAILED_LEN, NAMES, PRIORS, MEAN_FRAMES, success=False, failure_step=None)
    # the final a (frames 12..29) is unfinished: tau grows over a's mean 4 frames up to the cap, never to 1
    np.testing.assert_allclose(lab.tau[12:17], np.array([0, 1, 2, 3, 4]) / 4 * UNFINISHED_TAU_CAP, atol=1e-6)
    assert lab.tau[12:].max() <= UNFINISHED_TAU_CAP + 1e-6  # reaches the cap itself (min(t / mean, 1) * cap)
    assert lab.tau[12:].max() < 1.0
    np.testing.assert_allclose(lab.progress[12:], lab.tau[12:] * PRIORS[0], atol=1e-6)


def test_plain_labels_interpolate_every_segment():
    for kw in ({"success": False, "failure_step": FAILURE_STEP, "failure_aware": False},
               {"success": None, "failure_step": FAILURE_STEP, "failure_aware": True}):  # unlabelled: plain
        lab = episode_labels(FAILED, FAILED_LEN, NAMES, PRIORS, MEAN_FRAMES, **kw)
        tau = np.zeros(FAILED_LEN)
        for s, e in zip(FAILED.start_frames, FAILED.end_frames):
            tau[s:e + 1] = np.arange(e - s + 1) / (e - s)
        np.testing.assert_allclose(lab.tau, tau, atol=1e-6)
        ids = np.array([0] * 4 + [1] * 4 + [2] * 4 + [0] * 18)
        np.testing.assert_array_equal(lab.stage, ids)
        np.testing.assert_allclose(lab.progress, CUM[ids] + tau * PRIORS[ids], atol=1e-6)
        assert lab.progress[11] == pytest.approx(1.0)  # c interpolated as if completed


def test_time_label_of_a_one_frame_episode():
    lab = episode_labels(StageAnnotation(["a"], [0], [0]), 1, NAMES, PRIORS, MEAN_FRAMES, success=True)
    assert lab.time.tolist() == [0.0] and lab.stage.tolist() == [0]


def test_labels_of_the_recorded_dataset(reader):
    """On collected pick_place episodes: successes rise from 0 to 1; after an injected drop the label never
    exceeds its value at the failure step."""
    from robolearn.rewards.train import stage_stats

    names = reader.meta.stage_names
    assert names == ["reach", "grasp", "lift", "transport", "place"]
    eps = np.arange(reader.num_episodes)
    priors, mean_frames = stage_stats(reader, eps)
    assert priors.sum() == pytest.approx(1.0, abs=1e-5) and np.all(priors > 0)
    failed_seen = 0
    for ep in eps:
        ep = int(ep)
        info = reader.meta.episode_info(ep)
        lab = episode_labels(reader.meta.stages(ep), int(reader.lengths[ep]), names, priors, mean_frames,
                             success=reader.meta.success(ep), failure_step=info.get("failure_step"))
        assert len(lab.progress) == reader.lengths[ep]
        assert np.all((lab.progress >= 0) & (lab.progress <= 1))
        if reader.meta.success(ep):
            assert lab.progress[0] == 0.0 and lab.progress[-1] == pytest.approx(1.0)
            assert np.all(np.diff(lab.progress) >= -1e-6)
        else:
            failed_seen += 1
            f = info["failure_step"]
            assert f is not None
            assert lab.progress[f:].max() <= lab.progress[f] + 1e-6
            assert lab.progress[-1] < 0.5
    assert failed_seen == 2
