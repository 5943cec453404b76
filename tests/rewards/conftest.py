"""The reward-model tests run on one torch thread; their shared fixtures (dataset, trained model,
small_options, make_train_config) are in tests/reward_fixtures.py."""

from __future__ import annotations

import pytest
from reward_fixtures import one_torch_thread


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One torch thread in every reward test module, restored afterwards for other test directories."""
    with one_torch_thread():
        yield
