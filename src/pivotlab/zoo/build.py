"""Build, cache, verify and list the zoo's parts.

    pivotlab zoo build [--parts enc-s,vfm] [--zoo default|tiny] [--cache DIR]
    pivotlab zoo list

- ``enc-s``, ``enc-m``: ``SiglipVisionModel``, contrastive-pretrained encoders about 2.4x
  apart in parameters (the roles of SigLIP2-B and So400m);
- ``vfm``: ``Dinov2Model``, the dense teacher (DINOv2's role for VIRAL);
- ``lm-s``, ``lm-m``: ``Qwen2ForCausalLM``, text-pretrained LMs (the fresh LLM of a
  transplant; the larger head).

Each part lives in ``<cache>/<zoo>/<part>-<key>/``: a ``save_pretrained`` folder (with its
image processor or tokenizer) and ``zoo_part.json``: spec, compute (FLOPs, seconds, samples),
quality (with the probe protocol it was measured under), and the sha256 of every file.
``key`` hashes the part's spec, the zoo's data recipe and the code versions, so a changed
recipe builds a new entry; an entry whose files no longer match their hashes (a truncated
download, a half-written copy) is rebuilt, never loaded.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import (
    BitImageProcessorPil,
    Dinov2Config,
    Dinov2Model,
    PretrainedConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipTextConfig,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from pivotlab import __version__
from pivotlab.cache import cache_root
from pivotlab.console import notice
from pivotlab.errors import PivotlabError
from pivotlab.io import file_sha256, folder_lock, staging_folder, write_json_atomic
from pivotlab.world.generate import GENERATOR_VERSION
from pivotlab.zoo import pretraining, quality
from pivotlab.zoo.tokenizer import IMAGE_TOKEN, world_tokenizer
from pivotlab.zoo.train import (
    PROJECTOR_FEATURE_LAYER,
    CellAttributeHead,
    PatchClassHead,
    add_computes,
    dense_loss,
    focus_weights,
    next_token_loss,
    run_steps,
    sigmoid_pair_and_cell_loss,
    symbolic_accuracy,
    symbolic_forward,
    task_balanced_weights,
)

# Part of every cache key: bump it whenever a pretraining recipe changes in code (an
# objective, an initialisation, the data mix), so stale entries are never reused.
ZOO_VERSION = "3"
MANIFEST = "zoo_part.json"
# Built parts that ship with the package (``ship``), copied into the cache on first use.
SHIPPED = Path(__file__).parent / "weights"
PARTS: tuple[str, ...] = ("enc-s", "enc-s-2k", "enc-m", "vfm", "lm-s", "lm-m")
CAPTION_TOKENS = 48


class ZooError(PivotlabError):
    """A zoo request that cannot be served (unknown part or zoo, failed checks)."""


@dataclass(frozen=True)
class EncoderSpec:
    width: int
    depth: int
    heads: int
    steps: int
    batch_size: int = 64
    learning_rate: float = 1e-3
    text_width: int = 64
    text_depth: int = 2


@dataclass(frozen=True)
class TeacherSpec:
    width: int
    depth: int
    heads: int
    steps: int
    batch_size: int = 64
    learning_rate: float = 1e-3


@dataclass(frozen=True)
class LMSpec:
    """A language model: ``steps`` optimizer steps, each on ``symbolic_batch``
    conversations of up to ``turns`` questions about symbolic scenes (every task drawn
    equally often with ``balance_tasks``), plus ``batch_size`` blocks of world text every
    ``text_every`` steps.

    Then a curriculum: ``focus_steps`` on ``focus_tasks`` alone, and ``settle_steps`` of
    the first mix again, each phase with its own warm-up and cosine decay. Relation, the
    one task that needs where objects are, stayed at chance in every balanced or
    half-relation mix, and was learnt when trained alone (docs/log.md, 2026-12-04)."""

    width: int
    depth: int
    heads: int
    kv_heads: int
    steps: int
    batch_size: int = 32
    block: int = 64
    learning_rate: float = 1e-3
    symbolic_batch: int = 64
    turns: int = 1
    text_every: int = 8
    balance_tasks: bool = True
    focus_tasks: tuple[str, ...] = ()
    focus_steps: int = 0
    settle_steps: int = 0


@dataclass(frozen=True)
class ZooConfig:
    """A zoo: its parts' specs and the data recipe they share."""

    name: str
    parts: dict[str, EncoderSpec | TeacherSpec | LMSpec]
    image_size: int = 64
    patch_size: int = 8
    pretrain_images: int = 6000
    probe_train: int = 1000
    probe_test: int = 500
    text_scenes: int = 2000
    heldout_text_scenes: int = 200
    symbolic_scenes: int = 40000
    heldout_symbolic_scenes: int = 300
    enforce_checks: bool = True

    @property
    def grid(self) -> int:
        """Visual tokens per side: the symbolic scenes' cells per side."""
        return self.image_size // self.patch_size

    def data_recipe(self, part: str) -> dict:
        """The data fields that determine ``part``'s weights (a language model's do not
        move when an image recipe does, and the other way round)."""
        text = ("text_scenes", "heldout_text_scenes", "symbolic_scenes", "heldout_symbolic_scenes")
        images = ("pretrain_images", "probe_train", "probe_test")
        drop = images if isinstance(self.parts[part], LMSpec) else text
        recipe = asdict(self)
        for name in ("parts", "name", "enforce_checks", *drop):
            del recipe[name]
        return recipe


