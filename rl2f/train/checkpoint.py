"""Atomic, resumable training checkpoints.

    OUT/checkpoints/step-000004/
        adapter/          the LoRA adapter in PEFT format (what vLLM, PEFT and `rl2f evaluate` load)
        trainer.pt        step, data position, optimizer (full, keyed by parameter name), scheduler
        rng/rank{r}.pt    torch / CUDA / numpy / python RNG states of each rank
        config.json       the run config
    OUT/checkpoints/latest   name of the newest complete checkpoint

A checkpoint is written into a temporary sibling directory and renamed into place, and
`latest` is replaced atomically after that, so a crash leaves the previous checkpoint
intact. The optimizer state is gathered to full tensors (FSDP2-aware), so a run can resume
on another number of ranks. The two newest checkpoints are kept.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from rl2f.config import RunConfig, to_dict
from rl2f.errors import UserError
from rl2f.distributed import Dist, barrier, unsharded

KEEP = 2


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


def save_checkpoint(out_dir: str | Path, d: Dist, model, optimizer, scheduler, cfg: RunConfig, step: int,
                    data_position: int, extra: dict | None = None) -> Path:
    """Write checkpoint `step` (collective under torchrun: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    from rl2f.lora import save_adapter

    root = Path(out_dir) / "checkpoints"
    name = f"step-{step:06d}"
    final = root / name
    tmp = root / f".tmp-{name}"
    if d.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "rng").mkdir(parents=True)
    barrier(d)
    osd = get_optimizer_state_dict(model, optimizer, options=_osd_options(cpu_offload=True))
    with unsharded(model):
        if d.is_main:
            save_adapter(model, tmp / "adapter")
    torch.save(rng_state(), tmp / "rng" / f"rank{d.rank}.pt")
    if d.is_main:
        torch.save({"step": step, "data_position": data_position, "optimizer": osd,
                    "scheduler": scheduler.state_dict(), "world_size": d.world_size, "extra": extra or {}},
                   tmp / "trainer.pt")
        (tmp / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    barrier(d)
    if d.is_main:
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        latest_tmp = root / ".latest.tmp"
        latest_tmp.write_text(name + "\n")
        os.replace(latest_tmp, root / "latest")
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(d)
    return final


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the newest one of a run directory."""
    path = Path(path)
    if (path / "trainer.pt").is_file():
        return path
    latest = path / "checkpoints" / "latest"
    if latest.is_file():
        ckpt = path / "checkpoints" / latest.read_text().strip()
        if (ckpt / "trainer.pt").is_file():
            return ckpt
    raise UserError(f"--resume {path}: no checkpoint there (expected DIR/checkpoints/latest or DIR/trainer.pt)")


def read_checkpoint_config(ckpt: Path) -> dict:
    try:
        return json.loads((ckpt / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{ckpt / 'config.json'}: cannot read the run config ({e})") from None


def load_trainer_state(ckpt: Path) -> dict:
    return torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False)


def restore(ckpt: Path, state: dict, d: Dist, model, optimizer, scheduler) -> None:
    """Optimizer, scheduler and this rank's RNG from a checkpoint (the adapter is loaded into
    the model when it is built, before sharding)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optimizer"], options=_osd_options())
    scheduler.load_state_dict(state["scheduler"])
    rng = ckpt / "rng" / f"rank{d.rank}.pt"
    if not rng.exists():  # resumed on more ranks than were saved: rank 0's stream is as good as any
        rng = ckpt / "rng" / "rank0.pt"
    set_rng_state(torch.load(rng, map_location="cpu", weights_only=False))
