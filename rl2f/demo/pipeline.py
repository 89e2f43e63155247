"""The demo's pipeline: per training seed (in worker processes) a base trained from scratch,
then the SFT, RL2F and RLVR arms from it and their evaluation; then one report. Each seed
builds its own base so that the intervals, which resample seeds, include what the base
contributes: with one shared base, a change of floating-point order alone (another base)
moved RL2F's acc@5 by 0.09 on the same seeds.

    rl2f demo --out runs/demo            # the full run (about 10 minutes on 2 cores)
    rl2f demo --out runs/demo --quick    # a smoke run of about a minute (numbers mean nothing)
"""
from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import torch

from rl2f.config import RunConfig, from_dict, to_dict
from rl2f.demo.base import pretrain_base
from rl2f.demo.claim import claim, claim_markdown, evidence_markdown
from rl2f.eval.evaluate import CONTROLS, build_report, play_models, read_episode_dirs
from rl2f.eval.report import markdown_table, write_report
from rl2f.outputs import claim_dir
from rl2f.tasks.secret import SecretNumberTask
from rl2f.train import train
from rl2f.train.checkpoint import find_checkpoint

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ARMS = ("base", "sft", "rlvr", "rl2f")
SELF_CORRECT = ("base", "rl2f")
PRIOR = 0.3  # secrets weighted exp(-0.3 x first digit): single-turn RL can lift turn 1 from ~0.21 to 0.35
TRANSFER_SUMS = (6, 13)  # digit sums no arm trains on: their numbers never appear in any training dialogue
TRAIN_SUMS = tuple(s for s in range(1, 19) if s not in TRANSFER_SUMS)
TRANSFER_TITLES = {"secret_unseen_sums": f"digit sums {', '.join(map(str, TRANSFER_SUMS))}, never seen",
                   "secret_reversed_prior": "the prior over secrets reversed"}

# The demo's run config; `quick` shrinks the budgets below.
DEMO_TOML = f"""
[model]
path = ""                     # the demo's base (rl2f/demo/base.py)
tiny_family = "gemma3"

[task]
name = "secret"               # hidden information: only the hints carry the missing bits
options = {{prior = {PRIOR}, sums = {list(TRAIN_SUMS)}}}
n_train = 4096
n_eval = 192

[rollout]
group_size = 8
max_turns = 5
temperature = 1.0
max_new_tokens = 8
teacher_max_new_tokens = 12  # a self-critique as long as a hint (10 tokens) and its end-of-turn
teacher = "programmatic"
problems_per_batch = 8

[lora]
rank = 32
alpha = 64.0

[train]
lr = 1e-3                     # all arms; GRPO's training acc@5 at 330 steps (seed 0): 0.73 at 1e-3, 0.70 at 5e-4
warmup_steps = 20             # 3 steps to 1e-3 dipped (acc@5 0.49 -> 0.41 over the first 60 steps)
micro_batch = 32
gamma = 0.7
beta = 0.0
critique_weight = 0.0         # a critique cannot know the secret; the term slowed RL2F (training acc@5 0.59 vs 0.66, 220 steps)
max_grad_norm = 1.0

[eval]
max_turns = 5
temperature = 1.0
bootstrap = 1000
"""

BUDGETS = {
    False: dict(sft_dialogues=2000, pretrain_steps=300, pretrain_batch=32, pretrain_lr=5e-3, rl2f_steps=280,
                sft_problems=384, sft_steps=40, n_eval=192, n_transfer=64),
    True: dict(sft_dialogues=64, pretrain_steps=30, pretrain_batch=8, pretrain_lr=3e-3, rl2f_steps=2,
               sft_problems=32, sft_steps=2, n_eval=8, n_transfer=4),
}


def demo_config(seed: int, quick: bool, base_path: str = "") -> RunConfig:
    data = tomllib.loads(DEMO_TOML)
    data["model"]["path"] = base_path
    data["task"]["n_eval"] = BUDGETS[quick]["n_eval"]
    # task.seed stays fixed: every seed is evaluated on the same held-out problems (paired),
    # while train.seed and rollout.seed vary the training stream and the sampling.
    data["rollout"]["seed"] = data["train"]["seed"] = data["eval"]["seed"] = seed
    if quick:
        data["rollout"]["group_size"] = 4
        data["rollout"]["problems_per_batch"] = 2
        data["eval"]["max_turns"] = 3
        data["eval"]["bootstrap"] = 100
    return from_dict(RunConfig, data, where="demo config")


def demo_task() -> SecretNumberTask:
    return SecretNumberTask(prior=PRIOR, sums=list(TRAIN_SUMS))


