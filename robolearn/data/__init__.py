"""Episode datasets in the LeRobot v3 layout: record, read, window for training, replay, convert.

    DatasetWriter.create(root, features, fps) / DatasetWriter.open(root)   record (crash-safe)
    DatasetReader(root)                                                    frames of any v3 dataset
    WindowDataset(root, n_obs_steps, horizon)                              torch training windows
"""

from robolearn.data.dataset import DatasetMeta, DatasetReader
from robolearn.data.format import DatasetError, Feature
from robolearn.data.stages import StageAnnotation
from robolearn.data.video import VideoOptions
from robolearn.data.writer import DatasetWriter, EpisodeRecord

__all__ = ["DatasetError", "DatasetMeta", "DatasetReader", "DatasetWriter", "EpisodeRecord", "Feature",
           "StageAnnotation", "VideoOptions"]
