"""The zoo's quality orderings, on hand-written manifests."""

from __future__ import annotations

from pivotlab.zoo import quality
from pivotlab.zoo.checks import checks


def _encoder(probe: float, miou: float, random_probe: float = 0.3, random_miou: float = 0.1):
    figures = {quality.LINEAR_PROBE_SHAPE_COLOR: probe, quality.SEGMENTATION_MIOU: miou}
    random_init = {
        quality.LINEAR_PROBE_SHAPE_COLOR: random_probe,
        quality.SEGMENTATION_MIOU: random_miou,
    }
    return {"quality": {**figures, quality.RANDOM_INIT: random_init}, "probe_protocol": 2}


def _found(enc_s: dict, enc_m: dict, vfm: dict) -> dict[str, dict]:
    return {"enc-s": enc_s, "enc-m": enc_m, "vfm": vfm}


def test_both_orderings_pass_whichever_encoder_is_better() -> None:
    found = _found(_encoder(0.6, 0.3), _encoder(0.55, 0.35), _encoder(0.8, 0.4))
    assert [(c.name, c.passed) for c in checks(found)] == [
        ("linear probe: random-init < enc-s, enc-m < vfm", True),
        ("segmentation probe: random-init < enc-s < vfm", True),
    ]


def test_an_encoder_above_the_vfm_or_below_random_init_fails() -> None:
    above_teacher = _found(_encoder(0.6, 0.3), _encoder(0.85, 0.35), _encoder(0.8, 0.4))
    assert [c.passed for c in checks(above_teacher)] == [False, True]
    segmentation_at_random = _found(
        _encoder(0.6, 0.09, random_miou=0.1), _encoder(0.55, 0.35), _encoder(0.8, 0.4)
    )
    check = checks(segmentation_at_random)[1]
    assert not check.passed and check.detail == "mIoU 0.100 < 0.090 < 0.400"


def test_only_checks_with_every_part_built_are_returned() -> None:
    assert checks({"enc-s": _encoder(0.6, 0.3)}) == []
    names = [c.name for c in checks({"enc-s": _encoder(0.6, 0.3), "vfm": _encoder(0.8, 0.4)})]
    assert names == ["segmentation probe: random-init < enc-s < vfm"]
