"""`rl2f evaluate`: the base model and adapters on the same problems and seeds.

    rl2f evaluate --config FILE [--set section.key=value ...] --adapter NAME=DIR ... [--base/--no-base]
                  [--task NAME ...] [--turns T] [--problems N] [--seeds 0,1,2] [--self-correct NAME ...]
                  [--controls hints,retry,placebo,decoy] [--pass-at-k K] [--save-episodes] --out DIR

Example (CPU, the embedded tiny model):
    rl2f evaluate --config configs/tiny-rl2f.toml --adapter rl2f=runs/tiny-rl2f-rl2f \
        --adapter rlvr=runs/tiny-rlvr-rlvr --seeds 0,1,2 --out runs/eval

An adapter is an adapter directory, a checkpoint, or a training run's --out (its newest
checkpoint). For every model: acc@1..T with teacher feedback (hints), and the controls
chosen with --controls (retry: "incorrect, try again"; placebo: the hints' format with no
information; decoy: the real hints about a decoy answer from the task's prior), pass@K (K = T independent samples unless --pass-at-k), correction rate,
plasticity and leak rate, with 95% bootstrap intervals over seeds and problems. Progress: a
bar on a terminal, one line per batch of eval.batch_size problems in a log. Writes DIR/report.json (schema: rl2f/eval/report.py), DIR/report.md
and DIR/*.png, and prints the Markdown table.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from rl2f.errors import UserError
from rl2f.progress import Progress

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


# --controls names -> episode kinds (rl2f.eval.evaluate.CONTROLS)
CONTROL_NAMES = {"hints": "feedback", "retry": "retry", "placebo": "placebo", "decoy": "decoy"}


def parse_controls(text: str) -> tuple[str, ...]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in names if c not in CONTROL_NAMES]
    if bad or not names:
        raise UserError(f"--controls {text!r}: expected one or more of {', '.join(CONTROL_NAMES)}, comma-separated")
    return tuple(dict.fromkeys(CONTROL_NAMES[c] for c in names))


def parse_adapter(spec: str) -> tuple[str, str]:
    """NAME=DIR, or DIR alone (named after the directory). DIR: an adapter, a checkpoint, or
    a training run's --out (its newest checkpoint's adapter)."""
    from rl2f.train.checkpoint import adapter_dir

    name, sep, path = spec.partition("=")
    if not sep:
        path = spec
        name = Path(spec.rstrip("/")).name
    if not name or not path:
        raise UserError(f"--adapter {spec!r}: expected NAME=DIR")
    return name, adapter_dir(path)


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
    """Progress (rl2f.progress: a bar on a terminal, one line per batch in a log) opened on
    the first report, when the total is known; on stderr, as stdout carries the report."""

    def __init__(self, label: str):
        self.label, self.progress = label, None

    def __call__(self, n: int, total: int, item: str) -> None:
        if self.progress is None:
            self.progress = Progress(self.label, total, file=sys.stderr)
        self.progress.update(n, item)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()


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
              help="An adapter to evaluate (an adapter directory, a checkpoint, or a training run's --out), "
                   "named NAME in the report (repeatable).")
@click.option("--base/--no-base", default=True, show_default=True, help="Also evaluate the base model (adapter off).")
@click.option("--task", "tasks", multiple=True, metavar="NAME",
              help="Evaluate on this task (repeatable; default: the config's task).")
@TURNS
@PROBLEMS
@SEEDS
@click.option("--self-correct", "self_correct", multiple=True, metavar="NAME",
              help="Also run model NAME (an adapter name or 'base') with self-critique instead of a teacher.")
@click.option("--controls", default="hints,retry", show_default=True,
              help="Episodes played for every model, any of: hints (the config's teacher), retry (\"incorrect, "
                   "try again\"), placebo (the hints' format, no information), decoy (the real hints about a decoy "
                   "answer; tasks with decoy answers, e.g. highlow). acc@t is of hints, else of the first given.")
@click.option("--pass-at-k", "pass_at_k", type=int, default=None,
              help="K of pass@K: K independent one-turn samples per problem (default: T; 0 = none).")
@click.option("--save-episodes", is_flag=True, help="Also write every episode as JSONL under DIR/episodes/.")
@OUT
def evaluate(config_path, overrides, adapters, base, tasks, turns, n_problems, seeds, self_correct, controls,
             pass_at_k, save_episodes, out):
    """Evaluate the base model and adapters: acc@t, retry, pass@K, correction, plasticity, leaks."""
    from rl2f.eval.evaluate import evaluate_models

    cfg = load_cfg(config_path, overrides)
    if turns is not None and turns < 1:
        raise UserError(f"--turns must be >= 1, got {turns}")
    if pass_at_k is not None and pass_at_k < 0:
        raise UserError(f"--pass-at-k must be >= 0 (0 = no pass@K samples), got {pass_at_k}")
    kinds = parse_controls(controls)
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
                  self_correct=list(self_correct), turns=turns, controls=kinds, pass_at_k=pass_at_k,
                  episodes_dir=Path(out) / "episodes" if save_episodes else None)
