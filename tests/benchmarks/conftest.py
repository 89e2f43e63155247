"""Running a benchmark script as CI and a reader do: `python -m benchmarks.NAME ...` from the
repository root in a fresh process, one thread, its result file read back."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_bench(tmp_path):
    """run_bench(module, *args, timeout=...) -> the result record. The script's last output
    line must be that record, the file it wrote (--out) must hold the same, and the record
    must carry the command that made it and the versions it ran with."""

    def run(module: str, *args: str, timeout: float = 600) -> dict:
        out = tmp_path / f"{module}.json"
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args, "--out", str(out)],
                              capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        record = json.loads(out.read_text())
        assert record == json.loads(proc.stdout.strip().splitlines()[-1])
        assert record["command"].startswith(f"python -m benchmarks.{module} ")
        assert record["env"]["versions"]["torch"] and record["env"]["device"].startswith("CPU")
        return record

    return run

