"""The kernel tables of benchmarks/README.md, rewritten from the result files:

    python -m benchmarks.readme

Every benchmarks/results/<op>-<device>.json of a kernel op becomes one table between the
README's `results:start` and `results:end` markers.
"""
from __future__ import annotations

import json
import os

from benchmarks.harness import ROOT, RESULTS

KERNEL_OPS = ("token_logprobs", "linear_token_logprobs", "grpo_token_loss")  # result file prefixes
README = ROOT / "benchmarks" / "README.md"


def markdown_table(result: dict) -> str:
    env, shape = result["env"], result["shape"]
    peaks = result.get("peaks") or env  # files written before peaks had their own key
    head = (f"**{result['op']}** on {env['device']}, torch {env['torch']}, triton {env['triton']}"
            f" ({result.get('date') or env['date']}); shape {', '.join(f'{k}={v}' for k, v in shape.items())}")
    cols = [("provider", "provider", "{}"), ("mode", "mode", "{}"), ("ms", "ms", "{:.3f}"),
            ("speedup_vs_torch", "x eager", "{:.2f}"), ("gbps", "GB/s", "{:.1f}"),
            ("pct_hbm_peak", "% HBM", "{:.0f}"), ("pct_measured_copy", "% copy", "{:.0f}"), ("tflops", "TFLOP/s", "{:.2f}"),
            ("pct_matmul_peak", "% mm peak", "{:.0f}"), ("peak_extra_mb", "peak extra MiB", "{:.1f}"),
            ("mem_vs_torch", "mem / eager", "{:.3f}")]
    rows = result["results"]
    cols = [c for c in cols if c[0] in ("provider", "mode") or any(r.get(c[0]) is not None for r in rows)]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if r.get("status", "ok") != "ok" and "ms" not in r:
            lines.append(f"| {r['provider']} | {r.get('mode', '-')} | {r['status']} |"
                         + " |" * (len(cols) - 3))
            continue
        cells = [f.format(r[k]) if r.get(k) is not None else "" for k, _, f in cols]
        lines.append("| " + " | ".join(cells) + " |")
    extra = []
    if "matmul_peak_tflops" in peaks:
        extra.append(f"measured {peaks['matmul_peak_dtype']} matmul peak "
                     f"{peaks['matmul_peak_tflops']:.2f} TFLOP/s")
    extra.append(f"HBM/memory peak {peaks['hbm_peak_gbps']:.0f} GB/s ({peaks['hbm_peak_source']})")
    if "measured_copy_gbps" in peaks:
        extra.append(f"measured copy {peaks['measured_copy_gbps']:.0f} GB/s")
    for name, g in (result.get("goals") or {}).items():
        if isinstance(g, dict) and "goal" in g:
            value = "n/a" if g["value"] is None else f"{g['value']:.3g}"
            extra.append(f"goal {name} {g['goal']}: {value}, {'met' if g['met'] else 'NOT met'}")
        else:
            extra.append(f"goal {name}: {g.get('status', g) if isinstance(g, dict) else g}")
    command = f"\n\n`{result['command']}`" if result.get("command") else ""
    return head + command + "\n\n" + "\n".join(lines) + "\n\n" + "; ".join(extra) + "\n"


def update_readme(path=README) -> None:
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    tables = []
    for f in sorted(RESULTS.glob("*.json")):
        if not f.name.startswith(KERNEL_OPS):  # other benchmarks share the folder
            continue
        tables.append(markdown_table(json.loads(f.read_text())))
    text = path.read_text()
    a, b = text.index(start) + len(start), text.index(end)
    path.write_text(text[:a] + "\n" + "\n".join(tables) + text[b:])
    print(f"updated {os.path.relpath(path)} from {len(tables)} result files")


if __name__ == "__main__":
    update_readme()
