"""Propagation I/O: `lingraft propagate` on a synthetic multi-GB checkpoint vs a plain copy of its shards.

Builds B (a Llama-shaped model with the Mistral-7B tokenizer), A (B with the darulm-32k
vocabulary and a mean-of-pieces token map) and I (B's sibling with a chat template), each
a few GB in several safetensors shards, with the embedding tables in their own shards.
Layer shards are copies of one set of random files (their content never matters to
propagation, which copies them byte for byte), but each model has its own files, as real
siblings do, so every input byte is hashed for the manifest.

Then, in one process tree and with the same page cache: copy I's shards with shutil
(kernel copy_file_range), run `lingraft propagate` in a child process, and compare: swap with
an empty hash cache (every input hashed), swap again (input hashes remembered from the first
run, as in a re-run or a pipeline), then conversion; finally a swap run SIGKILLed halfway
through writing, and its rerun (no output in between, identical shards after); and the
writer alone, in this process, best of a few. Peak RSS is the child's; its budget is the
largest shard plus every table the run holds (B's, A's, I's and the output's) plus 20%.
Everything is deleted afterwards.

    .venv/bin/python bench/propagate_io.py [--hidden 2048] [--layers 20] [--layers-per-shard 5]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LINGRAFT_SHARED", REPO.parent / "shared" / "data"))
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def layer_tensors(i: int, hidden: int, inter: int) -> dict[str, tuple[int, ...]]:
    p = f"model.layers.{i}."
    return {p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (hidden, hidden),
            p + "self_attn.v_proj.weight": (hidden, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,)}


def save_shards(folder: Path, shards: list[dict[str, torch.Tensor] | Path]) -> None:
    """Write (or copy, for a Path) each shard and the index."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        if isinstance(shard, Path):
            shutil.copyfile(shard, folder / name)
            with safe_open(str(shard), framework="pt") as fh:
                keys = list(fh.keys())
        else:
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            keys = list(shard)
        weight_map.update({key: name for key in keys})
        total += (folder / name).stat().st_size
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                       "weight_map": weight_map}))


