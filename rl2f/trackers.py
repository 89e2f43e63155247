"""Experiment trackers (`train.report_to`): TensorBoard, Weights & Biases and Trackio, fed the
same row as OUT/metrics.jsonl, which stays the source of truth (`Metrics.write`).

Each tracker's package is an optional, lazy import: `check_trackers` refuses a missing one by
name before any model is loaded. Only a row's numbers are logged (the checkpoint path and
other strings stay in metrics.jsonl), at the row's `step`, so a resumed run continues the
same step axis; the run config is logged once. Only rank 0 opens trackers (`Loop.start`).

Where each writes, under the run directory OUT:
  tensorboard  OUT/tensorboard (event files; `tensorboard --logdir OUT/tensorboard`)
  wandb        OUT/wandb, project `train.tracker_project`, run name = OUT's name; WANDB_MODE
               applies (offline: `wandb sync OUT/wandb/offline-run-*`). The run id is kept in
               OUT/trackers.json, so `--resume` continues the same wandb run.
  trackio      its own local store (TRACKIO_DIR, default ~/.cache/huggingface/trackio): the
               directory is fixed when trackio is first imported, so it cannot follow OUT.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

from rl2f.config import RunConfig, to_dict, to_toml
from rl2f.errors import UserError

# each tracker is the module it imports and the pip package that installs it
TRACKERS = ("tensorboard", "wandb", "trackio")  # TrainSection checks train.report_to against the same names
IDS_FILE = "trackers.json"  # run ids a resumed run reuses


def check_trackers(names: list[str]) -> None:
    """Import each named tracker's package, or raise one UserError line saying how to install it."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(f"train.report_to: {name} needs the {name} package, which is not installed: "
                            f"pip install {name} (or pip install 'rl2f[trackers]')") from None


def numeric(row: dict) -> dict[str, float]:
    """The row's numbers, without `step` (the axis): None, bools and strings are not metrics."""
    return {k: v for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Trackers:
    """The trackers of one run: `log(row)` after each metrics row, `close()` at the end."""

    def __init__(self, cfg: RunConfig, out_dir: Path, resume_step: int | None):
        self.sinks = []
        ids_path = out_dir / IDS_FILE
        # a fresh run starts new tracker runs; a resumed one continues those it recorded
        ids = json.loads(ids_path.read_text()) if resume_step is not None and ids_path.exists() else {}
        for name in cfg.train.report_to:
            self.sinks.append(_OPEN[name](cfg, out_dir, resume_step, ids))
        if ids:
            ids_path.write_text(json.dumps(ids) + "\n")

    def log(self, row: dict) -> None:
        values = numeric(row)
        for sink in self.sinks:
            sink.log(values, row["step"])

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


class _TensorBoard:
    def __init__(self, cfg: RunConfig, out_dir: Path, resume_step: int | None, ids: dict):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard's reader drops the events a killed run wrote past the
        # checkpoint, as Metrics.resume drops their rows, so the two agree after a resume
        self.writer = SummaryWriter(str(out_dir / "tensorboard"),
                                    purge_step=None if resume_step is None else resume_step + 1)
        if resume_step is None:
            self.writer.add_text("config", "```toml\n" + to_toml(cfg) + "```", 0)

    def log(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # per row, like metrics.jsonl: a killed run keeps what it logged

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, cfg: RunConfig, out_dir: Path, resume_step: int | None, ids: dict):
        import wandb

        (out_dir / "wandb").mkdir(exist_ok=True)  # wandb falls back to a temp dir when `dir` is missing
        # id None (a fresh run): wandb picks one, kept for a resume to continue
        self.run = wandb.init(project=cfg.train.tracker_project, name=out_dir.name, dir=str(out_dir),
                              config=to_dict(cfg), id=ids.get("wandb"), resume="allow")
        ids["wandb"] = self.run.id

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _Trackio:
    def __init__(self, cfg: RunConfig, out_dir: Path, resume_step: int | None, ids: dict):
        import trackio

        self.trackio = trackio
        # trackio names its runs; the run directory's name is the id a resume asks for again
        trackio.init(project=cfg.train.tracker_project, name=out_dir.name, config=to_dict(cfg),
                     resume="never" if resume_step is None else "allow")

    def log(self, values: dict, step: int) -> None:
        self.trackio.log(values, step=step)

    def close(self) -> None:
        self.trackio.finish()


_OPEN = {"tensorboard": _TensorBoard, "wandb": _WandB, "trackio": _Trackio}
