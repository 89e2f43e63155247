"""The benchmark harness's fairness pieces: alternating order and the reported spread."""
from benchmarks.harness import alternate, spread


def test_alternate_flips_the_order_every_round():
    calls = []
    out = alternate(["a", "b"], 3, lambda p, r: calls.append((r, p)) or f"{p}{r}")
    assert calls == [(0, "a"), (0, "b"), (1, "b"), (1, "a"), (2, "a"), (2, "b")]
    assert out == {"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"]}


def test_spread_is_median_min_max():
    assert spread([3, 1, 10, 2]) == {"median": 2.5, "min": 1.0, "max": 10.0, "n": 4}
