"""The GPU suite: one command that proves the kernels, the model and the trainer on one GPU
and measures them, in at most 8 minutes on an H100/H200.

    python -m benchmarks.gpu_suite --out DIR         # on the GPU (as benchmarks/gpu_device.sh runs it)
    python -m benchmarks.gpu_suite --dry --out DIR   # every part at tiny shapes on the CPU (CI)
    python -m benchmarks.gpu_suite --parts kernels,engine --out DIR    # a subset, e.g. a rerun

Parts, in order (the most important first, so a run cut short keeps what matters):
1. correctness
   - kernel_tests: `pytest tests/kernels` (on a GPU: the compiled Triton kernels, fp32 and
     bf16; dry: the GRPO-loss tests only, Triton in its interpreter);
   - head_shape: at Gemma 3 12B's head (N=8192 tokens, H=3840, V=262144, bf16) the fused
     linear log-prob followed by the GRPO loss, forward and backward, with a frozen and a
     trained lm_head, against an fp32 reference computed in token chunks; it passes when
     each error of ours is at most twice that of eager bf16 torch on the same inputs
     (plus 1e-5; 1e-3 for the clip fraction and mean KL, where one token at the clip edge
     may flip), i.e. no worse than what trainers use today, and eager's own lp error is
     at most 0.1 (which pins the reference as well);
   - model_logits: our logits against transformers' for a random Llama and a random
     Gemma 3 checkpoint, in fp32 (max |diff| <= 2e-3) and in bf16 (mean |diff| to
     transformers' fp32 at most 1.5x that of transformers' own bf16, plus 1e-3);
   - engine_logprobs: the built-in engine's sampled log-probs against a teacher-forced
     forward pass over prompt + completion (fp32: max |diff| <= 1e-3; bf16: mean <= 0.03).
2. kernels: `linear_token_logprobs` at that shape (frozen lm_head; ours, eager torch,
   torch.compile, ours' torch path, torch's linear_cross_entropy, Liger-Kernel's fused
   linear cross entropy, Cut Cross-Entropy), forward and forward+backward, time and peak
   memory; `token_logprobs` (N=8192, V=262144, bf16) with its bandwidth as a fraction of
   the copy bandwidth measured in the same run; the issue's goals evaluated (dry: no
   torch.compile, whose CPU compile time would prove nothing about the GPU run).
3. engine: the built-in engine vs transformers' `generate` (and vLLM where it imports) on a
   random Llama-3.2-1B-shaped model, bf16, 64 prompts x 256 new tokens, plus the
   multi-turn case (benchmarks/bench_engine.py).
4. grpo_step: one GRPO step on the same 1B shape, rl2f vs TRL GRPOTrainer + PEFT, the same
   gradient checkpointing, split into rollout / log-prob / backward / optimiser
   (benchmarks/bench_grpo_step.py, in subprocesses).

Peers that are not installed (Liger-Kernel, Cut Cross-Entropy, TRL, vLLM) are recorded as
skipped with the reason. `--wheels DIR` (default benchmarks/.wheels, filled by
benchmarks/gpu_wheels.sh) is pip-installed into a temporary folder put on sys.path and
PYTHONPATH first, for machines that cannot reach a package index.

Output: DIR/gpu_suite-<tag>.json holds every part (status, seconds, results); each part's
results are also written as DIR/<name>-<tag>.json in the formats of the single benchmarks
(tag: `cuda`, or `dry`), ready to copy into benchmarks/results/. Exit status 1 when a
correctness check failed or a part broke. Parts past `--budget-s` are skipped and say so.
"""
from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from argparse import Namespace
from pathlib import Path

import torch

from benchmarks import bench_engine, bench_linear_token_logprobs, bench_token_logprobs, harness, ops
from benchmarks.device import device_name
from benchmarks.shapes import GEMMA3_12B_HEAD
from rl2f.engine import BuiltinEngine, SamplingParams
from rl2f.kernels import grpo_token_loss, grpo_token_loss_reference, linear_token_logprobs
from rl2f.model import load_model, tiny_config
from rl2f.model.tiny import build_tiny_model, write_checkpoint

