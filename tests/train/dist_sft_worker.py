"""Worker of the SFT-generation test, launched by torchrun (2 gloo ranks, CPU):

    torchrun --nproc_per_node=2 tests/train/dist_sft_worker.py OUT RL2F-TRAIN-ARGS...

Runs `rl2f train ARGS` in this process with the episode runner watched: each rank writes
OUT/rank{r}.json with the ids of the problems it played.
"""
import json
import os
import sys
from pathlib import Path

from rl2f.cli.main import cli
from rl2f.episodes import EpisodeRunner

out, args = sys.argv[1], sys.argv[2:]
played = []
run = EpisodeRunner.run


def watched(self, problems, *a, **k):
    played.extend(p.id for p in problems)
    return run(self, problems, *a, **k)


EpisodeRunner.run = watched
try:
    cli.main(["train", *args], standalone_mode=False)
finally:
    Path(out, f"rank{os.environ['RANK']}.json").write_text(json.dumps(played))
