"""One GRPO step, end to end: rl2f's trainer vs TRL's GRPOTrainer + PEFT on the same batch.

Both train a LoRA (r16, alpha 32, all 7 projections) on one checkpoint with the same step:
`--prompts` prompts x `--group` samples of up to `--new-tokens` tokens at temperature 1,
single turn (the shape both trainers share), beta 0, clip 0.2 / 0.28, one optimiser step
per rollout, and the same gradient checkpointing (rl2f turns it on on CUDA only, so TRL
gets it on CUDA and off on CPU; the result records the setting). The reward is a fixed
pseudo-random bit of the completion text, so groups have variance and no step is skipped;
a group whose rewards happen to be equal (likelier with small groups or a real model's
repeated completions) is still trained by rl2f (`train.drop_zero_variance=false`), as TRL
trains it, so both back-propagate the same batch.

Fairness: each provider runs in a fresh subprocess, `--rounds` times, in an order that flips
each round (rl2f, trl, trl, rl2f, ...), so load that drifts during the run hits both alike.
Per run (median over the steps after `--warmup`): step time split into rollout / log-prob
(forward + loss) / backward / optimiser, generated tokens per second of the whole step, and
peak memory (GPU: max_memory_allocated; CPU: the process's peak RSS). Reported: each
provider's median and spread over rounds, and `rl2f_vs_trl`, the median, min and max of the
per-round ratios (throughput: rl2f tokens/s over TRL's; memory: rl2f peak over TRL's).
TRL runs only where `trl`, `peft` and `datasets` import (never product dependencies: see
benchmarks/requirements.txt); otherwise it is recorded as skipped.

    python -m benchmarks.bench_grpo_step                          # CPU: the tiny model
    python -m benchmarks.bench_grpo_step --rounds 5               # the README's CPU numbers
    python -m benchmarks.bench_grpo_step --configs tiny,1b        # GPU: + a Llama-3.2-1B-shaped model
    python -m benchmarks.bench_grpo_step --configs smollm2        # the fetched SmolLM2-135M-Instruct

Configs: `tiny` (the embedded 2-layer Llama), `1b` (random weights in Llama-3.2-1B's shape with
the tiny tokenizer), `smollm2` (the checkpoint `rl2f fetch-model smollm2` converted, read from
its cache directory by both providers: rl2f's loader and transformers' AutoModelForCausalLM /
AutoTokenizer; never downloaded here). On a real instruct model a completion may stop at the
end-of-turn token before `--new-tokens`, so the tokens counted are the ones generated.

The last line of output is one JSON object; it is also written to
benchmarks/results/grpo_step-<device>.json (grpo_step.<configs>-<device>.json when --configs
is not the default).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.device import device_slug
from benchmarks.shapes import LLAMA_1B

# rl2f is imported inside the functions that use it, not at the top, so that TRL's process
# (whose peak memory is measured) holds none of it.
PHASES = ("rollout_s", "logprob_s", "backward_s", "optim_s", "step_s")
PROVIDERS = ("rl2f", "trl")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def reward_bit(text: str) -> float:
    """The benchmark's reward: a stable pseudo-random bit of the completion."""
    return float(zlib.crc32(text.encode()) % 2)


def prompts(n: int) -> list[str]:
    return [f"Secret 2-digit number, digit sum {3 + i % 15}. Answer: ?" for i in range(n)]


# --------------------------------------------------------------------------- checkpoints
CONFIGS = ("tiny", "1b", "smollm2")


def write_checkpoint(out: Path, name: str) -> Path:
    """The tiny embedded checkpoint (Llama family, so transformers and TRL load it as is),
    random weights in Llama-3.2-1B's shape with the tiny tokenizer, or the fetched SmolLM2
    (its cache directory as it is: nothing is written)."""
    from rl2f.model import build_tiny_checkpoint

    if name == "tiny":
        return build_tiny_checkpoint(out, family="llama")
    if name == "smollm2":
        return smollm2_dir()
    from rl2f.model import tokenizer as tok_mod
    from rl2f.model.tiny import build_tiny_model, write_checkpoint as write

    tok = tok_mod.build_tiny_tokenizer("llama")
    hf, model = build_tiny_model("llama", LLAMA_1B["vocab_size"], 0,
                                 **{k: v for k, v in LLAMA_1B.items() if k != "vocab_size"})
    write(out, hf, model)
    tok_mod.write_tokenizer(tok, out, "llama")
    return out


def smollm2_dir() -> Path:
    """The checkpoint `rl2f fetch-model smollm2` made; a clear exit where it is missing."""
    from rl2f.model.gguf import model_dir

    path = model_dir("smollm2")
    if not (path / "config.json").is_file():
        raise SystemExit(f"{path} is missing: run `rl2f fetch-model smollm2` first")
    return path


