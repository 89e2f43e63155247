"""The evaluation report: report.json (schema below), report.md and PNG plots.

`write_report(report, out_dir)` writes

- `report.json`: the dict returned by `rl2f.eval.evaluate_models`;
- `report.md`: a summary table (one row per model) and an acc@t table (one row per model
  and its retry reference);
- `accuracy.png`: cumulative accuracy acc@t vs turn t, one solid line per model with its
  95% band, and the model's retry-without-feedback curve dashed in the same colour;
- `plasticity.png` and `correction.png`: plasticity and correction rate per turn t
  (feedback after turn t, effect at turn t+1), one line per model with 95% bands
  (written only when T >= 2).

report.json schema (`schema` = "rl2f.eval.report/1"). Rates are fractions in [0, 1]; a
`*_ci` field is the 95% percentile interval [lo, hi] of a hierarchical bootstrap (`bootstrap`
resamples, each drawing the seeds with replacement, then the problems with replacement; the
same resamples for every model, so intervals are paired; with one seed, the plain bootstrap
over problems: rl2f/eval/metrics.py, `Resamples`), widened if needed so it always holds the
point estimate; an interval, like a ratio, is null where it has no cases (every interval is
null with `eval.bootstrap` = 0). T = `max_turns`, K = T.

Top level:
    schema              "rl2f.eval.report/1"
    models              {name: model entry}: "base" (adapter off), one NAME per adapter given
                        as NAME=DIR, and NAME_self_correct for each self-corrected model
    reference           the model the paired deltas are taken against ("base" if evaluated,
                        else the first model)
    paired              {name: {reference, delta_acc_at: [acc@t(name) - acc@t(reference)
                        for t = 1..T], delta_acc_at_ci: [[lo, hi] per t]}} for every model but
                        the reference: a paired bootstrap (same problems, same seeds, same
                        resamples), so a CI excluding 0 is a real difference
    contrasts           {"a - b": {a, b, delta_acc_at, delta_acc_at_ci}} for each pair asked
                        for (`contrasts`), the same paired differences between any two models;
                        where both have placebo episodes also delta_content_effect (the
                        difference of their content effects, per turn) and
                        delta_content_effect_ci; with decoy episodes, the same as
                        delta_decoy_content_effect(_ci)
    seeds               the seeds; each seed is one full pass over the problems (an
                        evaluation seed, or in the demo a training seed with its own adapter);
                        point estimates pool the seeds, intervals resample them
    max_turns           T: student attempts per episode
    k                   K of pass@K (default T; 0: no pass@K samples were played)
    tasks               {task name: number of problems}
    n_problems          problems in all tasks
    samples_per_problem episodes per problem per seed (eval.samples_per_problem)
    bootstrap           bootstrap resamples (eval.bootstrap)
    ci_level            0.95
    config              the run config as plain data (eval.max_turns set to T)
    wall_seconds        wall time of the whole evaluation
    reference_lines     (optional, the demo's) {label: [acc@t for t = 1..]}: what reference
                        policies reach (the hint-blind and hint-optimal ceilings), drawn in
                        grey in the accuracy plots

Model entry (`models[name]`):
    adapter                  adapter directory, null for the base
    teacher                  who wrote the feedback of the episodes acc_at is of: the config's
                             rollout.teacher ("programmatic", "llm", ...); "retry",
                             "placebo" or "decoy" when those controls were played without the
                             feedback episodes; "self" for NAME_self_correct
    acc_at                   [acc@1, ..., acc@T]: per problem the fraction of its episodes
                             solved at some turn <= t, averaged over problems; non-decreasing
    acc_at_ci                [[lo, hi] per turn]
    acc_at_per_seed          [[acc@1..acc@T] per seed, in `seeds` order]
    multi_turn_gain          acc@T - acc@1; multi_turn_gain_ci; multi_turn_gain_per_seed
    correction_rate          among episodes wrong at turn 1, the fraction solved by turn T
                             (pooled: successes / cases); correction_rate_ci
    correction_rate_per_turn [P(correct at t+1 | wrong at t) for t = 1..T-1], pooled over
                             episodes; correction_rate_per_turn_ci
    plasticity               among feedback turns (wrong at t, feedback given, turn t+1
                             played), the fraction whose extracted answer at t+1 differs from
                             the answer at t. A missing answer (None) is a value of its own:
                             None -> None counts as unchanged, None <-> an answer as changed;
                             answers compare after stripping whitespace. plasticity_ci
    plasticity_per_turn      the same per t = 1..T-1; plasticity_per_turn_ci
    leak_rate                teacher messages flagged by the leak guard / teacher messages
                             (null for NAME_self_correct: the self-critique has no privileged
                             information and is not guarded); leak_rate_ci
    n_teacher_messages       teacher messages sent (feedback after each wrong non-final turn)
    n_feedback_turns         the plasticity denominator
    retry_acc_at             (with retry episodes) acc@t of the same model when the teacher only says "That is
                             incorrect. Try again." (isolates the value of feedback content);
                             retry_acc_at_ci
    pass_at_k                (K > 0) mean over seeds and problems of the unbiased pass@K estimator
                             1 - C(n-c, K)/C(n, K) from one seed's n = K x samples_per_problem
                             independent single-turn samples, c correct (n = K: solved if any
                             sample is correct): per seed, never pooled across seeds (a
                             mixture of adapters has a higher pass@K than their mean);
                             pass_at_k_ci; pass_at_k_per_seed
    placebo_acc_at           (with placebo episodes) acc@t when the teacher writes the task's
                             hint format with no information about the answer;
                             placebo_acc_at_ci
    content_effect           (feedback and placebo episodes) acc@t(feedback) - acc@t(placebo) per turn: the value of the
                             feedback's content, where retry also changes the format;
                             content_effect_ci
    decoy_acc_at             (with decoy episodes) acc@t when the teacher gives the real hints
                             about a decoy answer from the task's prior; decoy_acc_at_ci
    decoy_content_effect     (feedback and decoy episodes) acc@t(feedback) - acc@t(decoy) per
                             turn: the stricter content effect; decoy_content_effect_ci
    n_problems               problems evaluated
    n_episodes               feedback episodes (problems x samples_per_problem x seeds)
    verifier_gated           (NAME_self_correct only) true: the verifier stops the episode at
                             the first correct attempt, so the self-critic is only asked
                             about wrong attempts (it gets the bit "that was wrong")
    oracle_free_acc          (NAME_self_correct, with oracle-free episodes) [accuracy of the
                             answer of round t for t = 1..T] of episodes that play exactly T
                             rounds of attempt and self-critique with no verifier, graded
                             afterwards: the last entry is the final answer's accuracy; not
                             cumulative; oracle_free_acc_ci
    per_task                 (only with several tasks) {task: the fields above, except
                             adapter, teacher, acc_at_per_seed, multi_turn_gain_per_seed}

Turn 1 is sampled with the same noise for the feedback, retry and self-correction episodes
of a model, so their acc@1 agree; NAME_self_correct shares NAME's retry_acc_at and pass_at_k.
"""
from __future__ import annotations

