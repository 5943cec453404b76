"""The `robolearn` command line: `robolearn <verb> [--preset NAME] [KEY=VALUE ...]` (see `main.py`)."""