PARTS = ("correctness", "kernels", "engine", "grpo_step")
DEFAULT_WHEELS = harness.ROOT / "benchmarks" / ".wheels"


# --------------------------------------------------------------------------- peers from wheels
def install_wheels(folder: Path) -> dict:
    """pip-install (no index, no deps) the wheels of `folder` whose distribution is missing,
    into a temporary folder put first on sys.path and PYTHONPATH (subprocesses see it too)."""
    if not folder.is_dir():
        return {"status": f"no wheel folder {folder}"}
    present, needed = [], []
    for wheel in sorted(folder.glob("*.whl")):
        dist = wheel.name.split("-")[0]
        try:
            present.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            needed.append(wheel)
    out = {"already_installed": present, "installed": [w.name for w in needed]}
    if needed:
        target = Path(tempfile.gettempdir()) / "rl2f-bench-site"
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                               "--no-compile", "--upgrade", "--target", str(target), *map(str, needed)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return {**out, "status": "pip failed: " + proc.stderr.strip()[-500:]}
        sys.path.insert(0, str(target))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
        importlib.invalidate_caches()
    return {**out, "status": "ok"}


# --------------------------------------------------------------------------- 1. correctness
def errors(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    d = (ours.float() - ref.float())
    return {"max_abs": d.abs().max().item(), "mean_abs": d.abs().mean().item(),
            "rel_l2": (d.norm() / ref.float().norm().clamp(min=1e-30)).item()}


def kernel_tests(dry: bool, timeout: float) -> dict:
    paths = ["tests/kernels/test_grpo_token_loss.py"] if dry else ["tests/kernels"]
    # compiling the Triton kernels for every tested shape is CPU work: spread it where xdist is
    workers = [] if dry or importlib.util.find_spec("xdist") is None else ["-n", "4"]
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, *paths],
                              capture_output=True, text=True, cwd=harness.ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"passed": False, "status": f"timeout after {timeout:.0f}s"}
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail[0])}
    return {"passed": proc.returncode == 0 and counts.get("passed", 0) > 0, "returncode": proc.returncode,
            "counts": counts, "paths": paths, "workers": workers, "summary": tail[0],
            "failures": [l for l in proc.stdout.splitlines() if l.startswith(("FAILED", "ERROR"))][:20]}


def chunked_reference(h, W, targets, chunk):
    """fp32 lp = log_softmax(h W^T)[target] in token chunks (never all (N, V) logits), and a
    closure giving (grad h, grad W) for an upstream gradient g: d lp / d z = onehot - p."""
    Wf = W.float()
    lp = torch.empty(h.shape[0], device=h.device)
    for s in range(0, h.shape[0], chunk):
        z = h[s:s + chunk].float() @ Wf.t()                                    # (c, V)
        lp[s:s + chunk] = z.gather(1, targets[s:s + chunk, None])[:, 0] - z.logsumexp(-1)

    def grads(g):
        gh, gW = torch.empty(h.shape, device=h.device), torch.zeros(Wf.shape, device=h.device)
        for s in range(0, h.shape[0], chunk):
            hf = h[s:s + chunk].float()
            z = hf @ Wf.t()                                                    # (c, V)
            d = torch.softmax(z, -1).neg_()
            d.scatter_add_(1, targets[s:s + chunk, None], torch.ones_like(d[:, :1]))
            d.mul_(g[s:s + chunk, None])                                       # g * (onehot - p)
            gh[s:s + chunk] = d @ Wf
            gW.addmm_(d.t(), hf)
        return gh, gW
    return lp, grads


