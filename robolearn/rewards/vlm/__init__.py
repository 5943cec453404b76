"""Everything that asks a vision-language model, each producing something the stack already reads.

    client.py      OpenAI-compatible chat client: images inline, retries, bounded concurrency,
                   JSON answers checked against a schema, an on-disk cache keyed by the request
    server.py      a loopback OpenAI-compatible server answering from fixtures (tests, benchmarks, demos)
    oracle.py      a rehearsal endpoint answering every path from a sim dataset's ground truth (not a model)
    bench.py       `robolearn bench vlm`; hostile.py: the hostile programs the sandbox must stop
    annotate.py    stage annotation of dataset episodes (feeds the progress model)
    sandbox.py     the allow-list check and the limited worker process that run generated reward code
    codegen.py     reward-code generation: designer, critic, trajectory analyzer, the refinement loop
    clip.py        zero-shot CLIP frame reward (VLM-RM) as a RewardModel
    gvl.py         generative progress scoring of shuffled frames (GVL)
    preference.py  preference labels (RL-VLM-F) and the Bradley-Terry image reward model
"""
