"""pivotlab: study and improve the vision encoders of multimodal LLMs (PIVOT, VIRAL)."""

__version__ = "0.1.0"
