"""`rl2f demo`: the paper's central claim at toy scale, on a CPU, nothing downloaded.

1. The base (rl2f/demo/base.py): the embedded tiny model trained from scratch, all
   parameters, on scripted dialogues of the hidden-information task (rl2f/demo/data.py):
   it knows the answer format and the digit-sum constraint, guesses uniformly among the
   candidates (not knowing the prior over secrets), follows hints only weakly, and has seen
   the retry message.
2. Per training seed (3 by default, in parallel worker processes), three LoRA arms from that
   base (rl2f/demo/pipeline.py): SFT on the base's solved dialogues with the teacher, RL2F
   (GRPO on multi-turn episodes with the teacher), RLVR (single-turn GRPO, token-matched to
   RL2F).
3. Evaluation of base, SFT, RLVR and RL2F per seed (`rl2f.eval.play_models`): T turns of
   sampling at temperature 1 with the teacher, with the placebo teacher, with retry, pass@K,
   and for base and RL2F self-correction (verifier-gated and oracle-free), on fresh draws
   from the training distribution; then with the teacher, placebo, retry and pass@K on two
   transfer variants no arm trained on: digit sums never seen, and the prior over secrets
   reversed (a learned turn-1 prior is wrong there, the hints still work).
4. The report (`rl2f.eval.build_report`): intervals from a hierarchical bootstrap (training
   seeds, then problems), paired across arms; `claim` (rl2f/demo/claim.py).

report.json (`schema` = "rl2f.demo.report/1") holds every field of an evaluation report
(rl2f/eval/report.py documents them; `seeds` are the training seeds, one adapter each, and
`models[name].adapter` lists one run directory per seed) for the in-distribution problems,
plus:
    claim               rl2f/demo/claim.py: per check {delta, ci, holds}, `holds`, and
                        `context` (RLVR's turn-1 gain, RL2F's multi-turn gain)
    transfer            {task: the evaluation report of that transfer variant (same fields)}:
                        "secret_unseen_sums", "secret_reversed_prior"
    base_pretrain_loss  {seed: that seed's base's final training loss} (an underfit base
                        drags every arm)
    runs                per seed: its base's loss, steps, RLVR's group size, student tokens
                        of RL2F and RLVR, SFT's final loss, stage_seconds and
                        stage_cpu_seconds (CPU time of the worker's one thread) per stage
                        ("base", "sft", "rl2f", "rlvr", "eval", "transfer"), seconds
    config              {toml, budgets, quick, run: the in-distribution run config}
    wall_seconds        wall time of the whole demo

Lessons that shaped it (each measured, see the commit history):
- a LoRA-only warm start of the random model stalled near uniform: the base trains all
  parameters;
- GRPO at lr 5e-3 wrecked the tiny model within a few steps; with the critique-prediction
  term (weight 0.05) RL2F's reward dipped at the schedule's peak at 1e-3 and 5e-4 alike
  (steps 20-60); without it (a critique cannot know the secret) training acc@5 rose from
  0.59 to 0.66 at 220 steps, and at 330 steps reached 0.73 at 1e-3 (20-step warmup) and 0.70
  at 5e-4 (one seed each);
- holding out a set of secrets measured memorisation (RL learned a turn-1 prior over the
  training secrets): in-distribution problems are fresh draws, and transfer holds out whole
  digit sums, whose numbers no dialogue ever contained;
- with uniform secrets every guess consistent with the digit sum had the same turn-1
  reward, so RLVR could not improve and RL2F vs RLVR could not fail: secrets now follow a
  prior that single-turn RL can learn;
- RLVR stopped by a token budget far before its schedule's end trained at peak LR and
  collapsed: it now takes RL2F's steps with a larger group.
"""
from rl2f.demo.claim import claim
from rl2f.demo.pipeline import run_demo

__all__ = ["claim", "run_demo"]
