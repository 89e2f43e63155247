"""`rl2f demo`: per seed a base, and SFT (two kinds), RLVR and RL2F from it; evaluation, report
(rl2f/demo/); `--tune`: how each arm's learning rate was chosen; `--real`: the same on the
fetched SmolLM2 (rl2f/demo/real.py)."""
from __future__ import annotations

import click


@click.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for report.json, report.md, plots and every run.")
@click.option("--quick", is_flag=True, help="A smoke run of about a minute (tiny budgets; numbers mean nothing).")
@click.option("--real", is_flag=True,
              help="On a real pretrained model (SmolLM2-135M-Instruct: `rl2f fetch-model smollm2` first): base, SFT, "
                   "RLVR and RL2F on the chat wording of the higher-or-lower game; 3 seeds took 51 min on a 2-core CPU. "
                   "Run the same command again to continue a stopped run.")
@click.option("--model", type=click.Path(file_okay=False), default=None,
              help="--real: another checkpoint directory as the base (default: the fetched SmolLM2).")
@click.option("--seeds", default="0,1,2", show_default=True,
              help="Comma-separated training seeds (one full run each, its own base included); the claim is "
                   "pre-registered on 0,1,2, with 3,4,5,6,7,8 as its replication (rl2f/demo/prereg.py).")
@click.option("--jobs", type=int, default=None, help="Worker processes (default: one per seed; --tune: 2).")
@click.option("--tune", is_flag=True,
              help="Instead of the demo: train every arm at each learning rate of the grid on the tuning seed and "
                   "problems (never reported) and write OUT/tuning.json with each arm's choice.")
def demo(out, quick, real, model, seeds, jobs, tune):
    """Reproduce RL2F's central claim at toy scale on a CPU (the embedded default), or with
    --real on a real pretrained model."""
    from rl2f.demo import run_demo, run_tuning
    from rl2f.demo.real import run_real, run_real_tuning
    from rl2f.errors import UserError

    if model is not None and not real:
        raise UserError("--model applies to --real runs only (the toy demo trains its own base)")
    if tune:
        result = (run_real_tuning(out, quick=quick, jobs=jobs or 2, model=model) if real
                  else run_tuning(out, quick=quick, jobs=jobs or 2))
        for arm, by_lr in result["acc"].items():
            click.echo(f"{arm}: " + ", ".join(f"lr {lr}: {v:.3f}" for lr, v in by_lr.items())
                       + f" -> {result['lr'][arm]:g}")
        click.echo(f"wrote {out}/tuning.json in {result['wall_seconds']:.0f}s ({result['criterion']})")
        return

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise UserError(f"--seeds must name at least one seed, each once, got {seeds!r}")
    report = (run_real(out, seed_list, quick=quick, jobs=jobs, model=model) if real
              else run_demo(out, seed_list, quick=quick, jobs=jobs))
    click.echo((__import__("pathlib").Path(out) / "report.md").read_text())
    click.echo(f"wrote {out}/report.json, report.md and plots in {report['wall_seconds']:.0f}s")