# The default zoo's LM curriculum: relation alone, then the balanced mix again (LMSpec).
_RELATION = {"focus_tasks": ("relation",), "focus_steps": 1000, "settle_steps": 1000}
# The tiny zoo's language models train for seconds on a handful of batches, each phase.
_SECONDS_LM = {
    "kv_heads": 1,
    "steps": 3,
    "batch_size": 4,
    "block": 32,
    "symbolic_batch": 4,
    "focus_tasks": ("exists",),
    "focus_steps": 2,
    "settle_steps": 2,
}

ZOOS: dict[str, ZooConfig] = {
    # The tiny world's zoo (docs/zoo.md): 64-px images in 32-px patches, so an image is
    # four visual tokens, one per quadrant of the 2 x 2 layout.
    "default": ZooConfig(
        name="default",
        parts={
            "enc-s": EncoderSpec(width=96, depth=4, heads=3, steps=6000),
            # enc-s stopped at a third of its pretraining: the transplant's positive control
            # (a weaker encoder of the same shape, docs/study.md, The transplant's control).
            "enc-s-2k": EncoderSpec(width=96, depth=4, heads=3, steps=2000),
            "enc-m": EncoderSpec(width=128, depth=6, heads=4, steps=9000),
            "vfm": TeacherSpec(width=128, depth=4, heads=4, steps=2000),
            "lm-s": LMSpec(width=128, depth=4, heads=4, kv_heads=2, steps=6000, **_RELATION),
            "lm-m": LMSpec(width=192, depth=6, heads=6, kv_heads=2, steps=8000, **_RELATION),
        },
        patch_size=32,
        pretrain_images=12000,
    ),
    # Seconds, for tests: loadable checkpoints and manifests, no quality claims.
    "tiny": ZooConfig(
        name="tiny",
        parts={
            "enc-s": EncoderSpec(
                width=32, depth=1, heads=2, steps=3, batch_size=8, text_width=32, text_depth=1
            ),
            "enc-s-2k": EncoderSpec(
                width=32, depth=1, heads=2, steps=2, batch_size=8, text_width=32, text_depth=1
            ),
            "enc-m": EncoderSpec(
                width=48, depth=2, heads=2, steps=3, batch_size=8, text_width=32, text_depth=1
            ),
            "vfm": TeacherSpec(width=32, depth=1, heads=2, steps=3, batch_size=8),
            "lm-s": LMSpec(width=32, depth=1, heads=2, **_SECONDS_LM),
            "lm-m": LMSpec(width=48, depth=2, heads=2, **_SECONDS_LM),
        },
        image_size=32,
        pretrain_images=48,
        probe_train=48,
        probe_test=24,
        text_scenes=12,
        heldout_text_scenes=6,
        symbolic_scenes=12,
        heldout_symbolic_scenes=6,
        enforce_checks=False,
    ),
}


