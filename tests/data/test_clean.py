"""Cleaning: normalization, filters, dedup, the report's arithmetic, errors and atomic output."""

import gzip
import json
import unicodedata

import pytest

from pretrain.data.clean import clean_corpus, normalize_text, read_cleaned
from pretrain.data.config import CleanConfig
from pretrain.errors import ConfigError

BODY = "The quick brown fox jumps over the lazy dog. "


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def cleaned_texts(out_dir):
    return [doc["text"] for doc in read_cleaned(sorted(out_dir.glob("cleaned-*.jsonl")))]


@pytest.fixture
def planted(tmp_path):
    """A jsonl file and a folder with known numbers of short, long, duplicate and bad documents."""
    cafe = "café " * 10
    texts = [
        BODY * 2,  # kept
        BODY * 2 + "  \r\n",  # duplicate once trailing whitespace is normalized
        "too short",  # too_short
        "x" * 1000,  # too_long
        unicodedata.normalize("NFC", cafe),  # kept
        unicodedata.normalize("NFD", cafe),  # duplicate after NFC
        "def f():\n    return 1\n" * 3,  # kept, indentation and all
    ]
    jsonl = write_jsonl(tmp_path / "docs.jsonl", texts)
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(BODY * 3, encoding="utf-8")  # kept
    (folder / "sub" / "b.txt").write_text(BODY * 4, encoding="utf-8")  # kept
    (folder / "bad.txt").write_bytes(b"\xff\xfe not utf-8 " * 10)  # not_utf8
    (folder / "skip.md").write_text(BODY * 5, encoding="utf-8")  # not matched by the glob
    return [str(jsonl), str(folder)]


def test_report_counts_every_document(planted, tmp_path):
    report = clean_corpus(CleanConfig(inputs=planted, min_chars=20, max_chars=500), tmp_path / "out")
    assert report["dropped"] == {"too_short": 1, "too_long": 1, "duplicate": 2, "not_utf8": 1}
    assert report["kept"] == 5
    assert report["input_documents"] == 10 == report["kept"] + sum(report["dropped"].values())
    assert [entry["documents"] for entry in report["inputs"]] == [7, 3]
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    texts = cleaned_texts(tmp_path / "out")
    assert len(texts) == 5 and len(set(texts)) == 5
    assert report["bytes_out"] == sum(len(t.encode()) for t in texts)
    assert "def f():\n    return 1\ndef f():\n    return 1\ndef f():\n    return 1" in texts


def test_ids_name_source_and_line_and_shards_hold_docs_per_shard(planted, tmp_path):
    clean_corpus(CleanConfig(inputs=planted, min_chars=20, max_chars=500, docs_per_shard=2), tmp_path / "out")
    files = sorted((tmp_path / "out").glob("cleaned-*.jsonl"))
    assert [f.name for f in files] == ["cleaned-00000.jsonl", "cleaned-00001.jsonl", "cleaned-00002.jsonl"]
    ids = [doc["id"] for doc in read_cleaned(files)]
    assert ids[0] == f"{planted[0]}:1"
    assert ids[-2:] == [f"{planted[1]}:a.txt", f"{planted[1]}:sub/b.txt"]


def test_normalize_text():
    raw = "\n\n  indented  \r\nline\t \r\n\r\n\r\n\r\n\r\ncafe\u0301  \n\n"
    assert normalize_text(raw) == "  indented\nline\n\n\ncaf\u00e9"


def test_normalize_keeps_two_blank_lines_and_collapses_more():
    assert normalize_text("a\n\n\nb") == "a\n\n\nb"
    assert normalize_text("a\n\n\n\n\n\nb") == "a\n\n\nb"
    assert normalize_text("\ufeffa\rb") == "a\nb"


def test_gzipped_jsonl_is_read(tmp_path):
    path = tmp_path / "docs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"body": BODY}) + "\n\n" + json.dumps({"body": BODY * 2}) + "\n")
    report = clean_corpus(CleanConfig(inputs=[str(path)], text_key="body", min_chars=1), tmp_path / "out")
    assert report["kept"] == 2
    assert cleaned_texts(tmp_path / "out") == [BODY.strip(), (BODY * 2).strip()]


def test_output_is_deterministic(planted, tmp_path):
    cfg = CleanConfig(inputs=planted, min_chars=20, max_chars=500, docs_per_shard=2)
    clean_corpus(cfg, tmp_path / "one")
    clean_corpus(CleanConfig(inputs=planted[::-1], min_chars=20, max_chars=500, docs_per_shard=2), tmp_path / "two")
    for first in (tmp_path / "one").iterdir():
        if first.name.startswith("card"):  # the card records the config as given, inputs in that order
            continue
        assert first.read_bytes() == (tmp_path / "two" / first.name).read_bytes()


def test_a_file_that_is_mostly_not_json_is_one_error_naming_it(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [BODY, BODY * 2])
    with open(path, "a") as f:
        f.write("{not json\n")
    with pytest.raises(ConfigError) as error:
        clean_corpus(CleanConfig(inputs=[str(path)]), tmp_path / "out")
    assert error.value.key == "data.clean.inputs"
    assert f"1 of 3 lines are not valid JSON (first at {path}:3)" in str(error.value)


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(ConfigError, match="no such file or folder: .*nowhere"):
        clean_corpus(CleanConfig(inputs=[str(tmp_path / "nowhere")]), tmp_path / "out")
    with pytest.raises(ConfigError, match="data.clean.inputs: no inputs"):
        clean_corpus(CleanConfig(inputs=[]), tmp_path / "out")
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(ConfigError, match="expected a .jsonl"):
        clean_corpus(CleanConfig(inputs=[str(tmp_path / "notes.csv")]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_run_leaves_previous_output_intact(planted, tmp_path):
    out = tmp_path / "out"
    clean_corpus(CleanConfig(inputs=planted, min_chars=20, max_chars=500, docs_per_shard=2), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # A different corpus that fails on its last line, after several shards were written.
    broken = tmp_path / "broken.jsonl"
    broken.write_text("".join(json.dumps({"body": BODY * n}) + "\n" for n in range(1, 8)))
    with pytest.raises(ConfigError, match="broken.jsonl: no line has the field 'text'"):
        clean_corpus(CleanConfig(inputs=[str(broken)], min_chars=20, docs_per_shard=2), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # The failed run's finished tasks stay in the work folder for a re-run; no partial output does.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".out.work"]


def test_rerun_replaces_output(planted, tmp_path):
    out = tmp_path / "out"
    clean_corpus(CleanConfig(inputs=planted, min_chars=20, max_chars=500, docs_per_shard=1), out)
    clean_corpus(CleanConfig(inputs=planted[:1], min_chars=20, max_chars=500, docs_per_shard=10), out)
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "card.md", "cleaned-00000.jsonl", "report.json"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
