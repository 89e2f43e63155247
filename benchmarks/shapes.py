"""The model shapes the benchmarks measure. Weights are random: throughput and memory
depend on shape only."""

# Llama-3.2-1B (1.24B parameters): the engine and GRPO-step GPU case.
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                max_position_embeddings=131072,
                rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 32.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192})

# Gemma 3 12B's lm_head and one 8k-token micro-batch: the kernels' GPU case.
GEMMA3_12B_HEAD = dict(N=8192, H=3840, V=262144)
