"""`rl2f generate`: roll out multi-turn student/teacher episodes into a JSONL file.

    rl2f generate --config FILE [--set section.key=value ...] --out FILE [--adapter DIR]

One record per episode (rl2f/episodes.py documents the fields). Beside it, OUT.rl2f.json
records what made them (the model, task and rollout config, the adapter's digest, --split,
--problems); writing into an existing file resumes only with those same settings (another
adapter or config is refused, naming the first setting that differs), and only one process
writes a file at a time. A resume skips the batches already complete there:
a batch cut short is played again whole, so a run stopped at any byte loses at
most the batch in flight and every (problem, sample) ends up in the file exactly once. A
damaged line before the end of the file is an error naming it. Ends with one summary line
(JSON).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from rl2f.errors import UserError

FILE_TASKS = ("math", "code")  # tasks that read problems from a file and can skip bad lines


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML run config (default: all defaults, the tiny CPU model).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config value, e.g. --set rollout.max_turns=2 (repeatable).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Episode JSONL to write or resume.")
@click.option("--adapter", type=click.Path(file_okay=False), default=None,
              help="The student's LoRA adapter: an adapter directory (PEFT format), a checkpoint, or a "
                   "training run's --out (its newest checkpoint); default: the base model.")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True,
              help="Which split of the task's problems to roll out.")
@click.option("--problems", "n_problems", type=int, default=None,
              help="Number of problems (default: task.n_train, or task.n_eval for --split test).")
@click.option("--skip-bad", is_flag=True, help="Skip and count malformed lines of a task's JSONL file.")
def generate(config_path, overrides, out, adapter, split, n_problems, skip_bad):
    """Roll out episodes (student with the adapter, teacher from rollout.teacher) to --out."""
    from rl2f.config import MAX_PROBLEMS, RunConfig, load_config, to_dict
    from rl2f.episodes import generate_to_file, read_episodes, summarize
    from rl2f.lora import adapter_digest
    from rl2f.outputs import claim_file
    from rl2f.progress import Progress
    from rl2f.distributed import Dist
    from rl2f.run import build_inference_run, training_runner
    from rl2f.train.checkpoint import adapter_dir

    cfg = load_config(RunConfig, config_path, overrides)
    if skip_bad:
        if cfg.task.name not in FILE_TASKS:
            raise UserError(f"--skip-bad applies to tasks read from a file ({', '.join(FILE_TASKS)}), not {cfg.task.name}")
        cfg.task.options["skip_bad"] = True
    adapter = adapter_dir(adapter) if adapter is not None else None
    run = build_inference_run(cfg, Dist())
    run.engine.set_adapter(None if adapter is None else 0, adapter)
    runner = training_runner(run)
    n = n_problems if n_problems is not None else (cfg.task.n_eval if split == "test" else cfg.task.n_train)
    if not 1 <= n <= MAX_PROBLEMS:  # the problems are made up front: bounded memory and time
        raise UserError(f"--problems must be in 1..{MAX_PROBLEMS:,}, got {n:,}")
    problems = run.task.problems(n, seed=cfg.task.seed, split=split)
    # one writer, and resumed only by the settings that made its episodes
    settings = to_dict(cfg)
    claim_file(Path(out), {**{k: settings[k] for k in ("model", "task", "rollout")},
                           "adapter": adapter_digest(adapter), "split": split, "problems": n})

    start = time.perf_counter()
    new = []
    # The file is checked before progress is shown, so a bad one is a single line. A bar on a
    # terminal, a line per batch in a log; on stderr, as stdout carries the summary.
    bar = None
    batches = generate_to_file(runner, problems, out, cfg.rollout.group_size, cfg.rollout.problems_per_batch,
                               progress=lambda n: bar.update(n))
    with Progress("generate", len(problems), file=sys.stderr) as bar:
        for batch in batches:
            new.extend(batch)
    seconds = time.perf_counter() - start
    ids = {p.id for p in problems}
    summary = summarize([e for e in read_episodes(out) if e.problem_id in ids], runner.max_turns,
                        tokenizer=run.tokenizer)
    summary["new_episodes"] = len(new)
    summary["tokens_per_s"] = round(summarize(new, 1)["student_tokens"] / seconds, 1) if new else 0.0
    if summary["problems"] < len(problems):  # prompts that cannot fit the context (rollout.overlong)
        summary["skipped_problems"] = len(problems) - summary["problems"]
    if getattr(run.task, "skipped", 0):
        summary["skipped_lines"] = run.task.skipped
    click.echo(json.dumps(summary))
