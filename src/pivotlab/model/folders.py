"""What a model source names, checked before anything is built from it.

A source is a preset name, a local folder or a hub id. A folder is read as its
``config.json`` says (``model_type``, ``architectures``) and refused in one line when it
holds another kind of model than the caller expects: handed to
``LlavaForConditionalGeneration.from_pretrained``, a language model's config becomes a
default Llava around a 7B-class LM, built on the CPU before any error (gigabytes, minutes).
A name that is neither a preset nor a folder nor shaped like a hub id (``owner/name``) is
refused without a network call, listing the presets. Its safetensors weights are opened
(their header, no tensor) so that a file cut short or unreadable is named in one line
before anything loads; weights whose shapes do not fit ``config.json`` are named when
transformers finds them (``mismatched_weights``), since only the model class knows the shapes.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator
from enum import Enum
from pathlib import Path

from pivotlab.errors import PivotlabError, one_line
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
    if kind is not expected and not (kind is None and unknown_may_pass):
        raise ModelFolderError(f"{what} {folder} is {_describe(config)}; expected {expected.value}")
    check_weights(folder)
    return config


SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files a model folder's weights are in (one, or the shards its index
    names); none for a folder in another format, which its loader checks."""
    single, index = folder / SAFETENSORS, folder / SAFETENSORS_INDEX
    if single.is_file():
        return [single]
    if not index.is_file():
        return []
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelFolderError(f"{index}: not a safetensors index ({one_line(error)})") from None
    if not all(isinstance(shard, str) and "/" not in shard for shard in shards):
        raise ModelFolderError(f"{index}: a shard is not a file name in {folder}")
    return [folder / shard for shard in shards]


def check_weights(folder: Path) -> None:
    """Refuse, naming the file, safetensors weights that are missing, cut short or
    unreadable: the header is read and checked against the file's size, no tensor is."""
    from safetensors import SafetensorError, safe_open

    for path in weight_files(folder):
        if not path.is_file():
            raise ModelFolderError(f"{path}: missing (named by {SAFETENSORS_INDEX})")
        try:
            with safe_open(str(path), framework="np"):
                pass
        except (OSError, SafetensorError) as error:
            raise ModelFolderError(f"{path}: unreadable weights ({one_line(error)})") from None


@contextlib.contextmanager
def mismatched_weights(folder: Path | str) -> Iterator[None]:
    """Turn transformers' refusal of weights whose shapes do not fit the folder's
    ``config.json`` (a ``RuntimeError`` suggesting ``ignore_mismatched_sizes``, as of
    transformers 5.23) into one line naming the weights."""
    try:
        yield
    except RuntimeError as error:
        if "ignore_mismatched_sizes" not in str(error):
            raise
        files = weight_files(Path(folder)) or [Path(folder)]
        raise ModelFolderError(
            f"{files[0]}: its tensors' shapes do not fit {Path(folder) / 'config.json'} "
            "(weights of another model, or an edited config)"
        ) from None


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