# --------------------------------------------------------------------------- providers
def run_rl2f(args, ckpt: Path) -> list[dict]:
    from rl2f.config import RunConfig, load_config
    from rl2f.tasks.base import Problem, Verdict
    from rl2f.tasks.secret import SecretNumberTask
    from rl2f.train.grpo import train_grpo

    class BenchTask(SecretNumberTask):
        def problems(self, n, seed=0, split="train"):
            return [Problem(f"bench-{i}", p, "0") for i, p in enumerate(prompts(n))]

        def verify(self, text, problem):
            return Verdict(bool(reward_bit(text)), None)

    gpu = args.device == "cuda"
    sets = [f'model.path="{ckpt}"', f'model.dtype="{"bfloat16" if gpu else "float32"}"',
            'train.method="rlvr"', f"task.n_train={args.prompts}", f"rollout.group_size={args.group}",
            f"rollout.problems_per_batch={args.prompts}", f"rollout.max_new_tokens={args.new_tokens}",
            "rollout.temperature=1.0", "lora.rank=16", "lora.alpha=32.0", "train.lr=1e-5",
            f"train.micro_batch={args.micro_batch}", f"train.max_steps={args.warmup + args.steps}",
            "train.beta=0.0", "train.clip_low=0.2", "train.clip_high=0.28",
            "train.drop_zero_variance=false"]  # TRL trains a group whose rewards are all equal too
    cfg = load_config(RunConfig, None, sets)
    with tempfile.TemporaryDirectory() as out:
        train_grpo(cfg, out, task=BenchTask())
        rows = [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    steps = []
    for r in rows:
        step_s = r["tokens"] / r["tokens_per_s"]
        steps.append({"rollout_s": r.get("rollout_s", 0.0), "logprob_s": r.get("logprob_s", 0.0),
                      "backward_s": r.get("backward_s", 0.0), "optim_s": r.get("optim_s", 0.0),
                      "step_s": step_s, "gen_tokens": r["student_tokens"], "peak_mem_mb": r["peak_mem_mb"],
                      "reward_mean": r["reward_mean"]})
    return steps


def run_trl(args, ckpt: Path) -> list[dict]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    gpu = args.device == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=dtype)
    n_steps = args.warmup + args.steps
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]}
                            for p in prompts(args.prompts) * n_steps])

    def reward(completions, **kw):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [reward_bit(t) for t in texts]

    timers: dict[str, float] = {}
    gen_tokens = [0]

    def timed(obj, name, key):
        fn = getattr(obj, name)

        def wrapper(*a, **k):
            if gpu:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            if gpu:
                torch.cuda.synchronize()
            timers[key] = timers.get(key, 0.0) + time.perf_counter() - t0
            if key == "rollout_s" and isinstance(out, dict) and "completion_mask" in out:
                gen_tokens[0] += int(out["completion_mask"].sum())
            return out

        setattr(obj, name, wrapper)

    steps: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            timers.clear()
            gen_tokens[0] = 0
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            self.t0 = time.perf_counter()

        def on_pre_optimizer_step(self, *a, **k):
            self.o0 = time.perf_counter()

        def on_optimizer_step(self, *a, **k):
            timers["optim_s"] = time.perf_counter() - self.o0

        def on_step_end(self, *a, **k):
            step_s = time.perf_counter() - self.t0
            steps.append({**{p: timers.get(p, 0.0) for p in PHASES}, "step_s": step_s,
                          "gen_tokens": gen_tokens[0], "peak_mem_mb": peak_mb(args.device)})

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group, max_completion_length=args.new_tokens, temperature=1.0,
        beta=0.0, epsilon=0.2, epsilon_high=0.28, num_iterations=1, learning_rate=1e-5,
        max_steps=n_steps, logging_steps=1, report_to=[], save_strategy="no", seed=0,
        use_cpu=not gpu, bf16=gpu, gradient_accumulation_steps=1, dataloader_num_workers=0,
        gradient_checkpointing=gradient_checkpointing(args.device),
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=ds, processing_class=tok,
                          peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM"),
                          callbacks=[Clock()])
    timed(trainer, "_generate_and_score_completions", "rollout_s")
    timed(trainer, "compute_loss", "logprob_s")
    timed(trainer.accelerator, "backward", "backward_s")
    trainer.train()
    return steps


def gradient_checkpointing(device: str) -> bool:
    """rl2f's setting (on on CUDA, off elsewhere: rl2f/train), given to TRL too."""
    return device == "cuda"


def peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return harness.peak_rss_mb()


def summarize(steps: list[dict], warmup: int) -> dict:
    use = steps[warmup:] or steps
    out = {p: statistics.median(s[p] for s in use) for p in PHASES}
    out["gen_tokens_per_step"] = statistics.median(s["gen_tokens"] for s in use)
    out["tokens_per_s"] = out["gen_tokens_per_step"] / out["step_s"]
    out["peak_mem_mb"] = max(s["peak_mem_mb"] for s in steps)
    out["steps_measured"] = len(use)
    return out


