"""Datasets from outside the world: loaders for LLaVA instruction JSON, MMPR-style
preference JSON lines and world splits, one validated internal form (``Record``), one-line
problems naming file, line and field (``Problem``), the ``fail`` / ``skip`` policy, and
PIVOT's matched SFT / DPO subset (``docs/data.md``).

Public API: ``Source`` names a dataset, ``load`` checks it into a ``Loaded`` (records,
problems, lengths), ``TokenCounter`` measures records with a model's processor,
``write_subset`` writes PIVOT's subset, ``DataError`` is what a bad dataset raises.
"""

from pivotlab.data.formats import FORMATS, Limits
from pivotlab.data.load import Source, Validator, load
from pivotlab.data.records import KINDS, POLICIES, DataError, Loaded, Problem, Record
from pivotlab.data.subset import write_subset
from pivotlab.data.tokens import TokenCounter, load_processor

__all__ = [
    "FORMATS",
    "KINDS",
    "POLICIES",
    "DataError",
    "Limits",
    "Loaded",
    "Problem",
    "Record",
    "Source",
    "TokenCounter",
    "Validator",
    "load",
    "load_processor",
    "write_subset",
]
