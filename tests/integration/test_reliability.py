"""Reliability (issue 8): crashes, full disks, corrupt inputs, unsafe loading and path tricks.

Covered elsewhere, not repeated here: SIGKILL while packing (test_pack), SIGKILL while
training then an exact resume (test_train_loop), truncated/garbage shards and checksum
mismatches at open_checkpoint (test_checkpoint), truncated packed shards (test_packed_dataset).
"""
from __future__ import annotations

import ast
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lingraft.config import ConfigError, build_config
from lingraft.errors import LingraftError
from lingraft.hashing import sha256_file
from lingraft.paths import is_inside, require_inside, safe_join, safe_name
from tests.conftest import REPO
from tests.helpers import gpt2_with_chat_token, propagation_family, train_small_ru_tokenizer

PACKAGES = ("lingraft", "data_prep", "vocabulary", "train", "propagate", "evaluation")
ENV = {**os.environ, "LINGRAFT_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}

# Runs `lingraft ARGS` and SIGKILLs itself right after the writer finished its SHARDS-th output shard.
DIE_AFTER_SHARDS = """
import os, signal, sys
import lingraft.hf_folder_writer as writer
done = [0]
def dying(real):
    def wrapped(*args, **kwargs):
        real(*args, **kwargs)
        done[0] += 1
        if done[0] == int(os.environ["SHARDS"]):
            os.kill(os.getpid(), signal.SIGKILL)
    return wrapped
writer._write_shard, writer._copy_file = dying(writer._write_shard), dying(writer._copy_file)
from lingraft.cli import main
sys.exit(main(sys.argv[1:]))
"""


def file_hashes(folder: Path) -> dict[str, str]:
    """Every file's sha256, but the manifest (it records times and hosts)."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".tmp-"))


# -- propagation: SIGKILL and a full disk ----------------------------------------------------
@pytest.fixture(scope="module")
def family(shared, tmp_path_factory) -> Path:
    tok_dir = train_small_ru_tokenizer(shared, tmp_path_factory.mktemp("tok") / "ru", 1000, 200_000)
    root, _ = propagation_family(tmp_path_factory.mktemp("family"), gpt2_with_chat_token(shared), tok_dir, tied=False)
    return root


def propagate_args(root: Path, out: Path, adapted: str = "A") -> list[str]:
    return ["propagate", "--base", str(root / "B"), "--adapted", str(root / adapted), "--instruct", str(root / "I"),
            "--method", "conversion", "--out", str(out), "--max-shard-gb", "0.0001"]   # several shards


@pytest.fixture(scope="module")
def reference(family) -> dict[str, str]:
    """The file hashes of an uninterrupted propagation."""
    from lingraft.cli import main
    assert main(propagate_args(family, family / "reference")) == 0
    return file_hashes(family / "reference")


def test_sigkill_during_propagation_leaves_no_or_the_old_output(family, reference, tmp_path):
    out = tmp_path / "out"

    def killed_run() -> None:
        proc = subprocess.run([sys.executable, "-c", DIE_AFTER_SHARDS, *propagate_args(family, out)], cwd=REPO,
                              env={**ENV, "SHARDS": "2"}, capture_output=True, text=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]

    killed_run()                                  # a fresh output: nothing appears under its name
    assert not out.exists() and len(leftovers(tmp_path)) == 1      # the half-written temp folder
    shutil.copytree(family / "reference", out)    # a finished output being overwritten survives whole
    killed_run()
    assert file_hashes(out) == reference
    from lingraft.cli import main
    assert main(propagate_args(family, out)) == 0                # the rerun: identical to uninterrupted
    assert file_hashes(out) == reference
    assert json.loads((out / "manifest.json").read_text())["outputs"]["shard_sha256"] == \
        {k: v for k, v in reference.items() if k.startswith("model-")}
    assert leftovers(tmp_path) == []               # the rerun swept the killed runs' temp folders


def _limit_file_size(limit: int):
    def apply() -> None:     # in the child: writes past `limit` bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return apply


def test_full_disk_during_propagation_is_one_line_and_keeps_the_old_output(family, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(family / "reference", out)
    shard = max((family / "reference").glob("model*.safetensors"), key=lambda p: p.stat().st_size)
    proc = subprocess.run([sys.executable, "-m", "lingraft.cli", *propagate_args(family, out)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=_limit_file_size(shard.stat().st_size // 2))
    assert proc.returncode == 1, proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("lingraft propagate: error:") and "out of disk space" in message
    assert str(out) in message and "Traceback" not in proc.stderr
    assert file_hashes(out) == reference and leftovers(tmp_path) == []


# -- training: a full disk at a checkpoint ---------------------------------------------------
FILL_DISK_AFTER_FIRST_CHECKPOINT = """
import json, resource, signal, sys
import lingraft.train.loop
from lingraft.errors import LingraftError
from tests.integration.train_tiny import in_memory_source, tiny_config
model, run, overrides, limit = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
real = lingraft.train.loop.save_checkpoint
def save_then_fill(*args, **kwargs):
    path = real(*args, **kwargs)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return path
lingraft.train.loop.save_checkpoint = save_then_fill
try:
    lingraft.train.loop.train(tiny_config(model, run, **overrides), in_memory_source)
except LingraftError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


def test_full_disk_at_a_training_checkpoint_keeps_the_last_one_and_resumes_exactly(tmp_path):
    from tests.integration.train_tiny import in_memory_source, losses, make_tiny_llama, tiny_config
    from lingraft.train.trainer_checkpoint import latest_checkpoint
    from lingraft.train.loop import train
    model = make_tiny_llama(tmp_path / "m")
    overrides = {"max_steps": 4, "checkpoint.every_steps": 2}
    train(tiny_config(model, tmp_path / "ref", **overrides), in_memory_source)
    state = max((tmp_path / "ref" / "checkpoints").rglob("*.pt"), key=lambda p: p.stat().st_size)
    proc = subprocess.run([sys.executable, "-c", FILL_DISK_AFTER_FIRST_CHECKPOINT, str(model), str(tmp_path / "run"),
                           json.dumps(overrides), str(state.stat().st_size // 2)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "writing checkpoint step_00000004 failed" in proc.stderr and "step_00000002, intact" in proc.stderr
    last = latest_checkpoint(tmp_path / "run")
    assert last is not None and last.name == "step_00000002"
    assert leftovers(last.parent) == []                          # the failed step's space was given back
    train(tiny_config(model, tmp_path / "run", **overrides), in_memory_source)   # space freed: resume
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")


# -- the remembered-hash cache never hides a change -----------------------------------------
def test_remembered_hashes_follow_every_change(tmp_path, monkeypatch):
    import hashlib
    import time

    import lingraft.hashing as hashing
    monkeypatch.setattr(hashing, "CACHE_MIN_BYTES", 0)
    monkeypatch.setattr(hashing, "_remembered", {})
    monkeypatch.setenv("LINGRAFT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "shard.bin"
    path.write_bytes(b"a" * 4096)
    hashing.sha256_file(path)
    assert not (tmp_path / "cache").exists()          # just written: inside the racy window, not kept
    old = time.time() - 60
    os.utime(path, (old, old))
    assert hashing.sha256_file(path) == hashlib.sha256(b"a" * 4096).hexdigest()
    [entry] = (tmp_path / "cache" / "file_sha256").iterdir()
    entry.write_text("f" * 64)                         # a marker: is the entry what answers?
    hashing._remembered.clear()                        # a new process: the disk entry is used...
    assert hashing.sha256_file(path) == "f" * 64
    with open(path, "r+b") as fh:                      # ...until the file changes, even with size and mtime kept
        fh.write(b"b")
    os.utime(path, (old, old))
    assert hashing.sha256_file(path) == hashlib.sha256(b"b" + b"a" * 4095).hexdigest()


# -- corrupt and mismatched inputs -----------------------------------------------------------
def _flip_data_byte(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x40          # inside the tensor data: the layout still parses, only the checksum knows
    shard.write_bytes(bytes(data))


def _flip_header_byte(shard: Path) -> None:
    data = bytearray(shard.read_bytes())
    data[9] ^= 0x40           # the header's opening JSON quote
    shard.write_bytes(bytes(data))


def _wrong_tokenizer(folder: Path) -> None:
    """The adapted model given its base's tokenizer: right format, wrong vocabulary for its tables."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(folder.parent / "B" / name, folder / name)


@pytest.mark.parametrize("damage, expected", [
    (_flip_data_byte, "{shard}: corrupt shard (sha256 differs"),
    (_flip_header_byte, "{shard}: corrupt shard"),
    (lambda shard: shard.write_bytes(shard.read_bytes()[:-1000]), "{shard}: corrupt shard"),
    (lambda shard: _wrong_tokenizer(shard.parent), "{folder}/tokenizer.json: the tokenizer has 50258 tokens but "
                                                   "the model's input table 1024 rows"),
])
def test_corrupt_adapted_model_is_named(family, run_cli, tmp_path, damage, expected):
    adapted = family / f"damaged-{tmp_path.name}"
    shutil.copytree(family / "init", adapted)     # `lingraft init` recorded every shard's sha256
    shard = sorted(adapted.glob("model*.safetensors"))[-1]
    damage(shard)
    try:
        code, _, err = run_cli(*propagate_args(family, tmp_path / "out", adapted=adapted.name))
    finally:
        shutil.rmtree(adapted)
    assert code == 1 and expected.format(shard=shard, folder=adapted) in err, err
    assert not (tmp_path / "out").exists()


# -- no pickle, no remote code by default ----------------------------------------------------
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            yield node, owner, name, {k.arg: k.value for k in node.keywords}


def _true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_no_code_loads_pickles_or_enables_remote_code_by_itself():
    problems = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            where = lambda node, path=path: f"{path.relative_to(REPO)}:{node.lineno}"   # noqa: E731
            for node, owner, name, kw in _calls(tree):
                if owner in ("pickle", "dill", "cloudpickle") and name in ("load", "loads", "Unpickler"):
                    problems.append(f"{where(node)}: {owner}.{name}")
                elif owner == "torch" and name == "load" and not _true(kw.get("weights_only")):
                    problems.append(f"{where(node)}: torch.load without weights_only=True")
                elif owner in ("np", "numpy") and name == "load" and not (
                        isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False):
                    problems.append(f"{where(node)}: np.load without allow_pickle=False")
                elif owner == "yaml" and name in ("load", "unsafe_load", "full_load"):
                    problems.append(f"{where(node)}: yaml.{name} (use yaml.safe_load)")
                elif _true(kw.get("trust_remote_code")):
                    problems.append(f"{where(node)}: trust_remote_code=True hard-coded")
            for fn in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
                args = fn.args.args[len(fn.args.args) - len(fn.args.defaults):] + fn.args.kwonlyargs
                defaults = fn.args.defaults + fn.args.kw_defaults
                problems += [f"{where(fn)}: {fn.name}(trust_remote_code=True)" for a, d in zip(args, defaults)
                             if a.arg == "trust_remote_code" and _true(d)]
    assert problems == []


def test_every_command_keeps_remote_code_off_unless_asked():
    import dataclasses

    from lingraft.registry import all_commands
    seen = 0
    stack = [c.config_cls for c in all_commands()]
    while stack:
        cls = stack.pop()
        for f in dataclasses.fields(cls):
            if f.name == "trust_remote_code":
                seen += 1
                assert f.default is False, f"{cls.__name__}.trust_remote_code defaults to {f.default!r}"
            if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
                stack.append(f.default_factory)
    assert seen >= 5        # the flag exists where models or tokenizers are loaded


# -- path tricks -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["..", ".", "", "../x", "a/b", "/etc/passwd", "x\0y"])
def test_names_from_data_are_plain_components(name, tmp_path):
    with pytest.raises(LingraftError, match="must be a plain file name"):
        safe_join(tmp_path, name, "shard")
    assert safe_name("model-00001-of-00002.safetensors", "shard") == "model-00001-of-00002.safetensors"


def test_paths_must_stay_inside_their_base(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "escape").symlink_to(tmp_path)
    assert is_inside(tmp_path / "work" / "stage" / "x", tmp_path / "work")
    for outside in (tmp_path / "work" / ".." / "elsewhere", tmp_path / "work" / "escape" / "x", Path("/tmp")):
        with pytest.raises(LingraftError, match="is outside"):
            require_inside(outside, tmp_path / "work", "out")


def test_index_naming_a_shard_outside_the_folder_is_refused(family, tmp_path):
    from lingraft.hf_folder import INDEX_FILE, open_checkpoint
    folder = Path(shutil.copytree(family / "B", tmp_path / "B"))
    index = json.loads((folder / INDEX_FILE).read_text())
    victim = next(iter(index["weight_map"]))
    index["weight_map"][victim] = "../B/" + index["weight_map"][victim]
    (folder / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(LingraftError, match=r"model.safetensors.index.json: shard '\.\./B/"):
        open_checkpoint(folder)


@pytest.mark.parametrize("stage, error", [
    ({"name": "..", "command": "prep clean"}, "stages[0].name: a stage name"),
    ({"name": "clean", "command": "prep clean", "config": {"out": "{work_dir}/../outside"}}, "outside work_dir"),
])
def test_pipeline_writes_only_inside_its_work_dir(shared, tmp_path, stage, error):
    from lingraft.pipeline import plan
    from lingraft.pipeline_config import PipelineConfig
    stage.setdefault("config", {})["sources"] = [{"path": str(shared / "ru_text" / "ud_russian_sentences.jsonl")}]
    with pytest.raises(ConfigError, match=re.escape(error)):
        plan(build_config(PipelineConfig, overrides={"work_dir": str(tmp_path / "work"), "stages": [stage]}))
