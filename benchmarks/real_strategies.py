"""What each arm of a `rl2f demo --real` run does with the hints: its most common guess
sequences, and how often its next guess moves the way a direction hint says (lower after "Too
high.", higher after "Too low."), with the real hints and with the decoy's.

    python -m benchmarks.real_strategies runs/real > benchmarks/results/real-smollm2/strategies.md

An ascending sweep (1, 2, 3, 4) follows "Too low." every time and "Too high." never: it scores
up to the hint-blind ceiling without reading the hints, which the follow rate after "Too high."
tells apart from a student that uses them.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from rl2f.demo.real import ARMS
from rl2f.episodes import read_episodes
from rl2f.tasks.highlow import TOO_HIGH, TOO_LOW


def follow_rates(episodes) -> tuple[dict[str, tuple[float, int]], Counter]:
    moves: Counter = Counter()
    sequences: Counter = Counter()
    for e in episodes:
        sequences[tuple(t.answer for t in e.turns)] += 1
        for t, nxt in zip(e.turns, e.turns[1:]):
            if t.feedback in (TOO_HIGH, TOO_LOW) and nxt.answer is not None and nxt.answer.isdigit():
                followed = int(nxt.answer) < int(t.answer) if t.feedback == TOO_HIGH else int(nxt.answer) > int(t.answer)
                moves[(t.feedback, followed)] += 1
    rates = {}
    for hint in (TOO_HIGH, TOO_LOW):
        n = moves[(hint, True)] + moves[(hint, False)]
        rates[hint] = (moves[(hint, True)] / n if n else float("nan"), n)
    return rates, sequences


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the --out of `rl2f demo --real`")
    args = ap.parse_args()
    seeds = sorted(p for p in args.run.glob("seed*") if (p / "eval").is_dir())
    print(f"# Guess strategies in {args.run} ({len(seeds)} seeds, held-out problems)\n")
    print("| arm | hints | next guess lower after \"Too high.\" (n) | higher after \"Too low.\" (n) | most common guess sequences |")
    print("|---|---|---|---|---|")
    for arm in ARMS:
        for kind, label in (("feedback", "real"), ("decoy", "decoy's")):
            eps = [e for s in seeds for e in read_episodes(s / "eval" / f"{arm}.{kind}.jsonl")]
            rates, sequences = follow_rates(eps)
            top = "; ".join(f"{', '.join(a or '-' for a in seq)} ({n})" for seq, n in sequences.most_common(3))
            (hi, n_hi), (lo, n_lo) = rates[TOO_HIGH], rates[TOO_LOW]
            print(f"| {arm} | {label} | {hi:.2f} ({n_hi}) | {lo:.2f} ({n_lo}) | {top} |")


if __name__ == "__main__":
    main()
