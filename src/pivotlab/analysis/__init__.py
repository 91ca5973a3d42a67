"""Measuring vision encoders detached from their MLLM, and visual tokens inside it.

Every analysis reads encoders through ``features.load_encoder`` and world ground truth
through ``features.probe_rows``; results are metric rows for ``metrics.jsonl``.
"""
