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
    """The orderings PIVOT's probes show (``docs/zoo.md``, Checks): on the linear probe,
    random-init below both encoders (whichever of the two is better) and both below the
    vfm; on the segmentation probe's mIoU, random-init < enc-s < vfm. Only checks whose
    parts are all built and measured with today's probes are returned."""
    found = {part: m for part, m in found.items() if not probes_outdated(m)}
    results = []
    if {"enc-s", "enc-m", "vfm"} <= found.keys():
        probe = quality.LINEAR_PROBE_SHAPE_COLOR
        random_init = found["enc-s"]["quality"][quality.RANDOM_INIT][probe]
        encoders = [found[p]["quality"][probe] for p in ("enc-s", "enc-m")]
        teacher = found["vfm"]["quality"][probe]
        results.append(
            Check(
                "linear probe: random-init < enc-s, enc-m < vfm",
                random_init < min(encoders) and max(encoders) < teacher,
                f"{random_init:.3f} < {encoders[0]:.3f}, {encoders[1]:.3f} < {teacher:.3f}",
            )
        )
    if {"enc-s", "vfm"} <= found.keys():
        miou = quality.SEGMENTATION_MIOU
        random_init = found["enc-s"]["quality"][quality.RANDOM_INIT][miou]
        small = found["enc-s"]["quality"][miou]
        teacher = found["vfm"]["quality"][miou]
        results.append(
            Check(
                "segmentation probe: random-init < enc-s < vfm",
                random_init < small < teacher,
                f"mIoU {random_init:.3f} < {small:.3f} < {teacher:.3f}",
            )
        )
    return results
