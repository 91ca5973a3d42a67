# ruff: noqa: E501  (the table of cases reads best one case per line)
"""Every verb over a corpus of bad inputs it writes itself (README, "Exit status").

For each bad input the command must: exit with the documented status (2 for a bad argument
or input), print exactly one line naming the input and no traceback, never open a file
outside the roots it was given (valid PNGs placed outside are the bait), and leave no
output folder behind. Wrong model folders are also run in a subprocess, whose peak memory
shows they are refused before a model is built.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from pivotlab.cli import EXIT_INTERNAL, EXIT_TERMINATED, EXIT_USAGE, main
from tests.conftest import TEST_SIZE, hold_folder_lock

_OPENED: list[str] = []
_RECORDING = [False]


def _record_opens(event: str, args: tuple) -> None:
    if _RECORDING[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_record_opens)


@dataclass(frozen=True)
class Corpus:
    """Good parts to combine with bad ones, and the bait outside every root."""

    root: Path
    split: Path  # a good world split
    other_split: Path  # another split: its image is bait too
    mllm: Path
    lm: Path  # a language model alone
    encoder: Path  # an encoder exported from ``mllm``
    secret: Path  # a valid PNG outside every root given to a command
    a_file: Path  # a plain file, where a folder is expected

    @property
    def bait(self) -> list[Path]:
        return [self.secret, self.other_split / "images" / "bait.png"]


def _split_with(corpus_root: Path, good: Path, name: str, edit) -> Path:
    """A copy of split ``good`` whose first question's record is changed by ``edit``."""
    out = corpus_root / name
    shutil.copytree(good, out)
    lines = (out / "vqa.jsonl").read_text().splitlines()
    lines[0] = json.dumps(edit(json.loads(lines[0]), out))
    (out / "vqa.jsonl").write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Corpus:
    from transformers import Qwen2ForCausalLM

    from pivotlab.model import LM_PRESETS, export_encoder
    from pivotlab.world import WorldConfig, generate

    root = tmp_path_factory.mktemp("bad-inputs")
    split = root / "test"
    generate(WorldConfig(split="test", n=4, seed=5, size=TEST_SIZE, probe_n=4), split)
    other = root / "train"
    other.mkdir()
    (other / "images").mkdir()
    outside = root / "outside"
    outside.mkdir()
    for bait in (outside / "secret.png", other / "images" / "bait.png"):
        Image.new("RGB", (TEST_SIZE, TEST_SIZE), (255, 0, 0)).save(bait)
    lm = root / "lm"
    Qwen2ForCausalLM(LM_PRESETS["tiny-qwen2"].config()).save_pretrained(lm)
    encoder = root / "encoder"
    export_encoder(tiny_model_dir, encoder)
    a_file = root / "a-file"
    a_file.write_text("not a folder\n")
    return Corpus(root, split, other, tiny_model_dir, lm, encoder, outside / "secret.png", a_file)


def _image_named(name: str):
    return lambda record, split: record | {"image": name}


