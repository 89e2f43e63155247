"""`rl2f tiny`: write the embedded default checkpoint (the tiny model the tests and the demo use)."""
import click


@click.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Checkpoint directory to write.")
def tiny(out):
    """Write the tiny embedded default model + tokenizer as a checkpoint directory."""
    from rl2f.model.tiny import build_tiny_checkpoint

    build_tiny_checkpoint(out)
    click.echo(out)