import json
from pathlib import Path

from rl2f.eval.plot import PALETTE, Series, line_plot


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(ci) -> str:
    return "" if not ci else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def markdown_table(report: dict) -> str:
    """The report as Markdown: a summary table, paired differences and an acc@t table."""
    T, K = report["max_turns"], report["k"]
    tasks = ", ".join(f"{t} ({n})" for t, n in report["tasks"].items())
    models = report["models"]
    placebo = any("placebo_acc_at" in m for m in models.values())
    decoy = any("decoy_acc_at" in m for m in models.values())
    retry = any("retry_acc_at" in m for m in models.values())
    lines = [
        f"Evaluation: {report['n_problems']} problems ({tasks}), T = {T} turns, "
        f"seeds {report['seeds']}, {report['samples_per_problem']} sample(s) per problem per seed; "
        f"95% intervals of a bootstrap over seeds, then problems.",
        "",
        f"| model | feedback | acc@1 | acc@{T} [95% CI] | gain |" + (f" retry acc@{T} |" if retry else "")
        + (f" placebo acc@{T} | content effect |" if placebo else "")
        + (f" decoy acc@{T} | decoy content effect |" if decoy else "")
        + (f" pass@{K} |" if K else "") + " correction | plasticity | leak | problems |",
        "|---|---|---|---|---|" + ("---|" if retry else "") + ("---|---|" if placebo else "") + ("---|---|" if decoy else "")
        + ("---|" if K else "")
        + "---|---|---|---|",
    ]
    for name, m in models.items():
        teacher = m["teacher"] + (" (verifier-gated)" if m.get("verifier_gated") else "")
        row = (f"| {name} | {teacher} | {_f(m['acc_at'][0])} | {_f(m['acc_at'][-1])}{_ci(m['acc_at_ci'][-1])} "
               f"| {_f(m['multi_turn_gain'])} |")
        if retry:
            row += f" {_f(m['retry_acc_at'][-1]) if 'retry_acc_at' in m else '-'} |"
        if placebo:
            row += f" {_f(m['placebo_acc_at'][-1])} |" if "placebo_acc_at" in m else " - |"
            row += (f" {m['content_effect'][-1]:+.3f}{_ci(m['content_effect_ci'][-1])} |"
                    if "content_effect" in m else " - |")
        if decoy:
            row += f" {_f(m['decoy_acc_at'][-1])} |" if "decoy_acc_at" in m else " - |"
            row += (f" {m['decoy_content_effect'][-1]:+.3f}{_ci(m['decoy_content_effect_ci'][-1])} |"
                    if "decoy_content_effect" in m else " - |")
        if K:
            row += f" {_f(m.get('pass_at_k'))} |"
        lines.append(row + f" {_f(m['correction_rate'])} | {_f(m['plasticity'])} "
                     f"| {_f(m['leak_rate'])} | {m['n_problems']} |")
    oracle_free = {name: m for name, m in models.items() if "oracle_free_acc" in m}
    if oracle_free:
        lines += ["", f"Oracle-free self-correction: exactly {T} rounds of attempt and self-critique, no verifier; "
                  "accuracy of the answer of each round (not cumulative; the last is the final answer):", "",
                  "| model | " + " | ".join(f"round {t}" for t in range(1, T + 1)) + " |", "|---|" + "---|" * T]
        for name, m in oracle_free.items():
            lines.append(f"| {name} | " + " | ".join(_f(v) for v in m["oracle_free_acc"][:-1])
                         + f" | {_f(m['oracle_free_acc'][-1])}{_ci(m['oracle_free_acc_ci'][-1])} |")
    if report.get("paired"):
        lines += ["", f"Paired difference in acc@{T} against {report['reference']} (same problems and seeds):", "",
                  f"| model | delta acc@{T} [95% CI] |", "|---|---|"]
        for name, p in report["paired"].items():
            lines.append(f"| {name} | {p['delta_acc_at'][-1]:+.3f}{_ci(p['delta_acc_at_ci'][-1])} |")
    if report.get("contrasts"):
        effects = [(f, title) for f, title in (("delta_content_effect", "delta content effect"),
                                                ("delta_decoy_content_effect", "delta decoy content effect"))
                   if any(f in c for c in report["contrasts"].values())]
        lines += ["", "Paired contrasts (same problems and seeds):", "",
                  f"| contrast | delta acc@1 | delta acc@{T} [95% CI] |" + "".join(f" {t} [95% CI] |" for _, t in effects),
                  "|---|---|---|" + "---|" * len(effects)]
        for key, c in report["contrasts"].items():
            row = f"| {key} | {c['delta_acc_at'][0]:+.3f} | {c['delta_acc_at'][-1]:+.3f}{_ci(c['delta_acc_at_ci'][-1])} |"
            for f, _ in effects:
                row += f" {c[f][-1]:+.3f}{_ci(c[f + '_ci'][-1])} |" if f in c else " - |"
            lines.append(row)
    lines += ["", "Cumulative accuracy acc@t (retry: the teacher only says \"incorrect, try again\"; placebo: the "
              "hint's format, no content; decoy: the real hints about a decoy answer):", "",
              "| model | " + " | ".join(f"t={t}" for t in range(1, T + 1)) + " |",
              "|---|" + "---|" * T]
    for name, m in models.items():
        lines.append(f"| {name} | " + " | ".join(_f(v) for v in m["acc_at"]) + " |")
        if not name.endswith("_self_correct"):
            if "retry_acc_at" in m and m["teacher"] != "retry":
                lines.append(f"| {name} (retry) | " + " | ".join(_f(v) for v in m["retry_acc_at"]) + " |")
            if "placebo_acc_at" in m and m["teacher"] != "placebo":
                lines.append(f"| {name} (placebo) | " + " | ".join(_f(v) for v in m["placebo_acc_at"]) + " |")
            if "decoy_acc_at" in m and m["teacher"] != "decoy":
                lines.append(f"| {name} (decoy) | " + " | ".join(_f(v) for v in m["decoy_acc_at"]) + " |")
    return "\n".join(lines) + "\n"


