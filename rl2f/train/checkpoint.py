"""Atomic, resumable training checkpoints.

    OUT/metrics.jsonl        one row per step (rl2f.train.common.Metrics)
    OUT/checkpoints/step-000004/
        adapter/          the LoRA adapter in PEFT format (what vLLM, PEFT and `rl2f evaluate` load)
        trainer.pt        step, data position, optimizer (full, keyed by parameter name), scheduler,
                          and the metrics row of that step
        rng/rank{r}.pt    torch / CUDA / numpy / python RNG states of each rank
        config.json       the run config
    OUT/checkpoints/latest   name of the newest complete checkpoint (for people and tools)

A checkpoint is written into a temporary sibling directory, fsynced, and renamed into place,
so a `step-*` directory is complete or absent: a crash at any byte leaves the previous
checkpoint intact. `latest` is replaced atomically after that; resuming does not trust it
but takes the newest complete `step-*` directory, so a kill between the rename and the
pointer loses nothing. The metrics row of a checkpointed step is kept inside the
checkpoint too: a kill between the checkpoint and its row in metrics.jsonl is repaired on
resume (`Metrics.resume`). The optimizer state is gathered to full tensors (FSDP2-aware), so
a run can resume on another number of ranks. The two newest checkpoints are kept.

What `--resume` may change is `RESUMABLE`: keys that stop, pace or place the run; any other
difference from the checkpoint's config.json is refused by name (`check_resume_config`).
"""
from __future__ import annotations

import io
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from rl2f.config import RunConfig, from_dict, to_dict
from rl2f.distributed import Dist, barrier
from rl2f.errors import UserError
from rl2f.lora import save_adapter

KEEP = 2
# Config keys a resumed run may change: when to stop (max_steps, not below the saved step;
# the student-token budget), how often to save, and which device to run on. Everything else
# (lr, schedule, LoRA shape, data, rollout, task, model) changes the model, the optimiser
# state or the data stream the checkpoint continues, and is refused by name.
RESUMABLE = ("train.max_steps", "train.save_every", "train.max_student_tokens", "model.device",
             # what is logged and watched, never what is trained
             "train.report_to", "train.tracker_project", "train.eval_every", "train.eval_problems", "train.eval_best")
# What a complete checkpoint directory holds; the rename makes them appear together.
_PARTS = ("trainer.pt", "config.json", "adapter/adapter_model.safetensors", "adapter/adapter_config.json",
          "rng/rank0.pt")


def _osd_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(out_dir: str | Path, d: Dist, model, optimizer, scheduler, cfg: RunConfig, step: int,
                    data_position: int, extra: dict | None = None, metrics_row: dict | None = None) -> Path:
    """Write checkpoint `step` (collective under torchrun: every rank calls it). `metrics_row`
    is the step's row of metrics.jsonl (saved with `"checkpoint"` set to this directory). A
    write error (full disk, read-only directory) is a UserError naming the path and the
    checkpoint that is kept; the partial directory is removed."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict


    root = Path(out_dir) / "checkpoints"
    name = checkpoint_name(step)
    final = root / name
    tmp = root / f".tmp-{name}"
    try:
        if d.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "rng").mkdir(parents=True)
        barrier(d)
        osd = get_optimizer_state_dict(model, optimizer, options=_osd_options(cpu_offload=True))
        save_adapter(model, tmp / "adapter", write=d.is_main)  # every rank gathers the LoRA tensors alone
        _torch_save(rng_state(), tmp / "rng" / f"rank{d.rank}.pt")
        if d.is_main:
            row = None if metrics_row is None else {**metrics_row, "checkpoint": str(final)}
            _torch_save({"step": step, "data_position": data_position, "optimizer": osd,
                        "scheduler": scheduler.state_dict(), "world_size": d.world_size, "extra": extra or {},
                        "metrics_row": row}, tmp / "trainer.pt")
            (tmp / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
        barrier(d)
        if d.is_main:
            _fsync_tree(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(root)
            latest_tmp = root / ".latest.tmp"
            latest_tmp.write_text(name + "\n")
            os.replace(latest_tmp, root / "latest")
            for old in complete_checkpoints(Path(out_dir))[:-KEEP]:
                shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        if d.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        kept = complete_checkpoints(Path(out_dir))
        what = f"the last complete checkpoint {kept[-1]} is kept" if kept else "no complete checkpoint was kept"
        raise UserError(f"{e.filename or tmp}: cannot write checkpoint {name} ({e.strerror or e}); {what}") from None
    barrier(d)
    return final


def _torch_save(obj, path: Path) -> None:
    """torch.save through an in-memory buffer, then one plain write: a failed write is an
    OSError with its errno (a full disk, a file-size limit), not the RuntimeError torch's zip
    writer raises from inside C++ ("unexpected pos ..."), which named neither."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        with open(path, "wb") as f:
            f.write(buffer.getbuffer())
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None  # f.write names no file


