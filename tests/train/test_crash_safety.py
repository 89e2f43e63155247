"""Crash safety of a run directory: a kill at every write of a step, then resume, gives the
uninterrupted run's adapter bit for bit and its metrics rows exactly once; disk errors and
damaged checkpoints are one line naming the path; `--resume` refuses what it may not change."""
import errno
import json
import os
import shutil
import traceback
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from train_toys import tiny_config

from rl2f.cli.main import cli
from rl2f.errors import UserError

KILLED = 77
TIMING = ("tokens_per_s", "peak_mem_mb", "logprob_s", "backward_s", "optim_s", "rollout_s", "handoff_s",
          "gen_tokens_per_s")


def in_child(fn) -> int:
    """Run fn in a forked process (its os._exit is a kill: no cleanup, no finally blocks)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class KillPoints:
    """Wraps every write a training step makes (metrics row, adapter, torch.save of trainer
    and RNG state, the rename of the checkpoint into place, the `latest` pointer, pruning)
    with an event before and after it; `kill_at` ends the process at that event, `torn`
    kills halfway through writing the metrics row instead."""

    def __init__(self, monkeypatch, kill_at: int | None = None, torn: bool = False, log: Path | None = None):
        import rl2f.lora
        import rl2f.train.common as common

        self.n, self.kill_at, self.torn, self.log = 0, kill_at, torn, log
        for owner, name in ((torch, "save"), (rl2f.lora, "save_adapter"), (os, "rename"), (os, "replace"),
                            (shutil, "rmtree")):
            monkeypatch.setattr(owner, name, self.wrap(f"{owner.__name__}.{name}", getattr(owner, name)))
        real_write = common.Metrics.write
        points = self

        def write(metrics, record):
            if points.torn and points.n == points.kill_at:
                line = json.dumps(record) + "\n"
                with metrics.path.open("a") as f:
                    f.write(line[: len(line) // 2])
                os._exit(KILLED)
            points.event(f"metrics row {record['step']}", "before")
            real_write(metrics, record)
            points.event(f"metrics row {record['step']}", "after")

        monkeypatch.setattr(common.Metrics, "write", write)

    def wrap(self, label, fn):
        def wrapped(*a, **k):
            paths = [Path(x).name for x in a if isinstance(x, (str, Path))]
            self.event(f"{label}({', '.join(paths)})", "before")
            out = fn(*a, **k)
            self.event(label, "after")
            return out

        return wrapped

    def event(self, label, when):
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"{self.n} {when} {label}\n")
        if self.kill_at == self.n and not self.torn:
            os._exit(KILLED)
        self.n += 1


@pytest.fixture
def fast_dir(tmp_path):
    """A directory on tmpfs when there is one: the kill-point runs fsync every checkpoint."""
    import tempfile

    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="rl2f-crash-", dir=shm))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def rows(run_dir):
    out = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: (Path(v).name if k == "checkpoint" else v) for k, v in r.items() if k not in TIMING})
    return out


def final_adapter(run_dir):
    return load_file(str(Path(run_dir) / "checkpoints" / "step-000003" / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def sft_cfg(tiny_ckpt, chat_files):
    # dropout and warmup make the RNG and the schedule part of what a resume must restore;
    # a checkpoint every step makes every step's writes (and the pruning at step 3) kill points.
    return tiny_config(tiny_ckpt, 'train.method="sft"', f'train.sft_data="{chat_files["train"]}"',
                       "train.micro_batch=8", "train.max_steps=3", "train.save_every=1", "lora.dropout=0.1",
                       "train.warmup_steps=1", "train.min_lr_ratio=0.1")


def resume_or_start(cfg, out):
    from rl2f.train import train

    try:
        train(cfg, out, resume=out)
    except UserError as e:
        assert "no complete checkpoint" in str(e) or "no such directory" in str(e), e
        train(cfg, out)  # killed before the first checkpoint: the directory must be startable


def test_kill_at_every_write_then_resume_is_exact(fast_dir, sft_cfg, monkeypatch):
    """A kill between any two writes of the first step (the first checkpoint) and of the last
    (the final checkpoint, pruning the oldest), i.e. before and after each of them, and a kill
    halfway through those steps' metrics rows, then `--resume` (or a fresh start where no
    checkpoint was complete), ends with the adapter of the uninterrupted run bit for bit and
    the same metrics rows, each step exactly once. (Step 2 makes the same writes as step 3,
    minus the pruning.)"""
    from rl2f.train import train

    base = fast_dir
    log = base / "events.log"

    def reference():
        KillPoints(monkeypatch, log=log)
        train(sft_cfg, base / "straight")

    assert in_child(reference) == 0
    events = log.read_text().splitlines()
    want_rows, want = rows(base / "straight"), final_adapter(base / "straight")
    assert [r["step"] for r in want_rows] == [1, 2, 3]
    # Between an "after" event and the next "before" nothing is written: one kill per gap.
    end_of_1 = events.index(next(e for e in events if e.endswith("after metrics row 1")))
    end_of_2 = events.index(next(e for e in events if e.endswith("after metrics row 2")))
    gaps = [k for k, e in enumerate(events) if (k == 0 or " after " in e) and not end_of_1 < k <= end_of_2]
    torn = [k for k, e in enumerate(events) if "before metrics row" in e and "row 2" not in e]
    cases = [(k, False) for k in gaps] + [(k, True) for k in torn]
    assert any("latest" in events[k - 1] for k, _ in cases) and any("step-000001)" in events[k - 1] for k, _ in cases)
    for k, is_torn in cases:
        out = base / f"kill-{k}{'-torn' if is_torn else ''}"

        def killed():
            KillPoints(monkeypatch, kill_at=k, torn=is_torn)
            train(sft_cfg, out)

        assert in_child(killed) == KILLED, events[k]
        resume_or_start(sft_cfg, out)
        got = final_adapter(out)
        assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in want), (events[k], is_torn)
        assert rows(out) == want_rows, (events[k], is_torn)
        shutil.rmtree(out)


def test_kill_between_grpo_checkpoint_and_its_row_loses_nothing(tmp_path, tiny_ckpt, warm_start, monkeypatch):
    """GRPO shares the writes: killed right after checkpoint 2 is renamed into place (before
    `latest` and before the row), the resumed run keeps row 2 and ends as the straight one."""
    from rl2f.train import train

    cfg = tiny_config(tiny_ckpt, "train.max_steps=3", "train.save_every=2", "lora.dropout=0.1")
    assert in_child(lambda: train(cfg, tmp_path / "straight", init_adapter=warm_start)) == 0

    def killed():
        real = os.rename

        def rename_then_die(src, dst):
            real(src, dst)
            if Path(dst).name == "step-000002":
                os._exit(KILLED)

        monkeypatch.setattr(os, "rename", rename_then_die)
        train(cfg, tmp_path / "stopped", init_adapter=warm_start)

    assert in_child(killed) == KILLED
    assert [r["step"] for r in rows(tmp_path / "stopped")] == [1]  # row 2 was not written
    assert in_child(lambda: train(cfg, tmp_path / "stopped", resume=tmp_path / "stopped",
                                  init_adapter=warm_start)) == 0
    assert rows(tmp_path / "stopped") == rows(tmp_path / "straight")
    a, b = final_adapter(tmp_path / "straight"), final_adapter(tmp_path / "stopped")
    assert all(torch.equal(a[n], b[n]) for n in a)


# ----------------------------------------------------------------------------------------
# Through the CLI: one line, exit code 2, the path named


def cli_train(*args):
    r = CliRunner().invoke(cli, ["train", *args])
    return r.exit_code, r.output


def one_line_error(code, text, *names):
    lines = text.strip().splitlines()
    assert code == 2, text
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in text, text
    for name in names:
        assert str(name) in lines[0], (name, text)
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, sft_cfg):
    """A finished 2-step SFT run directory (checkpoints at steps 1 and 2), to copy."""
    from rl2f.train import train

    out = tmp_path_factory.mktemp("finished") / "run"
    cfg = tiny_config(sft_cfg.model.path, 'train.method="sft"', f'train.sft_data="{sft_cfg.train.sft_data}"',
                      "train.micro_batch=8", "train.max_steps=2", "train.save_every=1")
    train(cfg, out)
    return out


def copy_run(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


@pytest.mark.parametrize("setting, key", [
    ("train.lr=3e-3", "train.lr"), ("lora.rank=8", "lora.rank"), ("lora.targets=['q_proj']", "lora.targets"),
    ("lora.alpha=4.0", "lora.alpha"), ("train.warmup_steps=3", "train.warmup_steps"),
    ("rollout.group_size=4", "rollout.group_size"),
])
def test_resume_refuses_what_changes_the_model_or_optimiser(tmp_path, finished, setting, key):
    """A --set that would change the model, the optimiser state or the data on resume is
    refused by name (it used to be silently ignored while config.json recorded it)."""
    out = copy_run(finished, tmp_path)
    before = (out / "metrics.jsonl").read_text()
    one_line_error(*cli_train("--resume", str(out), "--set", setting, "--set", "train.max_steps=3"), key)
    assert (out / "metrics.jsonl").read_text() == before and not (out / "checkpoints" / "step-000003").exists()


def test_resume_may_change_max_steps_and_save_every_but_not_below_the_step(tmp_path, finished):
    """max_steps and save_every may change (the run continues to the new max_steps); a
    max_steps below the step reached is refused, naming both."""
    out = copy_run(finished, tmp_path)
    one_line_error(*cli_train("--resume", str(out), "--set", "train.max_steps=1"), "train.max_steps=1", "step 2")
    code, text = cli_train("--resume", str(out), "--set", "train.max_steps=4", "--set", "train.save_every=2")
    assert code == 0, text
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000002", "step-000004"]


def test_damaged_checkpoint_files_are_one_line_naming_them(tmp_path, finished):
    """A truncated trainer.pt and a garbage RNG file: one line naming the file and the older
    checkpoint that is still good."""
    out = copy_run(finished, tmp_path)
    trainer = out / "checkpoints" / "step-000002" / "trainer.pt"
    trainer.write_bytes(trainer.read_bytes()[:300])
    line = one_line_error(*cli_train("--resume", str(out), "--set", "train.max_steps=3"), trainer)
    assert "step-000001" in line
    shutil.rmtree(out)
    out = copy_run(finished, tmp_path)
    rng = out / "checkpoints" / "step-000002" / "rng" / "rank0.pt"
    rng.write_bytes(os.urandom(500))
    one_line_error(*cli_train("--resume", str(out), "--set", "train.max_steps=3"), rng, "step-000001")


def test_unwritable_or_impossible_out_is_one_line(tmp_path, sft_cfg, monkeypatch):
    """A read-only --out (a read-only file system, simulated: the tests may run as root,
    whom mode bits do not stop) and an --out below a file stop before any work, naming the
    path."""
    args = ["--method", "sft", "--set", f'model.path="{sft_cfg.model.path}"',
            "--set", f'train.sft_data="{sft_cfg.train.sft_data}"', "--set", "train.max_steps=1"]
    ro = tmp_path / "ro"
    real_mkdir = Path.mkdir

    def mkdir(path, *a, **k):
        if ro in path.parents or path == ro:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    line = one_line_error(*cli_train(*args, "--out", str(ro / "run")), ro / "run")
    assert "Read-only file system" in line and not ro.exists()
    monkeypatch.setattr(Path, "mkdir", real_mkdir)
    (tmp_path / "file").write_text("x")
    one_line_error(*cli_train(*args, "--out", str(tmp_path / "file" / "run")), tmp_path / "file" / "run")


def test_file_size_limit_on_the_first_checkpoint_names_the_file_and_leaves_a_startable_dir(tmp_path):
    """A real failing write inside the checkpoint (a file-size limit, `ulimit -f`, between the
    adapter's size and trainer.pt's): one line naming trainer.pt and saying no checkpoint was
    kept, the partial checkpoint gone, `--resume` says there is nothing to resume, and a fresh
    run in the same directory is accepted. (Before: torch.save's RuntimeError from its zip
    writer, "unexpected pos ...", a traceback that left .tmp-step-000001.)"""
    import resource
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    args = [sys.executable, "-m", "rl2f.cli", "train", "--config", str(root / "configs" / "tiny-rl2f.toml"),
            "--set", "train.max_steps=1", "--set", "rollout.problems_per_batch=2", "--set", "rollout.group_size=2",
            "--set", "rollout.max_new_tokens=4"]
    env = {**os.environ, "RL2F_CACHE": str(tmp_path / "cache")}
    ok = subprocess.run([*args, "--out", str(tmp_path / "sizes")], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    step = tmp_path / "sizes" / "checkpoints" / "step-000001"
    adapter, trainer = (step / "adapter" / "adapter_model.safetensors").stat().st_size, (step / "trainer.pt").stat().st_size
    assert adapter < trainer
    limit = (adapter + trainer) // 2

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "run"
    proc = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True, env=env, preexec_fn=limited)
    one_line_error(proc.returncode, proc.stderr, "trainer.pt: cannot write checkpoint step-000001 (File too large); "
                                                 "no complete checkpoint was kept")
    assert not list((out / "checkpoints").glob(".tmp-*"))
    resume = subprocess.run([sys.executable, "-m", "rl2f.cli", "train", "--resume", str(out)], capture_output=True,
                            text=True, env=env)
    one_line_error(resume.returncode, resume.stderr, "no complete checkpoint")
    again = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr


def test_full_disk_on_the_adapter_names_the_file(tmp_path, sft_cfg, monkeypatch):
    """safetensors reports a full disk as a SafetensorError ("... (os error 28)", its text on
    a full tmpfs): it is one UserError naming the adapter file, like any other disk error."""
    import safetensors.torch
    from safetensors import SafetensorError

    from rl2f.train import train

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(UserError, match=r"adapter_model\.safetensors: cannot write checkpoint step-000001 "
                                        r"\(No space left on device\); no complete checkpoint was kept"):
        train(sft_cfg, tmp_path / "run")


def test_full_disk_on_a_metrics_row_names_the_file(tmp_path, sft_cfg, monkeypatch):
    """ENOSPC on the metrics row: one line naming metrics.jsonl and what is kept."""
    from rl2f.train import train

    real_open = Path.open

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def open_(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return FullDisk(f) if path.name == "metrics.jsonl" and "a" in mode else f

    monkeypatch.setattr(Path, "open", open_)
    with pytest.raises(UserError, match=r"metrics\.jsonl: cannot write the metrics row of step 1 \(No space"):
        train(sft_cfg, tmp_path / "run")


def test_a_damaged_row_before_the_end_of_metrics_is_named(tmp_path, finished):
    """Only the last line can be torn by a kill; a damaged line before it is not silently
    dropped but named (file:line)."""
    out = copy_run(finished, tmp_path)
    m = out / "metrics.jsonl"
    lines = m.read_text().splitlines()
    m.write_text("{garbage\n" + "\n".join(lines[1:]) + "\n")
    one_line_error(*cli_train("--resume", str(out), "--set", "train.max_steps=3"), f"{m}:1")