def _bad_splits(c: Corpus) -> dict[str, Path]:
    """World splits each broken in one way (built once per module)."""
    if hasattr(_bad_splits, "made"):
        return _bad_splits.made  # type: ignore[attr-defined]

    def symlinked(record: dict, split: Path) -> dict:
        (split / "images" / "link.png").symlink_to(c.secret)
        return record | {"image": "images/link.png"}

    def zero_byte(record: dict, split: Path) -> dict:
        (split / "images" / "empty.png").write_bytes(b"")
        return record | {"image": "images/empty.png"}

    splits = {
        "absolute": _split_with(c.root, c.split, "absolute", _image_named(str(c.secret))),
        "dotdot": _split_with(c.root, c.split, "dotdot", _image_named("../outside/secret.png")),
        "other": _split_with(c.root, c.split, "other", _image_named("../train/images/bait.png")),
        "symlink": _split_with(c.root, c.split, "symlink", symlinked),
        "empty": _split_with(c.root, c.split, "empty", zero_byte),
        "number-question": _split_with(
            c.root, c.split, "number-question", lambda record, split: record | {"question": 42}
        ),
    }
    truncated = c.root / "truncated"
    shutil.copytree(c.split, truncated)
    text = (truncated / "vqa.jsonl").read_text()
    (truncated / "vqa.jsonl").write_text(text[: len(text) // 2])  # cut inside a line
    splits["truncated"] = truncated
    escaping_scene = c.root / "escaping-scene"
    shutil.copytree(c.split, escaping_scene)
    scenes = (escaping_scene / "scenes.jsonl").read_text().splitlines()
    first = json.loads(scenes[0]) | {"scene_id": "../../outside/secret"}
    (escaping_scene / "scenes.jsonl").write_text("\n".join([json.dumps(first), *scenes[1:]]))
    splits["escaping-scene"] = escaping_scene
    probe_escape = c.root / "probe-escape"
    shutil.copytree(c.split, probe_escape)
    probes = probe_escape / "probes" / "classification.jsonl"
    rows = probes.read_text().splitlines()
    rows[0] = json.dumps(json.loads(rows[0]) | {"image": "../outside/secret.png"})
    probes.write_text("\n".join(rows) + "\n")
    splits["probe-escape"] = probe_escape
    number_chosen = c.root / "number-chosen"
    shutil.copytree(c.split, number_chosen)
    pairs = (number_chosen / "preferences.jsonl").read_text().splitlines()
    pairs[1] = json.dumps(json.loads(pairs[1]) | {"chosen": 42})
    (number_chosen / "preferences.jsonl").write_text("\n".join(pairs) + "\n")
    splits["number-chosen"] = number_chosen
    splits.update(_bad_models(c))
    _bad_splits.made = splits  # type: ignore[attr-defined]
    return splits


def _bad_models(c: Corpus) -> dict[str, Path]:
    """MLLM folders broken in one way: weights cut short, weights of another shape."""
    cut = c.root / "cut-model"
    shutil.copytree(c.mllm, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    reshaped = c.root / "reshaped-model"
    shutil.copytree(c.mllm, reshaped)
    config = json.loads((reshaped / "config.json").read_text())
    config["text_config"]["intermediate_size"] += 8
    (reshaped / "config.json").write_text(json.dumps(config))
    return {"cut-model": cut, "reshaped-model": reshaped}


# (case, argv with {placeholders} for the corpus' paths and {out}, exit status, text the
# one line must contain)
CASES: list[tuple[str, list[str], int, str]] = [
        ("world generate: preset typo", ["world", "generate", "--out", "{out}", "--preset", "tiny-sigilp"], 2, "tiny-sigilp"),
        ("world generate: out under a file", ["world", "generate", "--out", "{a_file}/sub", "--n", "2"], 2, "a-file"),
        ("world generate: negative n", ["world", "generate", "--out", "{out}", "--n", "-3"], 2, "n"),
        ("world generate: wrong type", ["world", "generate", "--out", "{out}", "--n", "ten"], 2, "--n"),
        ("world show: truncated vqa", ["world", "show", "{root}/truncated", "--out", "{out}/s.png"], 2, "vqa.jsonl:"),
        ("world show: out under a file", ["world", "show", "{split}", "--out", "{a_file}/sub/s.png"], 2, "a-file"),
        ("world show: escaping scene id", ["world", "show", "{root}/escaping-scene", "--out", "{out}/s.png"], 2, "leaves the image root"),
        ("world audit: missing split", ["world", "audit", "--train", "{root}/no-such-folder", "--test", "{split}"], 2, "no-such-folder"),
        ("world audit: a question that is not text", ["world", "audit", "--train", "{root}/number-question", "--test", "{split}"], 2, "vqa.jsonl:1: field question is a number"),
        ("world audit: truncated vqa", ["world", "audit", "--train", "{root}/truncated", "--test", "{split}"], 2, "vqa.jsonl:"),
        ("model build: MLLM as vision", ["model", "build", "--vision", "{mllm}", "--lm", "tiny-qwen2", "--out", "{out}"], 2, "llava"),
        ("model build: empty folder as vision", ["model", "build", "--vision", "{root}/outside", "--lm", "tiny-qwen2", "--out", "{out}"], 2, "config.json"),
        ("model build: preset typo", ["model", "build", "--vision", "tiny-sigilp", "--lm", "tiny-qwen2", "--out", "{out}"], 2, "no preset or folder named 'tiny-sigilp'"),
        ("model build: encoder as LM", ["model", "build", "--vision", "tiny-siglip", "--lm", "{encoder}", "--out", "{out}"], 2, "expected a causal language model"),
        ("model build: image below patch", ["model", "build", "--vision", "tiny-siglip", "--lm", "tiny-qwen2", "--image-size", "4", "--out", "{out}"], 2, "patch size"),
        ("model parts: LM folder", ["model", "parts", "--model", "{lm}"], 2, "Qwen2ForCausalLM"),
        ("model parts: encoder folder", ["model", "parts", "--model", "{encoder}"], 2, "expected an MLLM"),
        ("model parts: missing folder", ["model", "parts", "--model", "{root}/no-such-folder"], 2, "no-such-folder"),
        ("model export-encoder: LM folder", ["model", "export-encoder", "--model", "{lm}", "--out", "{out}"], 2, "Qwen2ForCausalLM"),
        ("model transplant: MLLM as encoder", ["model", "transplant", "--encoder", "{mllm}", "--lm", "tiny-qwen2", "--out", "{out}"], 2, "not an encoder exported"),
        ("model transplant: MLLM as LM", ["model", "transplant", "--encoder", "{encoder}", "--lm", "{mllm}", "--out", "{out}"], 2, "llava"),
        ("data check: missing path", ["data", "check", "--format", "world", "--path", "{root}/no-such-folder"], 2, "no-such-folder"),
        ("data check: out under a file", ["data", "check", "--format", "world", "--path", "{root}/dotdot", "--out", "{a_file}/sub"], 2, "a-file"),
        ("data subset: missing file", ["data", "subset", "--format", "mmpr", "--path", "{root}/no-such-folder", "--n", "2", "--seed", "0", "--sft-out", "{out}/a.json", "--dpo-out", "{out}/b.json"], 2, "no-such-folder"),
        ("train: missing config", ["train", "--config", "{root}/no-such-folder.yaml", "--out", "{out}"], 2, "no-such-folder"),
        ("train: LM folder as init", ["train", "--config", "configs/tiny/full.yaml", "--out", "{out}", "model.init={lm}", "data.train={split}"], 2, "Qwen2ForCausalLM"),
        ("train: LM folder as VIRAL teacher", ["train", "--config", "configs/tiny/full.yaml", "--out", "{out}", "model.init={mllm}", "data.train={split}", "viral.enabled=true", "viral.teacher={lm}"], 2, "viral.teacher"),
        ("train: weights cut short as init", ["train", "--config", "configs/tiny/full.yaml", "--out", "{out}", "model.init={root}/cut-model", "data.train={split}"], 2, "unreadable weights"),
        ("train: a question that is not text", ["train", "--config", "configs/tiny/full.yaml", "--out", "{out}", "model.init={mllm}", "data.train={root}/number-question"], 2, "vqa.jsonl:1: field question is a number"),
        ("train: a chosen answer that is not text", ["train", "--config", "configs/tiny/post-dpo.yaml", "--out", "{out}", "model.init={mllm}", "data.train={root}/number-chosen"], 2, "preferences.jsonl:2: field chosen is a number, expected a string"),
        ("train: wrong type", ["train", "--config", "configs/tiny/full.yaml", "--out", "{out}", "train.epochs=many"], 2, "train.epochs"),
        ("train: escaping image", ["train", "--config", "configs/tiny/full.yaml", "--out", "{out}", "model.init={mllm}", "data.train={root}/dotdot", "data.limit=null"], 2, "leaves the image root"),
        ("evaluate: LM folder", ["evaluate", "--model", "{lm}", "--data", "{split}", "--out", "{out}"], 2, "Qwen2ForCausalLM"),
        ("evaluate: encoder folder", ["evaluate", "--model", "{encoder}", "--data", "{split}", "--out", "{out}"], 2, "expected an MLLM"),
        ("evaluate: absolute image", ["evaluate", "--model", "{mllm}", "--data", "{root}/absolute", "--out", "{out}"], 2, "is absolute"),
        ("evaluate: image through ..", ["evaluate", "--model", "{mllm}", "--data", "{root}/dotdot", "--out", "{out}"], 2, "leaves the image root"),
        ("evaluate: another split's image", ["evaluate", "--model", "{mllm}", "--data", "{root}/other", "--out", "{out}"], 2, "leaves the image root"),
        ("evaluate: symlink outside", ["evaluate", "--model", "{mllm}", "--data", "{root}/symlink", "--out", "{out}"], 2, "outside the image root"),
        ("evaluate: zero-byte image", ["evaluate", "--model", "{mllm}", "--data", "{root}/empty", "--out", "{out}"], 2, "zero-byte"),
        ("evaluate: truncated vqa", ["evaluate", "--model", "{mllm}", "--data", "{root}/truncated", "--out", "{out}"], 2, "vqa.jsonl:"),
        ("evaluate: weights cut short", ["evaluate", "--model", "{root}/cut-model", "--data", "{split}", "--out", "{out}"], 2, "cut-model/model.safetensors: unreadable weights"),
        ("evaluate: weights of another shape", ["evaluate", "--model", "{root}/reshaped-model", "--data", "{split}", "--out", "{out}"], 2, "reshaped-model/model.safetensors: its tensors' shapes do not fit"),
        ("evaluate: a question that is not text", ["evaluate", "--model", "{mllm}", "--data", "{root}/number-question", "--out", "{out}"], 2, "number-question/vqa.jsonl:1: field question is a number, expected a string"),
        ("evaluate: out under a file", ["evaluate", "--model", "{mllm}", "--data", "{split}", "--out", "{a_file}/sub"], 2, "a-file"),
        ("analyze: LM folder", ["analyze", "linear-probe", "--model", "{lm}", "--data", "{split}", "--eval-data", "{root}/dotdot", "--out", "{out}"], 2, "Qwen2ForCausalLM"),
        ("analyze: weights of another shape", ["analyze", "linear-probe", "--model", "{root}/reshaped-model", "--data", "{split}", "--eval-data", "{root}/dotdot", "--out", "{out}"], 2, "shapes do not fit"),
        ("analyze: encoder typo", ["analyze", "linear-probe", "--encoder", "zoo:enc-z", "--data", "{split}", "--eval-data", "{root}/dotdot", "--out", "{out}"], 2, "enc-z"),
        ("analyze: probe image escapes", ["analyze", "linear-probe", "--encoder", "{encoder}", "--data", "{root}/probe-escape", "--eval-data", "{root}/dotdot", "--out", "{out}"], 2, "leaves the image root"),
        ("study: preset typo", ["study", "--preset", "quik", "--out", "{out}"], 2, "quik"),
        ("study: unknown key", ["study", "--preset", "quick", "--out", "{out}", "--dry-run", "no.such=1"], 2, "unknown key no"),
        ("plan: missing config", ["plan", "--config", "{root}/no-such-folder.yaml"], 2, "no-such-folder"),
        ("plan: not YAML", ["plan", "--config", "{a_file}"], 2, "a-file"),
        ("plan: wrong type", ["plan", "--config", "configs/tiny/full.yaml", "train.steps=abc"], 2, "train.steps"),
    ]  # fmt: skip


@pytest.mark.parametrize(("case", "argv", "status", "named"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_naming_it(
    case: str,
    argv: list[str],
    status: int,
    named: str,
    corpus: Corpus,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch,
) -> None:
    monkeypatch.chdir(Path(__file__).parent.parent)  # configs/ of the checkout
    monkeypatch.setenv("PIVOTLAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    _bad_splits(corpus)
    paths = {name: getattr(corpus, name) for name in ("root", "split", "mllm", "lm", "encoder")}
    argv = [arg.format(**paths, a_file=corpus.a_file, out=out) for arg in argv]
    _OPENED.clear()
    _RECORDING[0] = True
    try:
        code = main(argv)
    finally:
        _RECORDING[0] = False
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == status, captured.err
    # Progress lines may come first (analyze logs each source it loads); the error is one
    # line, the last.
    errors = [line for line in lines if line.startswith("pivotlab")]
    assert len(errors) == 1 and errors[0] == lines[-1] and named in errors[0], captured.err
    assert "Traceback" not in captured.err + captured.out
    opened = {str(Path(p).resolve()) for p in _OPENED}
    assert not opened & {str(b.resolve()) for b in corpus.bait}, "bait outside the root was read"
    leftovers = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not leftovers, f"output left behind: {leftovers}"
    assert not list(tmp_path.glob(".*.partial-*"))


def _peak_memory_mib(argv: list[str]) -> tuple[int, str, float]:
    """Exit status, stderr and peak resident memory (MiB) of ``pivotlab argv`` run alone."""
    # VmHWM is this process's own peak: ru_maxrss would carry over the forking parent's.
    script = (
        "import sys; from pivotlab.cli import main; code = main(sys.argv[1:]); "
        "peak = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')); "
        "print(int(peak.split()[1]) // 1024, file=sys.stderr); sys.exit(code)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env, timeout=120
    )
    *message, peak = done.stderr.strip().splitlines()
    return done.returncode, "\n".join(message), float(peak)


@pytest.mark.parametrize("what", ["lm", "encoder"])
def test_a_wrong_model_folder_is_refused_before_anything_is_built(
    what: str, corpus: Corpus, tmp_path: Path
) -> None:
    # Before the check, Llava built a default 7B-class LM from such a folder: gigabytes.
    # Now the CLI reads config.json before importing torch or transformers (17 MiB, 0.1 s).
    folder = getattr(corpus, what)
    argv = ["evaluate", "--model", str(folder), "--data", str(corpus.split)]
    code, message, peak = _peak_memory_mib([*argv, "--out", str(tmp_path / "out")])
    assert code == EXIT_USAGE and len(message.splitlines()) == 1, message
    assert peak < 200, f"peak memory {peak:.0f} MiB"  # refused before torch is imported


def test_an_internal_error_is_one_line_pointing_to_a_logged_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    import pivotlab.cli as cli

    def broken(args) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setenv("PIVOTLAB_CACHE", str(tmp_path))
    monkeypatch.setattr(cli, "_plan", broken)
    assert main(["plan", "--config", "configs/tiny/full.yaml"]) == EXIT_INTERNAL
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "internal error (ZeroDivisionError: a bug)" in line
    log = Path(line.rsplit("traceback in ", 1)[1])
    assert log.parent == tmp_path / "logs" and "Traceback" in log.read_text()


def test_sigterm_during_world_generate_leaves_no_staging(tmp_path: Path) -> None:
    out = tmp_path / "split"
    stale = tmp_path / ".split.partial-999999999"  # a killed run's, by a pid that is gone
    (stale / "images").mkdir(parents=True)
    command = [sys.executable, "-m", "pivotlab", "world", "generate", "--out", str(out)]
    run = subprocess.Popen([*command, "--n", "100000"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not [
        p for p in tmp_path.glob(".split.partial-*") if p != stale
    ]:
        time.sleep(0.1)
    time.sleep(0.5)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=60)
    assert run.returncode == EXIT_TERMINATED and err.strip() == "pivotlab: terminated"
    assert not stale.exists(), "a dead process's staging folder was not cleaned"
    assert not list(tmp_path.iterdir()), "the run left files behind"


def test_version_and_help_list_choices_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from pivotlab import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"pivotlab {__version__}"
    for argv, shown in [
        (["world", "generate", "--help"], ("default, tiny", "relation", "(default: 1)")),
        (["study", "--help"], ("full, paper, quick", "(default: quick)")),
        (["analyze", "linear-probe", "--help"], ("(default: mean)", "(default: 5)")),
    ]:
        with pytest.raises(SystemExit):
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert all(s in text for s in shown), (argv, text)


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "--config", "configs/tiny/full.yaml"],
        ["study", "--preset", "quick", "--out", "{out}", "--dry-run"],
    ],
    ids=["plan", "study --dry-run"],
)
def test_planning_never_imports_trl(argv: list[str], tmp_path: Path) -> None:
    # Planning reads configs; TRL (seconds to import) is for training alone.
    script = (
        "import sys; from pivotlab.cli import main; code = main(sys.argv[1:]); "
        "print(sorted(m for m in sys.modules if m == 'trl' or m.startswith('trl.')))"
    )
    argv = [arg.format(out=tmp_path / "study") for arg in argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    root = Path(__file__).parent.parent
    done = subprocess.run(
        [sys.executable, "-c", script, *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def _sub_parser(verb: str) -> argparse.ArgumentParser:
    from pivotlab.cli import build_parser

    verbs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return verbs.choices[verb]


def test_evaluate_and_analyze_options_are_their_configs_fields(tmp_path: Path) -> None:
    # the options are derived from EvalConfig and AnalyzeConfig (configtree.add_options):
    # every field is an option, and a command line gives back the config it describes
    from pivotlab.analysis import ANALYSES
    from pivotlab.analysis.config import AnalyzeConfig
    from pivotlab.configtree import from_options
    from pivotlab.evaluate.config import EvalConfig

    argv = ["--model", "m", "--data", "d", "--out", "o", "--categories", "a,b", "--limit", "3"]
    argv += ["--batch-size", "2", "--max-new-tokens", "4", "--likelihood", "--seed", "7"]
    args = _sub_parser("evaluate").parse_args(argv)
    assert from_options(EvalConfig, args) == EvalConfig(
        "m", "d", "o", ("a", "b"), 3, 2, 4, likelihood=True, blind=False, seed=7
    )
    argv = ["all", "--data", "tr", "--eval-data", "te", "--out", "o", "--encoder", "a=x"]
    argv += ["--encoder", "y", "--model", "b=z", "--head", "mlp", "--pooling", "cls"]
    cfg = from_options(AnalyzeConfig, _sub_parser("analyze").parse_args(argv))
    assert cfg.analyses == ANALYSES and cfg.encoders == [("a", "x"), ("y", "y")]
    assert cfg.models == [("b", "z")] and cfg.head == ("mlp",) and cfg.pooling == "cls"
    assert cfg.data == Path("tr") and cfg.labels == ("shape", "color", "shape_color")
    defaults = _sub_parser("analyze").parse_args(["pca", "--data", "d", "--out", "o"])
    assert defaults.encoders == [] and defaults.models == []  # a fresh list per parse


LOCKED_VERBS = {
    "train": ["train", "--config", "configs/tiny/full.yaml", "--out", "{out}", "model.init={mllm}", "data.train={split}"],
    "evaluate": ["evaluate", "--model", "{mllm}", "--data", "{split}", "--out", "{out}"],
    "analyze": ["analyze", "linear-probe", "--encoder", "{encoder}", "--data", "{split}", "--eval-data", "{split}", "--out", "{out}"],
    "study": ["study", "--preset", "quick", "--out", "{out}"],
}  # fmt: skip


@pytest.mark.parametrize("verb", LOCKED_VERBS)
def test_a_second_command_on_a_folder_in_use_is_refused_and_touches_nothing(
    verb: str, corpus: Corpus, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """One run per folder: while another command holds ``--out``, a second exits 2 in one
    line naming the folder and the holder's pid, and leaves what is there as it was."""
    monkeypatch.chdir(Path(__file__).parent.parent)  # configs/ of the checkout
    monkeypatch.setenv("PIVOTLAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("the first run's\n")
    paths = {name: getattr(corpus, name) for name in ("split", "mllm", "encoder")}
    argv = [arg.format(**paths, out=out) for arg in LOCKED_VERBS[verb]]
    holder = hold_folder_lock(out, 60)
    try:
        code = main(argv)
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == (
        f"pivotlab: error: {out}: in use by another pivotlab command (pid {holder.pid}); "
        "wait for it to finish or choose another folder"
    )
    assert [p.name for p in out.iterdir()] == ["kept.txt"]
    assert (out / "kept.txt").read_text() == "the first run's\n"


@pytest.mark.parametrize(
    "verb", [pytest.param("train", marks=pytest.mark.trains), "evaluate", "analyze"]
)
def test_a_verb_run_on_its_own_prints_its_own_lines_and_logs_the_libraries(
    verb: str, corpus: Corpus, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """The libraries' progress bars, logging dicts and parts tables go to OUT.log beside
    the folder; the console keeps the verb's result."""
    monkeypatch.chdir(Path(__file__).parent.parent)
    monkeypatch.setenv("PIVOTLAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    paths = {name: getattr(corpus, name) for name in ("split", "mllm", "encoder")}
    argv = [arg.format(**paths, out=out) for arg in LOCKED_VERBS[verb]]
    if verb == "analyze":  # an analysis of a model that needs no probe images
        argv = ["analyze", "pca", "--model", f"m={corpus.mllm}", "--data", str(corpus.split)]
        argv += ["--out", str(out)]
    if verb == "train":
        argv += ["train.steps=2", "data.limit=8"]
    assert main(argv) == 0
    captured = capfd.readouterr()
    console = captured.out + captured.err
    assert f"wrote {out}" in console
    for library_output in ("'loss'", "grad_norm", "Loading weights", "it/s]", "trainable"):
        assert library_output not in console, library_output
    if verb == "train":
        kept = (tmp_path / "out.log").read_text()
        # The Trainer's metric dicts and the parts table.
        for kept_output in ("'train_loss'", "trainable"):
            assert kept_output in kept, kept_output
