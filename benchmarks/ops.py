"""The driver of the kernel microbenchmarks (bench_token_logprobs, bench_linear_token_logprobs,
bench_grpo_loss): one op, its providers, modes forward / backward / full.

Each script describes its op as a `Case` (inputs, providers, work model) and calls `main`.
For every provider and mode the driver measures time (harness.time_ms) and peak extra memory:
on a GPU in the same process; on CPU in a fresh subprocess per provider (`--child-memory`),
so nothing leaks between them. Device facts and peaks (HBM bandwidth, a matmul peak
measured in the same run) go into the result, written to benchmarks/results/<op>-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Callable

import torch

from benchmarks import harness
from benchmarks.device import device_name, device_slug

MODES = ("forward", "backward", "full")
DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
          "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}


@dataclass
class Case:
    """What a benchmark script hands the driver."""
    op: str
    shape: dict                                   # recorded with the results
    make_inputs: Callable[[], dict]               # fresh inputs; leaves that need grad say so
    providers: dict                               # name -> fn(inputs) -> output, or skip reason
    work: Callable[[str], dict] = lambda mode: {}  # mode -> {"bytes": .., "flops": ..}
    modes: tuple = MODES
    rate_modes: tuple = MODES                     # where a rate means something for every provider
    notes: list = field(default_factory=list)


def _grad_leaves(inputs):
    return [v for v in inputs.values() if isinstance(v, torch.Tensor) and v.requires_grad]


def mode_fns(fn, inputs, mode):
    """(setup, run) for one mode: forward runs with grad enabled, as in a training step."""
    leaves = _grad_leaves(inputs)
    cache = {}

    def grad_for(out):  # per-token outputs get a fixed random grad_output, scalars get 1
        if out.dim() == 0:
            return None
        if out.shape not in cache:
            cache[out.shape] = torch.randn(out.shape, device=out.device, dtype=out.dtype)
        return cache[out.shape]

    def clear():
        for leaf in leaves:
            leaf.grad = None

    if mode == "forward":
        return clear, lambda _: fn(inputs)
    if mode == "backward":
        def setup():
            clear()
            return fn(inputs)
        return setup, lambda out: out.backward(grad_for(out))

    def full(_):
        out = fn(inputs)
        out.backward(grad_for(out))
    return clear, full


def measure(case: Case, provider: str, mode: str, device, reps, warmup, memory=True) -> dict:
    """Time (and on a GPU peak memory) of one provider in one mode."""
    row = {"provider": provider, "mode": mode}
    setup, run = mode_fns(case.providers[provider], case.make_inputs(), mode)
    row.update(harness.time_ms(run, device, reps, warmup, setup))
    if memory and device.type == "cuda":
        row["peak_extra_mb"] = harness.cuda_peak_extra_mb(run, device, setup)
    return row


def _child_memory(case: Case, provider: str, mode: str) -> None:
    """Runs in a fresh process: warm up on the real inputs, then one measured run."""
    setup, run = mode_fns(case.providers[provider], case.make_inputs(), mode)
    run(setup())  # allocator pools, torch.compile, kernels: not part of the peak
    print(json.dumps({"peak_extra_mb": harness.rss_peak_extra_mb(run, setup)}))


def _cpu_memory_in_subprocess(provider: str, mode: str, argv: list, timeout: int) -> dict:
    # A fixed mmap threshold stops glibc from keeping freed big blocks on its heap, so RSS
    # tracks live tensors and the warm-up run does not pre-pay the measured run's memory.
    try:
        out = harness.run_module([*argv, "--child-memory", provider, "--child-mode", mode],
                                 timeout=timeout, env={"MALLOC_MMAP_THRESHOLD_": str(1 << 17)})
    except subprocess.TimeoutExpired:
        return {"memory_status": f"timeout after {timeout}s"}
    if out.returncode != 0:
        return {"memory_status": "error: " + (out.stderr.strip().splitlines() or ["?"])[-1]}
    return harness.last_json(out.stdout)


# --------------------------------------------------------------------------- CLI
def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="bfloat16 | float16 | float32")
    p.add_argument("--providers", default=None, help="comma list; default: all")
    p.add_argument("--modes", default=",".join(MODES), help="comma list of forward,backward,full")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--no-memory", action="store_true", help="time only")
    p.add_argument("--memory-only", action="store_true", help="memory only (CPU: subprocesses)")
    p.add_argument("--memory-timeout", type=int, default=1800, help="CPU child timeout, s")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (torch.set_num_threads); 1 is steadiest on a shared machine")
    p.add_argument("--out", default=None, help="result file (default results/<op>-<device>.json)")
    p.add_argument("--child-memory", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-mode", default="full", help=argparse.SUPPRESS)
    return p


def parse_dtype(name: str) -> torch.dtype:
    return DTYPES[name]


def shape_argv(args, names) -> list:
    """The shape flags of this run, to hand to a memory child."""
    argv = []
    for n in names:
        v = getattr(args, n)
        if isinstance(v, bool):
            argv += [f"--{n.replace('_', '-')}"] if v else []
        elif v is not None:
            argv += [f"--{n.replace('_', '-')}", str(v)]
    return argv


def run_case(case: Case, device, names=None, modes=MODES, reps=20, warmup=5, memory=True,
             cpu_memory: Callable[[str, str], dict] | None = None, matmul_peak=True) -> dict:
    """Every provider x mode of `case`, one printed line each: (env facts, rows).
    cpu_memory(provider, mode) measures CPU memory of a full pass (a subprocess)."""
    gpu = device.type == "cuda"
    peaks = {}
    peaks["hbm_peak_gbps"], peaks["hbm_peak_source"] = harness.hbm_peak_gbps(device)
    dtype = case.shape.get("dtype", "bfloat16")
    if "flops" in case.work("full") and matmul_peak:
        peaks["matmul_peak_tflops"] = harness.matmul_peak_tflops(device, parse_dtype(dtype))
        peaks["matmul_peak_dtype"] = dtype
    rows = []
    for name in names or list(case.providers):
        if name not in case.providers:
            raise SystemExit(f"unknown provider {name!r}; have {', '.join(case.providers)}")
        fn = case.providers[name]
        if isinstance(fn, str):  # a skip reason
            rows.append({"provider": name, "status": f"skipped: {fn}"})
            print(f"{name:>14}: skipped ({fn})", flush=True)
            continue
        for mode in modes:
            row = {"provider": name, "mode": mode}
            try:
                if reps:
                    row = measure(case, name, mode, device, reps, warmup, memory=memory)
                if cpu_memory is not None and not gpu and mode == "full":
                    row.update(cpu_memory(name, mode))
                row["status"] = "ok"
            except torch.cuda.OutOfMemoryError:
                row["status"] = "oom"
            except Exception as e:  # a provider failing must not sink the others
                row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            finally:
                if gpu:
                    torch.cuda.empty_cache()
            if mode in case.rate_modes:
                _add_rates(row, case.work(mode), peaks)
            rows.append(row)
            print(_fmt(row), flush=True)
    _add_speedups(rows, case.rate_modes)
    return {"peaks": peaks, "results": rows}


def main(case: Case, args, shape_flags: list, goals: Callable | None = None):
    """The CLI of one op's script: run every provider x mode, write and print the result.
    goals(rows, peaks, device) -> dict reports the issue's targets against this run."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
        shape_flags = [*shape_flags, "--threads", str(args.threads)]
    if args.child_memory:
        _child_memory(case, args.child_memory, args.child_mode)
        return None
    names = [p.strip() for p in args.providers.split(",")] if args.providers else None
    modes = [m.strip() for m in args.modes.split(",")]
    gpu = device.type == "cuda"
    if args.memory_only and not gpu:
        modes = ["full"]  # CPU memory is measured for the full pass
    cpu_memory = None
    if not gpu and not args.no_memory:
        cpu_memory = lambda name, mode: _cpu_memory_in_subprocess(name, mode, shape_flags, args.memory_timeout)  # noqa: E731
    print(f"# {case.op} on {device_name(device)}", flush=True)
    run = run_case(case, device, names, modes,
                   reps=0 if args.memory_only else (args.reps or (20 if gpu else 3)),
                   warmup=args.warmup or (5 if gpu else 1), memory=not args.no_memory,
                   cpu_memory=cpu_memory, matmul_peak=not args.memory_only)
    record = harness.result(case.op, device, op=case.op, shape=case.shape, notes=case.notes,
                            peaks=run["peaks"], results=run["results"])
    if goals is not None:
        record["goals"] = goals(run["results"], run["peaks"], device)
    return harness.write_result(record, args.out or harness.RESULTS / f"{case.op}-{device_slug(device)}.json")


