"""What a model source names, checked before anything is built from it.

A source is a preset name, a local folder or a hub id. A folder is read as its
``config.json`` says (``model_type``, ``architectures``) and refused in one line when it
holds another kind of model than the caller expects: handed to
``LlavaForConditionalGeneration.from_pretrained``, a language model's config becomes a
default Llava around a 7B-class LM, built on the CPU before any error (gigabytes, minutes).
A name that is neither a preset nor a folder nor shaped like a hub id (``owner/name``) is
refused without a network call, listing the presets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from enum import Enum
from pathlib import Path

from pivotlab.errors import PivotlabError
from pivotlab.model.families import UNSUPPORTED_VISION, VISION_FAMILIES

LLAVA_MODEL_TYPE = "llava"
# An exported or dual-encoder vision checkpoint: its tower's config may sit under this key.
_DUAL_ENCODER_TYPES = {"siglip", "clip", "siglip2"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class ModelFolderError(PivotlabError):
    """A model source that is not what the caller needs; the message says what it holds."""


class Kind(Enum):
    """The kinds of model pivotlab loads, each as a user would name it."""

    MLLM = "an MLLM saved by pivotlab (model_type 'llava')"
    VISION = "a vision tower (SigLIP, CLIP, DINOv2) or an encoder exported by pivotlab"
    LANGUAGE = "a causal language model (architectures ending in ForCausalLM)"


def folder_config(folder: Path) -> dict:
    """The ``config.json`` of a model folder as a dict; one line naming it when it is
    missing or not a JSON object."""
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFolderError(f"{folder} holds no config.json: not a saved model folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFolderError(f"{path}: cannot be read as JSON ({error})") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config


def kind_of(config: dict) -> Kind | None:
    """The kind of model a ``config.json`` (as a dict) describes, or None if unknown."""
    model_type = config.get("model_type")
    if model_type == LLAVA_MODEL_TYPE:
        return Kind.MLLM
    if model_type in VISION_FAMILIES or model_type in UNSUPPORTED_VISION:
        return Kind.VISION
    if model_type in _DUAL_ENCODER_TYPES and isinstance(config.get("vision_config"), dict):
        return Kind.VISION
    architectures = config.get("architectures") or []
    if any(str(a).endswith("ForCausalLM") for a in architectures):
        return Kind.LANGUAGE
    return None


def _describe(config: dict) -> str:
    architectures = ", ".join(str(a) for a in config.get("architectures") or [])
    model_type = f"model_type {config.get('model_type')!r}"
    return f"a {architectures} folder ({model_type})" if architectures else f"a {model_type} folder"


def check_model_folder(folder: Path | str, expected: Kind, what: str = "model") -> dict:
    """The ``config.json`` of ``folder`` as a dict, when it holds an ``expected`` model.

    Raises ``ModelFolderError`` naming the folder, what it holds and what was expected.
    A folder of an unknown kind passes for language models (any causal LM family
    transformers knows may stand there) and when it ships its own code (``auto_map``:
    ``--trust-remote-code`` decides).
    """
    folder = Path(folder)
    config = folder_config(folder)
    kind = kind_of(config)
    unknown_may_pass = expected is Kind.LANGUAGE or "auto_map" in config
    if kind is expected or (kind is None and unknown_may_pass):
        return config
    raise ModelFolderError(f"{what} {folder} is {_describe(config)}; expected {expected.value}")


def check_saved_mllm(folder: Path | str, what: str = "model") -> None:
    """Refuse, in one line, a ``folder`` that is not an MLLM saved by pivotlab (cheap: the
    CLI calls it before torch and transformers are imported)."""
    if not Path(folder).is_dir():
        raise ModelFolderError(f"{what} {folder}: no such folder")
    check_model_folder(folder, Kind.MLLM, what)


def check_source(source: str, expected: Kind, presets: Iterable[str], what: str) -> None:
    """Refuse a non-preset ``source`` that is a folder of the wrong kind, or that is neither
    a folder nor shaped like a hub id (``owner/name``); hub ids pass to ``from_pretrained``."""
    path = Path(source)
    if path.is_dir():
        check_model_folder(path, expected, what)
        return
    if path.exists():
        raise ModelFolderError(f"{what} {source} is a file; expected a folder or a preset name")
    if not _HUB_ID.fullmatch(source):
        names = ", ".join(sorted(presets)) or "none"
        raise ModelFolderError(f"{what}: no preset or folder named {source!r} (presets: {names})")
