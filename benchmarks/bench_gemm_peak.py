"""How much of the machine's fp32 GEMM peak rl2f reaches on a real model (SmolLM2-135M, CPU).

Three measurements per round, in an order that flips each round (harness.alternate), so load
that drifts during the run hits all alike:
  peak:   the best of a few large square fp32 matmuls (harness.matmul_peak_tflops: n = 1024
          and 2048 on CPU), timed now, in this process, with the same threads;
  train:  one training forward + backward of rl2f's trainer path (rl2f.train.batch: collate,
          forward_hidden, the fused gather_logprobs, grpo_loss; the LoRA of `--rank` on all 7
          projections, the base frozen, fp32, no gradient checkpointing as on CPU) on
          `--rows` x `--seq` tokens, every position a loss token;
  decode: the built-in engine (rl2f.engine.BuiltinEngine, base weights: a rollout with the
          adapter on folds it into them once per call, then decodes the same GEMMs) on
          `--decode-batch` prompts of `--prompt-len` tokens, no stop token; decode time is
          generate(`--decode-tokens`) minus generate(1 token) (the same prefill), over
          `--decode-batch` x (`--decode-tokens` - 1) decode tokens.

FLOPs counted (matmul FLOPs of the model, not of the implementation; norms, rotary,
softmax, sampling, the loss and the optimiser are not counted):
  P      = the weights of every matmul a token goes through: the 7 projections of each layer
           and the lm_head (for SmolLM2 tied to the embedding, whose lookup is a gather: 0).
  A(c)   = 4 x layers x heads x head_dim x c: attention scores and weighted values of one
           query token over c keys (causal: the t-th token of a row has c = t).
  LoRA   = sum over adapted projections of r x (d_in + d_out).
  train  (frozen base, N tokens):  forward 2NP + 2N LoRA + sum A
                                   backward 2NP (input gradients only: the frozen weights get
                                   no weight gradient) + 4N LoRA (input gradient through B and
                                   A, and the gradients of A and B) + 2 sum A
         = 4NP + 6N LoRA + 3 sum A.  (The usual 6NP assumes weight gradients for all of P; it
         is reported beside it as `flops_6NP`, not used for the fraction. rl2f's fp32 LoRA
         layer folds the update into the weight, so it executes fewer adapter FLOPs than
         counted: that shows up as a higher fraction, as it should.)
  decode (per generated token at context c):  2P + A(c).
Reported per measurement: achieved GFLOP/s, the peak GFLOP/s of the same round and the
fraction (median, min, max over rounds of the per-round fraction), plus the FLOP breakdown.

    python -m benchmarks.bench_gemm_peak                         # SmolLM2 (rl2f fetch-model smollm2)
    python -m benchmarks.bench_gemm_peak --configs tiny --rows 2 --seq 16 --rounds 1   # smoke

The last line of output is one JSON object; it is also written to
benchmarks/results/gemm_peak.<configs>-<device>.json (gemm_peak.smollm2-cpu.json by default).
"""
from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import torch

from benchmarks import harness
from benchmarks.bench_engine import _NoStopTokenizer  # every row runs its full budget
from benchmarks.device import device_slug

CONFIGS = ("smollm2", "tiny")
PARTS = ("peak", "train", "decode")


def checkpoint(name: str, tmp: Path) -> Path:
    """The fetched SmolLM2 (never downloaded here), or the embedded tiny Llama."""
    from rl2f.model import build_tiny_checkpoint
    from rl2f.model.gguf import model_dir

    if name == "tiny":
        return build_tiny_checkpoint(tmp / "tiny", family="llama")
    path = model_dir("smollm2")
    if not (path / "config.json").is_file():
        raise SystemExit(f"{path} is missing: run `rl2f fetch-model smollm2` first")
    return path


# --------------------------------------------------------------------------- FLOP counts
def matmul_shapes(model) -> list[tuple[str, int, int]]:
    """(name, d_in, d_out) of every matmul weight a token goes through: the Linear (and
    LoRALinear) layers of the decoder, then the lm_head."""
    out = []
    for name, mod in model.named_modules():
        if name == "lm_head":
            continue
        if isinstance(mod, torch.nn.Linear) or hasattr(mod, "lora_A"):
            out.append((name, mod.in_features, mod.out_features))
    head = model.lm_head.weight
    out.append(("lm_head", head.shape[1], head.shape[0]))
    return out


def lora_width(model) -> int:
    """sum of r x (d_in + d_out) over the adapted layers."""
    return sum(m.rank * (m.in_features + m.out_features) for m in model.modules() if hasattr(m, "lora_A"))