def head_shape(shape: dict, device, dtype, chunk) -> dict:
    """Fused linear log-probs -> GRPO loss -> backward at the head shape, frozen and trained
    lm_head, ours and eager bf16 torch, both against the chunked fp32 reference."""
    N, H, V = shape["N"], shape["H"], shape["V"]
    gen = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(N, H, device=device, generator=gen).to(dtype)
    W = (torch.randn(V, H, device=device, generator=gen) / H ** 0.5 * 2).to(dtype)
    targets = torch.randint(0, V, (N,), device=device, generator=gen)
    lp_ref, ref_grads = chunked_reference(h, W, targets, chunk)
    old = lp_ref + 0.2 * torch.randn(N, device=device, generator=gen)
    ref_policy = lp_ref + 0.2 * torch.randn(N, device=device, generator=gen)
    adv = torch.randn(N, device=device, generator=gen)
    mask = torch.rand(N, device=device, generator=gen) > 0.1
    loss_args = dict(clip_low=0.2, clip_high=0.28, beta=0.04)

    leaf = lp_ref.clone().requires_grad_()
    ref_loss = grpo_token_loss_reference(leaf, old, ref_policy, adv, mask, **loss_args)
    ref_loss.loss.sum().backward()
    gh_ref, gW_ref = ref_grads(leaf.grad)
    del ref_grads

    def chain(lp_fn, loss_fn, weight_grad):
        hh = h.clone().requires_grad_()
        ww = W.clone().requires_grad_(weight_grad)
        lp = lp_fn(hh, ww, targets)
        out = loss_fn(lp, old, ref_policy, adv, mask, **loss_args)
        out.loss.sum().backward()
        res = {"lp": errors(lp.detach(), lp_ref), "loss": errors(out.loss.detach(), ref_loss.loss.detach()),
               "clip_fraction_diff": abs(out.clip_fraction.item() - ref_loss.clip_fraction.item()),
               "kl_mean_diff": abs(out.kl_mean.item() - ref_loss.kl_mean.item()),
               "grad_hidden": errors(hh.grad, gh_ref)}
        if weight_grad:
            res["grad_weight"] = errors(ww.grad, gW_ref)
        del hh, ww, lp, out
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return res

    out = {"shape": {**shape, "dtype": str(dtype).removeprefix("torch."), "reference_chunk": chunk},
           "criterion": "each error of ours <= 2 x eager torch's + 1e-5 (clip fraction, KL: + 1e-3); "
                        "eager's lp error <= 0.1"}
    passed = True
    for weight_grad in (False, True):
        name = "trained_head" if weight_grad else "frozen_head"
        ours = chain(linear_token_logprobs, grpo_token_loss, weight_grad)
        eager = chain(bench_linear_token_logprobs.eager, grpo_token_loss_reference, weight_grad)
        checks = {}
        for key in ("lp", "loss", "grad_hidden", "grad_weight"):
            if key in ours:
                metric = "max_abs" if key in ("lp", "loss") else "rel_l2"
                checks[f"{key}.{metric}"] = ours[key][metric] <= 2 * eager[key][metric] + 1e-5
        for key in ("clip_fraction_diff", "kl_mean_diff"):  # a token at the clip edge may flip
            checks[key] = ours[key] <= 2 * eager[key] + 1e-3
        # eager's own error bounds the reference too: bf16 logits of |z| <~ 10 round by <~ 0.04
        checks["eager lp.max_abs <= 0.1"] = eager["lp"]["max_abs"] <= 0.1
        out[name] = {"ours": ours, "eager_torch": eager, "checks": checks}
        passed &= all(checks.values())
    out["passed"] = passed
    return out


def hf_pair(family: str, path: Path, dry: bool) -> object:
    """A random transformers model of `family` (every weight perturbed off its init),
    saved to `path`; returns the fp32 model."""
    import transformers

    sizes = ({} if dry else dict(vocab_size=32000, hidden_size=512, intermediate_size=1536,
                                 num_attention_heads=8, num_key_value_heads=2, head_dim=64))
    if family == "gemma3":
        sizes.update(sliding_window=8 if dry else 32)  # < the sequence: local layers drop keys
        if not dry:
            sizes.update(query_pre_attn_scalar=64)
    hf = tiny_config(family, sizes.pop("vocab_size", 97), **sizes)
    kwargs = {k: v for k, v in hf.items() if k not in ("architectures", "model_type")}
    config = transformers.AutoConfig.for_model(hf["model_type"], **kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path)
    return model


