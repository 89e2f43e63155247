"""The `rl2f` click group. Each command lives in its own module and is registered here.

Errors a user can fix (a bad file, a wrong config key) are raised as `rl2f.errors.UserError`
and printed as one line, without a traceback; so is a disk error (full disk, quota,
read-only or forbidden path) that reaches the top, with the path it names. Anything else is
a bug and keeps its traceback.
"""
from __future__ import annotations

import errno
import signal
import sys
import warnings

import click

from rl2f.errors import UserError


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    # A warning is for the user (a skipped problem, a skipped tensor): its text, not our source line.
    click.echo(f"warning: {message}", err=True)


class _Group(click.Group):
    def invoke(self, ctx):
        # A file-size limit (ulimit -f) then fails the write (EFBIG, one line naming the file)
        # instead of killing the process with SIGXFSZ in the middle of a checkpoint.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _one_line_warning
                return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except OSError as e:
            if e.errno not in _DISK_ERRORS:
                raise
            click.echo(f"error: {e.filename or 'a write'}: {e.strerror}", err=True)
            sys.exit(2)


# The environment, not a bug: the path and the reason are all a user needs.
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rl2f")
def cli():
    """rl2f: train language models to learn from natural-language feedback (RL2F)."""


def _register():
    # Command modules import torch and the model lazily, so `rl2f --help` stays fast.
    from rl2f.cli import config, demo, evaluate, fetch_model, generate, plan_memory, self_correct, tiny, train

    cli.add_command(generate.generate)
    cli.add_command(train.train)
    cli.add_command(evaluate.evaluate)
    cli.add_command(self_correct.self_correct)
    cli.add_command(demo.demo)
    cli.add_command(tiny.tiny)
    cli.add_command(fetch_model.fetch_model)
    cli.add_command(plan_memory.plan_memory)
    cli.add_command(config.config)


_register()