def build_family(root: Path, hidden: int, layers: int, per_shard: int) -> dict[str, Path]:
    from transformers import LlamaConfig

    from lingraft.vocabulary.embedding_init import padded_size
    from lingraft.vocabulary.loading import load_tokenizer
    from lingraft.vocabulary.token_matching import adopt_special_tokens, build_mean_map
    inter = hidden * 11 // 4
    base_tok = load_tokenizer(SHARED / "tokenizers" / "mistral" / "mistral7b_v0.1_tokenizer.model")
    new_tok = load_tokenizer(SHARED / "tokenizers" / "ruadapt_darulm_32k_bpe")
    adopt_special_tokens(new_tok, base_tok)
    layer_files = []
    for start in range(0, layers, per_shard):
        tensors = {n: torch.empty(s, dtype=torch.bfloat16).normal_(std=0.02)
                   for i in range(start, min(start + per_shard, layers)) for n, s in layer_tensors(i, hidden, inter).items()}
        save_shards(root / "layers" / str(start), [tensors])
        layer_files.append(root / "layers" / str(start) / "model-00001-of-00001.safetensors")
    folders = {}
    g = torch.Generator().manual_seed(0)
    base_rows = len(base_tok)
    for name, rows, tok in (("B", base_rows, base_tok), ("I", base_rows, base_tok),
                            ("A", padded_size(len(new_tok), 64), new_tok)):
        tables = {n: torch.randn(rows, hidden, generator=g).to(torch.bfloat16) for n in (EMBED, HEAD)}
        save_shards(root / name, [{EMBED: tables[EMBED]}, *layer_files,
                                  {HEAD: tables[HEAD], "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)}])
        LlamaConfig(vocab_size=rows, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                    num_attention_heads=hidden // 128, num_key_value_heads=hidden // 128, tie_word_embeddings=False,
                    bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16").save_pretrained(str(root / name))
        tok.save_pretrained(str(root / name))
        folders[name] = root / name
    build_mean_map(base_tok, new_tok).save(root / "A" / "token_map.safetensors")
    return folders


def checkpoint_bytes(folder: Path) -> list[int]:
    return [p.stat().st_size for p in sorted(folder.glob("*.safetensors")) if p.name != "token_map.safetensors"]


def copy_shards(src: Path, dst: Path) -> float:
    dst.mkdir()
    os.sync()           # every contender starts with no dirty pages of an earlier one to write back
    start = time.perf_counter()
    for shard in sorted(src.glob("model-*.safetensors")):
        shutil.copyfile(shard, dst / shard.name)
    return time.perf_counter() - start


def propagate_cmd(method: str, folders: dict[str, Path], root: Path, max_shard_gb: float) -> list[str]:
    return [sys.executable, "-m", "lingraft.cli", "propagate", "--base", str(folders["B"]),
            "--adapted", str(folders["A"]), "--instruct", str(folders["I"]), "--method", method,
            "--out", str(root / "out"), "--max-shard-gb", str(max_shard_gb)]


def child_env(root: Path) -> dict[str, str]:
    """The children share a hash cache of their own: the first run starts cold, whatever ran before."""
    return {**os.environ, "LINGRAFT_NO_PROGRESS": "1", "LINGRAFT_CACHE": str(root / "cache")}


def run_method(method: str, folders: dict[str, Path], root: Path, nbytes: int, copy_s: float,
               held_without_output: int, max_shard_gb: float) -> dict:
    """One `lingraft propagate` in a child process; its timings, fit and peak RSS against the budget."""
    os.sync()
    start = time.perf_counter()
    subprocess.run(propagate_cmd(method, folders, root, max_shard_gb), check=True, cwd=REPO, env=child_env(root))
    total_s = time.perf_counter() - start
    m = json.loads((root / "out" / "manifest.json").read_text())["metrics"]
    budget = 1.2 * (held_without_output + m["table_bytes"])
    # What streaming costs: everything but hashing the inputs for the manifest (provenance, the
    # same in every stage) and the least-squares fit (compute, independent of checkpoint size).
    fit_s = sum(f["seconds"] for f in m["fits"].values())
    stream_s = total_s - m["hash_inputs_s"] - fit_s
    return {"total_s": round(total_s, 2), "ratio_vs_copy": round(copy_s / total_s, 3),
            "stream_s": round(stream_s, 2), "stream_ratio_vs_copy": round(copy_s / stream_s, 3),
            "write_gb_s": round(nbytes / 1e9 / m["write_s"], 3),
            "write_ratio_vs_copy": round(copy_s / m["write_s"], 3),
            "phases_s": {k: m[k] for k in ("prepare_s", "tables_s", "hash_inputs_s", "write_s")},
            "fit_residuals": {k: round(f["relative_residual"], 5) for k, f in m["fits"].items()},
            "peak_rss_mb": round(m["peak_rss_bytes"] / 2**20, 1), "rss_budget_mb": round(budget / 2**20, 1),
            "rss_within_budget": m["peak_rss_bytes"] < budget}


def writer_alone(folder: Path, root: Path, reps: int) -> dict:
    """`write_checkpoint` in this process (new tables for embedding and head, layer shards kept), best
    of `reps`, against a copy of the shards: with I's shard hashes unknown (the writer hashes every
    byte it writes) and known (as in `lingraft propagate`, which hashes I for its manifest first)."""
    import lingraft.hashing as hashing
    from lingraft.hf_folder import open_checkpoint, read_tensors
    from lingraft.hf_folder_writer import write_checkpoint
    ckpt = open_checkpoint(folder, verify_checksums=False)
    tables = {n: t.clone() for n, t in read_tensors(ckpt, [EMBED, HEAD]).items()}
    times: dict[str, list[float]] = {"copy_s": [], "inputs_unhashed_s": [], "inputs_hashed_s": []}
    for _ in range(reps):
        times["copy_s"].append(copy_shards(folder, root / "w"))
        shutil.rmtree(root / "w")
        for label in ("inputs_unhashed_s", "inputs_hashed_s"):
            hashing._remembered.clear()
            os.environ["LINGRAFT_HASH_CACHE"] = "0" if label == "inputs_unhashed_s" else "1"
            if label == "inputs_hashed_s":
                hashing.sha256_files(list(ckpt.shards))
            (root / "w").mkdir()
            os.sync()
            start = time.perf_counter()
            write_checkpoint(ckpt, root / "w", tables, max(checkpoint_bytes(folder)))
            times[label].append(time.perf_counter() - start)
            shutil.rmtree(root / "w")
    best = {k: min(v) for k, v in times.items()}
    ratios = {k.replace("_s", "_ratio_vs_copy"): round(best["copy_s"] / v, 3) for k, v in best.items()}
    return {**{k: round(v, 2) for k, v in best.items()}, **{k: v for k, v in ratios.items() if k != "copy_ratio_vs_copy"}}


def kill_and_rerun(folders: dict[str, Path], root: Path, max_shard_gb: float, expected: dict[str, str],
                   after_shards: int = 3) -> dict:
    """SIGKILL a swap run once `after_shards` output shards exist in its temp folder, then rerun it:
    the output must be absent after the kill and identical (shard sha256s) after the rerun."""
    proc = subprocess.Popen(propagate_cmd("swap", folders, root, max_shard_gb), cwd=REPO, env=child_env(root),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and max((len(list(tmp.glob("model-*.safetensors")))
                                       for tmp in root.glob(".tmp-out.*")), default=0) < after_shards:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_mid_write = proc.returncode == -signal.SIGKILL and not (root / "out").exists()
    start = time.perf_counter()
    subprocess.run(propagate_cmd("swap", folders, root, max_shard_gb), check=True, cwd=REPO, env=child_env(root),
                   stdout=subprocess.DEVNULL)
    rerun_s = time.perf_counter() - start
    got = json.loads((root / "out" / "manifest.json").read_text())["outputs"]["shard_sha256"]
    return {"killed_mid_write_no_output": killed_mid_write, "rerun_s": round(rerun_s, 2),
            "identical_shards": got == expected, "temp_left": sorted(p.name for p in root.glob(".tmp-*"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--layers-per-shard", type=int, default=5)
    parser.add_argument("--workdir", default=None, help="where the GBs go (default: a temp folder)")
    parser.add_argument("--writer-reps", type=int, default=3, help="repeats of the writer-alone timing")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="propagate-io-", dir=args.workdir))
    try:
        start = time.perf_counter()
        folders = build_family(root, args.hidden, args.layers, args.layers_per_shard)
        print(f"built B, A, I in {time.perf_counter() - start:.0f} s under {root}", file=sys.stderr)
        sizes = checkpoint_bytes(folders["I"])
        for folder in folders.values():       # the same warm page cache for both contenders
            for shard in folder.glob("*.safetensors"):
                with open(shard, "rb") as fh:
                    while fh.read(64 << 20):
                        pass
        copy_s = copy_shards(folders["I"], root / "copy")
        shutil.rmtree(root / "copy")
        tables_in = sum(sum(checkpoint_bytes(f)[k] for k in (0, -1)) for f in folders.values())
        result = {"bench": "propagate_io", "checkpoint_gb": round(sum(sizes) / 1e9, 3), "shards": len(sizes),
                  "largest_shard_mb": round(max(sizes) / 2**20, 1), "hidden": args.hidden,
                  "copy_s": round(copy_s, 2), "copy_gb_s": round(sum(sizes) / 1e9 / copy_s, 3)}
        for label, method in (("swap_cold", "swap"), ("swap_warm", "swap"), ("conversion_warm", "conversion")):
            result[label] = run_method(method, folders, root, sum(sizes), copy_s, max(sizes) + tables_in,
                                       max(sizes) / 1e9)
            if label == "swap_warm":
                expected = json.loads((root / "out" / "manifest.json").read_text())["outputs"]["shard_sha256"]
            shutil.rmtree(root / "out")
        result["sigkill_swap"] = kill_and_rerun(folders, root, max(sizes) / 1e9, expected)
        os.environ.update(LINGRAFT_CACHE=str(root / "cache"), LINGRAFT_NO_PROGRESS="1")
        result["writer_alone"] = writer_alone(folders["I"], root, args.writer_reps)
        print(json.dumps(result))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
