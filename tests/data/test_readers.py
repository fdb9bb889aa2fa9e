"""Readers and bad input: every format, globs, id fields, and each kind of bad document counted."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from pretrain.data.clean import clean_corpus, read_cleaned
from pretrain.data.config import CleanConfig
from pretrain.errors import ConfigError

BODY = "The quick brown fox jumps over the lazy dog. "
RECORDS = [{"text": BODY * (n + 1), "uid": f"doc-{n}"} for n in range(5)]


def lines(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def clean(tmp_path, inputs, **kwargs):
    cfg = CleanConfig(inputs=[str(p) for p in inputs], min_chars=20, progress=False, **kwargs)
    report = clean_corpus(cfg, tmp_path / "out")
    assert report["input_documents"] == report["kept"] + sum(report["dropped"].values())
    return report, list(read_cleaned(sorted((tmp_path / "out").glob("cleaned-*.jsonl"))))


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst", ".parquet"])
def test_each_format_reads_text_and_id_fields(tmp_path, suffix):
    path = tmp_path / f"docs{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(RECORDS), path)
    elif suffix == ".jsonl.gz":
        path.write_bytes(gzip.compress(lines(RECORDS)))
    elif suffix == ".jsonl.zst":
        path.write_bytes(zstandard.ZstdCompressor().compress(lines(RECORDS)))
    else:
        path.write_bytes(lines(RECORDS))
    report, docs = clean(tmp_path, [path], id_key="uid")
    assert report["kept"] == 5
    assert [d["id"] for d in docs] == [r["uid"] for r in RECORDS]
    assert [d["text"] for d in docs] == [r["text"].strip() for r in RECORDS]


def test_globs_expand_to_sorted_files(tmp_path):
    for n in range(3):
        (tmp_path / f"part-{n}.jsonl").write_bytes(lines(RECORDS[n : n + 1]))
    report, docs = clean(tmp_path, [tmp_path / "part-*.jsonl"])
    assert [entry["path"] for entry in report["inputs"]] == [str(tmp_path / f"part-{n}.jsonl") for n in range(3)]
    assert [d["id"] for d in docs] == [f"{tmp_path}/part-{n}.jsonl:1" for n in range(3)]
    with pytest.raises(ConfigError, match="no file matches"):
        clean(tmp_path, [tmp_path / "nothing-*.jsonl"])


def test_bad_documents_are_counted_and_skipped(tmp_path):
    good = [json.dumps({"text": BODY * (n + 1)}).encode() for n in range(10)]
    bad = [
        b"{not json",  # bad_json
        b'{"text": "\xff\xfe broken utf-8 ' + b"x" * 50 + b'"}',  # not_utf8
        json.dumps({"body": BODY}).encode(),  # missing_text
        json.dumps({"text": None}).encode(),  # missing_text
        json.dumps({"text": "x" * 5000}).encode(),  # too_large (max_doc_bytes=4096)
        json.dumps({"text": "\x00\x01\x02\x03binary" * 20}).encode(),  # binary
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(good[:5] + bad + good[5:]) + b"\n")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    report, docs = clean(tmp_path, [path, tmp_path / "empty.jsonl"], max_doc_bytes=4096, max_bad_line_fraction=0.5)
    dropped = {k: v for k, v in report["dropped"].items() if v}
    assert dropped == {"bad_json": 1, "not_utf8": 1, "missing_text": 2, "too_large": 1, "binary": 1}
    assert report["kept"] == 10 and report["input_documents"] == 16
    assert report["empty_files"] == [str(tmp_path / "empty.jsonl")]


def test_a_huge_single_document_is_skipped_without_reading_it_whole(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(lines(RECORDS[:1]))
        f.write(b'{"text": "' + b"a" * (100 << 20) + b'"}\n')  # a single 100 MB document
        f.write(lines(RECORDS[1:2]))
    report, docs = clean(tmp_path, [path])
    assert report["dropped"]["too_large"] == 1 and report["kept"] == 2
    assert report["dropped_bytes"]["too_large"] > 100 << 20


def test_big_text_file_and_binary_file_in_a_folder(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "ok.txt").write_text(BODY * 3)
    (folder / "big.txt").write_bytes(b"a" * 5000)
    (folder / "garbage.txt").write_bytes(bytes(range(256)) * 4)
    (folder / "controls.txt").write_bytes(b"\x00\x01\x02 some text " * 20)
    report, docs = clean(tmp_path, [folder], max_doc_bytes=4096)
    assert {k: v for k, v in report["dropped"].items() if v} == {"too_large": 1, "not_utf8": 1, "binary": 1}
    assert [d["id"] for d in docs] == [f"{folder}:ok.txt"]


def test_text_field_absent_from_a_whole_file_is_one_error(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(lines([{"content": BODY}] * 3))
    with pytest.raises(ConfigError) as error:
        clean(tmp_path, [path])
    assert error.value.key == "data.clean.text_key"
    assert str(error.value) == f"data.clean.text_key: {path}: no line has the field 'text'"
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist([{"content": BODY}]), parquet)
    with pytest.raises(ConfigError, match=f"{parquet}: no column 'text'"):
        clean(tmp_path, [parquet])


def test_truncated_gzip_counts_what_was_read_and_names_the_file(tmp_path):
    data = gzip.compress(lines(RECORDS * 200))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    (tmp_path / "fine.jsonl").write_bytes(lines(RECORDS[:1]))
    report, _ = clean(tmp_path, [path, tmp_path / "fine.jsonl"])
    assert [item["path"] for item in report["unreadable_files"]] == [str(path)]
    assert report["inputs"][0]["documents"] > 0 and report["inputs"][1]["documents"] == 1
