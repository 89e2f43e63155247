"""Training: SFT on dialogues (sft.py) and GRPO for RLVR / RL2F (grpo.py).

`train(cfg, out_dir, resume=None)` runs the method named by `cfg.train.method`; both loops
write out_dir/metrics.jsonl and atomic checkpoints under out_dir/checkpoints/.
`dry_run(cfg, out_dir)` builds what a run needs, stops before the first step and writes
nothing (`rl2f train --dry-run`).
"""
from __future__ import annotations

from pathlib import Path

from rl2f.lora import lora_parameters
from rl2f.run import training_runner
from rl2f.train.common import start_run, train_problems
from rl2f.train.grpo import train_grpo
from rl2f.train.sft import read_sft_file, sft_steps, train_sft


def train(cfg, out_dir: str | Path, resume: str | Path | None = None, **kw) -> dict:
    """Run the configured method; returns the last step's metrics."""
    if cfg.train.method == "sft":
        return train_sft(cfg, out_dir, resume=resume, **kw)
    return train_grpo(cfg, out_dir, resume=resume, **kw)


def dry_run(cfg, out_dir: str | Path, resume: str | Path | None = None, d=None) -> dict:
    """Build everything `train` would (the run directory checked, the checkpoint to resume and
    its config, model + LoRA, tokenizer, task and its train problems, engine, teacher) and
    stop before the first step, writing nothing. Returns the plan: what was built and the
    size of a step. Token counts are worst cases: every attempt at rollout.max_new_tokens."""
    t, r = cfg.train, cfg.rollout
    sft_file = t.method == "sft" and bool(t.sft_data)
    _, d, _, state, run = start_run(cfg, out_dir, resume, d, task=None, init_adapter=None,
                                    with_engine=not sft_file, dry_run=True)
    plan = {"method": t.method, "model": str(run.model_path),
            "parameters": sum(p.numel() for p in run.model.parameters()),
            "trainable": sum(p.numel() for p in lora_parameters(run.model)),
            "engine": r.engine if run.engine is not None else None, "world_size": d.world_size,
            "start_step": state["step"] if state else 0, "steps": t.max_steps}
    if sft_file:
        seqs = read_sft_file(t.sft_data, run.tokenizer)
        per_step = t.micro_batch * t.grad_accum * d.world_size
        return plan | {"dialogues": len(seqs), "sequences_per_step": per_step,
                       "steps": sft_steps(t, len(seqs), per_step),
                       "max_tokens_per_step": sum(sorted(len(s) for s in seqs)[-per_step:])}
    runner = training_runner(run)  # builds the teacher: a teacher class of the user's is loaded here
    problems = train_problems(cfg, run.task)
    plan |= {"task": run.task.name, "train_problems": len(problems), "turns": runner.max_turns}
    if t.method == "sft":  # dialogues generated from every train problem up front, the solved ones kept
        episodes = len(problems) * r.group_size
        return plan | {"generated_episodes": episodes,
                       "max_generated_tokens": episodes * runner.max_turns * r.max_new_tokens}
    problems_per_step = t.grad_accum * d.world_size * r.problems_per_batch
    episodes = problems_per_step * r.group_size
    return plan | {"problems_per_step": problems_per_step, "episodes_per_step": episodes,
                   "max_tokens_per_step": episodes * runner.max_turns * r.max_new_tokens,
                   "max_student_tokens": t.max_student_tokens}