def model_logits(device, dry: bool) -> dict:
    """Our logits vs transformers' (fp32 and bf16) for a random Llama and Gemma 3."""
    if importlib.util.find_spec("transformers") is None:
        return {"passed": None, "status": "skipped: transformers is not installed"}
    out, passed = {}, True
    T = 24 if dry else 128
    for family in ("llama", "gemma3"):
        with tempfile.TemporaryDirectory() as tmp:
            hf32 = hf_pair(family, Path(tmp), dry).to(device)
            ids = torch.randint(0, hf32.config.vocab_size, (2, T), device=device)
            with torch.no_grad():
                want = hf32(ids).logits.float()
                hf16 = hf32.to(torch.bfloat16)
                hf_bf16 = hf16(ids).logits.float()
                del hf32, hf16
                ours32 = load_model(tmp, dtype=torch.float32, device=device)(ids).float()
                ours16 = load_model(tmp, dtype=torch.bfloat16, device=device)(ids).float()
        row = {"fp32": errors(ours32, want), "bf16_ours_vs_hf_fp32": errors(ours16, want),
               "bf16_hf_vs_hf_fp32": errors(hf_bf16, want), "bf16_ours_vs_hf_bf16": errors(ours16, hf_bf16)}
        row["checks"] = {
            "fp32 max_abs <= 2e-3": row["fp32"]["max_abs"] <= 2e-3,
            "bf16 mean_abs <= 1.5 x transformers' + 1e-3":
                row["bf16_ours_vs_hf_fp32"]["mean_abs"] <= 1.5 * row["bf16_hf_vs_hf_fp32"]["mean_abs"] + 1e-3,
        }
        passed &= all(row["checks"].values())
        out[family] = row
    return {**out, "sequence": T, "passed": passed}


class _NoStop:
    stop_ids: list[int] = []
    pad_id = 0

    def decode(self, ids, skip_special_tokens=True):
        return ""


def engine_logprobs(device, dry: bool) -> dict:
    """Sampled log-probs of the built-in engine vs a forward pass over prompt + completion."""
    hf, model = build_tiny_model("llama", 97 if dry else 32000, 0,
                                 **({} if dry else dict(hidden_size=512, intermediate_size=1536)))
    out, passed = {}, True
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(tmp, hf, model)
        for dtype, limit in ((torch.float32, ("max_abs", 1e-3)), (torch.bfloat16, ("mean_abs", 0.03))):
            m = load_model(tmp, dtype=dtype, device=device)
            gen = torch.Generator().manual_seed(0)
            prompts = [torch.randint(1, hf["vocab_size"], (int(n),), generator=gen).tolist()
                       for n in torch.randint(4, 16 if dry else 64, (4 if dry else 16,), generator=gen)]
            res = BuiltinEngine(m, _NoStop(), max_batch_size=64).generate(
                prompts, SamplingParams(n=2 if dry else 4, temperature=1.0, max_tokens=8 if dry else 64, seed=0))
            got, want = [], []
            with torch.no_grad():
                for p, r in zip(prompts, res):
                    for c in r.outputs:
                        ids = torch.tensor([p + c.token_ids], device=device)
                        logp = torch.log_softmax(m(ids)[0].float(), -1)             # (T, V)
                        pos = torch.arange(len(p) - 1, len(p) - 1 + len(c.token_ids), device=device)
                        want.append(logp[pos, torch.tensor(c.token_ids, device=device)])
                        got.append(torch.tensor(c.logprobs, device=device))
            err = errors(torch.cat(got), torch.cat(want))
            ok = err[limit[0]] <= limit[1]
            out[str(dtype).removeprefix("torch.")] = {**err, "criterion": f"{limit[0]} <= {limit[1]}", "passed": ok}
            passed &= ok
            del m
    return {**out, "passed": passed}


