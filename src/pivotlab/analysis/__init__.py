"""Measuring vision encoders detached from their MLLM, and visual tokens inside it.

Every analysis reads encoders through ``features.load_encoder`` and world ground truth
through ``features.probe_rows``; results are metric rows for ``metrics.jsonl``. This module
stays light (no torch import) so the command line can list the analyses quickly.
"""

ENCODER_ANALYSES = ("linear-probe", "segmentation")
MODEL_ANALYSES = ("saliency", "vl-alignment", "layerwise", "permutation", "pca")
ANALYSES = (*ENCODER_ANALYSES, *MODEL_ANALYSES)
