"""What every benchmark shares: timers, peak-memory probes, measured device peaks,
alternating rounds with their median and spread, and the result file.

Timing: `time_ms` uses CUDA events on a GPU and perf_counter on CPU, median of `reps` runs
after `warmup`. Memory: on a GPU, max_memory_allocated above what was allocated before the
run; on CPU, peak RSS (VmHWM, reset through /proc/self/clear_refs) above the RSS before it.
Fairness between providers whose runs take seconds: `alternate` runs every provider once per
round, in an order that flips each round, so load that drifts during a run hits both alike,
and `spread` reports the median with the min and max over rounds.
Every result is one JSON object with the benchmark's name, the command that made it, the
device and the versions (device.environment); `write_result` writes it and prints it as
the last line of output.
"""
from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from benchmarks.device import environment, spec_hbm_gbps

ROOT = Path(__file__).resolve().parent.parent  # the repository: where `python -m benchmarks.X` runs
RESULTS = ROOT / "benchmarks" / "results"


# --------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(run, device, reps, warmup, setup=None) -> dict:
    """Median and min milliseconds of run(setup()); setup is not timed."""
    times = []
    for i in range(warmup + reps):
        state = setup() if setup else None
        sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(state)
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            run(state)
            ms = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            times.append(ms)
        del state
    return {"ms": statistics.median(times), "ms_min": min(times)}


def wall_s(fn, device) -> float:
    """Seconds of one call of fn, the device drained before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- memory
def cuda_peak_extra_mb(run, device, setup=None) -> float:
    state = setup() if setup else None
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run(state)
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


def proc_status_kib(key: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key))


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    forking parent across exec, so a child of a big parent would start at the parent's peak."""
    return proc_status_kib("VmHWM:") / 1024


def rss_peak_extra_mb(run, setup=None) -> float:
    """Peak RSS above the RSS just before run (Linux): clear_refs '5' resets the watermark."""
    state = setup() if setup else None
    base = proc_status_kib("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    run(state)
    return (proc_status_kib("VmHWM:") - base) / 1024


# --------------------------------------------------------------------------- device peaks
def measured_copy_gbps(device: torch.device) -> float:
    """Read + write bandwidth of a large device copy (GB/s)."""
    n = (1 << 28) if device.type == "cuda" else (1 << 25)
    src = torch.empty(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda _: dst.copy_(src), device, reps=10, warmup=3)["ms"]
    return 2 * src.numel() * 4 / (ms * 1e-3) / 1e9


def hbm_peak_gbps(device: torch.device) -> tuple[float, str]:
    """The spec sheet's bandwidth where the device is known, else a measured copy."""
    spec = spec_hbm_gbps(device)
    return (spec, "spec sheet") if spec is not None else (measured_copy_gbps(device), "measured copy")


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Best of a few large square matmuls, measured now (clocks and power as they are)."""
    gpu = device.type == "cuda"
    best = 0.0
    for n in (4096, 8192) if gpu else (1024, 2048):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        ms = time_ms(lambda _: torch.mm(a, b), device, reps=10 if gpu else 3, warmup=3 if gpu else 1)["ms"]
        best = max(best, 2 * n ** 3 / (ms * 1e-3) / 1e12)
    return best


# --------------------------------------------------------------------------- rounds
def alternate(providers: list[str], rounds: int, run_one: Callable[[str, int], dict]) -> dict[str, list]:
    """run_one(provider, round) for every provider in every round; the order flips each
    round (A B, B A, A B, ...). Returns provider -> its results, round by round."""
    out: dict[str, list] = {p: [] for p in providers}
    for r in range(rounds):
        for p in (providers if r % 2 == 0 else providers[::-1]):
            out[p].append(run_one(p, r))
    return out


def spread(values: list[float]) -> dict:
    """Median, min and max of per-round values (the spread a reader should see)."""
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# --------------------------------------------------------------------------- commands and results
def module_name() -> str:
    """The dotted name of the running benchmark (`benchmarks.bench_engine`)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is None or not spec.name.startswith("benchmarks."):
        raise SystemExit("run benchmarks as modules from the repository root: python -m benchmarks.NAME")
    return spec.name


def command() -> str:
    """The command line of this run, as a reader would retype it."""
    return shlex.join(["python", "-m", module_name(), *sys.argv[1:]])


def run_module(argv: list[str], timeout: float | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """This benchmark again in a fresh Python process (a provider's own memory and state)."""
    return subprocess.run([sys.executable, "-m", module_name(), *argv], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})


def last_json(stdout: str) -> dict:
    """The one JSON object a benchmark (or its child) prints last."""
    return json.loads(stdout.strip().splitlines()[-1])


def result(bench: str, device: torch.device, **fields) -> dict:
    """A result record: the benchmark, the command, where it ran, then its own fields."""
    return {"bench": bench, "command": command(), "env": environment(device),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), **fields}


def write_result(record: dict, path: str | Path) -> dict:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"# wrote {shown}", flush=True)
    print(json.dumps(record), flush=True)
    return record
