"""The config loader: TOML tables into dataclasses, overrides, and one clear error per mistake."""
import pytest

from rl2f.config import RunConfig, load_config, to_dict
from rl2f.errors import UserError


def write(tmp_path, text):
    p = tmp_path / "run.toml"
    p.write_text(text)
    return p


def test_defaults_follow_the_paper():
    """Defaults are the companion paper's GRPO choices: G 8, gamma 0.7, beta 0, 4 turns."""
    c = load_config(RunConfig)
    assert (c.rollout.group_size, c.train.gamma, c.train.beta, c.rollout.max_turns) == (8, 0.7, 0.0, 4)
    assert (c.train.clip_low, c.train.clip_high) == (0.2, 0.28)


def test_file_and_overrides(tmp_path):
    """Tables fill sections; --set values are parsed as TOML and win over the file."""
    p = write(tmp_path, '[train]\nmax_steps = 10\nlr = 3e-4\n[task]\nname = "maze"\noptions = {size = 4}\n')
    c = load_config(RunConfig, p, ["train.max_steps=3", "rollout.temperature=0.5", "train.method=rlvr"])
    assert c.train.max_steps == 3 and c.train.lr == 3e-4 and c.rollout.temperature == 0.5
    assert c.task.name == "maze" and c.task.options == {"size": 4} and c.train.method == "rlvr"
    assert to_dict(c)["train"]["max_steps"] == 3


def test_int_is_accepted_for_float():
    """`lr = 1` in TOML is an int; a float field takes it."""
    c = load_config(RunConfig, None, ["train.lr=1"])
    assert c.train.lr == 1.0 and isinstance(c.train.lr, float)


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.gama=0.5", "train.gama"),  # unknown key
        ("trian.gamma=0.5", "trian"),  # unknown section
        ("train.max_steps='ten'", "train.max_steps"),  # wrong type
        ("train.max_steps=true", "train.max_steps"),  # bool is not an int here
        ("train.gamma=1.5", "gamma"),  # out of range
        ("train.gamma=-0.1", "gamma"),
        ("train.clip_low=-0.2", "clip_low"),
        ("rollout.group_size=1", "group_size"),  # GRPO needs a group
        ("model.dtype='int8'", "model.dtype"),  # not a choice
        ("lora.targets='q_proj'", "lora.targets"),  # a list is required
        ("lora.targets=[]", "lora.targets"),  # LoRA on nothing: nothing to train
        ("lora.targets=['q', 'qkv_proj']", "lora.targets"),
        ("lora.alpha=0", "lora.alpha"),  # scale 0: every LoRA gradient is exactly zero
        ("train.lr=nan", "train.lr"),  # nan passes every `< 0` range check
        ("rollout.temperature=nan", "rollout.temperature"),
        ("train.max_grad_norm=inf", "train.max_grad_norm"),
        (f"train.max_steps={2**63}", "train.max_steps"),  # TOML integers are 64-bit
        (f"train.lr={2**64}", "train.lr"),
        ("task.options=5", "task.options"),  # get_task(**5) would fail far from the config
        ("model.device='banana'", "model.device"),
        ("model.device='cuda:x'", "model.device"),
        ("rollout.overlong='truncate'", "rollout.overlong"),
        ("rollout.top_k=0", "top_k"),  # "off" is one encoding: the key left out (None)
        ("rollout.top_k=-1", "top_k"),
        ("rollout.prefix_cache_mb=-1", "prefix_cache_mb"),
    ],
)
def test_bad_values_name_the_key(override, key):
    """Each mistake is one UserError whose message names the offending key."""
    with pytest.raises(UserError) as e:
        load_config(RunConfig, None, [override])
    assert key in str(e.value)


def test_bad_files(tmp_path):
    """A missing file and invalid TOML are UserErrors naming the file."""
    with pytest.raises(UserError, match="not found"):
        load_config(RunConfig, tmp_path / "nope.toml")
    p = write(tmp_path, "[train\nmax_steps = 1")
    with pytest.raises(UserError, match="run.toml"):
        load_config(RunConfig, p)
    with pytest.raises(UserError, match="expected section.key=value"):
        load_config(RunConfig, None, ["train.max_steps"])


def test_non_utf8_file_names_it(tmp_path):
    """TOML is UTF-8: a Latin-1 file is a UserError naming the file, not a UnicodeDecodeError."""
    p = tmp_path / "latin1.toml"
    p.write_bytes("[train]\n# caf\xe9\nlr = 1e-4\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.toml: not UTF-8"):
        load_config(RunConfig, p)


def test_64_bit_limits_are_accepted():
    """The largest TOML integer is still an integer; only beyond 64 bits is refused."""
    assert load_config(RunConfig, None, [f"train.max_steps={2**63 - 1}"]).train.max_steps == 2**63 - 1
