"""`rl2f evaluate`'s batch size (`eval.batch_size`) on a real model: SmolLM2-135M-Instruct.

    python -m benchmarks.bench_eval_batch --out benchmarks/results/eval_batch-cpu.json
    python -m benchmarks.bench_eval_batch --sizes 8,32 --problems 16 --rounds 1

The evaluation `rl2f evaluate --controls hints --pass-at-k 0` makes, played in-process on
one loaded model (`rl2f.eval.evaluate.play_models`): the base model on `--problems` held-out
problems of generated arithmetic (difficulty 1), T = 2 turns with the programmatic teacher,
48-token answers, fp32 on the CPU. Sampling noise is keyed by seed and problem, never by
the batch, so every batch size plays the same episodes up to the float rounding of batched
kernels (other padding, other reduction orders), which now and then flips a sampled token
near a tie; the result records the fraction of episodes identical to the first size's, token
for token, and each size's acc@1 and acc@2. The sizes alternate each round (harness.alternate); the result holds the
median and spread of the seconds and of the student tokens per second. Before eval.batch_size
existed, evaluate batched rollout.problems_per_batch problems (default 8).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from benchmarks import harness
from rl2f.config import RunConfig, load_config
from rl2f.episodes import Role
from rl2f.eval.evaluate import play_models, resolve_problems
from rl2f.model import load_model, load_tokenizer
from rl2f.model.gguf import model_dir

SMOLLM2 = model_dir("smollm2")  # where `rl2f fetch-model smollm2` writes it
OLD_DEFAULT = 8  # rollout.problems_per_batch, what evaluate batched before eval.batch_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="8,16,32", help="eval.batch_size values, comma-separated")
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    cfg = load_config(RunConfig, None, [f'model.path="{SMOLLM2}"', 'task.name="math"', "task.options={difficulty=1}",
                                        'model.device="cpu"', "rollout.max_new_tokens=48", "eval.max_turns=2",
                                        "eval.temperature=0.7", f"task.n_eval={args.problems}"])
    model, tokenizer = load_model(str(SMOLLM2)), load_tokenizer(str(SMOLLM2))
    sets = resolve_problems(cfg)

    played: dict[int, list] = {}

    def run_one(size: str, _round: int) -> dict:
        c = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, batch_size=int(size)))
        t0 = time.perf_counter()
        eps = play_models(c, {"base": None}, sets, [0], controls=("feedback",), pass_at_k=0, turns=2, model=model,
                          tokenizer=tokenizer)["base"]["feedback"][0]
        seconds = time.perf_counter() - t0
        tokens = sum(r == Role.STUDENT for e in eps for r in e.token_roles)
        played.setdefault(int(size), []).append([(e.problem_id, e.token_ids) for e in eps])
        acc = [sum(e.solved_at is not None and e.solved_at <= t for e in eps) / len(eps) for t in (1, 2)]
        return {"seconds": seconds, "student_tokens": tokens, "tokens_per_s": tokens / seconds, "acc_at": acc}

    runs = harness.alternate([str(s) for s in sizes], args.rounds, run_one)
    reference = played[sizes[0]][0]
    identical = {s: min(sum(a == b for a, b in zip(p, reference)) / len(reference) for p in played[s]) for s in sizes}
    by_size = {s: {"seconds": harness.spread([r["seconds"] for r in runs[str(s)]]),
                   "tokens_per_s": harness.spread([r["tokens_per_s"] for r in runs[str(s)]]),
                   "student_tokens": [r["student_tokens"] for r in runs[str(s)]],
                   "acc_at": [r["acc_at"] for r in runs[str(s)]],
                   "identical_episodes": identical[s]} for s in sizes}
    fastest = min(sizes, key=lambda s: by_size[s]["seconds"]["median"])
    record = harness.result(
        "eval_batch", torch.device("cpu"), model="SmolLM2-135M-Instruct (fp32)", threads=torch.get_num_threads(),
        workload=f"base model, {args.problems} math problems (difficulty 1), T=2, programmatic teacher, "
                 "48-token answers, temperature 0.7, controls hints, no pass@K",
        by_batch_size=by_size, fastest=fastest,
        speedup_vs_old_default=(by_size[OLD_DEFAULT]["seconds"]["median"] / by_size[fastest]["seconds"]["median"]
                                if OLD_DEFAULT in by_size else None))
    if args.out:
        harness.write_result(record, args.out)
    else:
        print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
