"""Policy evaluation: `robolearn eval` rolls a trained checkpoint over seeded sim episodes
(`robolearn.eval.sim`) and reports success with a Wilson interval, stage reach rates and videos."""
