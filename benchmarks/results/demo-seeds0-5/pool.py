"""The demo's report over the seeds of two `rl2f demo` runs (the same code and settings)."""
import json, sys
from pathlib import Path
from rl2f.demo.pipeline import ARMS, BUDGETS, demo_config, demo_task, problem_sets
from rl2f.demo.claim import claim, claim_markdown
from rl2f.eval.evaluate import build_report, read_episode_dirs
runs = {0: "runs/demo-v6", 1: "runs/demo-v6", 2: "runs/demo-v6", 3: "runs/demo-s345v6", 4: "runs/demo-s345v6", 5: "runs/demo-s345v6"}
seeds = sorted(runs)
b = BUDGETS[False]
cfg = demo_config(seeds[0], False, str(Path(runs[0]) / "seed0" / "base"))
T = cfg.eval.max_turns
episodes = read_episode_dirs({s: Path(runs[s]) / f"seed{s}" / "eval" for s in seeds}, list(ARMS))
adapters = {name: None if name == "base" else [str(Path(runs[s]) / f"seed{s}" / name) for s in seeds] for name in ARMS}
(task, problems), = problem_sets([demo_task()], b["n_eval"], cfg.task.seed)
mine = {arm: {kind: {s: [e for e in eps if e.task == task.name] for s, eps in by_seed.items()} for kind, by_seed in by_kind.items()} for arm, by_kind in episodes.items()}
report = build_report(cfg, mine, adapters, [(task, problems)], T, contrasts=[("rl2f", o) for o in ARMS if o != "rl2f"])
c = claim(report)
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
(out / "claim.md").write_text(claim_markdown({**report, "claim": c}))
json.dump({"seeds": seeds, "runs": runs, "claim": c, "acc_at_T": {m: report["models"][m]["acc_at"][-1] for m in report["models"]},
           "command": "python benchmarks/results/demo-seeds0-5/pool.py (the eval episodes of runs/demo-v6 and runs/demo-s345v6)"},
          open(out / "claim.json", "w"), indent=1)
print((out / "claim.md").read_text())
