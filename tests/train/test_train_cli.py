"""`rl2f train`: a smoke run through the CLI, resume by directory, and one clear error per bad config."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rl2f.cli.main import cli
from rl2f.cli.train import train

if "train" not in cli.commands:  # registered by cli/main.py; the tests need it either way
    cli.add_command(train)


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def invoke(*args):
    return CliRunner().invoke(cli, ["train", *args], catch_exceptions=False)


SMALL = ["--set", "rollout.group_size=2", "--set", "rollout.problems_per_batch=1",
         "--set", "rollout.max_new_tokens=4", "--set", "train.micro_batch=4"]


def test_smoke_run_and_resume(tmp_path, tiny_ckpt):
    """`--set train.max_steps=1` runs one GRPO step from a shipped config and writes metrics
    and a checkpoint; `--resume DIR --set train.max_steps=2` continues the same run to step 2.
    The run directory names its newest checkpoint's adapter."""
    out = tmp_path / "run"
    r = invoke("--method", "rlvr", "--config", str(CONFIGS / "tiny-rlvr.toml"), "--set", "train.max_steps=1",
               "--set", f'model.path="{tiny_ckpt}"', *SMALL, "--out", str(out))
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["step"] == 1
    r = invoke("--resume", str(out), "--set", "train.max_steps=2")
    assert r.exit_code == 0, r.output
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and (out / "checkpoints" / "step-000002" / "adapter" / "adapter_config.json").is_file()
    # what --adapter of generate / evaluate / self-correct accepts: the run, a checkpoint, an adapter
    from rl2f.train.checkpoint import adapter_dir
    newest = out / "checkpoints" / "step-000002" / "adapter"
    assert adapter_dir(out) == adapter_dir(newest.parent) == adapter_dir(newest) == str(newest)
    assert adapter_dir(out / "checkpoints" / "step-000001") == str(out / "checkpoints" / "step-000001" / "adapter")


@pytest.mark.parametrize("setting, key", [
    ("train.gamm=0.7", "train.gamm"),  # unknown key
    ("train.max_steps=\"ten\"", "train.max_steps"),  # wrong type
    ("train.gamma=1.5", "gamma"),  # out of range
    ("train.clip_low=-0.1", "clip_low"),
    ("rollout.group_size=1", "group_size"),
])
def test_bad_config_is_one_clear_error(tmp_path, setting, key):
    """An unknown key, a wrong type or an out-of-range value stops `rl2f train` before any
    work with exit code 2 and a single line naming the key."""
    r = CliRunner().invoke(cli, ["train", "--method", "rl2f", "--config", str(CONFIGS / "tiny-rl2f.toml"),
                                 "--set", setting, "--out", str(tmp_path)])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0], r.output
    assert "Traceback" not in r.output and not (tmp_path / "metrics.jsonl").exists()


def test_bad_sft_data_names_file_and_line(tmp_path, tiny_ckpt):
    """A malformed SFT record is a one-line error naming the file and the line."""
    data = tmp_path / "bad.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}\n'
                    '{"nope": 1}\n')
    r = CliRunner().invoke(cli, ["train", "--method", "sft", "--set", f'model.path="{tiny_ckpt}"',
                                 "--set", f'train.sft_data="{data}"', "--out", str(tmp_path / "run")])
    assert r.exit_code == 2 and f"{data}:2" in r.output, r.output


def test_stdout_to_a_file_gets_one_line_per_step(tmp_path, tiny_ckpt):
    """`rl2f train ... > log` (nohup, slurm, CI): one plain line per step with the step,
    reward, acc@1 and acc@T, loss and speed of that step's metrics row, then the final JSON
    line. (Before, click's bar printed the label `train` and nothing per step off a terminal.)"""
    import re
    import subprocess
    import sys

    out, log = tmp_path / "run", tmp_path / "log"
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, "-m", "rl2f.cli", "train", "--method", "rl2f",
                               "--config", str(CONFIGS / "tiny-rl2f.toml"), "--set", "train.max_steps=3",
                               "--set", "rollout.max_turns=2", "--set", f'model.path="{tiny_ckpt}"', *SMALL,
                               "--out", str(out)], stdout=f, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [l for l in text.splitlines() if l.startswith("train ")]
    assert len(steps) == 3, text
    for line, row in zip(steps, rows):
        m = re.match(r"train (\d+)/3 \(\d+%\) [\d:]+ elapsed(, eta [\d:]+)?: reward ([-\d.]+) acc@1 ([\d.]+) "
                     r"acc@2 ([\d.]+) loss ([-\d.]+) \d+ tok/s$", line)
        assert m, line
        assert int(m[1]) == row["step"]
        assert float(m[3]) == round(row["reward_mean"], 3) and float(m[4]) == round(row["acc@1"], 3)
        assert float(m[5]) == round(row["acc@2"], 3) and float(m[6]) == round(row["loss"], 4)
    assert json.loads(text.strip().splitlines()[-1])["step"] == 3