def attn_flops_per_key(cfg) -> int:
    """A(1): 4 x layers x heads x head_dim (scores and values of one query over one key)."""
    return 4 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim


def train_flops(P: int, lora: int, a1: int, rows: int, seq: int) -> dict:
    N = rows * seq
    keys = rows * seq * (seq + 1) // 2  # causal: the t-th token attends to t keys
    parts = {"base_fwd": 2 * N * P, "base_bwd_input_grad": 2 * N * P, "lora_fwd": 2 * N * lora,
             "lora_bwd": 4 * N * lora, "attn_fwd": a1 * keys, "attn_bwd": 2 * a1 * keys}
    return {"tokens": N, "parts": parts, "total": sum(parts.values()),
            "flops_6NP": 6 * N * P}


def decode_flops(P: int, a1: int, batch: int, prompt_len: int, tokens: int) -> dict:
    """Decode steps 1 .. tokens-1 (token 0 comes from the prefill): step k feeds position
    prompt_len + k - 1, which attends to prompt_len + k keys."""
    steps = tokens - 1
    keys = batch * sum(prompt_len + k for k in range(1, steps + 1))
    parts = {"weights": 2 * P * batch * steps, "attn": a1 * keys}
    return {"tokens": batch * steps, "parts": parts, "total": sum(parts.values())}


# --------------------------------------------------------------------------- measurements
def train_setup(path: Path, args):
    from rl2f.lora import apply_lora
    from rl2f.model import load_model
    from rl2f.train.batch import TrainSequence, collate

    model = apply_lora(load_model(path, dtype=torch.float32), rank=args.rank, alpha=2.0 * args.rank, seed=0)
    model.train()
    V = model.config.vocab_size
    rng = random.Random(0)
    seqs = []
    for _ in range(args.rows):  # seq + 1 ids: row b feeds ids[:-1] and predicts ids[1:]
        ids = [rng.randrange(1, V) for _ in range(args.seq + 1)]
        seqs.append(TrainSequence(ids, [0] + [1] * args.seq, [0] + [1] * args.seq,
                                  [rng.choice((-1.0, 1.0)) for _ in ids], [-3.0] * len(ids)))
    mb = collate(seqs, 0, torch.device("cpu"), share_prefix=False)
    return model, mb


def train_step(model, mb) -> None:
    """The trainer's micro-batch (rl2f/train/grpo.py): hidden states, fused log-probs, loss,
    backward; gradients dropped after."""
    from rl2f.train.batch import forward_hidden, gather_logprobs
    from rl2f.train.losses import grpo_loss

    hidden = forward_hidden(model, mb)
    logp = gather_logprobs(model, hidden, mb.loss_pos, mb.loss_targets)
    pl = grpo_loss(logp, mb.old_logprobs, None, mb.advantages, logp.numel(), 0.2, 0.28, 0.0)
    pl.loss.backward()
    model.zero_grad(set_to_none=True)


def decode_setup(path: Path, args):
    from rl2f.engine import BuiltinEngine
    from rl2f.model import load_model

    model = load_model(path, dtype=torch.float32)
    engine = BuiltinEngine(model, _NoStopTokenizer(), max_batch_size=args.decode_batch)
    return model, engine


def decode_time(engine, vocab: int, args, seed: int) -> dict:
    """generate(T) - generate(1) on fresh prompts (no prefix-cache hit): the decode seconds."""
    from rl2f.engine import SamplingParams

    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, vocab, (args.prompt_len,), generator=gen).tolist() for _ in range(args.decode_batch)]
    cpu = torch.device("cpu")

    def run(n):
        engine.release()
        sp = SamplingParams(n=1, temperature=1.0, max_tokens=n, seed=seed)
        return harness.wall_s(lambda: engine.generate(prompts, sp), cpu)

    first = run(1)
    full = run(args.decode_tokens)
    return {"generate_s": full, "prefill_s": first, "decode_s": max(full - first, 1e-9)}


