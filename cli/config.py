"""`rl2f config`: the run config's keys with their meaning, and a config as it resolves.

    rl2f config --list [SECTION]
    rl2f config --print [--config FILE] [--set section.key=value ...]

Examples:
    rl2f config --list rollout      # rollout.group_size  int  8  G episodes per problem (GRPO group) ...
    rl2f config --print --config configs/tiny-rl2f.toml --set train.max_steps=3 > run.toml

`--list` shows one row per field: key, type, default (as TOML), help; the help is the field's
metadata in rl2f/config.py. `--print` writes the resolved config as TOML: every field, the
defaults included, checked as `rl2f train` checks it; `rl2f train --config run.toml` then runs
the same config. A field whose value is None (rollout.top_k, rollout.prefix_cache_mb) is left
out, which is how a config file says None.
"""
from __future__ import annotations

import click

# A long default (lora.targets) overflows its column rather than push every row's help right.
DEFAULT_WIDTH = 16


@click.command("config")
@click.option("--list", "list_fields", is_flag=True, help="List the config keys: key, type, default, help.")
@click.option("--print", "print_config", is_flag=True, help="Print the resolved config as TOML.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="TOML run config for --print (default: all defaults).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a config value for --print, e.g. --set train.max_steps=3 (repeatable).")
@click.argument("section", required=False)
def config(list_fields, print_config, config_path, overrides, section):
    """List the run config's keys (--list [SECTION]) or print a resolved config (--print)."""
    from rl2f.config import RunConfig, field_docs, load_config, to_toml

    if list_fields == print_config:
        raise click.UsageError("give one of --list or --print")
    if list_fields:
        if config_path or overrides:
            raise click.UsageError("--config and --set go with --print; --list shows the defaults")
        docs = field_docs(section)
        key_w = max(len(d.key) for d in docs)
        type_w = max(len(d.type) for d in docs)
        default_w = min(max(len(d.default) for d in docs), DEFAULT_WIDTH)
        for d in docs:
            click.echo(f"{d.key:<{key_w}}  {d.type:<{type_w}}  {d.default:<{default_w}}  {d.help}")
        return
    if section:
        raise click.UsageError(f"SECTION ({section}) goes with --list; --print prints the whole config")
    click.echo(to_toml(load_config(RunConfig, config_path, list(overrides))), nl=False)