def part_correctness(opts, device, budget_left) -> dict:
    head = dict(N=64, H=32, V=1000) if opts.dry else dict(GEMMA3_12B_HEAD)
    out = {"kernel_tests": kernel_tests(opts.dry, timeout=max(60.0, min(150.0, budget_left() * 0.4)))}
    checks = (("head_shape", lambda: head_shape(head, device, torch.bfloat16, chunk=16 if opts.dry else 1024)),
              ("model_logits", lambda: model_logits(device, opts.dry)),
              ("engine_logprobs", lambda: engine_logprobs(device, opts.dry)))
    for name, fn in checks:
        try:
            out[name] = fn()
        except Exception as e:  # one broken check must not hide the others
            out[name] = {"passed": False, "status": f"error: {type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()[-2000:]}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out["passed"] = all(v.get("passed") is not False for v in out.values() if isinstance(v, dict))
    return out


# --------------------------------------------------------------------------- 2. kernels
def part_kernels(opts, device, budget_left) -> dict:
    """Both kernel benchmarks through the single scripts' own Case builders."""
    gpu = device.type == "cuda"
    shape = dict(N=64, H=32, V=1000) if opts.dry else dict(GEMMA3_12B_HEAD)
    reps, warmup = (1, 0) if opts.dry else (10, 3)
    modes = ("forward", "full")
    common = dict(device=str(device), dtype="bfloat16" if gpu else "float32", temperature=1.0)
    out = {}

    dry_goals = {"status": "dry run: the goals are for the GPU"}

    def build(module, **args):
        case = module.build(Namespace(**common, **args))
        if opts.dry:  # compiling on a CPU takes a minute of CI's time and proves nothing new
            case.providers["torch.compile"] = "dry run: not compiled on the CPU"
        return case

    linear = build(bench_linear_token_logprobs, **shape, softcap=None, weight_grad=False)
    run = ops.run_case(linear, device, modes=modes, reps=reps, warmup=warmup)
    record = harness.result(linear.op, device, op=linear.op, shape=linear.shape, notes=linear.notes,
                            peaks=run["peaks"], results=run["results"])
    record["goals"] = dry_goals if opts.dry else bench_linear_token_logprobs.goals(run["results"], run["peaks"], device)
    out["linear_token_logprobs"] = record

    tok = build(bench_token_logprobs, N=shape["N"], V=shape["V"])
    run = ops.run_case(tok, device, modes=modes, reps=reps, warmup=warmup)
    copy = harness.measured_copy_gbps(device)
    for row in run["results"]:
        if "gbps" in row:
            row["pct_measured_copy"] = 100 * row["gbps"] / copy
    run["peaks"]["measured_copy_gbps"] = copy
    record = harness.result(tok.op, device, op=tok.op, shape=tok.shape, notes=tok.notes,
                            peaks=run["peaks"], results=run["results"])
    goals = bench_token_logprobs.goals(run["results"], run["peaks"], device)
    ours = ops.find(run["results"], "ours", "full")
    if ours is not None and gpu:
        goals["full_pct_measured_copy"] = {"value": ours.get("pct_measured_copy"), "goal": ">= 80",
                                           "met": (ours.get("pct_measured_copy") or 0) >= 80}
    record["goals"] = dry_goals if opts.dry else goals
    out["token_logprobs"] = record
    return out


# --------------------------------------------------------------------------- 3. engine
def part_engine(opts, device, budget_left) -> dict:
    gpu = device.type == "cuda"
    eng = Namespace(providers=list(bench_engine.PROVIDERS), cases=["distinct", "multiturn"], rounds=1,
                    batch=64 if gpu else 4, group=8 if gpu else 2, prompt_len=128 if gpu else 8,
                    new_tokens=256 if gpu else 8, dialogues=16 if gpu else 2, turns=5 if gpu else 2,
                    turn_tokens=64 if gpu else 4, feedback_tokens=32 if gpu else 4)
    config = "tiny" if opts.dry else "1b"
    dtype = torch.bfloat16 if gpu else torch.float32
    record = harness.result("engine", device, dtype=str(dtype).removeprefix("torch."), unit="generated tokens/s",
                            shape={k: v for k, v in vars(eng).items() if k not in ("providers", "cases")},
                            results={})
    with tempfile.TemporaryDirectory() as tmp:
        record["results"][config] = bench_engine.bench_config(bench_engine.write_model(Path(tmp), config),
                                                              eng, device, dtype)
    ratio = record["results"][config].get("builtin_vs_hf_generate", {}).get("distinct")
    record["goals"] = {"status": "dry run: the goals are for the GPU"} if opts.dry else {
        "builtin_vs_hf_generate_distinct": {"value": ratio and ratio["median"], "goal": ">= 10",
                                            "met": bool(ratio and ratio["median"] >= 10)}}
    return {"engine": record}


# --------------------------------------------------------------------------- 4. GRPO step
def part_grpo_step(opts, device, budget_left) -> dict:
    out_file = Path(tempfile.mkdtemp()) / "grpo_step.json"
    sizes = (["--configs", "tiny", "--prompts", "2", "--group", "2", "--new-tokens", "4", "--micro-batch", "4",
              "--steps", "1", "--warmup", "0"] if opts.dry else
             ["--configs", "1b", "--steps", "2", "--warmup", "1"])
    cmd = [sys.executable, "-m", "benchmarks.bench_grpo_step", *sizes, "--rounds", "1", "--device", device.type,
           "--out", str(out_file)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=harness.ROOT,
                              timeout=max(30.0, budget_left()))
    except subprocess.TimeoutExpired:
        raise RuntimeError("bench_grpo_step ran out of the time budget") from None
    if proc.returncode != 0:
        raise RuntimeError("bench_grpo_step failed: " + proc.stderr.strip()[-1500:])
    return {"grpo_step": json.loads(out_file.read_text())}


# --------------------------------------------------------------------------- driver
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry", action="store_true", help="tiny shapes on the CPU")
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_suite_out", help="output folder (default $OUT)")
    ap.add_argument("--parts", default=",".join(PARTS), help="comma list of " + ",".join(PARTS))
    ap.add_argument("--budget-s", type=float, default=420.0, help="parts that would start later are skipped")
    ap.add_argument("--wheels", default=str(DEFAULT_WHEELS), help="folder of peer wheels to install first")
    opts = ap.parse_args()
    parts = opts.parts.split(",")
    if unknown := set(parts) - set(PARTS):
        raise SystemExit(f"unknown part(s) {', '.join(sorted(unknown))} ({', '.join(PARTS)})")
    if not opts.dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run with --dry for the CPU check")
    device = torch.device("cpu" if opts.dry else "cuda")
    tag = "dry" if opts.dry else "cuda"
    out_dir = Path(opts.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def budget_left() -> float:
        return opts.budget_s - (time.perf_counter() - t0)

    wheels = install_wheels(Path(opts.wheels))
    summary = harness.result("gpu_suite", device, dry=opts.dry, budget_s=opts.budget_s, wheels=wheels, parts={})
    print(f"# gpu suite on {device_name(device)} ({'dry' if opts.dry else 'real'}); wheels: {wheels['status']}",
          flush=True)
    runners = {"correctness": part_correctness, "kernels": part_kernels, "engine": part_engine,
               "grpo_step": part_grpo_step}
    failed = False
    for name in PARTS:
        if name not in parts:
            summary["parts"][name] = {"status": "skipped: not in --parts"}
        elif budget_left() <= 0:
            summary["parts"][name] = {"status": f"skipped: time budget of {opts.budget_s:.0f}s spent"}
        else:
            start = time.perf_counter()
            try:
                results = runners[name](opts, device, budget_left)
                ok = results.get("passed", True) is not False
                summary["parts"][name] = {"status": "ok" if ok else "failed", **results}
                failed |= not ok
                for key, record in results.items():  # the single benchmarks' file formats
                    if isinstance(record, dict) and "bench" in record:
                        (out_dir / f"{key}-{tag}.json").write_text(json.dumps(record, indent=1) + "\n")
                if name == "correctness":
                    (out_dir / f"correctness-{tag}.json").write_text(json.dumps(results, indent=1) + "\n")
            except Exception as e:  # a broken part must not sink the ones after it
                summary["parts"][name] = {"status": f"error: {type(e).__name__}: {str(e)[:1500]}",
                                          "traceback": traceback.format_exc()[-3000:]}
                failed = True
            summary["parts"][name]["seconds"] = time.perf_counter() - start
            gc.collect()  # the part's models, before the next part (or a subprocess) needs the GPU
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(f"# {name}: {summary['parts'][name]['status']} "
              f"({summary['parts'][name].get('seconds', 0):.0f}s)", flush=True)
        # written after every part: a run cut short still leaves what it measured
        (out_dir / f"gpu_suite-{tag}.json").write_text(json.dumps(summary, indent=1) + "\n")
    summary["seconds"] = time.perf_counter() - t0
    harness.write_result(summary, out_dir / f"gpu_suite-{tag}.json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
