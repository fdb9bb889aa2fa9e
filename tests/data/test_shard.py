"""Shards and manifest: the arithmetic, checksums, readability by plain webdataset, the split."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from pretrain.data.clean import clean_corpus, read_cleaned
from pretrain.data.config import CleanConfig, ShardConfig
from pretrain.data.loader import ShardedSamples
from pretrain.data.manifest import load_manifest, verify_shards
from pretrain.data.shard import _Headers, _tar_header, write_shards
from pretrain.errors import ConfigError
from pretrain.io import sha256_file
from pretrain.tokenizers.tokenizer import Tokenizer

SEQ = 32


def test_manifest_arithmetic(dataset_dir, tokenizer_dir, cleaned_dir):
    manifest = load_manifest(dataset_dir)
    tokenizer = Tokenizer(tokenizer_dir)
    assert manifest["sequence_length"] == SEQ
    assert (manifest["tokenizer_sha256"], manifest["vocab_size"], manifest["eos_id"]) == (
        tokenizer.sha256,
        tokenizer.vocab_size,
        tokenizer.eos_id,
    )
    num_docs = sum(1 for _ in read_cleaned(sorted(cleaned_dir.glob("cleaned-*.jsonl"))))
    assert sum(entry["documents"] for entry in manifest["splits"].values()) == num_docs
    for split, entry in manifest["splits"].items():
        assert entry["samples"] > 0
        assert entry["tokens"] == entry["samples"] * (SEQ + 1)
        assert entry["samples"] == sum(shard["samples"] for shard in entry["shards"])
        assert entry["tokens"] == sum(shard["tokens"] for shard in entry["shards"])
        assert all(shard["samples"] == 400 for shard in entry["shards"][:-1])
        assert [shard["path"] for shard in entry["shards"]] == [
            f"{split}/shard-{i:06d}.tar" for i in range(len(entry["shards"]))
        ]
        for shard in entry["shards"]:
            assert sha256_file(dataset_dir / shard["path"]) == shard["sha256"]
    train, valid = manifest["splits"]["train"]["documents"], manifest["splits"]["valid"]["documents"]
    assert 0.02 < valid / (train + valid) < 0.3


def test_plain_webdataset_reads_what_the_loader_reads(dataset_dir):
    for split in ("train", "valid"):
        samples = ShardedSamples(dataset_dir, split)
        urls = sorted(str(p) for p in (dataset_dir / split).glob("shard-*.tar"))
        read = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode())
        assert len(read) == len(samples)
        for index, sample in enumerate(read):
            assert sample["__key__"] == f"{split}-{index:09d}"
            assert sample["tokens.npy"].dtype == np.int32
            np.testing.assert_array_equal(sample["tokens.npy"], samples[index])


def test_samples_are_documents_joined_by_eos(dataset_dir, tokenizer_dir, cleaned_dir):
    tokenizer = Tokenizer(tokenizer_dir)
    samples = ShardedSamples(dataset_dir, "train")
    stream = np.concatenate([samples[i] for i in range(len(samples))])
    first_doc = stream[: np.flatnonzero(stream == tokenizer.eos_id)[0]]
    texts = [doc["text"] for doc in read_cleaned(sorted(cleaned_dir.glob("cleaned-*.jsonl")))]
    assert tokenizer.decode(first_doc) in texts
    assert stream.min() >= 0 and stream.max() < tokenizer.vocab_size


def test_verify_shards_names_a_corrupt_shard(dataset_dir, tmp_path):
    copy = Path(shutil.copytree(dataset_dir, tmp_path / "dataset"))
    manifest = load_manifest(copy)
    verify_shards(copy, manifest)
    bad = copy / "train" / "shard-000001.tar"
    data = bytearray(bad.read_bytes())
    data[2000] ^= 1
    bad.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="data.dataset_dir: shard .*train/shard-000001.tar does not match"):
        verify_shards(copy, manifest)
    bad.unlink()
    with pytest.raises(ConfigError, match="shard-000001.tar is missing"):
        verify_shards(copy, manifest)


def test_manifest_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.dataset_dir: no manifest.json .*pretrain data shard"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(ConfigError, match="expected manifest format 1"):
        load_manifest(tmp_path)


def test_sharding_is_deterministic(dataset_dir, cleaned_dir, tokenizer_dir, shard_cfg, tmp_path):
    again = write_shards(shard_cfg, cleaned_dir, tokenizer_dir, tmp_path / "again")
    assert again == load_manifest(dataset_dir)


def test_worker_processes_write_the_same_bytes(cleaned_dir, tokenizer_dir, shard_cfg, dataset_dir, tmp_path):
    cfg = ShardConfig(**{**shard_cfg.__dict__, "workers": 2})
    assert write_shards(cfg, cleaned_dir, tokenizer_dir, tmp_path / "two") == load_manifest(dataset_dir)
    assert [p.name for p in (tmp_path / "two").iterdir() if p.name.startswith(".")] == []


def test_dataset_card_has_tokenizer_and_token_counts(dataset_dir, tokenizer_dir, cleaned_dir):
    card = json.loads((dataset_dir / "card.json").read_text())
    manifest = load_manifest(dataset_dir)
    tokenizer = Tokenizer(tokenizer_dir)
    assert card["tokenizer"]["sha256"] == tokenizer.sha256
    assert card["tokenizer"]["vocab_size"] == tokenizer.vocab_size
    for split in ("train", "valid"):
        assert card["tokens"][split]["tokens"] == manifest["splits"][split]["tokens"]
        assert card["tokens"][split]["documents"] == manifest["splits"][split]["documents"]
    # The cleaning half of the card comes along: sources, drops, the exact config.
    assert card["documents"] == json.loads((cleaned_dir / "card.json").read_text())["documents"]
    text = (dataset_dir / "card.md").read_text()
    assert tokenizer.sha256 in text and f"{manifest['splits']['train']['tokens']:,}" in text


def test_tiny_corpus_still_gets_a_valid_sample(tokenizer_dir, tmp_path):
    texts = [f"document {i}: " + "some words and code(x) " * (5 + i) for i in range(6)]
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    clean_corpus(CleanConfig(inputs=[str(raw)], min_chars=1), tmp_path / "cleaned")
    # No document is long enough alone: the writer holds out more until one sample fills.
    cfg = ShardConfig(sequence_length=140, samples_per_shard=4, valid_fraction=0.001)
    manifest = write_shards(cfg, tmp_path / "cleaned", tokenizer_dir, tmp_path / "dataset")
    assert manifest["splits"]["valid"]["samples"] >= 1
    assert manifest["splits"]["valid"]["documents"] >= 2
    assert manifest["splits"]["train"]["samples"] >= 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_no_valid_split_when_fraction_is_zero(cleaned_dir, tokenizer_dir, tmp_path):
    cfg = ShardConfig(sequence_length=SEQ, samples_per_shard=100_000, valid_fraction=0.0, workers=1)
    manifest = write_shards(cfg, cleaned_dir, tokenizer_dir, tmp_path / "dataset")
    assert manifest["splits"]["valid"] == {"samples": 0, "tokens": 0, "documents": 0, "shards": []}
    assert len(manifest["splits"]["train"]["shards"]) == 1


def test_corpus_too_small_for_the_sequence_length(tokenizer_dir, tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"text": "a short document"}) + "\n")
    clean_corpus(CleanConfig(inputs=[str(raw)], min_chars=1), tmp_path / "cleaned")
    with pytest.raises(ConfigError, match="data.shard.sequence_length"):
        write_shards(ShardConfig(sequence_length=1024), tmp_path / "cleaned", tokenizer_dir, tmp_path / "dataset")
    assert not (tmp_path / "dataset").exists()


def test_missing_inputs_name_the_stage_to_run(cleaned_dir, tmp_path):
    with pytest.raises(ConfigError, match="run `pretrain data clean` first"):
        write_shards(ShardConfig(), tmp_path, tmp_path / "tok", tmp_path / "dataset")
    with pytest.raises(ConfigError, match="run `pretrain tokenizer train` first"):
        write_shards(ShardConfig(), cleaned_dir, tmp_path / "tok", tmp_path / "dataset")


def test_npy_payload_loads_without_pickle(dataset_dir):
    samples = ShardedSamples(dataset_dir, "valid")
    sample = next(iter(wds.WebDataset(str(dataset_dir / "valid" / "shard-000000.tar"), shardshuffle=False)))
    array = np.load(io.BytesIO(sample["tokens.npy"]), allow_pickle=False)
    np.testing.assert_array_equal(array, samples[0])


def test_templated_tar_headers_equal_tarfile_headers():
    headers = _Headers("train-", ".tokens.npy", 1156)
    for index in (0, 1, 7, 123_456_789, 999_999_999, 10**9):
        assert headers(index) == _tar_header(f"train-{index:09d}.tokens.npy", 1156), index


def test_progress_line_counts_files_docs_and_bytes(cleaned_dir, tokenizer_dir, shard_cfg, tmp_path, capsys,
                                                   monkeypatch):
    from pretrain.data import progress

    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    write_shards(ShardConfig(**{**vars(shard_cfg), "progress": True}), cleaned_dir, tokenizer_dir, tmp_path / "d")
    lines = capsys.readouterr().err.strip().splitlines()
    files = len(list(cleaned_dir.glob("*.jsonl")))
    assert lines[-1].startswith(f"shard: {files}/{files} files, ") and " docs/s, " in lines[-1]
    assert " MB/s, ETA 00:00:00" in lines[-1]
    assert len(lines) > files  # one line per finished chunk of each file, and the closing one
