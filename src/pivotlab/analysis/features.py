"""Encoders as the analyses see them, their features, and the on-disk feature cache.

An analysis takes an encoder from any of the places one lives:

- an MLLM folder (``pivotlab model build`` / ``pivotlab train`` output): its tower cut at the
  feature layer, its projector and its CLS policy, read in memory;
- an encoder folder exported by ``pivotlab model export-encoder`` (``pivotlab_encoder.json``);
- a zoo part (``zoo:enc-s``) or any plain HF vision model folder;
- ``random:<any of the above>``: the same architecture, freshly initialised (the probes'
  floor).

Features are hidden states of the tower, by default ``hidden_states[-1]``: for an MLLM or an
export that is exactly what the projector consumes (the later blocks are cut), and for a plain
tower it is the last block before any final layer norm. They are cached on disk keyed by a
hash of the encoder's weights, the probe file's bytes, the layer, the pooling and the
projector switch, so a second probe on the same encoder costs no forward pass.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel

from pivotlab.analysis.config import AnalysisError
from pivotlab.cache import cache_root
from pivotlab.images import open_image
from pivotlab.io import read_jsonl
from pivotlab.model import load, truncated_tower
from pivotlab.model.assembly import load_vision_tower, resolve_zoo
from pivotlab.model.export import exported_projector, read_export
from pivotlab.model.families import vision_family
from pivotlab.model.folders import Kind, folder_config, kind_of

POOLINGS = ("mean", "cls", "patch")
RANDOM_PREFIX = "random:"
PROBE_FILES = {
    "classification": "probes/classification.jsonl",
    "segmentation": "probes/segmentation.jsonl",
    "localisation": "probes/localisation.jsonl",
    "captions": "probes/captions.jsonl",
}


@dataclass
class Encoder:
    """A vision tower ready to be measured."""

    name: str
    tower: PreTrainedModel
    image_processor: object
    projector: nn.Module | None
    fingerprint: str

    @property
    def grid(self) -> int:
        """Patches per image side."""
        return self.tower.config.image_size // self.tower.config.patch_size


@dataclass(frozen=True)
class FeatureSpec:
    """Which features: a hidden-state index, a pooling, and whether through the projector."""

    layer: int = -1
    pooling: str = "mean"
    projector: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise AnalysisError(f"pooling {self.pooling!r}: expected one of {', '.join(POOLINGS)}")

    @property
    def key(self) -> str:
        return f"L{self.layer}-{self.pooling}{'-proj' if self.projector else ''}"


def weights_fingerprint(*modules: nn.Module | None) -> str:
    """sha256 over the modules' tensors (names, shapes, dtypes and bytes), 16 hex digits."""
    digest = hashlib.sha256()
    for module in modules:
        if module is None:
            continue
        for name, tensor in sorted(module.state_dict().items()):
            data = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:16]


def _from_mllm(folder: Path, name: str) -> Encoder:
    model, processor = load(folder)
    tower = truncated_tower(model.model.vision_tower, model.config.vision_feature_layer)
    projector = model.model.multi_modal_projector
    return Encoder(
        name=name,
        tower=tower,
        image_processor=processor.image_processor,
        projector=projector,
        fingerprint=weights_fingerprint(tower, projector),
    )


def _from_vision_folder(folder: Path, name: str, trust_remote_code: bool) -> Encoder:
    loaded = load_vision_tower(str(folder), trust_remote_code, "encoder")
    tower = loaded.model
    projector = exported_projector(folder, read_export(folder), tower.config)
    return Encoder(
        name=name,
        tower=tower,
        image_processor=loaded.image_processor,
        projector=projector,
        fingerprint=weights_fingerprint(tower, projector),
    )


def random_init(encoder: Encoder, seed: int = 0) -> Encoder:
    """The same architecture and preprocessing with fresh weights (the probes' floor)."""
    torch.manual_seed(seed)
    tower = type(encoder.tower)(encoder.tower.config)
    projector = None
    if encoder.projector is not None:
        projector = copy.deepcopy(encoder.projector)
        for module in projector.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
    return Encoder(
        name=f"{RANDOM_PREFIX}{encoder.name}",
        tower=tower,
        image_processor=encoder.image_processor,
        projector=projector,
        fingerprint=weights_fingerprint(tower, projector),
    )


def load_encoder(source: str | Path, seed: int = 0, trust_remote_code: bool = False) -> Encoder:
    """An encoder from an MLLM folder, an exported encoder, a zoo part or a vision folder
    (whose own code runs only with ``trust_remote_code``)."""
    name = str(source)
    if name.startswith(RANDOM_PREFIX):
        return random_init(load_encoder(name[len(RANDOM_PREFIX) :], 0, trust_remote_code), seed)
    folder = Path(resolve_zoo(name))
    if kind_of(folder_config(folder)) is Kind.MLLM:
        return _from_mllm(folder, name)
    return _from_vision_folder(folder, name, trust_remote_code)


