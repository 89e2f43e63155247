"""`rl2f evaluate`: the base model and adapters on the same problems and seeds.

    rl2f evaluate --config FILE [--set section.key=value ...] --adapter NAME=DIR ... [--base/--no-base]
                  [--task NAME ...] [--turns T] [--problems N] [--seeds 0,1,2] [--self-correct NAME ...]
                  [--save-episodes] --out DIR

Example (CPU, the embedded tiny model):
    rl2f evaluate --config configs/tiny-rl2f.toml --adapter rl2f=runs/tiny-rl2f-rl2f/adapter \
        --adapter rlvr=runs/tiny-rlvr-rlvr/adapter --seeds 0,1,2 --out runs/eval

For every model: acc@1..T with teacher feedback, retry without feedback, pass@K (K = T
independent samples), correction rate, plasticity and leak rate, with 95% bootstrap
intervals over problems. Writes DIR/report.json (schema: rl2f/eval/report.py), DIR/report.md
and DIR/*.png, and prints the Markdown table.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from rl2f.errors import UserError

CONFIG = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                      help="TOML run config (default: all defaults, the tiny CPU model).")
SET = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                   help="Override a config value, e.g. --set eval.samples_per_problem=4 (repeatable).")
TURNS = click.option("--turns", type=int, default=None, help="T: student attempts per episode (default: eval.max_turns).")
PROBLEMS = click.option("--problems", "n_problems", type=int, default=None,
                        help="Held-out problems per task (default: task.n_eval).")
SEEDS = click.option("--seeds", default="0", show_default=True, help="Comma-separated evaluation seeds.")
OUT = click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory for the report.")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seeds:
        raise UserError("--seeds: give at least one seed")
    return seeds


def parse_adapter(spec: str) -> tuple[str, str]:
    """NAME=DIR, or DIR alone (named after the directory)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path = spec
        name = Path(spec.rstrip("/")).name
    if not name or not path:
        raise UserError(f"--adapter {spec!r}: expected NAME=DIR")
    return name, path


def load_cfg(config_path, overrides):
    from rl2f.config import RunConfig, load_config

    return load_config(RunConfig, config_path, list(overrides))


def problem_sets(cfg, tasks: tuple[str, ...], n_problems: int | None):
    """None (the config's task and task.n_eval), or {task: problems} for --task / --problems."""
    if not tasks and n_problems is None:
        return None
    from rl2f.tasks import get_task

    from rl2f.config import MAX_PROBLEMS

    if n_problems is not None and not 1 <= n_problems <= MAX_PROBLEMS:  # made up front: bounded
        raise UserError(f"--problems must be in 1..{MAX_PROBLEMS:,}, got {n_problems:,}")
    n = cfg.task.n_eval if n_problems is None else n_problems
    out = {}
    for name in tasks or (cfg.task.name,):
        task = get_task(name, **(cfg.task.options if name == cfg.task.name else {}))
        out[name] = task.problems(n, seed=cfg.task.seed, split="test")
    return out


class Bar:
    """A click progress bar opened on the first report (when the total is known)."""

    def __init__(self, label: str):
        self.label, self.bar = label, None

    def __call__(self, n: int, total: int, item: str) -> None:
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, show_pos=True, show_eta=True,
                                         item_show_func=lambda s: s, file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(n, item)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def run_and_write(fn, out: str, label: str, **kw) -> dict:
    from rl2f.eval.report import markdown_table, write_report
    from rl2f.outputs import claim_dir

    # before any work: a directory of the user's is refused, a second writer too
    claim_dir(Path(out), "report")
    bar = Bar(label)
    try:
        report = fn(progress=bar, **kw)
    finally:
        bar.close()
    paths = write_report(report, out)
    click.echo(markdown_table(report))
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())} ({report['wall_seconds']:.1f} s)")
    return report


@click.command()
@CONFIG
@SET
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=DIR",
              help="An adapter to evaluate, named NAME in the report (repeatable).")
@click.option("--base/--no-base", default=True, show_default=True, help="Also evaluate the base model (adapter off).")
@click.option("--task", "tasks", multiple=True, metavar="NAME",
              help="Evaluate on this task (repeatable; default: the config's task).")
@TURNS
@PROBLEMS
@SEEDS
@click.option("--self-correct", "self_correct", multiple=True, metavar="NAME",
              help="Also run model NAME (an adapter name or 'base') with self-critique instead of a teacher.")
@click.option("--save-episodes", is_flag=True, help="Also write every episode as JSONL under DIR/episodes/.")
@OUT
def evaluate(config_path, overrides, adapters, base, tasks, turns, n_problems, seeds, self_correct,
             save_episodes, out):
    """Evaluate the base model and adapters: acc@t, retry, pass@K, correction, plasticity, leaks."""
    from rl2f.eval.evaluate import evaluate_models

    cfg = load_cfg(config_path, overrides)
    if turns is not None and turns < 1:
        raise UserError(f"--turns must be >= 1, got {turns}")
    models: dict[str, str | None] = {"base": None} if base else {}
    for spec in adapters:
        name, path = parse_adapter(spec)
        if name in models:
            raise UserError(f"--adapter {spec!r}: the name '{name}' is used twice ('base' is the base model)")
        models[name] = path
    if not models:
        raise UserError("nothing to evaluate: give --adapter NAME=DIR or drop --no-base")
    run_and_write(evaluate_models, out, "evaluate", cfg=cfg, models=models,
                  problems=problem_sets(cfg, tasks, n_problems), seeds=parse_seeds(seeds),
                  self_correct=list(self_correct), turns=turns,
                  episodes_dir=Path(out) / "episodes" if save_episodes else None)
