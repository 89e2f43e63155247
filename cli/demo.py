"""`rl2f demo`: per seed a base, and SFT, RLVR and RL2F from it; evaluation, report (rl2f/demo/)."""
from __future__ import annotations

import click


@click.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for report.json, report.md, plots and every run.")
@click.option("--quick", is_flag=True, help="A smoke run of about a minute (tiny budgets; numbers mean nothing).")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds (one full run each, its own base included).")
@click.option("--jobs", type=int, default=None, help="Worker processes (default: one per seed).")
def demo(out, quick, seeds, jobs):
    """Reproduce RL2F's central claim at toy scale on a CPU (the embedded default)."""
    from rl2f.demo import run_demo
    from rl2f.errors import UserError

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise UserError(f"--seeds must name at least one seed, each once, got {seeds!r}")
    report = run_demo(out, seed_list, quick=quick, jobs=jobs)
    click.echo((__import__("pathlib").Path(out) / "report.md").read_text())
    click.echo(f"wrote {out}/report.json, report.md and plots in {report['wall_seconds']:.0f}s")
