"""Peak resident memory of loading a bf16 checkpoint, relative to the checkpoint's size.

    python -m benchmarks.bench_load_memory                   # 1 GB llama-shaped checkpoint
    python -m benchmarks.bench_load_memory --size-mb 256 --providers ours

Writes a random bf16 checkpoint (tensor by tensor, so the writer never holds it whole),
then for each provider loads it in a fresh Python process and reports the peak RSS increase
over the process's RSS after imports, divided by the file size (peak RSS: VmHWM, as harness.peak_rss_mb says why).
- `ours`: `rl2f.model.load_model` (meta init + `readinto` each tensor into its parameter);
- `safetensors_load_file`: the common path, `safetensors.torch.load_file` then
  `load_state_dict` into an allocated model: two copies.
The last line of output is one JSON object (`--out FILE` also writes it there);
results/load_memory-cpu.json keeps a run.
"""
from __future__ import annotations

import argparse
import gc
import json
import struct
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import harness
from rl2f import model as m

LAYER_MB = 22.5  # bf16 size of one decoder layer of the shape below


def hf_config(num_layers: int) -> dict:
    return dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=16000, hidden_size=1024,
                intermediate_size=2816, num_hidden_layers=num_layers, num_attention_heads=16,
                num_key_value_heads=4, head_dim=64, tie_word_embeddings=False, rms_norm_eps=1e-5,
                rope_theta=500000.0, max_position_embeddings=4096, dtype="bfloat16")


def write_checkpoint(out: Path, size_mb: float) -> int:
    """A llama-shaped random bf16 checkpoint of about `size_mb` MB; returns the file size."""
    layers = max(1, round((size_mb - 65.5) / LAYER_MB))  # 65.5 MB: embedding + untied head
    hf = hf_config(layers)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(hf))
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in m.CausalLM(m.parse_hf_config(hf)).state_dict().items()}
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 2 * torch.Size(shape).numel()
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    # One random 4 MiB block repeated: realistic bytes without generating 1 GB of randoms.
    gen = torch.Generator().manual_seed(0)
    block = (torch.randn(1 << 21, generator=gen) * 0.02).to(torch.bfloat16).view(torch.uint8).numpy().tobytes()
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for entry in header.values():
            n = entry["data_offsets"][1] - entry["data_offsets"][0]
            for start in range(0, n, len(block)):
                f.write(block[: min(len(block), n - start)])
    return (out / "model.safetensors").stat().st_size


def child(provider: str, path: str) -> None:
    """Runs in a fresh process: load once, print the RSS numbers as JSON."""
    if provider == "safetensors_load_file":
        from safetensors.torch import load_file
    gc.collect()
    base = harness.proc_status_kib("VmHWM:") * 1024
    t0 = time.perf_counter()
    if provider == "ours":
        model = m.load_model(path, dtype=torch.bfloat16)
    else:
        model = m.CausalLM(m.read_config(path)).to(torch.bfloat16)
        model.load_state_dict(load_file(str(Path(path) / "model.safetensors")), strict=False)
    seconds = time.perf_counter() - t0
    peak = harness.proc_status_kib("VmHWM:") * 1024
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"baseline_rss": base, "peak_rss": peak, "params": n, "seconds": seconds}))


def measure(provider: str, path: Path, file_bytes: int) -> dict:
    res = harness.run_module(["--child", provider, str(path)])
    if res.returncode != 0:
        raise SystemExit(f"{provider} failed:\n{res.stderr[-2000:]}")
    r = harness.last_json(res.stdout)
    r["peak_increase"] = r["peak_rss"] - r["baseline_rss"]
    r["ratio"] = r["peak_increase"] / file_bytes
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=1024)
    ap.add_argument("--providers", default="ours,safetensors_load_file")
    ap.add_argument("--out", default=None, help="also write the result here (e.g. benchmarks/results/load_memory-cpu.json)")
    ap.add_argument("--child", nargs=2, metavar=("PROVIDER", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "ckpt"
        size = write_checkpoint(ckpt, args.size_mb)
        results = {}
        for provider in args.providers.split(","):
            r = measure(provider, ckpt, size)
            results[provider] = r
            print(f"{provider:>22}: peak RSS +{r['peak_increase'] / 2**20:.0f} MiB for a "
                  f"{size / 2**20:.0f} MiB file (x{r['ratio']:.2f}), {r['seconds']:.2f} s")
    record = harness.result("load_memory", torch.device("cpu"), dtype="bfloat16", file_bytes=size,
                            results={p: {"ratio": round(r["ratio"], 4), "peak_increase": r["peak_increase"],
                                         "seconds": round(r["seconds"], 3)} for p, r in results.items()})
    if args.out:
        harness.write_result(record, args.out)
    else:
        print(json.dumps(record))


if __name__ == "__main__":
    main()