def default_cache() -> Path:
    """``$PIVOTLAB_CACHE/zoo``, else ``$XDG_CACHE_HOME/pivotlab/zoo`` (default ``~/.cache``)."""
    return cache_root("zoo")


def _zoo(name: str) -> ZooConfig:
    if name not in ZOOS:
        raise ZooError(f"unknown zoo {name!r}; zoos are {', '.join(ZOOS)}")
    return ZOOS[name]


def part_key(zoo: ZooConfig, part: str, seed: int = 0) -> str:
    """Hash of everything that determines a part's weights."""
    identity = {
        "part": part,
        "seed": seed,
        "spec": asdict(zoo.parts[part]),
        "data": zoo.data_recipe(part),
        "zoo_version": ZOO_VERSION,
        "world_generator_version": GENERATOR_VERSION,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def entry_dir(zoo: ZooConfig, part: str, cache: Path, seed: int = 0) -> Path:
    return cache / zoo.name / f"{part}-{part_key(zoo, part, seed)[:12]}"


def verify(entry: Path) -> str | None:
    """``None`` if the entry is complete and intact, else what is wrong with it."""
    manifest_path = entry / MANIFEST
    if not manifest_path.is_file():
        return "no manifest"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return "unreadable manifest"
    for name, digest in manifest.get("files", {}).items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != digest:
            return f"{name} does not match its sha256"
    return None if manifest.get("files") else "manifest lists no files"


# ---------------------------------------------------------------------------------------
# Shared data, made once per build call
# ---------------------------------------------------------------------------------------
@dataclass
class _Data:
    """The data a build shares between parts, each piece made on first use."""

    zoo: ZooConfig
    cache: dict = field(default_factory=dict)

    def _once(self, key, make):
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def pretraining_images(self) -> pretraining.ImageSet:
        """Half full scenes, half single-object scenes (the probe's kind of image, from the
        train split's probe stream, disjoint from the probe sets' val and test streams)."""
        z = self.zoo
        half = z.pretrain_images // 2
        return self._once("pretraining", lambda: pretraining.concatenate(
            pretraining.scene_images("train", z.pretrain_images - half, z.image_size, z.patch_size),
            pretraining.probe_images("train", half, z.image_size, z.patch_size),
        ))  # fmt: skip

    def _train_test(self, key: str, make) -> tuple:
        z = self.zoo
        return self._once(key, lambda: (
            make("val", z.probe_train, z.image_size, z.patch_size),
            make("test", z.probe_test, z.image_size, z.patch_size),
        ))  # fmt: skip

    def probes(self) -> tuple[pretraining.ImageSet, pretraining.ImageSet]:
        return self._train_test("probes", pretraining.probe_images)

    def segmentation(self) -> tuple[pretraining.ImageSet, pretraining.ImageSet]:
        return self._train_test("segmentation", pretraining.scene_images)

    def symbolic(self, turns: int) -> tuple[pretraining.SymbolicSet, pretraining.SymbolicSet]:
        """Conversations of up to ``turns`` questions about the tiny world's symbolic scenes
        (train stream), and held-out single questions (val stream)."""
        z = self.zoo

        def make(split: str, n: int, turns: int) -> pretraining.SymbolicSet:
            folder = pretraining.tiny_split(split, n, z.image_size)
            return pretraining.symbolic_set(folder, z.grid, turns, world_tokenizer())

        return self._once(("symbolic", turns), lambda: (
            make("train", z.symbolic_scenes, turns),
            make("val", z.heldout_symbolic_scenes, 1),
        ))  # fmt: skip

    def text_blocks(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.zoo
        return self._once(("text", block), lambda: (
            _blocks(pretraining.world_documents("train", z.text_scenes), block),
            _blocks(pretraining.world_documents("val", z.heldout_text_scenes), block),
        ))  # fmt: skip


def _blocks(documents: list[str], block: int) -> torch.Tensor:
    """Documents tokenised, joined by end-of-text, cut into (N, block) training blocks."""
    tokenizer = world_tokenizer()
    separator = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids: list[int] = []
    for document in documents:
        ids += tokenizer(document, add_special_tokens=False)["input_ids"] + [separator]
    usable = len(ids) // block * block
    return torch.tensor(ids[:usable]).reshape(-1, block)


def _pixels(processor, images) -> torch.Tensor:
    return processor(images=images, return_tensors="pt")["pixel_values"]


# ---------------------------------------------------------------------------------------
# Building each kind of part
# ---------------------------------------------------------------------------------------
def _siglip_processor(zoo: ZooConfig) -> SiglipImageProcessorPil:
    return SiglipImageProcessorPil(size={"height": zoo.image_size, "width": zoo.image_size})


def _vision_config(spec: EncoderSpec, zoo: ZooConfig) -> SiglipVisionConfig:
    return SiglipVisionConfig(
        hidden_size=spec.width,
        intermediate_size=4 * spec.width,
        num_hidden_layers=spec.depth,
        num_attention_heads=spec.heads,
        image_size=zoo.image_size,
        patch_size=zoo.patch_size,
    )


def _shapes(labels: list[str]) -> list[str]:
    return [label.split()[1] for label in labels]


def _encoder_quality(tower, processor, has_cls: bool, data: _Data) -> dict:
    """Linear probe (colour + shape, and shape alone), segmentation probe and cell probe
    (what each patch token says of its symbolic cell, at the projector's layer)."""
    train, test = data.probes()
    seg_train, seg_test = data.segmentation()

    def tokens(images, layer: int = -1):
        return quality.hidden_patch_tokens(tower, _pixels(processor, images), has_cls, layer=layer)

    cells = quality.cell_probe(
        tokens(seg_train.images, PROJECTOR_FEATURE_LAYER),
        seg_train.cells,
        tokens(seg_test.images, PROJECTOR_FEATURE_LAYER),
        seg_test.cells,
        tuple(pretraining.CELL_ATTRIBUTES),
    )

    train_tokens, test_tokens = tokens(train.images), tokens(test.images)
    segmentation = quality.segmentation_probe(
        tokens(seg_train.images),
        seg_train.patch_classes,
        tokens(seg_test.images),
        seg_test.patch_classes,
    )
    return {
        "linear_probe_shape_color": quality.linear_probe(
            train_tokens, train.labels, test_tokens, test.labels
        ),
        "linear_probe_shape": quality.linear_probe(
            train_tokens, _shapes(train.labels), test_tokens, _shapes(test.labels)
        ),
        **{f"segmentation_{name}": value for name, value in segmentation.items()},
        **{f"cell_probe_{name}": value for name, value in cells.items()},
    }


def _siglip_model(spec: EncoderSpec, zoo: ZooConfig, seed: int) -> SiglipModel:
    """The untrained dual encoder, seeded: the same weights every time for one seed."""
    tokenizer = world_tokenizer()
    text = SiglipTextConfig(
        hidden_size=spec.text_width,
        intermediate_size=4 * spec.text_width,
        num_hidden_layers=spec.text_depth,
        num_attention_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=CAPTION_TOKENS,
        projection_size=spec.width,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = SiglipModel(
        SiglipConfig(text_config=text.to_dict(), vision_config=_vision_config(spec, zoo).to_dict())
    )
    with (
        torch.no_grad()
    ):  # the SigLIP paper's initialisation; transformers starts at scale 1, bias 0
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    return model


def _build_encoder(spec: EncoderSpec, zoo: ZooConfig, data: _Data, seed: int):
    processor = _siglip_processor(zoo)
    scenes = data.pretraining_images()
    pixels = _pixels(processor, scenes.images)
    captions = world_tokenizer()(
        scenes.captions,
        padding="max_length",
        max_length=CAPTION_TOKENS,
        truncation=True,
        return_tensors="pt",
    )["input_ids"]
    model = _siglip_model(spec, zoo, seed)
    random_init = copy.deepcopy(model.vision_model)  # the baseline of the ordering check
    head = CellAttributeHead(spec.width)
    model.train()
    compute = run_steps(
        list(model.parameters()) + list(head.parameters()),
        lambda i: sigmoid_pair_and_cell_loss(
            model, head, pixels[i], captions[i], scenes.cells[i], PROJECTOR_FEATURE_LAYER
        ),
        len(pixels),
        spec.steps,
        spec.batch_size,
        spec.learning_rate,
        seed,
    )
    tower: SiglipVisionModel = model.vision_model  # a SiglipVisionModel in transformers 5
    measured = _encoder_quality(tower, processor, False, data)
    measured["random_init"] = _encoder_quality(random_init, processor, False, data)
    return tower, processor, compute, measured


def _teacher_processor(zoo: ZooConfig) -> BitImageProcessorPil:
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    size = {"shortest_edge": zoo.image_size}
    crop = {"height": zoo.image_size, "width": zoo.image_size}
    return BitImageProcessorPil(size=size, crop_size=crop, image_mean=mean, image_std=std)


def _build_teacher(spec: TeacherSpec, zoo: ZooConfig, data: _Data, seed: int):
    processor = _teacher_processor(zoo)
    scenes = data.pretraining_images()
    pixels = _pixels(processor, scenes.images)
    torch.manual_seed(seed)
    model = Dinov2Model(
        Dinov2Config(
            hidden_size=spec.width,
            num_hidden_layers=spec.depth,
            num_attention_heads=spec.heads,
            mlp_ratio=4,
            image_size=zoo.image_size,
            patch_size=zoo.patch_size,
        )
    )
    head = PatchClassHead(spec.width, pretraining.N_CLASSES)
    model.train()
    parameters = list(model.parameters()) + list(head.parameters())
    compute = run_steps(
        parameters,
        lambda i: dense_loss(model, head, pixels[i], scenes.patch_classes[i]),
        len(pixels),
        spec.steps,
        spec.batch_size,
        spec.learning_rate,
        seed,
    )
    return model, processor, compute, _encoder_quality(model, processor, True, data)


def causal_lm_config(
    config_class: type[PretrainedConfig], width: int, depth: int, heads: int, kv_heads: int
) -> PretrainedConfig:
    """A small causal-LM config (feed-forward 4x width, tied embeddings) over the world
    tokenizer's vocabulary and special tokens; shared by the zoo's LMs and the LM presets."""
    tokenizer = world_tokenizer()
    return config_class(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def _build_lm(spec: LMSpec, zoo: ZooConfig, data: _Data, seed: int):
    tokenizer = world_tokenizer()
    text, heldout_text = data.text_blocks(spec.block)
    symbolic, heldout_symbolic = data.symbolic(spec.turns)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    pad_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(
        causal_lm_config(Qwen2Config, spec.width, spec.depth, spec.heads, spec.kv_heads)
    )
    model.train()
    text_order = torch.Generator().manual_seed(seed + 1)
    steps_done = itertools.count()

    def loss_of_batch(indices: torch.Tensor) -> torch.Tensor:
        loss = symbolic_forward(model, symbolic, indices.tolist(), image_id, pad_id)[0].loss
        if spec.text_every and next(steps_done) % spec.text_every == 0:
            blocks = torch.randint(len(text), (spec.batch_size,), generator=text_order)
            loss = loss + next_token_loss(model, text[blocks])
        return loss

    mix = task_balanced_weights(symbolic) if spec.balance_tasks else None
    phases = [(spec.steps, mix)]
    if spec.focus_steps:
        phases.append((spec.focus_steps, focus_weights(symbolic, spec.focus_tasks)))
    if spec.settle_steps:
        phases.append((spec.settle_steps, mix))
    compute = add_computes(
        [
            run_steps(
                list(model.parameters()),
                loss_of_batch,
                len(symbolic.ids),
                steps,
                spec.symbolic_batch,
                spec.learning_rate,
                seed + phase,
                weights=weights,
            )
            for phase, (steps, weights) in enumerate(phases)
        ]
    )
    measured = {
        "heldout_perplexity": quality.perplexity(model, heldout_text),
        "heldout_blocks": len(heldout_text),
        "train_blocks": len(text),
        "train_conversations": len(symbolic.ids),
        "symbolic_accuracy": symbolic_accuracy(model, heldout_symbolic, image_id, pad_id),
        "heldout_questions": sum(len(t) for t in heldout_symbolic.tasks),
    }
    return model, tokenizer, compute, measured


def _quality_of_saved(zoo: ZooConfig, part: str, entry: Path, data: _Data, seed: int) -> dict:
    """An encoder's or teacher's quality measured again from its saved weights (and, for an
    encoder, from its seeded random initialisation, rebuilt exactly)."""
    spec = zoo.parts[part]
    if isinstance(spec, TeacherSpec):
        teacher = Dinov2Model.from_pretrained(entry)
        return _encoder_quality(teacher, _teacher_processor(zoo), True, data)
    processor = _siglip_processor(zoo)
    measured = _encoder_quality(SiglipVisionModel.from_pretrained(entry), processor, False, data)
    random_init = _siglip_model(spec, zoo, seed).vision_model
    measured["random_init"] = _encoder_quality(random_init, processor, False, data)
    return measured


def _has_probe_figures(measured: dict) -> bool:
    """Whether quality figures come from the probes (an encoder's or the teacher's; a
    language model's do not)."""
    return "linear_probe_shape_color" in measured


def probes_outdated(manifest: dict) -> bool:
    """Whether a manifest's probe figures were measured with older probes than today's."""
    return (
        _has_probe_figures(manifest["quality"])
        and manifest.get("probe_protocol", 1) != quality.PROBE_PROTOCOL
    )


def _measure_again(zoo: ZooConfig, part: str, entry: Path, data: _Data, seed: int) -> None:
    """Rewrite an intact entry's quality under today's probes; its weights are untouched."""
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["quality"] = _quality_of_saved(zoo, part, entry, data, seed)
    manifest["probe_protocol"] = quality.PROBE_PROTOCOL
    write_json_atomic(entry / MANIFEST, manifest)


def _train_part(zoo: ZooConfig, part: str, data: _Data, seed: int):
    spec = zoo.parts[part]
    if isinstance(spec, EncoderSpec):
        return _build_encoder(spec, zoo, data, seed)
    if isinstance(spec, TeacherSpec):
        return _build_teacher(spec, zoo, data, seed)
    return _build_lm(spec, zoo, data, seed)


# ---------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------
def _write_entry(zoo: ZooConfig, part: str, entry: Path, data: _Data, seed: int) -> dict:
    model, companion, compute, measured = _train_part(zoo, part, data, seed)
    staging = staging_folder(entry)  # published by _move_into_place
    model.save_pretrained(staging)
    companion.save_pretrained(staging)
    files = {p.name: file_sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
    manifest = {
        "part": part,
        "zoo": zoo.name,
        "key": part_key(zoo, part, seed),
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "spec": asdict(zoo.parts[part]),
        "data": zoo.data_recipe(part),
        "seed": seed,
        "compute": asdict(compute),
        "quality": measured,
        **({"probe_protocol": quality.PROBE_PROTOCOL} if _has_probe_figures(measured) else {}),
        "pivotlab_version": __version__,
        "zoo_version": ZOO_VERSION,
        "files": files,
    }
    write_json_atomic(staging / MANIFEST, manifest)
    _move_into_place(staging, entry)
    return manifest


def _move_into_place(staging: Path, entry: Path) -> None:
    if entry.exists():
        shutil.rmtree(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(entry)


def build(
    parts: tuple[str, ...] = PARTS,
    zoo: str = "default",
    cache: Path | None = None,
    force: bool = False,
    seed: int = 0,
    log=print,
    log_cached: bool = True,
) -> dict[str, Path]:
    """Make sure each named part is in the cache (training what is missing, stale or
    corrupted; measuring again the quality of a part measured with older probes) and return
    its folder. ``log`` hears what is done to each part (with ``log_cached``, also that a
    part was found in the cache)."""
    config = _zoo(zoo)
    unknown = [p for p in parts if p not in config.parts]
    if unknown:
        raise ZooError(f"unknown zoo part {unknown[0]!r}; parts are {', '.join(config.parts)}")
    cache = cache or default_cache()
    data = _Data(config)
    folders = {}
    for part in parts:
        entry = entry_dir(config, part, cache, seed)
        # One builder per part: a second (another study on the same cache) waits, then
        # finds the part built.
        with folder_lock(entry, wait=True, log=log):
            _build_part(config, part, entry, data, seed, force, log, log_cached)
        folders[part] = entry
    return folders


def _build_part(
    config: ZooConfig,
    part: str,
    entry: Path,
    data: _Data,
    seed: int,
    force: bool,
    log,
    log_cached: bool,
) -> None:
    """Verify, copy from the shipped weights, or train one part into ``entry``."""
    problem = "rebuild asked for" if force else verify(entry)
    if problem is None:
        if log_cached:
            log(f"zoo: {part} cached at {entry}")
    elif not force and _copy_shipped(config, part, entry, seed):
        log(f"zoo: {part} copied from the weights shipped with pivotlab -> {entry}")
    else:
        if entry.exists():
            log(f"zoo: {part} cache entry {entry.name} is unusable ({problem}); rebuilding")
        else:
            cost = part_cost(config, part)
            log(f"zoo: {part} is not shipped for this recipe: training it ({cost})")
        manifest = _write_entry(config, part, entry, data, seed)
        compute = manifest["compute"]
        cost = f"{compute['seconds']:.0f}s, {compute['flops']:.2e} FLOPs"
        log(f"zoo: built {part} ({cost}) -> {entry}")
    manifest = json.loads((entry / MANIFEST).read_text())
    if probes_outdated(manifest):
        _measure_again(config, part, entry, data, seed)
        log(
            f"zoo: {part} quality measured again (probe protocol "
            f"{manifest.get('probe_protocol', 1)} -> {quality.PROBE_PROTOCOL})"
        )


def shipped_dir(zoo: ZooConfig, part: str, seed: int = 0) -> Path:
    """Where the package keeps a built part: ``pivotlab/zoo/weights/<zoo>/<part>-<key>``."""
    return SHIPPED / zoo.name / entry_dir(zoo, part, Path(), seed).name


def _copy_shipped(zoo: ZooConfig, part: str, entry: Path, seed: int) -> bool:
    """Copy the package's own build of ``part`` into the cache, when it ships one for this
    exact recipe (same key) and its files match their hashes; False otherwise."""
    shipped = shipped_dir(zoo, part, seed)
    if verify(shipped) is not None:
        return False
    staging = staging_folder(entry)  # published by _move_into_place
    shutil.copytree(shipped, staging)
    _move_into_place(staging, entry)
    return True


def ship(part: str, zoo: str = "default", cache: Path | None = None, seed: int = 0) -> Path:
    """Copy a built, intact cache entry into the package's weights (what a maintainer runs
    after ``pivotlab zoo build``), so a fresh install copies instead of training it."""
    config = _zoo(zoo)
    entry = entry_dir(config, part, cache or default_cache(), seed)
    problem = verify(entry)
    if problem is not None:
        raise ZooError(f"zoo: {part} is not built in the cache ({problem}); build it first")
    target = shipped_dir(config, part, seed)
    for stale in target.parent.glob(f"{part}-*"):
        shutil.rmtree(stale)
    shutil.copytree(entry, target)
    return target


def part_path(part: str, zoo: str = "default", cache: Path | None = None, seed: int = 0) -> Path:
    """A part's folder, built on first use (what building it does is a ``notice``: a
    study or a training run that must copy or train a part says so)."""
    return build((part,), zoo, cache, seed=seed, log=notice, log_cached=False)[part]


def part_cost(zoo: ZooConfig, part: str) -> str:
    """What building a part takes, before it is built: its optimizer steps."""
    spec = zoo.parts[part]
    steps = sum(getattr(spec, name, 0) or 0 for name in ("steps", "focus_steps", "settle_steps"))
    return f"{steps:,d} optimizer steps" if steps else "a short build"


def unbuilt(zoo: str = "default", cache: Path | None = None, seed: int = 0) -> dict[str, str]:
    """The parts of a zoo not in the cache, each with what ``zoo build`` would do for it."""
    config = _zoo(zoo)
    cache = cache or default_cache()
    missing = {}
    for part in config.parts:
        if verify(entry_dir(config, part, cache, seed)) is None:
            continue
        if verify(shipped_dir(config, part, seed)) is None:
            missing[part] = "copied from the weights shipped with pivotlab (seconds)"
        else:
            missing[part] = f"trained here: {part_cost(config, part)}"
    return missing


def manifests(zoo: str = "default", cache: Path | None = None, seed: int = 0) -> dict[str, dict]:
    """The intact cached parts of a zoo (built with ``seed``) with their manifests."""
    config = _zoo(zoo)
    cache = cache or default_cache()
    found = {}
    for part in config.parts:
        entry = entry_dir(config, part, cache, seed)
        if verify(entry) is None:
            found[part] = json.loads((entry / MANIFEST).read_text())
    return found


@dataclass(frozen=True)
class Check:
    """One quality ordering the zoo promises."""

    name: str
    passed: bool
    detail: str


def checks(found: dict[str, dict]) -> list[Check]:
    """random-init < enc-s < enc-m on the linear probe; vfm above both encoders on the
    segmentation probe's patch recall (PIVOT's figure; its mIoU does not depend on the
    encoder in a 2 x 2 patch world, docs/zoo.md). Only checks whose parts are all built and
    measured with today's probes are returned."""
    found = {part: m for part, m in found.items() if not probes_outdated(m)}
    results = []
    if {"enc-s", "enc-m"} <= found.keys():
        random_init = found["enc-s"]["quality"]["random_init"]["linear_probe_shape_color"]
        small = found["enc-s"]["quality"]["linear_probe_shape_color"]
        medium = found["enc-m"]["quality"]["linear_probe_shape_color"]
        results.append(
            Check(
                "linear probe: random-init < enc-s < enc-m",
                random_init < small < medium,
                f"{random_init:.3f} < {small:.3f} < {medium:.3f}",
            )
        )
    if {"enc-s", "enc-m", "vfm"} <= found.keys():
        recall = "segmentation_patch_recall"
        teacher = found["vfm"]["quality"][recall]
        encoders = max(found[p]["quality"][recall] for p in ("enc-s", "enc-m"))
        results.append(
            Check(
                "segmentation probe: vfm > enc-s, enc-m",
                teacher > encoders,
                f"patch recall {teacher:.3f} vs best encoder {encoders:.3f}",
            )
        )
    return results
