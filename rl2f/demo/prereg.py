"""What the demo's claim is decided on, fixed in code before the final runs (issue #27).

An independent audit found the earlier demo's arms tuned on the seed and problems it then
reported, and its content check decided by how the placebo was worded. So here:
- the learning rate of every trained arm is chosen by `rl2f demo --tune` from the same grid,
  on tuning seeds and tuning problems disjoint from the reported ones (another training seed,
  another problem seed: fresh instances), by the same criterion (acc@DECISIVE_TURN with the
  hints); its numbers are copied below as they came out, and into every report;
- the claim's checks and the turn they are decided at are fixed here; the default run reports
  REPORT_SEEDS, the replication REPLICATION_SEEDS (`rl2f demo --seeds 3,4,5,6,7,8`).
"""
from __future__ import annotations

DECISIVE_TURN = 4  # hint-blind 0.660 vs hint-optimal 1.0 (HighLowTask.ceilings): room 0.34
MAX_TURNS = 4  # turns played (training and evaluation): the claim is decided at the last
REPORT_SEEDS = (0, 1, 2)
REPLICATION_SEEDS = (3, 4, 5, 6, 7, 8)
TUNING_SEEDS = (100,)  # training seeds of the tuning runs: never reported
TUNING_TASK_SEED = 1  # problem seed of the tuning runs (training and evaluation); reported runs use 0
TRAINED_ARMS = ("sft", "sft_good", "rlvr", "rl2f")
LR_GRID = (3e-4, 1e-3, 3e-3)

# Chosen by `rl2f demo --tune` (acc@DECISIVE_TURN with the hints on the tuning problems):
LR = {"sft": 1e-3, "sft_good": 1e-3, "rlvr": 1e-3, "rl2f": 1e-3}
TUNING: dict = {}  # {arm: {lr: acc@DECISIVE_TURN}} of the tuning run that chose LR


def preregistration() -> dict:
    """The fixed choices, as the report records them."""
    return {"decisive_turn": DECISIVE_TURN, "max_turns": MAX_TURNS, "report_seeds": list(REPORT_SEEDS),
            "replication_seeds": list(REPLICATION_SEEDS), "tuning_seeds": list(TUNING_SEEDS),
            "tuning_task_seed": TUNING_TASK_SEED, "lr_grid": list(LR_GRID), "lr": dict(LR),
            "tuning": TUNING}
