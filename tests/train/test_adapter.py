"""The adapter: the versions it knows, refusing others in one line, and being the one place
that reaches below the libraries' public API."""

from __future__ import annotations

import ast
import inspect
import re
import tomllib
from pathlib import Path

import accelerate
import pytest
import torch
import transformers
import trl
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from transformers import LlavaModel

from pivotlab import cli
from pivotlab.model import load
from pivotlab.train import adapter
from pivotlab.train import prefix as prefix_module
from pivotlab.train.adapter import (
    TESTED,
    UnsupportedVersionError,
    cache_keyword,
    check_versions,
    installed_versions,
)
from pivotlab.train.prefix import BACKBONE_NOT_CALLED, install_prefix_sharing, sharing_counts
from pivotlab.train.trainers import StageDPOTrainer, StageGRPOTrainer, StageSFTTrainer

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SOURCE = Path(__file__).resolve().parents[2] / "src" / "pivotlab"
NEWER = {"transformers": "5.99.0", "trl": "1.16.0", "accelerate": "1.16.0"}


def test_the_installed_libraries_are_in_the_tested_ranges() -> None:
    versions = installed_versions()
    assert set(versions) == set(TESTED)
    check_versions()  # the suite itself runs on tested versions (.ci/run: pinned and newest)


@pytest.mark.parametrize(
    ("versions", "named"),
    [
        (NEWER, "transformers 5.99.0"),
        ({**NEWER, "transformers": "5.22.2"}, "transformers 5.22.2"),
        ({**NEWER, "transformers": "5.23.0", "trl": "2.0.0"}, "trl 2.0.0"),
        ({**NEWER, "transformers": "5.23.0", "accelerate": "missing"}, "accelerate missing"),
    ],
)
def test_other_versions_are_refused_in_one_line_naming_them(versions, named) -> None:
    with pytest.raises(UnsupportedVersionError) as refused:
        check_versions(versions)
    message = str(refused.value)
    assert named in message and "\n" not in message
    assert all(f"{name} {spec}" in message for name, spec in TESTED.items())


def test_pyproject_admits_exactly_the_tested_ranges() -> None:
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    ranges = {r.name: r.specifier for r in map(Requirement, declared)}
    for name, spec in TESTED.items():
        assert ranges[name] == SpecifierSet(spec), f"{name}: {ranges[name]} against {spec}"


def test_train_refuses_untested_versions_before_any_work(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(adapter, "installed_versions", lambda: NEWER)
    out = tmp_path / "run"
    argv = ["train", "--config", str(CONFIGS / "tiny" / "post-dpo.yaml"), "--out", str(out)]
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert "transformers 5.99.0" in error and len(error.splitlines()) == 1
    assert not out.exists()


def _private_overrides(cls: type) -> dict[str, str]:
    """Private methods pivotlab's classes in ``cls``'s MRO define over a library class's
    same-named method: name -> the module defining pivotlab's."""
    found = {}
    library = [c for c in cls.__mro__ if not c.__module__.startswith("pivotlab")]
    for klass in cls.__mro__:
        if not klass.__module__.startswith("pivotlab"):
            continue
        for name, value in vars(klass).items():
            private = name.startswith("_") and not name.startswith("__")
            if private and callable(value) and any(name in vars(c) for c in library):
                found.setdefault(name, klass.__module__)
    return found


@pytest.mark.parametrize("trainer", [StageSFTTrainer, StageDPOTrainer, StageGRPOTrainer])
def test_only_the_adapter_overrides_the_libraries_private_methods(trainer) -> None:
    overrides = _private_overrides(trainer)
    assert "_get_grad_norm" in overrides  # the check sees overrides at all
    elsewhere = {name: module for name, module in overrides.items() if module != adapter.__name__}
    assert not elsewhere, f"private library methods overridden outside the adapter: {elsewhere}"


def test_each_private_override_names_the_version_it_mirrors() -> None:
    for cls in (adapter.TrainerInternals, adapter.GRPOInternals):
        for name, method in vars(cls).items():
            if name.startswith("_") and not name.startswith("__") and callable(method):
                comment = inspect.getcomments(method) or ""
                assert "transformers 5." in comment or "TRL 1." in comment, name


def test_the_cache_keyword_follows_the_backbone_signature() -> None:
    class Renamed(LlavaModel):
        def forward(self, input_ids=None, past_key_values=None, mm_encoder_outputs=None):
            raise NotImplementedError

    class Cacheless(LlavaModel):
        def forward(self, input_ids=None, mm_encoder_outputs=None):
            raise NotImplementedError

    assert cache_keyword(LlavaModel) in adapter.CACHE_KEYWORDS
    assert cache_keyword(Renamed) == "past_key_values"
    assert cache_keyword(Cacheless) is None


def test_a_backbone_without_a_known_cache_keeps_the_stock_forward(
    tiny_model_dir, monkeypatch
) -> None:
    model, _ = load(tiny_model_dir)
    monkeypatch.setattr(prefix_module, "cache_keyword", lambda backbone: None)
    reason = install_prefix_sharing(model)
    assert reason is not None and "cache" in reason
    assert not hasattr(model, "_pivotlab_stock_forward")


def test_a_fused_head_that_skips_the_backbone_is_counted(tiny_model_dir) -> None:
    model, _ = load(tiny_model_dir)
    assert install_prefix_sharing(model) is None
    model._pivotlab_stock_forward = lambda *args, **kwargs: "stock"  # a head of another design
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 9]])  # one prompt, two answers: they share
    labels = ids.masked_fill(torch.tensor([True, True, True, False]), -100)
    assert model(input_ids=ids, labels=labels, fused_lm_head=True) == "stock"
    assert sharing_counts(model)[BACKBONE_NOT_CALLED] == 1
    assert sharing_counts(model)["shared"] == 0
    assert model.model._pivotlab_plan is None