REFERENCE_GREY = (150, 150, 150)


def write_plots(report: dict, out_dir: str | Path) -> list[Path]:
    """accuracy.png (with the report's `reference_lines`, where it has them, in grey),
    controls.png when decoy episodes were played (each model with the hints, the decoy's and the
    random placebo's),
    and plasticity.png / correction.png when T >= 2."""
    out_dir = Path(out_dir)
    T = report["max_turns"]
    turns = list(range(1, T + 1))
    models = report["models"]
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(models)}
    references = [Series(label, y[:T], None, REFERENCE_GREY, dashed=True, markers=False)
                  for label, y in report.get("reference_lines", {}).items()]
    acc = []
    for name, m in models.items():
        acc.append(Series(name, m["acc_at"], m["acc_at_ci"], colors[name]))
        if not name.endswith("_self_correct") and "retry_acc_at" in m and m["teacher"] != "retry":
            acc.append(Series(f"{name} retry", m["retry_acc_at"], None, colors[name], dashed=True))
    paths = [line_plot(acc + references, out_dir / "accuracy.png", "Cumulative accuracy acc@t (95% CI)", "turn t",
                       "acc@t", turns)]
    decoy = [(name, m) for name, m in models.items() if "decoy_acc_at" in m and not name.endswith("_self_correct")]
    if decoy:
        series = []
        for name, m in decoy:
            series += [Series(name, m["acc_at"], None, colors[name]),
                       Series(f"{name} decoy", m["decoy_acc_at"], None, colors[name], dashed=True)]
            if "placebo_acc_at" in m:
                series.append(Series(f"{name} placebo", m["placebo_acc_at"], None, colors[name], dashed=True,
                                     markers=False))
        paths.append(line_plot(series + references, out_dir / "controls.png",
                               "acc@t: hints; a decoy's (dashed, dots); placebo (dashed)", "turn t", "acc@t",
                               turns))
    if T >= 2:
        for key, file, title in (("plasticity", "plasticity.png", "Plasticity: answer changed after feedback"),
                                 ("correction_rate", "correction.png", "Correction rate P(correct t+1 | wrong t)")):
            series = [Series(name, m[f"{key}_per_turn"], m[f"{key}_per_turn_ci"], colors[name])
                      for name, m in models.items()]
            paths.append(line_plot(series, out_dir / file, title, "turn t (feedback after it)", key.replace("_", " "),
                                   turns[:-1]))
    return paths


def write_report(report: dict, out_dir: str | Path, extra_markdown: str = "") -> dict[str, Path]:
    """Write report.json, report.md (`markdown_table`, then `extra_markdown`) and the PNG plots
    into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md"}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(paths["json"])  # a reader never sees half a report
    paths["md"].write_text(markdown_table(report) + (f"\n{extra_markdown.rstrip()}\n" if extra_markdown else ""))
    for p in write_plots(report, out_dir):
        paths[p.stem] = p
    return paths
