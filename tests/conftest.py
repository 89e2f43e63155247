"""Shared test fixtures: every test starts from the same torch seed; the real models (SmolLM2, Gemma 3 270M)."""
import os
from pathlib import Path

import pytest
import torch

from rl2f.model.gguf import model_dir

# Tests use tiny models, whose forwards are thousands of microsecond-sized ops: one thread is
# as fast as two on a quiet 2-core machine and up to 100x faster on a busy one.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    """Fixed torch RNG per test, so random inputs and weights are reproducible."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def single_thread():
    """One intra-op thread for the test: tiny-model forwards are thousands of microsecond
    ops, and thread hand-offs on a busy 2-core CI machine made them up to 100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fetched_model(name: str) -> Path:
    """The checkpoint `rl2f fetch-model NAME` converted (tests never download): a skip until it
    is fetched, a failure where RL2F_REQUIRE_REAL_MODELS=1 (CI fetches it)."""
    path = model_dir(name)
    if not (path / "config.json").is_file():
        if os.environ.get("RL2F_REQUIRE_REAL_MODELS") == "1":
            pytest.fail(f"{path} is missing: run `rl2f fetch-model {name}` before the tests")
        pytest.skip(f"run `rl2f fetch-model {name}` first")
    return path


@pytest.fixture(scope="session")
def smollm2_dir():
    return fetched_model("smollm2")


@pytest.fixture(scope="session")
def gemma3_270m_dir():
    return fetched_model("gemma3-270m")
