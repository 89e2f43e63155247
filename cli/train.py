"""`rl2f train`: SFT, RLVR or RL2F on a run config.

    rl2f train --method sft|rlvr|rl2f --config FILE [--set section.key=value ...] [--out DIR] [--resume DIR]
               [--dry-run]

Examples:
    rl2f train --method rl2f --config configs/tiny-rl2f.toml --set train.max_steps=3   # CPU smoke run
    rl2f train --method rl2f --config configs/gemma3-12b-rl2f.toml --dry-run         # check it, print the plan
    torchrun --nproc_per_node=2 -m rl2f.cli train --method rl2f --config configs/gemma3-12b-rl2f.toml

`--resume DIR` continues the run in DIR (its newest checkpoint) with the config saved there;
`--set` still applies on top (e.g. a larger train.max_steps to extend a finished run).
`--dry-run` builds everything the run needs (model, tokenizer, task and its problems, engine,
teacher; --out is checked) and stops before the first step, writing nothing: it prints the
plan, with the size of a step at its worst case (every attempt at rollout.max_new_tokens).
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
@click.option("--dry-run", is_flag=True,
              help="Build everything the run needs, print the plan and stop before the first step; writes nothing.")
def train(method, config_path, overrides, out, resume, dry_run):
    """Train the LoRA adapter with SFT, RLVR or RL2F (GRPO); see rl2f/train/grpo.py."""
    from rl2f.train import dry_run as plan_run, train as run_train
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
    if dry_run:
        plan = plan_run(cfg, out, resume=resume, d=d)
        shutdown(d)
        if d.is_main:
            click.echo(f"dry run: nothing written to --out {out}")
            for label, value in _plan_rows(plan, cfg):
                click.echo(f"{label:<20} {value}")
        return
    # No shutdown (a barrier) when this rank failed: its peers may be inside a collective that
    # never matches a barrier, and the error would wait there unprinted. The process exits with
    # the error instead and torchrun stops the other ranks.
    record = run_train(cfg, out, resume=resume, d=d)
    shutdown(d)
    if d.is_main:
        keep = ("step", "loss", "reward_mean", "eval_loss", "checkpoint")
        click.echo(json.dumps({k: record[k] for k in keep if k in record}))


def _plan_rows(plan: dict, cfg) -> list[tuple[str, str]]:
    """The dry run's plan as (label, value) rows, each number with what it is made of."""
    r, t = cfg.rollout, cfg.train
    kind = "SFT" if plan["method"] == "sft" else "GRPO"
    rows = [("method", f"{plan['method']} ({kind})"),
            ("model", f"{plan['model']} ({plan['parameters']:,} parameters, {plan['trainable']:,} trainable: LoRA)"),
            ("engine", plan["engine"] or "none (SFT on a file)")]
    if "task" in plan:
        rows.append(("task", f"{plan['task']}: {plan['train_problems']:,} train problems"))
        attempts = "1 student attempt, no teacher" if plan["turns"] == 1 else \
            f"up to {plan['turns']} student attempts, teacher {r.teacher}"
        rows.append(("turns", f"{attempts} (per episode)"))
    steps = f"{plan['steps']:,}" + (f" (resuming after step {plan['start_step']:,})" if plan["start_step"] else "")
    ranks = _count(plan["world_size"], "rank")
    if "problems_per_step" in plan:
        if plan["max_student_tokens"]:
            steps += f", or fewer: train.max_student_tokens = {plan['max_student_tokens']:,}"
        rows += [("steps", steps),
                 ("problems per step", f"{plan['problems_per_step']:,} (grad_accum {t.grad_accum} x {ranks} "
                                       f"x problems_per_batch {r.problems_per_batch})"),
                 ("episodes per step", f"{plan['episodes_per_step']:,} (x group_size {r.group_size})"),
                 ("max tokens per step", f"{plan['max_tokens_per_step']:,} student tokens (the episodes x "
                                         f"{_count(plan['turns'], 'turn')} x max_new_tokens {r.max_new_tokens})")]
    elif "dialogues" in plan:
        rows += [("sft data", f"{t.sft_data}: {_count(plan['dialogues'], 'dialogue')}"),
                 ("steps", f"{steps} (sft_epochs {t.sft_epochs}, at most max_steps {t.max_steps:,})"),
                 ("sequences per step", f"{plan['sequences_per_step']:,} (micro_batch {t.micro_batch} x grad_accum "
                                        f"{t.grad_accum} x {ranks})"),
                 ("max tokens per step", f"{plan['max_tokens_per_step']:,} (the longest dialogues)")]
    else:
        rows += [("sft data", f"generated up front: {plan['generated_episodes']:,} episodes (x group_size "
                              f"{r.group_size}), at most {plan['max_generated_tokens']:,} student tokens; the solved "
                              "ones are trained on"),
                 ("steps", f"at most {steps} (as many as sft_epochs over the solved dialogues take)")]
    return rows


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")
