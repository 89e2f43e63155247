"""Loading holds one copy of the weights: peak RSS stays under 1.5x the checkpoint size."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_peak_rss_under_1_5x_checkpoint_size():
    """In a fresh process, loading a ~256 MB bf16 checkpoint as bf16 raises peak RSS (over
    the RSS after imports) by less than 1.5x the file size (two copies would be ~2x)."""
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_load_memory", "--size-mb", "256", "--providers", "ours"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    ours = report["results"]["ours"]
    assert report["file_bytes"] > 200e6
    assert ours["peak_increase"] >= report["file_bytes"]  # the weights really are resident
    assert ours["ratio"] < 1.5, ours
