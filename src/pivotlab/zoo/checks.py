"""What a built part's manifest says of the zoo: whether its probe figures are today's,
and the quality orderings the zoo promises (``docs/zoo.md``, Checks)."""

from __future__ import annotations

from dataclasses import dataclass

from pivotlab.zoo import quality


def has_probe_figures(measured: dict) -> bool:
    """Whether quality figures come from the probes (an encoder's or the teacher's; a
    language model's do not)."""
    return quality.LINEAR_PROBE_SHAPE_COLOR in measured


def probes_outdated(manifest: dict) -> bool:
    """Whether a manifest's probe figures were measured with older probes than today's."""
    return (
        has_probe_figures(manifest["quality"])
        and manifest.get("probe_protocol", 1) != quality.PROBE_PROTOCOL
    )


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
        probe = quality.LINEAR_PROBE_SHAPE_COLOR
        random_init = found["enc-s"]["quality"][quality.RANDOM_INIT][probe]
        small = found["enc-s"]["quality"][probe]
        medium = found["enc-m"]["quality"][probe]
        results.append(
            Check(
                "linear probe: random-init < enc-s < enc-m",
                random_init < small < medium,
                f"{random_init:.3f} < {small:.3f} < {medium:.3f}",
            )
        )
    if {"enc-s", "enc-m", "vfm"} <= found.keys():
        recall = quality.SEGMENTATION_PATCH_RECALL
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
