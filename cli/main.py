"""The `rl2f` click group. Each command lives in its own module and is registered here.

Errors a user can fix (a bad file, a wrong config key) are raised as `rl2f.errors.UserError`
and printed as one line, without a traceback; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys

import click

from rl2f.errors import UserError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rl2f")
def cli():
    """rl2f: train language models to learn from natural-language feedback (RL2F)."""


def _register():
    # Command modules import torch and the model lazily, so `rl2f --help` stays fast.
    from rl2f.cli import demo, evaluate, fetch_model, generate, self_correct, tiny, train

    cli.add_command(generate.generate)
    cli.add_command(train.train)
    cli.add_command(evaluate.evaluate)
    cli.add_command(self_correct.self_correct)
    cli.add_command(demo.demo)
    cli.add_command(tiny.tiny)
    cli.add_command(fetch_model.fetch_model)


_register()
