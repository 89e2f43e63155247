"""Trackers (train.report_to): fed the same rows as metrics.jsonl, written under the run
directory, continued by a resume, and refused in one line when unknown or not installed."""
import json
import sys
from pathlib import Path

import pytest
from train_toys import OneSecretTask, tiny_config

from rl2f.config import RunConfig, load_config
from rl2f.errors import UserError
from rl2f.trackers import TRACKERS
from rl2f.train.grpo import train_grpo

KEYS = ("loss", "reward_mean", "lr", "tokens")  # numbers every GRPO row holds


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tensorboard_holds_the_metrics_rows_and_a_resume_continues_them(tmp_path, tiny_ckpt, warm_start):
    """3 steps, then resumed from the step-2 checkpoint to step 4 (as after a kill past it):
    TensorBoard's own reader finds, for several keys, each step of metrics.jsonl once (the
    killed run's step 3 is purged, not shown twice) with the same value (to float32), and the
    config text."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    common = ['train.report_to=["tensorboard"]', "train.save_every=2"]
    train_grpo(tiny_config(tiny_ckpt, *common, "train.max_steps=3"), out, task=OneSecretTask(), init_adapter=warm_start)
    train_grpo(tiny_config(tiny_ckpt, *common, "train.max_steps=4"), out, resume=out / "checkpoints" / "step-000002",
               task=OneSecretTask())

    rows = _rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert "checkpoint" not in events.Tags()["scalars"]  # a string stays in metrics.jsonl only
    for key in KEYS:
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [r["step"] for r in rows], key
        assert [e.value for e in logged] == pytest.approx([r[key] for r in rows], rel=1e-6), key
    (config,) = events.Tensors("config/text_summary")
    assert 'report_to = ["tensorboard"]' in config.tensor_proto.string_val[0].decode()


def test_wandb_offline_writes_under_out_and_a_resume_keeps_the_run(tmp_path, tiny_ckpt, warm_start, monkeypatch):
    """WANDB_MODE=offline: no network; the offline run lies under OUT/wandb with its .wandb
    file; each metrics row's numbers are logged at its step; and the run resumed from a
    checkpoint logs to the same run id, continuing the step axis."""
    import wandb  # in the test extra, as tensorboard: CI runs these two, never skips them
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []  # (run id, step, values) of each wandb.Run.log call, which still goes to wandb
    real_log = wandb.Run.log

    def log(run, values, step):
        logged.append((run.id, step, values))
        real_log(run, values, step=step)

    monkeypatch.setattr(wandb.Run, "log", log)
    out = tmp_path / "run"
    common = ['train.report_to=["wandb"]', "train.save_every=1", "rollout.problems_per_batch=1"]
    train_grpo(tiny_config(tiny_ckpt, *common, "train.max_steps=1"), out, task=OneSecretTask(), init_adapter=warm_start)
    run_id = json.loads((out / "trackers.json").read_text())["wandb"]
    first = list((out / "wandb").glob("offline-run-*"))
    assert len(first) == 1 and first[0].name.endswith(run_id) and list(first[0].glob("*.wandb"))

    train_grpo(tiny_config(tiny_ckpt, *common, "train.max_steps=2"), out, resume=out, task=OneSecretTask())
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)
    rows = _rows(out / "metrics.jsonl")
    assert [(i, step) for i, step, _ in logged] == [(run_id, 1), (run_id, 2)]
    for (_, _, values), row in zip(logged, rows):
        assert values == {k: row[k] for k in values} and set(KEYS) <= set(values)
        # the row's path, bool and None are not metrics
        assert isinstance(row["skipped"], bool) and row["kl"] is None and isinstance(row["checkpoint"], str)
        assert not {"skipped", "kl", "checkpoint", "step"} & set(values)


def test_trackio_logs_each_row_at_its_step_across_a_resume(tmp_path, tiny_ckpt, warm_start, monkeypatch):
    """Trackio's local store (TRACKIO_DIR, read when trackio is first imported) holds one run
    with each metrics row's numbers at its step, the resumed run's rows included."""
    if "trackio" not in sys.modules:
        monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # not the user's ~/.cache
    pytest.importorskip("trackio")
    from trackio.sqlite_storage import SQLiteStorage

    out = tmp_path / "trackio-run"
    common = ['train.report_to=["trackio"]', 'train.tracker_project="rl2f-test"', "train.save_every=1",
              "rollout.problems_per_batch=1"]
    train_grpo(tiny_config(tiny_ckpt, *common, "train.max_steps=1"), out, task=OneSecretTask(), init_adapter=warm_start)
    train_grpo(tiny_config(tiny_ckpt, *common, "train.max_steps=2"), out, resume=out, task=OneSecretTask())

    rows = _rows(out / "metrics.jsonl")
    logs = SQLiteStorage.get_logs("rl2f-test", out.name)
    assert [log["step"] for log in logs] == [1, 2]
    for log, row in zip(logs, rows):
        assert {k: log[k] for k in KEYS} == {k: row[k] for k in KEYS} and "checkpoint" not in log


@pytest.mark.parametrize("name", TRACKERS)
def test_a_missing_tracker_package_is_one_line_naming_its_install(tmp_path, tiny_ckpt, monkeypatch, name):
    """The package's import fails (None in sys.modules): one UserError line with the pip
    command, raised before anything is written to OUT."""
    monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "run"
    with pytest.raises(UserError) as e:
        train_grpo(tiny_config(tiny_ckpt, f'train.report_to=["{name}"]'), out, task=OneSecretTask())
    assert "\n" not in str(e.value)
    assert f"pip install {name}" in str(e.value) and "rl2f[trackers]" in str(e.value)
    assert not out.exists()


def test_an_unknown_tracker_is_one_config_error_line():
    """A name no tracker answers to is refused by the config, naming it; every known one loads."""
    with pytest.raises(UserError) as e:
        load_config(RunConfig, None, ['train.report_to=["tensorboard", "mlfow"]'])
    assert "\n" not in str(e.value) and "'mlfow'" in str(e.value) and "train" in str(e.value)
    assert load_config(RunConfig, None, [f"train.report_to={json.dumps(TRACKERS)}"]).train.report_to \
        == list(TRACKERS)
