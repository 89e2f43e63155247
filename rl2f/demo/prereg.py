"""What the demo's claim is decided on, fixed in code before the final runs (issue #27).

An independent audit found the earlier demo's arms tuned on the seed and problems it then
reported, and its content check decided by how the placebo was worded. So here:
- the learning rate of every trained arm is chosen by `rl2f demo --tune` from the same grid,
  on tuning seeds and tuning problems disjoint from the reported ones (another training seed,
  another problem seed: fresh instances), by the same criterion (acc@DECISIVE_TURN with the
  hints); its numbers are copied below as they came out, and into every report;
- the claim's checks and the turn they are decided at are fixed here; the default run reports
  REPORT_SEEDS, the replication REPLICATION_SEEDS (`rl2f demo --seeds 3,4,5,6,7,8`).

The task's design was settled on pilot seeds 50-52 (never reported, never tuned on), before
any reported seed ran: seed 50 (remainder mod 6) found the base naming a number of the right
residue 44% of the time, so the prompt gives the last digit; seed 51 (discount 0.7) found
RL2F at the hint-blind optimum, so the return is undiscounted; seed 52 (this design) was the
first run whose RL2F used the hints' content.
"""
from __future__ import annotations

DECISIVE_TURN = 4  # hint-blind 0.660 vs hint-optimal 1.0 (HighLowTask.ceilings): room 0.34
MAX_TURNS = 4  # turns played (training and evaluation): the claim is decided at the last
REPORT_SEEDS = (0, 1, 2)
REPLICATION_SEEDS = (3, 4, 5, 6, 7, 8)
PILOT_SEEDS = (50, 51, 52)  # the design pilots above
TUNING_SEEDS = (100,)  # training seeds of the tuning runs: never reported
TUNING_TASK_SEED = 1  # problem seed of the tuning runs (training and evaluation); reported runs use 0
TRAINED_ARMS = ("sft", "sft_good", "rlvr", "rl2f")
LR_GRID = (3e-4, 1e-3, 3e-3, 1e-2)  # 1e-2 added after a first tuning run chose 3e-3, the edge, for SFT (good)

# Chosen by `rl2f demo --tune` (acc@DECISIVE_TURN with the hints on the tuning problems):
LR = {"sft": 0.01, "sft_good": 0.01, "rlvr": 0.0003, "rl2f": 0.001}
TUNING = {  # {arm: {lr: acc@DECISIVE_TURN}} of the tuning run that chose LR (benchmarks/results/demo-tuning/)
    "sft": {"0.0003": 0.4375, "0.001": 0.3984, "0.003": 0.4062, "0.01": 0.4453},
    "sft_good": {"0.0003": 0.3594, "0.001": 0.6016, "0.003": 0.8516, "0.01": 0.9531},
    "rlvr": {"0.0003": 0.2031, "0.001": 0.2031, "0.003": 0.1953, "0.01": 0.0156},
    "rl2f": {"0.0003": 0.6562, "0.001": 0.9062, "0.003": 0.8125, "0.01": 0.0000},
}


def preregistration() -> dict:
    """The fixed choices, as the report records them."""
    return {"decisive_turn": DECISIVE_TURN, "max_turns": MAX_TURNS, "report_seeds": list(REPORT_SEEDS),
            "replication_seeds": list(REPLICATION_SEEDS), "tuning_seeds": list(TUNING_SEEDS),
            "tuning_task_seed": TUNING_TASK_SEED, "pilot_seeds": list(PILOT_SEEDS), "lr_grid": list(LR_GRID), "lr": dict(LR),
            "tuning": TUNING}