# ---------------------------------------------------------------------------- features


def pixel_values(encoder: Encoder, images: list[Image.Image]) -> torch.Tensor:
    """The encoder's own preprocessing of ``images`` (its processor's size and statistics)."""
    return encoder.image_processor(images, return_tensors="pt").pixel_values


def hidden_tokens(encoder: Encoder, pixels: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """(N, tokens, width) hidden state ``layer`` of the tower, CLS included when it has one."""
    depth = encoder.tower.config.num_hidden_layers
    if not -(depth + 1) <= layer <= depth:
        raise AnalysisError(
            f"layer {layer} is outside {encoder.name}'s hidden states (-{depth + 1}..{depth})"
        )
    return encoder.tower(pixel_values=pixels, output_hidden_states=True).hidden_states[layer]


def without_cls(tokens: torch.Tensor, encoder: Encoder) -> torch.Tensor:
    """``tokens`` without the CLS token, when the encoder has one."""
    return tokens[:, 1:] if vision_family(encoder.tower.config).has_cls else tokens


def select(tokens: torch.Tensor, encoder: Encoder, spec: FeatureSpec) -> torch.Tensor:
    """Apply ``spec``'s projector and pooling to hidden tokens (N, tokens, width)."""
    has_cls = vision_family(encoder.tower.config).has_cls
    if spec.pooling == "cls":
        if not has_cls:
            raise AnalysisError(f"{encoder.name} has no CLS token; use pooling 'mean' or 'patch'")
        if spec.projector:
            raise AnalysisError("the projector never sees the CLS token; pool 'mean' or 'patch'")
        return tokens[:, 0]
    patches = without_cls(tokens, encoder)
    if spec.projector:
        if encoder.projector is None:
            raise AnalysisError(
                f"{encoder.name} has no projector (export it with --with-projector, or pass "
                "the MLLM folder)"
            )
        patches = encoder.projector(patches)
    return patches.mean(1) if spec.pooling == "mean" else patches


@torch.inference_mode()
def extract(
    encoder: Encoder, images: list[Image.Image], spec: FeatureSpec, batch_size: int = 256
) -> torch.Tensor:
    """Features of ``images``: (N, width) pooled, or (N, patches, width) per patch."""
    encoder.tower.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        pixels = pixel_values(encoder, images[start : start + batch_size])
        chunks.append(select(hidden_tokens(encoder, pixels, spec.layer), encoder, spec).float())
    return torch.cat(chunks)


# ---------------------------------------------------------------------------- probe data


def probe_rows(data: Path | str, probe: str) -> list[dict]:
    """The rows of one of a world split's probe files (``docs/world.md``, Probe sets)."""
    data = Path(data)
    if probe not in PROBE_FILES:
        raise AnalysisError(
            f"unknown probe set {probe!r}; expected one of {', '.join(PROBE_FILES)}"
        )
    path = data / PROBE_FILES[probe]
    if not path.is_file():
        raise AnalysisError(f"{data} has no {PROBE_FILES[probe]}: not a world split with probes")
    rows = read_jsonl(path)
    if not rows:
        raise AnalysisError(f"{path} is empty")
    return rows


def probe_images(data: Path | str, probe: str, rows: list[dict] | None = None) -> list[Image.Image]:
    """The images of a probe file's rows, in row order."""
    rows = probe_rows(data, probe) if rows is None else rows
    source = Path(data) / PROBE_FILES[probe]
    return [open_image(Path(data), r["image"], f"{source}:{i + 1}") for i, r in enumerate(rows)]


def _data_fingerprint(data: Path, probe: str) -> str:
    """sha256 of the probe file: its rows name every image, and a split's images are a pure
    function of the rows' scene ids and the split's manifest."""
    digest = hashlib.sha256((data / PROBE_FILES[probe]).read_bytes())
    manifest = data / "manifest.json"
    if manifest.is_file():
        digest.update(manifest.read_bytes())
    return digest.hexdigest()[:16]


def cached_features(
    encoder: Encoder,
    data: Path | str,
    probe: str,
    spec: FeatureSpec,
    cache_dir: Path | None = None,
) -> torch.Tensor:
    """``extract`` over a probe set's images, read from the cache when it was done before."""
    data = Path(data)
    rows = probe_rows(data, probe)
    cache_dir = cache_root("features") if cache_dir is None else Path(cache_dir)
    path = cache_dir / encoder.fingerprint / f"{probe}-{_data_fingerprint(data, probe)}-{spec.key}"
    path = path.with_suffix(".safetensors")
    if path.is_file():
        return load_file(path)["features"]
    features = extract(encoder, probe_images(data, probe, rows), spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file({"features": features.contiguous()}, partial, metadata={"encoder": encoder.name})
    partial.replace(path)  # a killed extraction never leaves a cache entry half-written
    return features
