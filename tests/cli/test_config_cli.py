"""`rl2f config --list` / `--print` and `rl2f train --dry-run`: configs a person can read and
check without starting a run."""
import dataclasses
import typing
from pathlib import Path

import pytest
from click.testing import CliRunner

from rl2f.cli.main import cli
from rl2f.config import RunConfig, load_config

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(autouse=True)
def tiny_cache(tmp_path_factory, monkeypatch):
    # The embedded tiny checkpoint is built once per test session, never downloaded.
    monkeypatch.setenv("RL2F_CACHE", str(tmp_path_factory.getbasetemp() / "rl2f-cache"))


def invoke(*args):
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def config_fields(cls=RunConfig, prefix=""):
    """(section.key, field) of every field of the run config, walked as tests/test_ranges.py does."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from config_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def test_list_covers_every_field_with_its_help():
    """`rl2f config --list` has one row per field of rl2f/config.py, found by walking the
    dataclasses (a new field shows up here by itself), each ending with a non-empty help."""
    code, text = invoke("config", "--list")
    assert code == 0, text
    rows = text.splitlines()
    fields = dict(config_fields())
    assert len(rows) == len(fields), text
    for key, f in fields.items():
        help_text = f.metadata.get("help", "").strip()
        assert help_text, f"{key} has no help"
        row = next((r for r in rows if r.startswith(key + " ")), None)
        assert row is not None and row.endswith(help_text), f"{key}: {row!r}"


def test_list_one_section_and_an_unknown_one():
    """`--list SECTION` shows that section only; an unknown section is one error line, exit 2."""
    code, text = invoke("config", "--list", "rollout")
    assert code == 0, text
    assert {r.split()[0] for r in text.splitlines()} == {k for k, _ in config_fields() if k.startswith("rollout.")}
    assert "rollout.top_k  " in text and "(left out)" in text  # None is shown as the key left out
    code, text = invoke("config", "--list", "rollouts")
    assert code == 2 and text.strip().splitlines() == [
        "error: unknown config section 'rollouts' (sections: model, task, rollout, teacher, lora, train, eval)"]


def test_print_round_trips(tmp_path):
    """`--print` writes every field as TOML that `load_config` reads back to the same
    RunConfig: a shipped config with --set on top (a top_k, a string that needs TOML's
    escapes), and all defaults. A None field is left out (TOML has no null)."""
    tricky = r'"quote \" backslash \\ tab \t newline \n del \u007f accent é emoji 😀"'
    sets = ["train.max_steps=3", "rollout.top_k=5", f"task.options.note={tricky}"]
    args = ["config", "--print", "--config", str(CONFIGS / "tiny-rl2f.toml")]
    code, text = invoke(*args, *[a for s in sets for a in ("--set", s)])
    assert code == 0, text
    printed = tmp_path / "printed.toml"
    printed.write_text(text, encoding="utf-8")
    cfg = load_config(RunConfig, printed)
    assert cfg == load_config(RunConfig, CONFIGS / "tiny-rl2f.toml", sets)
    assert cfg.train.max_steps == 3 and cfg.rollout.top_k == 5
    assert cfg.task.options["note"] == "quote \" backslash \\ tab \t newline \n del \x7f accent é emoji 😀"
    # every field is written, the None one (prefix_cache_mb) left out
    data = tomllib.loads(text)
    written = {f"{section}.{key}" for section, table in data.items() for key in table}
    assert written == {k for k, _ in config_fields()} - {"rollout.prefix_cache_mb", "teacher.temperature", "teacher.max_new_tokens"}

    code, text = invoke("config", "--print")
    assert code == 0, text
    printed.write_text(text, encoding="utf-8")
    assert load_config(RunConfig, printed) == RunConfig()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
    """`rl2f train --dry-run` builds the run (the embedded tiny model, the secret task's 256
    problems, the engine), prints the plan with a step's size, exits 0 and writes nothing:
    no metrics row, no checkpoint, not even the --out directory. A --out that a real run
    would refuse is refused by the dry run too, and left as it was."""
    out = tmp_path / "run"
    sets = ["train.max_steps=1", "train.grad_accum=2", "rollout.group_size=4", "rollout.max_turns=3"]
    code, text = invoke("train", "--config", str(CONFIGS / "tiny-rl2f.toml"), "--dry-run", "--out", str(out),
                        *[a for s in sets for a in ("--set", s)])
    assert code == 0, text
    rows = {line[:20].strip(): line[20:].strip() for line in text.splitlines()[1:]}
    assert text.startswith(f"dry run: nothing written to --out {out}")
    assert rows["method"] == "rl2f (GRPO)"
    assert "tiny-gemma3-seed0" in rows["model"] and "trainable: LoRA" in rows["model"]
    assert rows["engine"] == "builtin"
    assert rows["task"] == "secret: 256 train problems"
    assert rows["steps"] == "1"
    assert rows["problems per step"].startswith("16 ")  # grad_accum 2 x problems_per_batch 8
    assert rows["episodes per step"].startswith("64 ")  # x group_size 4
    assert rows["max tokens per step"].startswith("3,072 ")  # x 3 turns x max_new_tokens 16
    assert not out.exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, text = invoke("train", "--config", str(CONFIGS / "tiny-rl2f.toml"), "--dry-run", "--out", str(foreign))
    assert code == 2 and "holds files rl2f did not write" in text, text
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