def bench_config(name: str, args) -> dict:
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        path = checkpoint(name, Path(tmp))
        model, mb = train_setup(path, args)
        cfg = model.config
        P = sum(i * o for _, i, o in matmul_shapes(model))
        a1 = attn_flops_per_key(cfg)
        tflops = train_flops(P, lora_width(model), a1, args.rows, args.seq)
        _, engine = decode_setup(path, args)
        dflops = decode_flops(P, a1, args.decode_batch, args.prompt_len, args.decode_tokens)

        def one(part: str, r: int) -> dict:
            if part == "peak":
                return {"gflops": harness.matmul_peak_tflops(cpu, torch.float32) * 1e3}
            if part == "train":
                s = harness.wall_s(lambda: train_step(model, mb), cpu)
                return {"seconds": s, "gflops": tflops["total"] / s / 1e9}
            d = decode_time(engine, cfg.vocab_size, args, seed=r + 1)
            return {**d, "gflops": dflops["total"] / d["decode_s"] / 1e9,
                    "decode_tokens_per_s": dflops["tokens"] / d["decode_s"]}

        for part in PARTS:  # warm-up: allocator, lazy init, the first GEMMs
            one(part, -1)
        runs = harness.alternate(list(PARTS), args.rounds, one)
    for part in PARTS:
        print(f"  {name} {part:6s} " + " ".join(f"{x['gflops']:.1f}" for x in runs[part]) + " GFLOP/s", flush=True)
    peak = runs["peak"]
    out = {
        "model": {"path": str(path) if name != "tiny" else "embedded tiny Llama", "matmul_params_P": P,
                  "matmul_shapes": sorted({(i, o) for _, i, o in matmul_shapes(model)}),
                  "layers": cfg.num_hidden_layers, "heads": cfg.num_attention_heads, "head_dim": cfg.head_dim,
                  "lora_rank": args.rank, "lora_width": lora_width(model)},
        "peak_gflops": harness.spread([r["gflops"] for r in peak]),
        "train": {"flops": tflops, "seconds": harness.spread([r["seconds"] for r in runs["train"]]),
                  "gflops": harness.spread([r["gflops"] for r in runs["train"]]),
                  "fraction_of_peak": harness.spread([t["gflops"] / p["gflops"] for t, p in zip(runs["train"], peak)]),
                  "gflops_6NP": harness.spread([tflops["flops_6NP"] / r["seconds"] / 1e9 for r in runs["train"]])},
        "decode": {"flops": dflops, "decode_s": harness.spread([r["decode_s"] for r in runs["decode"]]),
                   "prefill_s": harness.spread([r["prefill_s"] for r in runs["decode"]]),
                   "decode_tokens_per_s": harness.spread([r["decode_tokens_per_s"] for r in runs["decode"]]),
                   "gflops": harness.spread([r["gflops"] for r in runs["decode"]]),
                   "fraction_of_peak": harness.spread([d["gflops"] / p["gflops"] for d, p in zip(runs["decode"], peak)])},
        "rounds": runs,
    }
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="smollm2", help="comma list of " + ",".join(CONFIGS))
    ap.add_argument("--rows", type=int, default=8, help="train: rows of the micro-batch")
    ap.add_argument("--seq", type=int, default=256, help="train: tokens per row")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank on all 7 projections (alpha = 2 x rank)")
    ap.add_argument("--decode-batch", type=int, default=32, help="decode: rows decoded together")
    ap.add_argument("--prompt-len", type=int, default=64, help="decode: prompt tokens per row")
    ap.add_argument("--decode-tokens", type=int, default=65, help="decode: tokens generated per row")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of peak, train and decode, alternating order")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--out", default=None,
                    help="result file (default benchmarks/results/gemm_peak.<configs>-<device>.json)")
    return ap


def main() -> None:
    args = parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.decode_tokens < 2:
        raise SystemExit("--decode-tokens must be >= 2 (one decode step at least)")
    configs = args.configs.split(",")
    if unknown := set(configs) - set(CONFIGS):
        raise SystemExit(f"unknown config(s) {', '.join(sorted(unknown))} ({', '.join(CONFIGS)})")
    device = torch.device("cpu")
    record = harness.result(
        "gemm_peak", device, dtype="float32", unit="GFLOP/s",
        shape={k: getattr(args, k) for k in ("rows", "seq", "rank", "decode_batch", "prompt_len",
                                             "decode_tokens", "rounds")},
        flop_formula={"train": "4NP + 6N*sum r(d_in+d_out) + 3*sum_attn (frozen base: forward 2NP, input "
                               "gradient 2NP, no weight gradient)",
                      "decode": "2P + 4*layers*heads*head_dim*context per generated token",
                      "peak": "best of square fp32 matmuls n=1024,2048: 2n^3 / time"},
        results={})
    for name in configs:
        print(f"{name}:", flush=True)
        record["results"][name] = bench_config(name, args)
    stem = f"gemm_peak.{'+'.join(configs)}"
    harness.write_result(record, args.out or harness.RESULTS / f"{stem}-{device_slug(device)}.json")


if __name__ == "__main__":
    main()
