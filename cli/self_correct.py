"""`rl2f self-correct`: the model critiques and revises its own attempts, with no teacher.

    rl2f self-correct --config FILE [--set section.key=value ...] [--adapter [NAME=]DIR]
                      [--turns T] [--problems N] [--seeds 0,1,2] --out DIR

Example (CPU, the embedded tiny model):
    rl2f self-correct --config configs/tiny-rl2f.toml --adapter runs/tiny-rl2f-rl2f --out runs/self

Runs self-correction (attempt, self-critique in the teacher's turn without privileged
information, revision; up to T rounds) beside teacher feedback, plain retry and pass@K for
the same model, problems and seeds, and writes the same report as `rl2f evaluate`
(DIR/report.json with NAME and NAME_self_correct, DIR/report.md, DIR/*.png), the episodes
under DIR/episodes/, and prints one self-correction dialogue. Without --adapter: the base.
"""
from __future__ import annotations

from pathlib import Path

import click

from rl2f.cli.evaluate import CONFIG, OUT, PROBLEMS, SEEDS, SET, TURNS, load_cfg, parse_adapter, parse_seeds, \
    problem_sets, run_and_write
from rl2f.errors import UserError


@click.command("self-correct")
@CONFIG
@SET
@click.option("--adapter", default=None, metavar="[NAME=]DIR", help="The adapter (default: the base model).")
@TURNS
@PROBLEMS
@SEEDS
@OUT
def self_correct(config_path, overrides, adapter, turns, n_problems, seeds, out):
    """Self-correction (no teacher) beside teacher feedback and plain retry, in one report."""
    from rl2f.episodes import read_episodes
    from rl2f.eval.self_correct import SELF_SUFFIX, self_correct as run_self_correct, transcript

    cfg = load_cfg(config_path, overrides)
    if turns is not None and turns < 1:
        raise UserError(f"--turns must be >= 1, got {turns}")
    name, path = parse_adapter(adapter) if adapter else ("base", None)
    episodes_dir = Path(out) / "episodes"
    run_and_write(run_self_correct, out, "self-correct", cfg=cfg, adapter=path, name=name,
                  problems=problem_sets(cfg, (), n_problems), seeds=parse_seeds(seeds), turns=turns,
                  episodes_dir=episodes_dir)
    episodes = read_episodes(episodes_dir / f"{name}.self.jsonl")
    example = max(episodes, key=lambda e: len(e.turns))
    click.echo(f"\nA self-correction dialogue ({name}{SELF_SUFFIX}):\n{transcript(example)}")
