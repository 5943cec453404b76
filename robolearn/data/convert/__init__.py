"""Converters from other robot-learning dataset formats into the LeRobot v3 layout of `robolearn.data`."""
