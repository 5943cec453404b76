"""Training windows: observation history, action chunks, padding masks, batches, DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robolearn.data import DatasetError, DatasetWriter, EpisodeRecord, Feature
from robolearn.data.windows import WindowDataset

H = W = 16


def _frames(k: int, t: int) -> dict[str, np.ndarray]:
    img = np.zeros((t, H, W, 3), np.uint8)
    for i in range(t):  # a bright column that moves one pixel per frame: frames are told apart
        img[i, :, (i + k) % W] = 255
    state = np.stack([np.full(3, 100 * k + i, np.float32) for i in range(t)])
    action = np.stack([np.full(2, 1000 * k + i, np.float32) for i in range(t)])
    return {"observation.state": state, "observation.images.cam": img, "action": action,
            "next.reward": np.arange(t, dtype=np.float32)[:, None]}


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("w") / "ds"
    feats = {"observation.state": Feature("float32", (3,)), "observation.images.cam": Feature("video", (H, W, 3)),
             "action": Feature("float32", (2,)), "next.reward": Feature("float32", (1,))}
    with DatasetWriter.create(root, feats, fps=10) as w:
        for k, t in enumerate([6, 9, 4]):
            w.add_episode(_frames(k, t), EpisodeRecord(task=f"task {k % 2}"))
    return root


def test_window_contents_and_padding(ds):
    wd = WindowDataset(ds, n_obs_steps=3, horizon=4, extra_keys=["next.reward"])
    assert len(wd) == 6 + 9 + 4
    s = wd[6]  # episode 1, frame 0: history padded with frame 0
    assert s["episode_index"] == 1 and s["frame_index"] == 0 and s["index"] == 6
    assert s["observation.state"][:, 0].tolist() == [100, 100, 100]
    assert s["observation.state_is_pad"].tolist() == [True, True, False]
    assert s["action"][:, 0].tolist() == [1000, 1001, 1002, 1003]
    assert not s["action_is_pad"].any()
    assert s["observation.images.cam"].shape == (3, 3, H, W) and s["observation.images.cam"].dtype == torch.float32
    s = wd[6 + 7]  # episode 1, frame 7 of 9: actions run past the end
    assert s["observation.state"][:, 0].tolist() == [105, 106, 107]
    assert s["action"][:, 0].tolist() == [1007, 1008, 1008, 1008]
    assert s["action_is_pad"].tolist() == [False, False, True, True]
    assert s["next.reward"].item() == 7
    # the image of frame i has its bright column at (i + k) % W
    img = s["observation.images.cam"]
    for j, i in enumerate([5, 6, 7]):
        assert int(img[j, 0, 0].argmax()) == (i + 1) % W
    assert wd[6 + 7]["task_index"] == 1 and wd[0]["task_index"] == 0


def test_action_offset_covers_observed_steps(ds):
    wd = WindowDataset(ds, n_obs_steps=2, horizon=5, action_offset=-1)  # Diffusion Policy's alignment
    s = wd[6 + 2]
    assert s["action"][:, 0].tolist() == [1001, 1002, 1003, 1004, 1005]
    s = wd[6]
    assert s["action_is_pad"].tolist() == [True, False, False, False, False]


def test_batches_equal_single_windows(ds):
    wd = WindowDataset(ds, n_obs_steps=2, horizon=3)
    idx = [17, 2, 9, 9, 0]
    batch = wd[idx]
    for b, i in enumerate(idx):
        one = wd[i]
        for k, v in one.items():
            assert torch.equal(batch[k][b], v), k
    with pytest.raises(IndexError):
        wd[[len(wd)]]


def test_dataloader_with_workers(ds):
    wd = WindowDataset(ds, n_obs_steps=2, horizon=3, episodes=[0, 2])
    assert len(wd) == 10
    seen = []
    for batch in wd.loader(batch_size=4, shuffle=True, num_workers=2, seed=0):
        assert batch["observation.images.cam"].shape[1:] == (2, 3, H, W)
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(0, 6)) + list(range(15, 19))
    # the plain torch way works too (one window per __getitem__, default collate)
    dl = torch.utils.data.DataLoader(wd, batch_size=5, num_workers=2)
    assert sum(len(b["action"]) for b in dl) == 10


def test_window_errors(ds):
    with pytest.raises(DatasetError, match="no feature 'observation.stat'.*Did you mean"):
        WindowDataset(ds, obs_keys=["observation.stat"])
    with pytest.raises(DatasetError, match="at least 1"):
        WindowDataset(ds, n_obs_steps=0)
    with pytest.raises(DatasetError, match=r"episodes \[7\] do not exist"):
        WindowDataset(ds, episodes=[7])