def _fsync_tree(root: Path) -> None:
    """Flush every file of a directory to disk before it is renamed into place, so that
    after a power loss the name never points at empty files."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_complete(ckpt: Path) -> bool:
    return all((ckpt / part).is_file() for part in _PARTS)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The complete `step-*` checkpoints of a run directory, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and is_complete(p))


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the newest complete one of a run directory."""
    path = Path(path)
    if (path / "trainer.pt").is_file():
        if not is_complete(path):
            missing = next(part for part in _PARTS if not (path / part).is_file())
            raise UserError(f"--resume {path}: incomplete checkpoint ({missing} is missing)")
        return path
    found = complete_checkpoints(path)
    if found:
        return found[-1]
    if not path.is_dir():
        raise UserError(f"--resume {path}: no such directory")
    started = (path / "checkpoints").is_dir() or (path / "metrics.jsonl").is_file()
    hint = (" (the run stopped before its first checkpoint was complete: start it again with "
            f"--config ... --out {path})") if started else ""
    raise UserError(f"--resume {path}: no complete checkpoint there (expected DIR/checkpoints/step-*/ "
                    f"or a checkpoint directory){hint}")


def adapter_dir(path: str | Path) -> str:
    """What `--adapter` names, as the adapter directory itself: an adapter (PEFT format), a
    checkpoint (its adapter/), or a run directory (its newest complete checkpoint's adapter/,
    what `rl2f train --out DIR` leaves). Anything else is returned as given, for the loader's
    own error."""
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        return str(path)
    if (path / "trainer.pt").is_file() and (path / "adapter").is_dir():
        return str(path / "adapter")
    found = complete_checkpoints(path)
    return str(found[-1] / "adapter") if found else str(path)


def read_checkpoint_config(ckpt: Path) -> dict:
    try:
        data = json.loads((ckpt / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{ckpt / 'config.json'}: cannot read the run config ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{ckpt / 'config.json'}: cannot read the run config (not a JSON object)")
    return data


def check_resume_config(cfg: RunConfig, ckpt: Path, step: int) -> None:
    """Refuse a resumed config that differs from the checkpoint's other than in `RESUMABLE`
    keys, naming the first such key, and a max_steps below the step already reached."""
    where = str(ckpt / "config.json")
    saved = _flat(to_dict(from_dict(RunConfig, read_checkpoint_config(ckpt), where=where)))
    now = _flat(to_dict(cfg))
    changed = [k for k in now if k not in RESUMABLE and now[k] != saved.get(k)]
    if changed:
        k = changed[0]
        raise UserError(f"--resume: {k} is {saved.get(k)!r} in {where} and {now[k]!r} now; a resumed run may "
                        f"change only {', '.join(RESUMABLE)} (start a new run with --out to change {k})")
    if cfg.train.max_steps < step:
        raise UserError(f"--resume: train.max_steps={cfg.train.max_steps} is below step {step}, which {ckpt} "
                        f"has already reached")


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}; tables in task.options stay whole."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and not prefix:
            out.update(_flat(v, f"{k}."))
        else:
            out[prefix + k] = json.loads(json.dumps(v))  # tuples and lists compare equal
    return out


def load_trainer_state(ckpt: Path) -> dict:
    """trainer.pt, or a UserError naming it (a truncated or foreign file)."""
    file = ckpt / "trainer.pt"
    try:
        state = torch.load(file, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or not {"step", "data_position", "optimizer", "scheduler"} <= set(state):
            raise ValueError("not a trainer state")
    except Exception as e:  # torch.load of a damaged file fails in pickle, zipfile or torch itself
        raise UserError(f"{file}: unreadable trainer state ({type(e).__name__}: {_first_line(e)}); "
                        f"{_older_hint(ckpt)}") from None
    return state


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def _older_hint(ckpt: Path) -> str:
    older = [p for p in complete_checkpoints(ckpt.parent.parent) if p.name < ckpt.name]
    if older:
        return f"resume from the previous checkpoint with --resume {older[-1]}"
    return "no older checkpoint is kept"


def restore(ckpt: Path, state: dict, d: Dist, model, optimizer, scheduler) -> None:
    """Optimizer, scheduler and this rank's RNG from a checkpoint (the adapter is loaded into
    the model when it is built, before sharding)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    try:
        set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optimizer"], options=_osd_options())
        scheduler.load_state_dict(state["scheduler"])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise UserError(f"{ckpt / 'trainer.pt'}: the optimizer state does not fit this model "
                        f"({type(e).__name__}: {_first_line(e)}); {_older_hint(ckpt)}") from None
    rng = ckpt / "rng" / f"rank{d.rank}.pt"
    if not rng.exists():  # resumed on more ranks than were saved: rank 0's stream is as good as any
        rng = ckpt / "rng" / "rank0.pt"
    try:
        set_rng_state(torch.load(rng, map_location="cpu", weights_only=False))
    except Exception as e:  # garbage bytes fail in pickle or zipfile; a wrong dict in the setters
        raise UserError(f"{rng}: unreadable RNG state ({type(e).__name__}: {_first_line(e)}); "
                        f"{_older_hint(ckpt)}") from None