def transfer_tasks() -> list[SecretNumberTask]:
    """Variants no arm trained on: digit sums never seen (their numbers appear in no training
    dialogue), and the training sums with the prior reversed (a learned turn-1 prior is wrong
    there; the hints still work)."""
    return [SecretNumberTask(prior=PRIOR, sums=list(TRANSFER_SUMS), name="secret_unseen_sums"),
            SecretNumberTask(prior=-PRIOR, sums=list(TRAIN_SUMS), name="secret_reversed_prior")]


def problem_sets(tasks, n: int, seed: int) -> list:
    """(task, its `n` test-split problems) for each task: the evaluation's problem sets."""
    return [(task, task.problems(n, seed=seed, split="test")) for task in tasks]


def _with(cfg: RunConfig, **sections) -> RunConfig:
    """A copy of `cfg` with some fields replaced: _with(cfg, train={"method": "sft"})."""
    data = to_dict(cfg)
    for section, values in sections.items():
        data[section].update(values)
    return from_dict(RunConfig, data, where="demo config")


def _log(who: str, text: str) -> None:
    print(f"[{who}] {text}", flush=True)


def _quarters(who: str, stage: str):
    """A progress callback for worker processes (whose output is interleaved, not a terminal):
    one line at each quarter of the stage."""
    done, shown = [0], [0]

    def progress(n: int, total: int, label: str) -> None:
        done[0] += n
        quarter = 4 * done[0] // max(total, 1)
        if quarter > shown[0]:
            shown[0] = quarter
            _log(who, f"{stage}: {25 * quarter}%")

    return progress


# ----------------------------------------------------------------------------------------
# One training seed: SFT, RL2F, RLVR from the base, then their evaluation


