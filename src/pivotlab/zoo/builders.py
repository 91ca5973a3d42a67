"""Training each kind of zoo part from its spec, and measuring its quality.

- encoders (``EncoderSpec``): a SigLIP dual encoder trained on captions and symbolic cells,
  its ``SiglipVisionModel`` kept;
- the teacher (``TeacherSpec``): a ``Dinov2Model`` trained to classify each patch;
- language models (``LMSpec``): ``Qwen2ForCausalLM`` on symbolic scenes and world text.
"""

from __future__ import annotations

import copy
import math
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

from pivotlab.zoo import pretraining, quality
from pivotlab.zoo.data import BuildData, processed_pixels
from pivotlab.zoo.recipes import EncoderSpec, LMSpec, TeacherSpec, ZooConfig, ZooError
from pivotlab.zoo.tokenizer import IMAGE_TOKEN, world_tokenizer
from pivotlab.zoo.train import (
    PROJECTOR_FEATURE_LAYER,
    CellAttributeHead,
    PatchClassHead,
    Progress,
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

CAPTION_TOKENS = 48


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


def _encoder_quality(tower, processor, has_cls: bool, data: BuildData) -> dict:
    """Linear probe (colour + shape, and shape alone), segmentation probe and cell probe
    (what each patch token says of its symbolic cell, at the projector's layer)."""
    train, test = data.probes()
    seg_train, seg_test = data.segmentation()

    def tokens(images, layer: int = -1):
        pixels = processed_pixels(processor, images)
        return quality.hidden_patch_tokens(tower, pixels, has_cls, layer=layer)

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
        quality.LINEAR_PROBE_SHAPE_COLOR: quality.linear_probe(
            train_tokens, train.labels, test_tokens, test.labels
        ),
        quality.LINEAR_PROBE_SHAPE: quality.linear_probe(
            train_tokens, _shapes(train.labels), test_tokens, _shapes(test.labels)
        ),
        **{f"{quality.SEGMENTATION_PREFIX}{name}": value for name, value in segmentation.items()},
        **{quality.cell_probe_key(name): value for name, value in cells.items()},
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


def _build_encoder(
    spec: EncoderSpec, zoo: ZooConfig, data: BuildData, seed: int, progress_file: Path | None
):
    processor = _siglip_processor(zoo)
    scenes = data.pretraining_images()
    pixels = processed_pixels(processor, scenes.images)
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
        progress=Progress(progress_file, [model, head]) if progress_file else None,
    )
    tower: SiglipVisionModel = model.vision_model  # a SiglipVisionModel in transformers 5
    measured = _encoder_quality(tower, processor, False, data)
    measured[quality.RANDOM_INIT] = _encoder_quality(random_init, processor, False, data)
    return tower, processor, compute, measured


def _teacher_processor(zoo: ZooConfig) -> BitImageProcessorPil:
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    size = {"shortest_edge": zoo.image_size}
    crop = {"height": zoo.image_size, "width": zoo.image_size}
    return BitImageProcessorPil(size=size, crop_size=crop, image_mean=mean, image_std=std)


def _build_teacher(
    spec: TeacherSpec, zoo: ZooConfig, data: BuildData, seed: int, progress_file: Path | None
):
    processor = _teacher_processor(zoo)
    scenes = data.pretraining_images()
    pixels = processed_pixels(processor, scenes.images)
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
        progress=Progress(progress_file, [model, head]) if progress_file else None,
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


def _build_lm(
    spec: LMSpec,
    zoo: ZooConfig,
    data: BuildData,
    seed: int,
    start: Path | None,
    progress_file: Path | None,
):
    tokenizer = world_tokenizer()
    text, heldout_text = data.text_blocks(spec.block)
    symbolic, heldout_symbolic = data.symbolic(spec.turns)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    pad_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    if start is None:
        model = Qwen2ForCausalLM(
            causal_lm_config(Qwen2Config, spec.width, spec.depth, spec.heads, spec.kv_heads)
        )
    else:
        model = Qwen2ForCausalLM.from_pretrained(start)
        shape = (model.config.hidden_size, model.config.num_hidden_layers)
        if shape != (spec.width, spec.depth):
            raise ZooError(
                f"zoo: {start} is {shape[0]} wide and {shape[1]} deep; the recipe that "
                f"starts from it says {spec.width} and {spec.depth}"
            )
    model.train()
    text_order = torch.Generator().manual_seed(seed + 1)
    calls = {"done": 0}  # every ``text_every``-th call adds world text

    def loss_of_batch(indices: torch.Tensor) -> torch.Tensor:
        loss = symbolic_forward(model, symbolic, indices.tolist(), image_id, pad_id)[0].loss
        with_text = spec.text_every and calls["done"] % spec.text_every == 0
        calls["done"] += 1
        if with_text:
            blocks = torch.randint(len(text), (spec.batch_size,), generator=text_order)
            loss = loss + next_token_loss(model, text[blocks])
        return loss

    def load_state(state: dict) -> None:
        calls["done"] = state["calls"]
        text_order.set_state(state["text_order"])

    progress = None
    if progress_file:
        progress = Progress(
            progress_file,
            [model],
            state=lambda: {"calls": calls["done"], "text_order": text_order.get_state()},
            load_state=load_state,
        )
    mix = task_balanced_weights(symbolic) if spec.balance_tasks else None
    phases = [
        (steps, focus_weights(symbolic, tasks) if tasks else mix) for tasks, steps in spec.phases()
    ]
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
                progress=progress,
                phase=phase,
            )
            for phase, (steps, weights) in enumerate(phases)
        ]
    )
    measured = {
        quality.HELDOUT_PERPLEXITY: quality.perplexity(model, heldout_text),
        "heldout_blocks": len(heldout_text),
        "train_blocks": len(text),
        "train_conversations": len(symbolic.ids),
        quality.SYMBOLIC_ACCURACY: symbolic_accuracy(model, heldout_symbolic, image_id, pad_id),
        "heldout_questions": sum(len(t) for t in heldout_symbolic.tasks),
    }
    return model, tokenizer, compute, measured


def quality_of_saved(zoo: ZooConfig, part: str, entry: Path, data: BuildData, seed: int) -> dict:
    """An encoder's or teacher's quality measured again from its saved weights (and, for an
    encoder, from its seeded random initialisation, rebuilt exactly)."""
    spec = zoo.parts[part]
    if isinstance(spec, TeacherSpec):
        teacher = Dinov2Model.from_pretrained(entry)
        return _encoder_quality(teacher, _teacher_processor(zoo), True, data)
    processor = _siglip_processor(zoo)
    measured = _encoder_quality(SiglipVisionModel.from_pretrained(entry), processor, False, data)
    random_init = _siglip_model(spec, zoo, seed).vision_model
    measured[quality.RANDOM_INIT] = _encoder_quality(random_init, processor, False, data)
    return measured


def train_part(
    zoo: ZooConfig,
    part: str,
    data: BuildData,
    seed: int,
    start: Path | None = None,
    progress_file: Path | None = None,
):
    """A part trained from its seeded initialisation, or a language model from the built
    part in ``start`` (``LMSpec.start_from_zoo``): (model, its processor or tokenizer, the
    compute it took, its quality figures). With ``progress_file``, the training saves its
    progress there and resumes from it (``train.Progress``)."""
    spec = zoo.parts[part]
    if isinstance(spec, EncoderSpec):
        return _build_encoder(spec, zoo, data, seed, progress_file)
    if isinstance(spec, TeacherSpec):
        return _build_teacher(spec, zoo, data, seed, progress_file)
    return _build_lm(spec, zoo, data, seed, start, progress_file)