def _add_rates(row, work, peaks):
    if "ms" not in row:
        return
    s = row["ms"] * 1e-3
    if "bytes" in work:
        row["gbps"] = work["bytes"] / s / 1e9
        row["pct_hbm_peak"] = 100 * row["gbps"] / peaks["hbm_peak_gbps"]
    if "flops" in work:
        row["tflops"] = work["flops"] / s / 1e12
        if "matmul_peak_tflops" in peaks:
            row["pct_matmul_peak"] = 100 * row["tflops"] / peaks["matmul_peak_tflops"]


def _add_speedups(rows, rate_modes):
    eager = {r["mode"]: r for r in rows if r["provider"] == "torch" and r.get("status") == "ok"}
    for r in rows:
        base = eager.get(r.get("mode"))
        if base is None:
            continue
        if "ms" in r and "ms" in base and r["mode"] in rate_modes:
            r["speedup_vs_torch"] = base["ms"] / r["ms"]
        if r.get("peak_extra_mb") is not None and base.get("peak_extra_mb"):
            r["mem_vs_torch"] = r["peak_extra_mb"] / base["peak_extra_mb"]


def _fmt(row):
    parts = [f"{row['provider']:>14} {row['mode']:>8}"]
    for key, f in (("ms", "{:9.3f} ms"), ("gbps", "{:8.1f} GB/s"), ("pct_hbm_peak", "{:5.1f}% HBM"),
                   ("tflops", "{:7.1f} TFLOP/s"), ("pct_matmul_peak", "{:5.1f}% mm"),
                   ("peak_extra_mb", "{:9.1f} MiB")):
        if row.get(key) is not None:
            parts.append(f.format(row[key]))
    if row.get("status") != "ok" or row.get("memory_status"):
        parts.append(str(row.get("memory_status") or row.get("status")))
    return "  ".join(parts)


def forced_torch(fn):
    """fn run with RL2F_KERNELS=torch: the chunked torch path as a provider on a GPU."""
    def run(*args, **kwargs):
        old = os.environ.get("RL2F_KERNELS")
        os.environ["RL2F_KERNELS"] = "torch"
        try:
            return fn(*args, **kwargs)
        finally:
            if old is None:
                os.environ.pop("RL2F_KERNELS")
            else:
                os.environ["RL2F_KERNELS"] = old
    return run


def find(rows, provider, mode):
    return next((r for r in rows if r["provider"] == provider and r.get("mode") == mode
                 and r.get("status") == "ok"), None)
