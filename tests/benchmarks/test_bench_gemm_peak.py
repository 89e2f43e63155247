"""bench_gemm_peak at its smallest: the fraction of the measured fp32 matmul peak reached by
rl2f's training forward + backward and the built-in engine's decode, on the tiny model and on
the fetched SmolLM2 (skipped until `rl2f fetch-model smollm2`); the FLOP counts are checked
against the formula by hand."""
import pytest

pytestmark = pytest.mark.slow

SMALL = ["--rows", "2", "--seq", "8", "--decode-batch", "2", "--prompt-len", "4", "--decode-tokens", "3",
         "--rounds", "1", "--threads", "1"]


def check(row: dict, rows=2, seq=8, batch=2, prompt=4, tokens=3) -> None:
    m = row["model"]
    P, lora = m["matmul_params_P"], m["lora_width"]
    a1 = 4 * m["layers"] * m["heads"] * m["head_dim"]
    N = rows * seq
    t = row["train"]["flops"]
    assert t["tokens"] == N
    assert t["total"] == 4 * N * P + 6 * N * lora + 3 * a1 * rows * seq * (seq + 1) // 2
    assert t["flops_6NP"] == 6 * N * P
    d = row["decode"]["flops"]
    assert d["tokens"] == batch * (tokens - 1)
    assert d["total"] == 2 * P * batch * (tokens - 1) + a1 * batch * sum(prompt + k for k in range(1, tokens))
    assert row["peak_gflops"]["median"] > 0
    for part in ("train", "decode"):
        g, f = row[part]["gflops"]["median"], row[part]["fraction_of_peak"]["median"]
        assert g > 0 and f > 0
        assert f == pytest.approx(g / row["peak_gflops"]["median"])  # one round: the same round's peak


def test_tiny(run_bench):
    record = run_bench("bench_gemm_peak", "--configs", "tiny", *SMALL)
    assert record["bench"] == "gemm_peak" and record["dtype"] == "float32"
    assert set(record["flop_formula"]) == {"train", "decode", "peak"}
    check(record["results"]["tiny"])


def test_smollm2(run_bench, smollm2_dir):
    record = run_bench("bench_gemm_peak", "--configs", "smollm2", *SMALL)
    row = record["results"]["smollm2"]
    assert row["model"]["path"] == str(smollm2_dir)
    # SmolLM2-135M: 30 layers of q, k, v, o (576 -> 576, 192, 192, 576) and the MLP (576 <-> 1536),
    # and the tied 49,152 x 576 lm_head
    assert row["model"]["matmul_params_P"] == 30 * 576 * (576 + 192 + 192 + 576 + 3 * 1536) + 49152 * 576
    check(row)