# --------------------------------------------------------------------------- driver
def child(args) -> None:
    fn = {"rl2f": run_rl2f, "trl": run_trl}[args.child]
    steps = fn(args, Path(args.ckpt))
    print(json.dumps(summarize(steps, args.warmup)))


def missing(provider: str) -> str | None:
    """Why a provider cannot run here, or None."""
    if provider == "rl2f":
        return None
    absent = [m for m in ("trl", "peft", "datasets") if importlib.util.find_spec(m) is None]
    return f"not installed: {', '.join(absent)} (bash install.sh test,bench)" if absent else None


def run_child(provider: str, ckpt: Path, args) -> dict:
    argv = ["--child", provider, "--ckpt", str(ckpt), "--device", args.device, "--prompts", str(args.prompts),
            "--group", str(args.group), "--new-tokens", str(args.new_tokens), "--micro-batch",
            str(args.micro_batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    proc = harness.run_module(argv, env={"PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return harness.last_json(proc.stdout)


def bench_config(name: str, args) -> dict:
    """Alternating rounds of every provider on one checkpoint; medians, spreads, ratios."""
    row: dict = {}
    providers = []
    for p in args.providers:
        if reason := missing(p):
            row[p] = {"skipped": reason}
        else:
            providers.append(p)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_checkpoint(Path(tmp) / name, name)
        if name == "smollm2":
            row["checkpoint"] = str(ckpt)

        def one(provider, r):
            out = run_child(provider, ckpt, args)
            print(f"{name} round {r + 1} {provider}: {json.dumps(out)[:300]}", flush=True)
            return out

        runs = harness.alternate(providers, args.rounds, one)
    for provider, rs in runs.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            row[provider] = {"error": rs[-1]["error"]}
            continue
        row[provider] = {k: harness.spread([r[k] for r in ok]) for k in (*PHASES, "tokens_per_s", "peak_mem_mb")}
        row[provider]["gen_tokens_per_step"] = statistics.median(r["gen_tokens_per_step"] for r in ok)
        row[provider]["rounds"] = ok
        if len(ok) < len(rs):
            row[provider]["errors"] = [r["error"] for r in rs if "error" in r]
    pairs = [(a, b) for a, b in zip(runs.get("rl2f", []), runs.get("trl", [])) if "error" not in a and "error" not in b]
    if pairs:
        row["rl2f_vs_trl"] = {
            "throughput": harness.spread([a["tokens_per_s"] / b["tokens_per_s"] for a, b in pairs]),
            "step_time": harness.spread([b["step_s"] / a["step_s"] for a, b in pairs]),
            "memory_ratio": harness.spread([a["peak_mem_mb"] / b["peak_mem_mb"] for a, b in pairs]),
        }
    return row


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=None,
                    help="comma list of tiny, 1b, smollm2 (default: tiny on CPU, tiny,1b on GPU)")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--micro-batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="measured steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="steps per run before the measured ones")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each provider, alternating order")
    ap.add_argument("--out", default=None, help="result file (default benchmarks/results/grpo_step-<device>.json)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    return ap


def main() -> None:
    args = parser().parse_args()
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.child:
        return child(args)
    args.providers = args.providers.split(",")
    if unknown := set(args.providers) - set(PROVIDERS):
        raise SystemExit(f"unknown provider(s) {', '.join(sorted(unknown))} ({', '.join(PROVIDERS)})")
    device = torch.device(args.device)
    gc = gradient_checkpointing(args.device)
    record = harness.result(
        "grpo_step", device,
        shape={"prompts": args.prompts, "group": args.group, "new_tokens": args.new_tokens,
               "micro_batch": args.micro_batch, "steps": args.steps, "warmup": args.warmup,
               "rounds": args.rounds, "lora": "r16 alpha32, 7 projections",
               "dtype": "bf16" if args.device == "cuda" else "fp32",
               "gradient_checkpointing": {"rl2f": gc, "trl": gc}},
        configs={})
    default = "tiny,1b" if args.device == "cuda" else "tiny"
    configs = (args.configs or default).split(",")
    if unknown := set(configs) - set(CONFIGS):
        raise SystemExit(f"unknown config(s) {', '.join(sorted(unknown))} ({', '.join(CONFIGS)})")
    for name in configs:
        record["configs"][name] = bench_config(name, args)
    stem = "grpo_step" if configs == default.split(",") else f"grpo_step.{'+'.join(configs)}"
    harness.write_result(record, args.out or harness.RESULTS / f"{stem}-{device_slug(device)}.json")


if __name__ == "__main__":
    main()
