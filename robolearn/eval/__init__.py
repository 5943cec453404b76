"""Policy evaluation and judging:

    sim.py     `robolearn eval`: one checkpoint over seeded sim episodes (Wilson interval, stage reach, videos)
    suite.py   `robolearn eval-suite`: policies x tasks x seeds x randomization settings, one report, recording
    judge.py   `robolearn judge`: recorded episodes scored densely by a progress model (outcome, process, diagnosis)
    select.py  `robolearn select`: sim-to-real model selection from sim success and real-data OOD scores
    html.py    self-contained HTML reports
"""
