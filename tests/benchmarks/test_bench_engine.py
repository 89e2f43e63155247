"""bench_engine at its smallest: every provider on the tiny model and on the fetched SmolLM2
(skipped until `rl2f fetch-model smollm2`); vLLM in a worker under `--vllm-python` (here this
interpreter: where vllm does not import, the row is a skip with the worker's reason)."""
import importlib.util
import sys

import pytest

pytestmark = pytest.mark.slow

TINY = ["--cases", "distinct,fanout,multiturn", "--batch", "2", "--group", "2", "--prompt-len", "8",
        "--new-tokens", "3", "--dialogues", "2", "--turns", "2", "--turn-tokens", "3", "--feedback-tokens", "3",
        "--rounds", "1", "--threads", "1"]


def check(row: dict, vllm_remote: bool) -> None:
    for provider in ("builtin", "hf_generate"):
        for case in ("distinct", "fanout", "multiturn"):
            assert row[provider][case]["tokens_per_s"]["median"] > 0, (provider, case)
        turns = row[provider]["multiturn"]["turns"]
        assert [t["turn"] for t in turns] == [1, 2] and all(t["prefilled_tokens"] > 0 for t in turns)
        assert turns[1]["submitted_tokens"] > turns[0]["submitted_tokens"]
    assert row["builtin_vs_hf_generate"]["distinct"]["n"] == 1
    if importlib.util.find_spec("vllm") is None:
        reason = row["vllm"]["skipped"]
        assert ("No module named 'vllm'" in reason) if vllm_remote else ("not installed" in reason), reason
    else:
        assert row["vllm"]["distinct"]["tokens_per_s"]["median"] > 0, row["vllm"]
        if vllm_remote:
            assert row["vllm"]["worker"]["python"] == sys.executable
            assert row["vllm"]["worker"]["versions"]["torch"] and row["vllm"]["worker"]["ipc_roundtrip_ms"] > 0


def test_tiny(run_bench):
    record = run_bench("bench_engine", "--configs", "tiny", *TINY)
    assert record["bench"] == "engine" and record["dtype"] == "float32"
    check(record["results"]["tiny"], vllm_remote=False)


def test_smollm2_with_a_vllm_worker(run_bench, smollm2_dir):
    record = run_bench("bench_engine", "--configs", "smollm2", "--vllm-python", sys.executable, *TINY)
    check(record["results"]["smollm2"], vllm_remote=True)
