"""Dedup: exact by normalized content, near by MinHash + LSH, global across files, first copy kept."""

import json

from planted import planted_pairs

from pretrain.data.clean import clean_corpus, read_cleaned
from pretrain.data.config import CleanConfig, NearDedupConfig
from pretrain.data.dedup import (
    NearDuplicateIndex,
    jaccard,
    minhash_signature,
    shingles,
    signature_and_shingles,
    sorted_jaccard,
)


def write_jsonl(path, docs):
    path.write_text("".join(json.dumps({"text": text, "id": doc_id}) + "\n" for doc_id, text in docs))
    return str(path)


def near_cfg(inputs, **kwargs):
    return CleanConfig(inputs=inputs, min_chars=0, progress=False, near_dedup=NearDedupConfig(enabled=True, **kwargs))


def test_planted_near_duplicates_precision_and_recall(tmp_path):
    # The full range of similarities, the threshold's neighbourhood included (no gap): candidates
    # are checked on the exact Jaccard of the shingle sets, so precision does not hinge on noise.
    triples = planted_pairs(300, seed=7, gap=None)
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
    assert sum(0.75 <= j < 0.85 for _, _, j in triples) > 30  # and the threshold's neighbourhood
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


def test_index_checks_candidates_on_exact_jaccard():
    cfg = NearDedupConfig(threshold=0.8)
    store = []
    index = NearDuplicateIndex(cfg, store.__getitem__)

    def match(text, doc_id):
        signature, hashes = signature_and_shingles(text, cfg)
        store.append(hashes)
        return index.match(signature, hashes, doc_id, len(store) - 1)

    triples = planted_pairs(200, seed=5, gap=None)
    # Just below and just above the threshold: where an estimate from 120 permutations errs often.
    below = [t for t in triples if 0.76 <= t[2] < 0.8][:5]
    above = [t for t in triples if 0.8 <= t[2] < 0.84][:5]
    assert len(below) == len(above) == 5
    for n, (base, variant, _) in enumerate(below + above):
        assert match(base, f"base-{n}") is None
        assert (match(variant, f"variant-{n}") is not None) == (n >= 5)


def test_sorted_jaccard_of_shingle_hashes():
    for base, variant, similarity in planted_pairs(10, seed=2, gap=None):
        cfg = NearDedupConfig()
        a, b = (signature_and_shingles(t, cfg)[1] for t in (base, variant))
        assert abs(sorted_jaccard(a, b) - similarity) < 1e-3  # 32-bit hashes: collisions are rare


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
