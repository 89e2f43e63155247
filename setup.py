"""Install rl2f. `kernels/` and `cli/` are installed as `rl2f.kernels` and `rl2f.cli`, so
nothing named `kernels` or `cli` lands in site-packages."""
from setuptools import setup

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
    install_requires=[
        "torch>=2.4",
        "triton>=3.0; platform_system == 'Linux'",
        "safetensors>=0.4",
        "tokenizers>=0.19",
        "numpy>=1.24",
        "sympy>=1.12",
        "click>=8.1",
        "tomli>=2.0; python_version < '3.11'",
    ],
    extras_require={
        # transformers and peft are numerical references inside tests, never product code.
        "test": ["pytest>=7", "transformers>=4.50", "peft>=0.13"],
        "vllm": ["vllm>=0.8"],
    },
    entry_points={"console_scripts": ["rl2f=rl2f.cli.main:cli"]},
)
