"""Dedup: exact by normalized content, near by MinHash + LSH, global across files, first copy kept."""

import json

from planted import planted_pairs

from pretrain.data.clean import clean_corpus, read_cleaned
from pretrain.data.config import CleanConfig, NearDedupConfig
from pretrain.data.dedup import NearDuplicateIndex, jaccard, minhash_signature, shingles


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": text, "id": doc_id}) + "\n" for doc_id, text in docs))
    return str(path)


def near_cfg(inputs, **kwargs):
    return CleanConfig(inputs=inputs, min_chars=0, progress=False, near_dedup=NearDedupConfig(enabled=True, **kwargs))


def test_planted_near_duplicates_precision_and_recall(tmp_path):
    triples = planted_pairs(300, seed=7)
    # Bases in one file, variants in another: dedup is global, and the first file's copy is kept.
    bases = write_jsonl(tmp_path / "a.jsonl", [(f"base-{i}", b) for i, (b, _, _) in enumerate(triples)])
    variants = write_jsonl(tmp_path / "b.jsonl", [(f"variant-{i}", v) for i, (_, v, _) in enumerate(triples)])
    report = clean_corpus(near_cfg([variants, bases]), tmp_path / "out")
    kept = {doc["id"] for doc in read_cleaned(sorted((tmp_path / "out").glob("cleaned-*.jsonl")))}
    assert all(f"base-{i}" in kept for i in range(len(triples)))
    truth = {i for i, (_, _, j) in enumerate(triples) if j >= 0.8}
    exact = {i for i, (b, v, _) in enumerate(triples) if b == v}
    found = {i for i in range(len(triples)) if f"variant-{i}" not in kept}
    near = found - exact
    true_near = truth - exact
    assert len(true_near) > 50 and len(triples) - len(truth) > 50  # both sides are well represented
    precision = len(near & true_near) / len(near)
    recall = len(near & true_near) / len(true_near)
    assert precision >= 0.95 and recall >= 0.95, (precision, recall)
    assert report["dropped"]["duplicate"] == len(exact)
    assert report["dropped"]["near_duplicate"] == len(near)
    assert report["near_dedup"]["clusters"] == len(near)
    assert report["near_dedup"]["cluster_sizes"] == {"2": len(near)}


def test_clusters_keep_the_first_copy_and_count_members(tmp_path):
    (base, variant, _), = [t for t in planted_pairs(40, seed=3, gap=None) if 0.9 < t[2] < 1.0][:1]
    other = "completely different words " * 30
    docs = [("first", base), ("other", other), ("second", variant), ("third", base + " extra")]
    report = clean_corpus(near_cfg([write_jsonl(tmp_path / "d.jsonl", docs)]), tmp_path / "out")
    kept = [doc["id"] for doc in read_cleaned(sorted((tmp_path / "out").glob("cleaned-*.jsonl")))]
    assert kept == ["first", "other"]
    assert report["near_dedup"]["largest"] == [{"kept": "first", "size": 3}]
    assert report["near_dedup"]["cluster_sizes"] == {"3": 1}


def test_signature_agreement_estimates_jaccard():
    cfg = NearDedupConfig(num_perm=256, bands=32, rows=8)
    for base, variant, similarity in planted_pairs(20, seed=11, gap=None):
        a, b = minhash_signature(base, cfg), minhash_signature(variant, cfg)
        assert abs((a == b).mean() - similarity) < 0.12


def test_index_checks_candidates_against_the_threshold():
    cfg = NearDedupConfig(threshold=0.8)
    index = NearDuplicateIndex(cfg)
    triples = planted_pairs(60, seed=5, gap=None)
    low = [t for t in triples if t[2] < 0.7][0]  # an LSH candidate (P ~ 0.9) below the threshold
    assert index.match(minhash_signature(low[0], cfg), "a") is None
    assert index.match(minhash_signature(low[1], cfg), "b") is None


def test_shingles():
    assert shingles("One two, THREE four five six", 5) == ["one two three four five", "two three four five six"]
    assert shingles("too short", 5) == ["too short"]
    assert jaccard({1, 2}, {2, 3}) == 1 / 3


def test_exact_dedup_is_global_across_files(tmp_path):
    text = "the same document in two files " * 10
    first = write_jsonl(tmp_path / "1.jsonl", [("x", text)])
    second = write_jsonl(tmp_path / "2.jsonl", [("y", text + "\n\n")])
    report = clean_corpus(CleanConfig(inputs=[second, first], min_chars=0, progress=False), tmp_path / "out")
    assert report["kept"] == 1 and report["dropped"]["duplicate"] == 1
    assert [d["id"] for d in read_cleaned(sorted((tmp_path / "out").glob("cleaned-*.jsonl")))] == ["x"]
