"""Outputs (rl2f/outputs.py): an --out that holds the user's files is refused with them
intact, one process writes an output at a time, and an episode file is resumed only by the
settings that made it."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_TRAIN = ["--config", str(ROOT / "configs" / "tiny-rl2f.toml"), "--set", "rollout.problems_per_batch=2",
              "--set", "rollout.group_size=2", "--set", "rollout.max_new_tokens=4", "--set", "train.micro_batch=4"]
SMALL_GEN = ["--set", "task.name=secret", "--set", "rollout.group_size=2", "--set", "rollout.max_turns=2",
             "--set", "rollout.max_new_tokens=4"]


@pytest.fixture
def env(tmp_path_factory):
    # the embedded tiny checkpoint, built once per session in a cache of the tests' own
    return {**os.environ, "RL2F_CACHE": str(tmp_path_factory.getbasetemp() / "rl2f-cache")}


def rl2f(args, env, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, "-m", "rl2f.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


def one_line_error(proc, *parts):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def users_directory(root: Path) -> dict[Path, bytes]:
    files = {root / "checkpoints" / "my-model" / "weights.bin": b"\x00weights of the user's own model",
             root / "metrics.jsonl": b'{"step": 1, "loss": 0.5}\n'}
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_train_into_the_users_directory_is_refused_with_files_intact(tmp_path, env):
    """`rl2f train --out D` where D holds the user's checkpoints/ and metrics.jsonl: exit 2,
    one line naming them, every byte kept (before: exit 0, weights.bin deleted, metrics
    replaced). `--out .` in such a directory is the same."""
    files = users_directory(tmp_path / "D")
    proc = rl2f(["train", *TINY_TRAIN, "--set", "train.max_steps=1", "--out", str(tmp_path / "D")], env)
    one_line_error(proc, "rl2f did not write", "checkpoints", "metrics.jsonl")
    assert all(path.read_bytes() == data for path, data in files.items())
    assert sorted(p.name for p in (tmp_path / "D").iterdir()) == ["checkpoints", "metrics.jsonl"]
    proc = rl2f(["train", *TINY_TRAIN, "--set", "train.max_steps=1", "--out", "."], env, cwd=tmp_path / "D")
    one_line_error(proc, "--out .: holds files rl2f did not write")
    assert all(path.read_bytes() == data for path, data in files.items())


def test_evaluate_and_demo_refuse_the_users_directory(tmp_path, env):
    files = users_directory(tmp_path / "D")
    one_line_error(rl2f(["evaluate", "--problems", "1", "--turns", "1", "--out", str(tmp_path / "D")], env),
                   "rl2f did not write")
    one_line_error(rl2f(["demo", "--quick", "--seeds", "0", "--out", str(tmp_path / "D")], env),
                   "rl2f did not write")
    assert all(path.read_bytes() == data for path, data in files.items())


def test_a_fresh_run_in_its_own_directory_clears_only_its_own_entries(tmp_path, env):
    """A run directory whose run stopped before its first checkpoint: a fresh run there
    removes rl2f's partial checkpoint and old dialogues, and keeps a file the user put there."""
    from rl2f.outputs import MARKER

    out = tmp_path / "run"
    (out / "checkpoints" / ".tmp-step-000001").mkdir(parents=True)
    (out / "sft-dialogues.jsonl").write_text("stale\n")
    (out / "notes.txt").write_text("my notes")
    (out / MARKER).write_text(json.dumps({"kind": "train"}))
    proc = rl2f(["train", *TINY_TRAIN, "--set", "train.max_steps=1", "--out", str(out)], env)
    assert proc.returncode == 0, proc.stderr
    assert (out / "notes.txt").read_text() == "my notes" and not (out / "sft-dialogues.jsonl").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-000001"]
    # an rl2f directory of another kind is not a train run
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / MARKER).write_text(json.dumps({"kind": "report"}))
    one_line_error(rl2f(["train", *TINY_TRAIN, "--out", str(tmp_path / "report")], env), "rl2f report directory")


def start_and_wait(args, env, ready: Path):
    """A long rl2f command in the background, once `ready` has something in it (its lock is
    taken and it is writing)."""
    proc = subprocess.Popen([sys.executable, "-m", "rl2f.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while not (ready.exists() and ready.stat().st_size):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.1)
    except BaseException:
        stop(proc)  # never leave it running
        raise
    return proc


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_second_train_in_one_run_directory_is_refused(tmp_path, env):
    """While one `rl2f train` writes D, a second one there is one line naming the first's pid
    and writes nothing (before: both ran, their metrics rows interleaved). Killed with -9,
    the first leaves no stale lock: a resume proceeds."""
    out = tmp_path / "D"
    first = start_and_wait(["train", *TINY_TRAIN, "--set", "train.max_steps=100000", "--set", "train.save_every=1",
                            "--out", str(out)], env, ready=out / "checkpoints" / "latest")
    try:
        line = one_line_error(rl2f(["train", *TINY_TRAIN, "--out", str(out)], env), "another rl2f process")
        assert f"(pid {first.pid})" in line
        one_line_error(rl2f(["train", "--resume", str(out)], env), "another rl2f process")
    finally:
        stop(first)
    done = len((out / "metrics.jsonl").read_text().splitlines())
    proc = rl2f(["train", "--resume", str(out), "--set", f"train.max_steps={done + 2}"], env)
    assert proc.returncode == 0, proc.stderr


def test_second_generate_on_one_file_is_refused(tmp_path, env):
    """Two `rl2f generate` on one episode file: the second is refused (before: every
    (problem, sample) was written twice)."""
    out = tmp_path / "eps.jsonl"
    first = start_and_wait(["generate", *SMALL_GEN, "--problems", "100000", "--out", str(out)], env,
                           ready=out)
    try:
        one_line_error(rl2f(["generate", *SMALL_GEN, "--problems", "100000", "--out", str(out)], env),
                       "another rl2f process", f"(pid {first.pid})")
    finally:
        stop(first)


def test_generate_resumed_with_other_settings_is_refused(tmp_path, env, monkeypatch):
    """An episode file resumed with another adapter, or another rollout setting, is refused
    naming the setting (before: exit 0, new_episodes 0, and the old episodes reported as this
    adapter's); the same settings resume it."""
    out = tmp_path / "eps.jsonl"
    args = ["generate", *SMALL_GEN, "--problems", "2", "--out", str(out)]
    assert rl2f(args, env).returncode == 0
    adapter = tmp_path / "adapter"
    from rl2f.config import RunConfig, load_config
    from rl2f.distributed import Dist
    from rl2f.lora import save_adapter
    from rl2f.run import build_run

    monkeypatch.setenv("RL2F_CACHE", env["RL2F_CACHE"])
    save_adapter(build_run(load_config(RunConfig), Dist(), with_engine=False).model, adapter)  # a fresh LoRA
    one_line_error(rl2f([*args, "--adapter", str(adapter)], env), "made with adapter = null")
    one_line_error(rl2f([*args, "--set", "rollout.temperature=0.5"], env), "rollout.temperature = 1.0 (now 0.5)")
    proc = rl2f(args, env)
    assert proc.returncode == 0 and json.loads(proc.stdout.strip().splitlines()[-1])["new_episodes"] == 0
    out.with_name("eps.jsonl.rl2f.json").unlink()
    one_line_error(rl2f(args, env), "no record of what made them")
