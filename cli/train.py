"""`rl2f train`: SFT, RLVR or RL2F on a run config.

    rl2f train --method sft|rlvr|rl2f --config FILE [--set section.key=value ...] [--out DIR] [--resume DIR]

Examples:
    rl2f train --method rl2f --config configs/tiny-rl2f.toml --set train.max_steps=3   # CPU smoke run
    torchrun --nproc_per_node=2 -m rl2f.cli train --method rl2f --config configs/gemma3-12b-rl2f.toml

`--resume DIR` continues the run in DIR (its newest checkpoint) with the config saved there;
`--set` still applies on top (e.g. a larger train.max_steps to extend a finished run).
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from rl2f.errors import UserError


def _load(method, config_path, overrides, resume):
    from rl2f.config import RunConfig, apply_override, from_dict, load_config

    sets = list(overrides)
    if resume:
        from rl2f.train.checkpoint import find_checkpoint, read_checkpoint_config

        ckpt = find_checkpoint(resume)
        data = read_checkpoint_config(ckpt)
        saved = data.get("train", {}).get("method")
        if method and method != saved:
            raise UserError(f"--resume {resume}: the run was trained with --method {saved}, not {method}")
        for item in sets:
            apply_override(data, item)
        return from_dict(RunConfig, data, where=str(ckpt / "config.json"))
    if method:
        sets.insert(0, f"train.method={method}")
    return load_config(RunConfig, config_path, sets)


@click.command()
@click.option("--method", type=click.Choice(["sft", "rlvr", "rl2f"]), default=None,
              help="Training method (default: train.method of the config).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML run config (default: all defaults, the tiny CPU model).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config value, e.g. --set train.max_steps=3 (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run directory for metrics.jsonl and checkpoints/ (default: runs/<config>-<method>).")
@click.option("--resume", type=click.Path(), default=None,
              help="Continue the run in this directory (or from this checkpoint directory).")
def train(method, config_path, overrides, out, resume):
    """Train the LoRA adapter with SFT, RLVR or RL2F (GRPO); see rl2f/train/grpo.py."""
    from rl2f.train import train as run_train
    from rl2f.distributed import init_distributed, shutdown

    if resume and config_path:
        click.echo(f"note: --resume uses the config saved with the run; {config_path} is not read", err=True)
    cfg = _load(method, None if resume else config_path, overrides, resume)
    if out is None:
        if resume:
            r = Path(resume)
            out = r.parent.parent if (r / "trainer.pt").is_file() else r
        else:
            stem = Path(config_path).stem if config_path else "default"
            out = Path("runs") / f"{stem}-{cfg.train.method}"
    d = init_distributed(cfg.model.device)
    # No shutdown (a barrier) when this rank failed: its peers may be inside a collective that
    # never matches a barrier, and the error would wait there unprinted. The process exits with
    # the error instead and torchrun stops the other ranks.
    record = run_train(cfg, out, resume=resume, d=d)
    shutdown(d)
    if d.is_main:
        keep = ("step", "loss", "reward_mean", "eval_loss", "checkpoint")
        click.echo(json.dumps({k: record[k] for k in keep if k in record}))
