"""Measuring vision encoders detached from their MLLM, and visual tokens inside it.

Every analysis reads encoders through ``features.load_encoder`` and world ground truth
through ``features.probe_rows``; results are metric rows for ``metrics.jsonl``. This module
stays light (no torch import) so the command line can list the analyses quickly.
"""

# Each analysis as the command line and the study presets name it (``pca`` and ``saliency``
# also name the folders their pictures are drawn into).
LINEAR_PROBE = "linear-probe"
SEGMENTATION = "segmentation"
SALIENCY = "saliency"
VL_ALIGNMENT = "vl-alignment"
LAYERWISE = "layerwise"
PERMUTATION = "permutation"
PCA = "pca"
ENCODER_ANALYSES = (LINEAR_PROBE, SEGMENTATION)
MODEL_ANALYSES = (SALIENCY, VL_ALIGNMENT, LAYERWISE, PERMUTATION, PCA)
ANALYSES = (*ENCODER_ANALYSES, *MODEL_ANALYSES)
# ... and as its rows in ``metrics.jsonl`` name it (their ``analysis`` field; PCA draws
# pictures only).
ROW_NAMES = {
    LINEAR_PROBE: "linear_probe",
    SEGMENTATION: "segmentation_probe",
    SALIENCY: "saliency",
    VL_ALIGNMENT: "vl_alignment",
    LAYERWISE: "layerwise_alignment",
    PERMUTATION: "token_permutation",
}