def run_seed(seed: int, out_dir: str, quick: bool) -> dict:
    """Build the base of one seed, train and evaluate its arms; returns its budgets and stage
    timings (JSON-able). The base is OUT/seed<s>/base; episodes go to OUT/seed<s>/eval and
    OUT/seed<s>/transfer."""
    torch.set_num_threads(1)  # seeds run side by side; tiny models gain nothing from threads
    who = f"seed {seed}"
    out = Path(out_dir) / f"seed{seed}"
    b = BUDGETS[quick]
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}  # CPU seconds (one thread): on a shared machine, what the stage costs
    t0 = time.perf_counter()

    def stage(name: str, text: str):
        _log(who, f"{name}: {text}")
        start, start_cpu = time.perf_counter(), time.process_time()

        def done():
            seconds[name], cpu[name] = time.perf_counter() - start, time.process_time() - start_cpu
            _log(who, f"{name}: done in {seconds[name]:.0f}s ({cpu[name]:.0f} CPU s)")

        return done

    # --- the base: the embedded tiny model trained from scratch on scripted dialogues
    done = stage("base", f"{b['pretrain_steps']} steps from scratch on {b['sft_dialogues']} scripted dialogues")
    base_path, base_loss = pretrain_base(out, demo_task(), b, seed=seed, log=lambda text: _log(who, f"base: {text}"))
    done()
    cfg = demo_config(seed, quick, str(base_path))

    # --- SFT: the base's own solved dialogues with the teacher (the paper's SFT baseline)
    done = stage("sft", f"{b['sft_steps']} LoRA steps on the base's solved dialogues of {b['sft_problems']} problems")
    sft_cfg = _with(cfg, task={"n_train": b["sft_problems"]}, rollout={"group_size": 4},
                    train={"method": "sft", "max_steps": b["sft_steps"], "sft_epochs": 3, "critique_weight": 0.0})
    sft_metrics = train(sft_cfg, out / "sft")
    sft = find_checkpoint(out / "sft") / "adapter"
    done()

    # --- RL2F from the base
    done = stage("rl2f", f"{b['rl2f_steps']} GRPO steps, {cfg.rollout.max_turns}-turn episodes with the teacher")
    rl2f_cfg = _with(cfg, train={"method": "rl2f", "max_steps": b["rl2f_steps"], "save_every": 0})
    rl2f_metrics = train(rl2f_cfg, out / "rl2f")
    rl2f = find_checkpoint(out / "rl2f") / "adapter"
    done()

    # --- RLVR from the base: single-turn, as many steps, a group as much larger as RL2F's
    # episodes were longer, so it generates as many student tokens (the paper's companion
    # used group 32 against 8 for the same reason); the token budget also bounds it.
    budget = int(rl2f_metrics["student_tokens_total"])
    episodes = rl2f_metrics["step"] * cfg.rollout.problems_per_batch * cfg.rollout.group_size
    group = max(2, round(cfg.rollout.group_size * rl2f_metrics["attempts_total"] / episodes))
    done = stage("rlvr", f"{b['rl2f_steps']} single-turn GRPO steps, group {group}, until {budget} student tokens")
    rlvr_cfg = _with(cfg, rollout={"group_size": group},
                     train={"method": "rlvr", "max_steps": b["rl2f_steps"], "max_student_tokens": budget,
                            "critique_weight": 0.0, "save_every": 0})
    rlvr_metrics = train(rlvr_cfg, out / "rlvr")
    rlvr = find_checkpoint(out / "rlvr") / "adapter"
    done()

    # --- evaluation on fresh draws from the training distribution, then on the transfer sums
    models = {"base": None, "sft": str(sft), "rlvr": str(rlvr), "rl2f": str(rl2f)}
    eval_cfg = _with(cfg, eval={"batch_size": 32})
    for name, tasks, n, controls in (("eval", [demo_task()], b["n_eval"], True),
                                     ("transfer", transfer_tasks(), b["n_transfer"], False)):
        done = stage(name, f"{', '.join(models)} on {n} problems of {', '.join(t.name for t in tasks)}"
                     + (" (+ placebo, retry, pass@K, self-correction)" if controls else " (+ placebo, retry, pass@K)"))
        play_models(eval_cfg, models, problem_sets(tasks, n, cfg.task.seed), [seed],
                    list(SELF_CORRECT) if controls else [], controls=CONTROLS, oracle_free=controls,
                    turns=cfg.eval.max_turns, progress=_quarters(who, name), episodes_dir=out / name)
        done()
    _log(who, f"done in {time.perf_counter() - t0:.0f}s")
    return {
        "seed": seed, "base_pretrain_loss": base_loss,
        "sft_steps": sft_metrics.get("step"), "sft_final_loss": sft_metrics.get("loss"),
        "rl2f_steps": rl2f_metrics.get("step"), "rlvr_steps": rlvr_metrics.get("step"), "rlvr_group_size": group,
        "rl2f_student_tokens": budget, "rlvr_student_tokens": int(rlvr_metrics["student_tokens_total"]),
        "stage_seconds": seconds, "stage_cpu_seconds": cpu, "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------------------
# All seeds, one report


def run_demo(out_dir: str | Path, seeds: list[int] = (0, 1, 2), quick: bool = False, jobs: int | None = None) -> dict:
    """The whole demo into `out_dir`; returns the report (also written as report.json,
    report.md and plots; fields: rl2f/demo/__init__.py)."""

    t0 = time.perf_counter()
    out = Path(out_dir)
    claim_dir(out, "demo")  # never into a directory of the user's, one writer
    seeds = [int(s) for s in seeds]
    b = BUDGETS[quick]

    # One worker per seed: with 3 seeds on 2 cores, 2 workers would leave the last seed alone
    # on one core; 3 share both cores to the end (same CPU work, shorter wall time).
    _log("demo", f"stage 1/2: per seed {seeds}: the base, SFT, RL2F, RLVR and their evaluation")
    jobs = jobs or len(seeds)
    args = [(s, str(out), quick) for s in seeds]
    if jobs > 1:
        with mp.get_context("spawn").Pool(jobs) as pool:
            runs = pool.starmap(run_seed, args)
    else:
        runs = [run_seed(*a) for a in args]

    _log("demo", "stage 2/2: the report (bootstrap over seeds, then problems)")
    cfg = demo_config(seeds[0], quick, str(out / f"seed{seeds[0]}" / "base"))  # the bases differ only by seed
    T = cfg.eval.max_turns
    adapters = {name: None if name == "base" else [str(out / f"seed{s}" / name) for s in seeds] for name in ARMS}
    contrasts = [("rl2f", other) for other in ARMS if other != "rl2f"]
    reports = {}
    for name, tasks, n in (("eval", [demo_task()], b["n_eval"]), ("transfer", transfer_tasks(), b["n_transfer"])):
        episodes = read_episode_dirs({s: out / f"seed{s}" / name for s in seeds}, list(ARMS))
        for task, problems in problem_sets(tasks, n, cfg.task.seed):
            mine = {arm: {kind: {s: [e for e in eps if e.task == task.name] for s, eps in by_seed.items()}
                          for kind, by_seed in by_kind.items()} for arm, by_kind in episodes.items()}
            reports[task.name] = build_report(cfg, mine, adapters, [(task, problems)], T, contrasts=contrasts)
    main = reports.pop(demo_task().name)
    report = {
        **main,
        "schema": "rl2f.demo.report/1",
        "claim": claim(main),
        "transfer": reports,
        "base_pretrain_loss": {str(r["seed"]): r["base_pretrain_loss"] for r in runs},
        "runs": runs,
        "config": {"toml": DEMO_TOML, "budgets": b, "quick": quick, "run": main["config"]},
        "wall_seconds": time.perf_counter() - t0,
    }
    extra = "\n".join([evidence_markdown(report), claim_markdown(report)]
                      + [f"## Transfer: {TRANSFER_TITLES[name]} (no arm was trained on it)\n\n{markdown_table(r)}"
                         for name, r in report["transfer"].items()])
    write_report(report, out, extra_markdown=extra)
    return report
