"""Cleaning throughput and near-dedup accuracy: prints a table.

    python benchmarks/data_clean.py [--docs 20000] [--memory-docs 20000 80000]

Input: planted random-word documents (about 1 kB each) with near-duplicates at known Jaccard
similarity. Speeds are MB of input per CPU-second of this process (per core), so a busy machine
does not skew them. Near-dedup precision and recall are measured against exact Jaccard >= 0.8.
Memory: peak RSS of a fresh process running clean_corpus (with MinHash) at each --memory-docs
size; the growth between sizes per kept document is what the dedup index costs per document.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
from planted import planted_pairs  # noqa: E402

from pretrain.data.clean import clean_corpus, read_cleaned  # noqa: E402
from pretrain.data.config import CleanConfig  # noqa: E402


def write_input(folder: Path, docs: int, name: str = "input.jsonl") -> tuple[Path, list]:
    triples = planted_pairs(docs // 2, seed=1, words=180, gap=None)
    path = folder / name
    with open(path, "w") as f:
        for i, (base, _, _) in enumerate(triples):
            f.write(json.dumps({"text": base, "id": f"base-{i}"}) + "\n")
        for i, (_, variant, _) in enumerate(triples):
            f.write(json.dumps({"text": variant, "id": f"variant-{i}"}) + "\n")
    return path, triples


def run_ours(path: Path, out: Path, groups: dict) -> tuple[float, dict]:
    cfg = CleanConfig(inputs=[str(path)], min_chars=0, progress=False)
    for group, enabled in groups.items():
        getattr(cfg, group).enabled = enabled
    start = time.process_time()
    report = clean_corpus(cfg, out)
    return time.process_time() - start, report


def accuracy(out: Path, triples: list) -> dict:
    """Precision and recall of near-duplicate drops, overall and per similarity bin."""
    kept = {d["id"] for d in read_cleaned(sorted(out.glob("cleaned-*.jsonl")))}
    rows = [(j, f"variant-{i}" not in kept) for i, (b, v, j) in enumerate(triples) if b != v]
    true_pos = sum(1 for j, dropped in rows if dropped and j >= 0.8)
    predicted = sum(1 for _, dropped in rows if dropped)
    actual = sum(1 for j, _ in rows if j >= 0.8)
    bins = {}
    for low, high in [(0, 0.7), (0.7, 0.75), (0.75, 0.78), (0.78, 0.8), (0.8, 0.82), (0.82, 0.85), (0.85, 0.9),
                      (0.9, 1.01)]:
        inside = [dropped for j, dropped in rows if low <= j < high]
        bins[f"[{low}, {min(high, 1.0)})"] = (sum(inside), len(inside))
    return {"precision": true_pos / max(predicted, 1), "recall": true_pos / max(actual, 1), "bins": bins}


# A fresh interpreter per size: peak RSS then belongs to that run alone.
_RSS_RUN = """
import json, resource, sys
from pretrain.data.clean import clean_corpus
from pretrain.data.config import CleanConfig, NearDedupConfig
cfg = CleanConfig(inputs=[sys.argv[1]], min_chars=0, progress=False, near_dedup=NearDedupConfig(enabled=True))
report = clean_corpus(cfg, sys.argv[2])
print(json.dumps({"kept": report["kept"], "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def peak_rss(folder: Path, docs: int) -> dict:
    path, _ = write_input(folder, docs, name=f"memory-{docs}.jsonl")
    result = subprocess.run([sys.executable, "-c", _RSS_RUN, str(path), str(folder / f"memory-out-{docs}")],
                            check=True, capture_output=True, text=True)
    path.unlink()
    return {"docs": docs, **json.loads(result.stdout.splitlines()[-1])}


def memory_table(folder: Path, sizes: list[int]) -> None:
    runs = [peak_rss(folder, docs) for docs in sizes]
    print("\n| documents | kept | peak RSS MB |\n|---:|---:|---:|")
    for run in runs:
        print(f"| {run['docs']} | {run['kept']} | {run['rss'] / 1e6:.0f} |")
    first, last = runs[0], runs[-1]
    if last["kept"] > first["kept"]:
        per_doc = (last["rss"] - first["rss"]) / (last["kept"] - first["kept"])
        print(f"growth per kept document (dedup index): {per_doc:.0f} bytes")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--memory-docs", type=int, nargs="*", default=[20_000, 80_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path, triples = write_input(tmp, args.docs)
        megabytes = path.stat().st_size / 1e6
        print(f"input: {args.docs} documents, {megabytes:.1f} MB\n")
        print("| pipeline | CPU s | MB/s per core | kept |\n|---|---:|---:|---:|")
        # Random-word text is not English prose or code: the web and code profiles would drop all of
        # it, so the rows add the groups that keep it (repetition, PII) one at a time.
        rows = [("normalize, length, exact dedup", {}),
                ("+ MinHash near dedup", {"near_dedup": True}),
                ("+ PII scrubbing", {"near_dedup": True, "pii": True}),
                ("+ Gopher repetition", {"near_dedup": True, "pii": True, "repetition": True})]
        for n, (name, groups) in enumerate(rows):
            seconds, report = run_ours(path, tmp / f"out-{n}", groups)
            print(f"| {name} | {seconds:.2f} | {megabytes / seconds:.1f} | {report['kept']} |")
        result = accuracy(tmp / "out-1", triples)
        print(f"\nnear dedup at threshold 0.8: precision {result['precision']:.3f}, recall {result['recall']:.3f}")
        print("dropped / variants per exact-Jaccard bin: " +
              ", ".join(f"{k} {d}/{n}" for k, (d, n) in result["bins"].items()))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process {peak:.0f} MB")
        if args.memory_docs:
            memory_table(tmp, args.memory_docs)


if __name__ == "__main__":
    main()
