"""`rl2f plan-memory`: the per-rank peak memory of each phase of a run, before running it.

    rl2f plan-memory --config FILE [--set section.key=value ...] [--gpus N] [--gpu-gib G]
                     [--model-config PATH] [--prompt-tokens N] [--feedback-tokens N] [--json]

Example (the reference setting; the checkpoint itself is not needed, only its config.json):
    rl2f plan-memory --config configs/gemma3-12b-rl2f.toml \\
        --model-config configs/models/gemma-3-12b-it.config.json --gpus 2 --gpu-gib 79.1

What is counted, and what not, is in rl2f/memory_plan.py. The dialogue is taken at its
longest: every attempt uses rollout.max_new_tokens, every first prompt --prompt-tokens, every
teacher message --feedback-tokens. Exits 1 when the peak does not fit in --gpu-gib.
"""
from __future__ import annotations

import json

import click


@click.command("plan-memory")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML run config (default: all defaults, the tiny model).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config value, e.g. --set train.micro_batch=2 (repeatable).")
@click.option("--model-config", type=click.Path(), default=None,
              help="The model's config.json (or its checkpoint directory) when model.path is not here yet.")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="Ranks (torchrun --nproc_per_node): FSDP2 shards the weights over them.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="cuda: gradient checkpointing on, a reserve for the CUDA context; cpu: as rl2f runs there.")
@click.option("--gpu-gib", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Memory of one device in GiB (an 80 GB A100 or H100 shows torch about 79.1); "
                   "default: the first visible GPU's, else none checked.")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="The longest first prompt of the task, in tokens.")
@click.option("--feedback-tokens", type=click.IntRange(min=0), default=0,
              help="The longest teacher message with its template (0: rollout.teacher_max_new_tokens + 16).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as one JSON object (bytes).")
def plan_memory(config_path, overrides, model_config, gpus, device, gpu_gib, prompt_tokens, feedback_tokens,
                as_json):
    """Print the per-rank peak memory of each phase (rollout, train, optim) of a run config."""
    from rl2f.config import RunConfig, load_config
    from rl2f.memory_plan import GiB, Shapes, model_config_for, plan_memory as make_plan

    cfg = load_config(RunConfig, config_path, list(overrides))
    device_bytes = int(gpu_gib * GiB) if gpu_gib else _visible_gpu_bytes(device)
    plan = make_plan(cfg, model_config_for(cfg, model_config), gpus, device, device_bytes,
                     Shapes.worst_case(cfg, prompt_tokens, feedback_tokens))
    click.echo(json.dumps(plan.as_dict()) if as_json else plan.table())
    if plan.headroom() is not None and plan.headroom() < 0:
        raise SystemExit(1)


def _visible_gpu_bytes(device: str) -> int | None:
    if device != "cuda":
        return None
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
