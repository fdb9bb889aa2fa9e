"""The same cleaning steps in `pretrain` and in datatrove, side by side: prints MB/s per core.

    python benchmarks/data_vs_datatrove.py [--docs 20000] [--datatrove-python /tmp/dtvenv/bin/python]

Steps in both: read jsonl → exact dedup → MinHash near dedup (5-word shingles, 20 bands x 6 rows,
threshold 0.8 for ours; datatrove has no threshold, a shared bucket is a duplicate) → write jsonl.
Input: the planted random-word corpus of benchmarks/data_clean.py (about 1.3 kB per document, with
exact and near duplicates). datatrove runs in its own virtual environment (never in this project's:
it would pull its own dependency versions) as a subprocess, one task, one worker, in-process; its
time is the CPU time of its pipeline runs (imports excluded), ours of clean_corpus.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_clean import write_input  # noqa: E402

from pretrain.data.clean import clean_corpus  # noqa: E402
from pretrain.data.config import CleanConfig, NearDedupConfig  # noqa: E402

# Run by datatrove's interpreter: argv = input folder, work folder. Prints {"cpu_s", "kept"}.
DATATROVE = """
import json, sys, time
from pathlib import Path
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.pipeline.dedup.exact_dedup import (ExactDedupConfig, ExactDedupFilter, ExactDedupSignature,
                                                  ExactFindDedups)
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)

def text(doc) -> str:
    return doc.text


source, root = sys.argv[1], sys.argv[2]


def work(name: str) -> str:  # datatrove wants str paths
    return f"{root}/{name}"


exact = ExactDedupConfig(content_getter=text)
minhash = MinhashConfig(n_grams=5, num_buckets=20, hashes_per_bucket=6)
stages = [
    [JsonlReader(source), ExactDedupSignature(work("exact_sigs"), exact)],
    [ExactFindDedups(work("exact_sigs"), work("exact_dups"), exact)],
    [JsonlReader(source), ExactDedupFilter(work("exact_dups"), exact), JsonlWriter(work("mid"))],
    [JsonlReader(work("mid")), MinhashDedupSignature(work("mh_sigs"), minhash)],
    [MinhashDedupBuckets(work("mh_sigs"), work("mh_buckets"), config=minhash)],
    [MinhashDedupCluster(work("mh_buckets"), work("mh_ids"), config=minhash)],
    [JsonlReader(work("mid")), MinhashDedupFilter(work("mh_ids")), JsonlWriter(work("out"))],
]
start = time.process_time()
for n, pipeline in enumerate(stages):
    # The bucket stage runs one task per band (datatrove requires it), still one worker.
    tasks = minhash.num_buckets if n == 4 else 1
    LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=work(f"logs-{n}")).run()
cpu = time.process_time() - start
kept = sum(1 for path in Path(work("out")).glob("*.jsonl*") for _ in __import__("gzip").open(path, "rt"))
print(json.dumps({"cpu_s": cpu, "kept": kept}))
"""


def run_ours(path: Path, out: Path) -> dict:
    cfg = CleanConfig(inputs=[str(path)], min_chars=0, progress=False, near_dedup=NearDedupConfig(enabled=True))
    start = time.process_time()
    report = clean_corpus(cfg, out)
    return {"cpu_s": time.process_time() - start, "kept": report["kept"]}


def run_datatrove(python: str, folder: Path, work: Path) -> dict:
    result = subprocess.run([python, "-c", DATATROVE, str(folder), str(work)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"datatrove failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--datatrove-python", default="/tmp/dtvenv/bin/python")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "input").mkdir()
        path, _ = write_input(tmp / "input", args.docs)
        megabytes = path.stat().st_size / 1e6
        ours = run_ours(path, tmp / "ours")
        theirs = run_datatrove(args.datatrove_python, tmp / "input", tmp / "datatrove")
        print(f"input: {args.docs} documents, {megabytes:.1f} MB; "
              "read jsonl, exact dedup, MinHash 20 x 6, write jsonl\n")
        print("| tool | CPU s | MB/s per core | kept |\n|---|---:|---:|---:|")
        for name, run in (("pretrain", ours), ("datatrove", theirs)):
            print(f"| {name} | {run['cpu_s']:.2f} | {megabytes / run['cpu_s']:.1f} | {run['kept']} |")
        print(f"\npretrain / datatrove: {theirs['cpu_s'] / ours['cpu_s']:.2f}x")


if __name__ == "__main__":
    main()
