"""The real-model run's task on each fetched base, untrained (issue #26): acc@t with the
teacher's hints, with retry, and with both placebos in the hints' words, so that a second
base (Gemma 3 270M, the paper's model family) is measured where SmolLM2 is trained.

    rl2f fetch-model smollm2 && rl2f fetch-model gemma3-270m
    python -m benchmarks.real_bases --out benchmarks/results/real-smollm2 --seeds 0

Writes OUT/bases.json and OUT/bases.md; settings are rl2f/demo/real.py's (same task, same
held-out problems, temperature, turns and seeds as the run's base row).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rl2f.demo.real import CONTROLS, MODEL, real_config, real_task
from rl2f.eval.evaluate import build_report, play_models
from rl2f.model.gguf import model_dir

BASES = (MODEL, "gemma3-270m")
FIELDS = {"with hints": "acc_at", "retry": "retry_acc_at", "random-direction placebo": "placebo_acc_at",
          "decoy's hints": "decoy_acc_at"}


def measure(name: str, n: int, seeds: list[int]) -> dict:
    path = model_dir(name)
    cfg = real_config(seeds[0], False, path)
    task = real_task()
    sets = [(task, task.problems(n, seed=cfg.task.seed, split="test"))]
    t0 = time.perf_counter()
    eps = play_models(cfg, {name: None}, sets, seeds, controls=CONTROLS, pass_at_k=0, turns=cfg.eval.max_turns)
    m = build_report(cfg, eps, {name: None}, sets, cfg.eval.max_turns, K=0)["models"][name]
    answered = [a is not None and a.isdigit() and task.low <= int(a) <= task.high
                for s in seeds for a in (e.turns[0].answer for e in eps[name]["feedback"][s])]
    return {"model": name, "path": str(path), "n_problems": n, "seeds": seeds,
            **{field: m[field] for field in FIELDS.values()}, "plasticity": m.get("plasticity"),
            "turn1_named_a_number": sum(answered) / len(answered), "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=80, help="held-out problems (the run's n_eval)")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for name in BASES:
        rows.append(measure(name, args.n, seeds))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "path"}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bases.json").write_text(json.dumps({"schema": "rl2f.bench.real_bases/1", "rows": rows}, indent=1) + "\n")
    lines = [f"# The real run's task on each base, untrained ({args.n} held-out problems x seeds {seeds}, T 0.7)", "",
             "| base | condition | acc@1 | acc@2 | acc@3 | acc@4 |", "|---|---|---|---|---|---|"]
    for r in rows:
        for label, field in FIELDS.items():
            lines.append(f"| {r['model']} | {label} | " + " | ".join(f"{x:.3f}" for x in r[field]) + " |")
    lines += ["", "Turn 1 named a number in range: " + ", ".join(f"{r['model']} {r['turn1_named_a_number']:.2f}"
                                                              for r in rows), ""]
    (out / "bases.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
