"""Batched inference: every policy (and reward model) runs forward here, for one env or thousands."""

from robolearn.inference.engine import InferenceEngine
from robolearn.inference.queues import ChunkRunner

__all__ = ["ChunkRunner", "InferenceEngine"]
