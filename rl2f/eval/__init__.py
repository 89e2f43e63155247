"""Evaluation: the RL2F metrics per turn (metrics.py), several models on the same problems
and seeds (evaluate.py), self-correction (self_correct.py), the report and its plots
(report.py, plot.py)."""
from rl2f.eval.evaluate import build_report, evaluate_models, play_models, read_episode_dirs, resolve_problems
from rl2f.eval.report import markdown_table, write_report
from rl2f.eval.self_correct import self_correct

__all__ = ["build_report", "evaluate_models", "play_models", "read_episode_dirs", "markdown_table", "resolve_problems", "self_correct", "write_report"]
