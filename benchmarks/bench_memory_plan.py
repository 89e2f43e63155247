"""The memory plan (`rl2f plan-memory`) against measured peaks, phase by phase, on the CPU.

    python -m benchmarks.bench_memory_plan --out benchmarks/results/memory_plan-cpu.json
    python -m benchmarks.bench_memory_plan --cases tiny

Each case runs two GRPO steps of a config through `rl2f.train.grpo.train_grpo` in a fresh
process under torch's profiler with `profile_memory=True`: every tensor allocation and free
of the CPU allocator, in order. The running sum is the bytes of live tensors (the CPU
analogue of `torch.cuda.memory_allocated`); its maximum inside each phase of the SECOND step
(the trainer's `rl2f:<phase>` profiler ranges: rollout, logprob + backward = train, optim;
AdamW's moments exist from the first step on) is the measured peak.

The plan is evaluated twice per case: at the sizes the step really had (the largest KV cache
the engine allocated, the largest prefill and micro-batch, the tokens the prefix cache
kept; recorded by wrapping those calls, nothing else changes), where its error is the
memory model's; and at the config's worst case (`rl2f plan-memory`), which must not be below
the measurement. `train.drop_zero_variance = false` makes every step train (SmolLM2 solves
few problems: with all-zero groups dropped nothing would be measured).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import torch

from benchmarks import harness
from rl2f.model.gguf import model_dir

SMOLLM2 = model_dir("smollm2")  # where `rl2f fetch-model smollm2` writes it
COMMON = ["train.max_steps=2", "train.drop_zero_variance=false", "train.save_every=0", "model.device=\"cpu\""]
CASES = {
    # the tiny model on its own RL2F config (number guessing, 4 turns, 8 x 8 rows)
    "tiny": ["configs/tiny-rl2f.toml"],
    # SmolLM2-135M-Instruct on generated arithmetic, fp32
    "smollm2": ["configs/tiny-rl2f.toml", f"model.path=\"{SMOLLM2}\"", "task.name=\"math\"",
                "task.options={difficulty=1}", "rollout.problems_per_batch=2", "rollout.group_size=4",
                "rollout.max_turns=3", "rollout.max_new_tokens=48", "train.micro_batch=8"],
}
PHASES = {"rollout": "rollout", "logprob": "train", "backward": "train", "optim": "optim"}
TOLERANCE = 0.15


class Observed:
    """The sizes of one step's largest allocations, recorded by wrapping the calls that make
    them (the KV cache, prefill and training forwards, the prefix cache's store)."""

    def __init__(self):
        self.rows = self.context_tokens = self.prefill_tokens = self.kept_tokens = self.micro_tokens = 0

    def reset(self):
        self.__init__()

    def install(self):
        from rl2f.engine import builtin
        from rl2f.model.modeling import CausalLM

        new_cache, hidden_states, store = CausalLM.new_cache, CausalLM.hidden_states, builtin.PrefixCache.store
        obs = self

        def new_cache_(model, batch_size, max_len, dtype=None):
            if batch_size * max_len > obs.rows * obs.context_tokens:
                obs.rows, obs.context_tokens = batch_size, max_len
            return new_cache(model, batch_size, max_len, dtype)

        def hidden_states_(model, input_ids, *a, **kw):
            key = "prefill_tokens" if torch.is_inference_mode_enabled() else "micro_tokens"
            if not (key == "prefill_tokens" and input_ids.shape[-1] == 1):  # decode steps are not prefills
                setattr(obs, key, max(getattr(obs, key), input_ids.numel()))
            return hidden_states(model, input_ids, *a, **kw)

        def store_(cache, *a, **kw):
            out = store(cache, *a, **kw)
            obs.kept_tokens = max(obs.kept_tokens, cache.tokens)
            return out

        CausalLM.new_cache, CausalLM.hidden_states, builtin.PrefixCache.store = new_cache_, hidden_states_, store_


def child(case: str) -> None:
    """Runs in a fresh process: two steps under the profiler; prints peaks and sizes as JSON."""
    from torch.profiler import ProfilerActivity, profile

    from rl2f.config import RunConfig, load_config
    from rl2f.train.grpo import train_grpo

    config, *overrides = CASES[case]
    cfg = load_config(RunConfig, config, [*COMMON, *overrides])
    obs = Observed()
    obs.install()
    with tempfile.TemporaryDirectory() as out, \
            profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_grpo(cfg, out)
    events = prof.profiler.kineto_results.events()
    ranges = sorted((e.start_ns(), e.end_ns(), e.name()[len("rl2f:"):]) for e in events
                    if e.name().startswith("rl2f:") and e.name()[len("rl2f:"):] in PHASES)
    # the last occurrence of each phase: the second step's
    last = {}
    for start, end, name in ranges:
        last[name] = (start, end)
    allocations = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live, peaks = 0, {}
    for t, n in allocations:
        live += n
        for name, (start, end) in last.items():
            if start <= t <= end:
                phase = PHASES[name]
                peaks[phase] = max(peaks.get(phase, 0), live)
    # sizes of the whole run: the second step's are of the same kind, and the plan is per step
    print(json.dumps({"peaks": peaks, "observed": vars(obs)}))


def compare(case: str, measured: dict) -> dict:
    from rl2f.config import RunConfig, load_config
    from rl2f.memory_plan import Shapes, model_config_for, plan_memory

    config, *overrides = CASES[case]
    cfg = load_config(RunConfig, config, [*COMMON, *overrides])
    mc = model_config_for(cfg)
    at_observed = plan_memory(cfg, mc, 1, "cpu", shapes=Shapes(**measured["observed"])).as_dict()["phases"]
    worst = plan_memory(cfg, mc, 1, "cpu").as_dict()["phases"]
    rows = {}
    for phase, peak in measured["peaks"].items():
        predicted = at_observed[phase]["total"]
        rows[phase] = {"measured_mib": round(peak / 2**20, 1), "planned_mib": round(predicted / 2**20, 1),
                       "error": round(predicted / peak - 1, 4),
                       "worst_case_mib": round(worst[phase]["total"] / 2**20, 1),
                       "planned_items_mib": {k: round(v / 2**20, 1) for k, v in at_observed[phase].items()
                                             if k != "total" and v}}
    return {"config": CASES[case] + COMMON, "observed": measured["observed"], "phases": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="tiny,smollm2")
    ap.add_argument("--out", default=None, help="also write the result here (results/memory_plan-cpu.json)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    results = {}
    for case in args.cases.split(","):
        res = harness.run_module(["--child", case], timeout=1800)
        if res.returncode != 0:
            raise SystemExit(f"{case} failed:\n{res.stderr[-3000:]}")
        results[case] = compare(case, harness.last_json(res.stdout))
        for phase, row in results[case]["phases"].items():
            print(f"{case:>8} {phase:<8} measured {row['measured_mib']:8.1f} MiB  planned {row['planned_mib']:8.1f} "
                  f"({row['error']:+.1%})  worst case {row['worst_case_mib']:8.1f}", flush=True)
    worst_error = max(abs(r["error"]) for c in results.values() for r in c["phases"].values())
    record = harness.result("memory_plan", torch.device("cpu"), tolerance=TOLERANCE,
                            max_abs_error=round(worst_error, 4), within_tolerance=worst_error <= TOLERANCE,
                            results=results)
    if args.out:
        harness.write_result(record, args.out)
    else:
        print(json.dumps(record))
    if worst_error > TOLERANCE:
        sys.exit(1)


if __name__ == "__main__":
    main()