# --- the boundary: no private API of the libraries outside the adapter -----------------------

LIBRARIES = ("transformers", "trl", "accelerate")
# The library classes pivotlab builds on: their private names (methods, properties, class
# attributes, nn.Module's included) are the libraries'.
LIBRARY_CLASSES = (
    transformers.Trainer,
    transformers.TrainingArguments,
    transformers.PreTrainedConfig,
    transformers.LlavaForConditionalGeneration,
    transformers.LlavaModel,
    transformers.ProcessorMixin,
    transformers.PreTrainedTokenizerBase,
    trl.SFTTrainer,
    trl.DPOTrainer,
    trl.GRPOTrainer,
    accelerate.Accelerator,
    accelerate.PartialState,
)
# Private attributes the libraries set on instances, which no class lists (the adapter's).
LIBRARY_INSTANCE_ATTRIBUTES = frozenset(
    {
        "_tr_loss",
        "_total_loss_scalar",
        "_signature_columns",
        "_models",
        "_metrics",
        "_total_train_tokens",
    }
)
# Modules below the libraries' public API: TRL's trainer internals and transformers' Trainer
# modules (their public names are exported at the packages' top).
DEEP_MODULES = re.compile(r"^(trl\.trainer|transformers\.trainer)(\.|_|$)")
ATTRIBUTE_CALLS = frozenset({"getattr", "hasattr", "setattr", "delattr"})


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def library_private_names() -> frozenset[str]:
    """Private names known to be the libraries': those of ``LIBRARY_CLASSES`` and the
    instance attributes the adapter reads."""
    listed = {name for cls in LIBRARY_CLASSES for name in dir(cls) if _is_private(name)}
    return frozenset(listed | LIBRARY_INSTANCE_ATTRIBUTES)


def _private_attribute(node: ast.AST) -> str | None:
    """The private name ``node`` reads or writes as an attribute (``x._a``,
    ``getattr(x, "_a")``), or None."""
    if isinstance(node, ast.Attribute) and _is_private(node.attr):
        return node.attr
    is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    if is_call and node.func.id in ATTRIBUTE_CALLS and len(node.args) >= 2:
        name = node.args[1]
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            return name.value if _is_private(name.value) else None
    return None


def _imported(node: ast.AST) -> list[tuple[str, str]]:
    """(module, name) of each thing an import statement brings in ("" for ``import m``)."""
    if isinstance(node, ast.Import):
        return [(alias.name, "") for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [(node.module, alias.name) for alias in node.names]
    return []


def boundary_violations(source: str, private_names: frozenset[str]) -> list[str]:
    """``line: what`` for each use in ``source`` of the libraries' private API: a private
    attribute among ``private_names``, an import from ``DEEP_MODULES``, or an import of a
    private name from one of ``LIBRARIES``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        attribute = _private_attribute(node)
        if attribute in private_names:
            found.append(f"{node.lineno}: attribute {attribute}")
        for module, name in _imported(node):
            library = module.split(".")[0] in LIBRARIES
            if DEEP_MODULES.match(f"{module}.{name}" if name else module):
                found.append(f"{node.lineno}: import from {module}")
            elif library and _is_private(name):
                found.append(f"{node.lineno}: import of {module}.{name}")
    return found


def test_no_module_outside_the_adapter_uses_the_libraries_private_api() -> None:
    names = library_private_names()
    adapter_file = Path(adapter.__file__).resolve()
    found = {
        str(path.relative_to(SOURCE)): violations
        for path in sorted(SOURCE.rglob("*.py"))
        if path.resolve() != adapter_file
        and (violations := boundary_violations(path.read_text(), names))
    }
    assert not found, f"the libraries' private API outside train/adapter.py: {found}"


@pytest.mark.parametrize(
    "planted",
    [
        "attention = config._attn_implementation",
        "trainer._save_checkpoint(model, trial=None)",
        "tail = trainer._tr_loss.item() if hasattr(trainer, 'x') else 0.0",
        "total = getattr(trainer, '_total_loss_scalar', 0.0)",
        "from trl.trainer.utils import hash_module",
        "from trl import trainer",
        "import transformers.trainer_utils",
        "from transformers.trainer import TRAINER_STATE_NAME",
        "from accelerate.utils import _private_helper",
    ],
)
def test_the_boundary_check_finds_a_planted_violation(planted) -> None:
    assert len(boundary_violations(planted, library_private_names())) == 1


def test_the_boundary_check_passes_public_use_and_pivotlab_own_names() -> None:
    clean = (
        "from transformers import Trainer, TrainerCallback\n"
        "from transformers.modeling_outputs import BaseModelOutputWithPooling\n"
        "from trl import DPOTrainer\n"
        "import trl\n"
        "model._pivotlab_plan = None\n"
        "counts = getattr(model, '_pivotlab_sharing_counts', None)\n"
        "config.get_text_config()\n"
    )
    assert boundary_violations(clean, library_private_names()) == []


def test_every_private_name_the_adapter_reads_is_known_to_the_check() -> None:
    tree = ast.parse(Path(adapter.__file__).read_text())
    read = {name for node in ast.walk(tree) if (name := _private_attribute(node))}
    assert "_attn_implementation" in read  # the adapter's reads are seen at all
    assert read <= library_private_names(), read - library_private_names()
