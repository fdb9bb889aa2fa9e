"""Scale: parallel workers give the same output, and a killed or failed run resumes per task."""

import json
import random
import signal
import subprocess
import sys
import time

from planted import vocabulary

from pretrain.data.clean import clean_corpus
from pretrain.data.config import CleanConfig, CodeConfig


def corpus(folder, files: int, docs: int, seed: int = 0):
    """jsonl files of random-word documents, with some duplicates across files."""
    rng = random.Random(seed)
    vocab = vocabulary(rng, 3000)
    folder.mkdir(parents=True, exist_ok=True)
    texts = [" ".join(rng.choice(vocab) for _ in range(150)) + "." for _ in range(files * docs)]
    for n in range(files):
        chunk = texts[n * docs : (n + 1) * docs] + [texts[rng.randrange(len(texts))]]
        (folder / f"part-{n:03d}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in chunk))
    return [str(folder / "*.jsonl")]


def config(inputs, **kwargs):
    return CleanConfig(inputs=inputs, min_chars=0, profile="code", progress=False,
                       code=CodeConfig(enabled=False), **kwargs)


def outputs(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith("card")}


def test_workers_give_the_same_output(tmp_path):
    inputs = corpus(tmp_path / "raw", 6, 50)
    one = clean_corpus(config(inputs), tmp_path / "one")
    two = clean_corpus(config(inputs, workers=2), tmp_path / "two")
    assert one == two
    assert outputs(tmp_path / "one") == outputs(tmp_path / "two")


def test_failed_run_resumes_from_finished_tasks(tmp_path):
    inputs = corpus(tmp_path / "raw", 4, 30)
    last = tmp_path / "raw" / "part-003.jsonl"
    good = last.read_text()
    last.write_text(good.replace('"text"', '"body"'))  # a whole-file mistake in the last task
    cfg = config(inputs)
    try:
        clean_corpus(cfg, tmp_path / "out")
    except ValueError as e:
        assert "part-003.jsonl: no line has the field 'text'" in str(e)
    markers = sorted(p.name for p in (tmp_path / ".out.work").glob("*.done.json"))
    assert markers == [f"task-{n:06d}.done.json" for n in range(3)]
    last.write_text(good)
    report = clean_corpus(cfg, tmp_path / "out")
    assert report["resumed_tasks"] == 3
    fresh = clean_corpus(cfg, tmp_path / "fresh")
    assert fresh["resumed_tasks"] == 0
    expected = {**outputs(tmp_path / "fresh"), "report.json": (tmp_path / "out" / "report.json").read_bytes()}
    assert outputs(tmp_path / "out") == expected
    assert {**report, "resumed_tasks": 0} == fresh
    assert not (tmp_path / ".out.work").exists()


KILLED_RUN = """
import sys
from pretrain.data.clean import clean_corpus
from pretrain.data.config import CleanConfig, RepetitionConfig
# Repetition checks and MinHash: slow enough per file that the kill lands mid-run.
cfg = CleanConfig(inputs=[sys.argv[1]], min_chars=0, progress=False, repetition=RepetitionConfig(enabled=True))
cfg.near_dedup.enabled = True
clean_corpus(cfg, sys.argv[2])
"""


def test_killed_run_redoes_only_unfinished_tasks(tmp_path):
    inputs = corpus(tmp_path / "raw", 20, 150)
    out = tmp_path / "out"
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    process = subprocess.Popen([sys.executable, str(script), inputs[0], str(out)])
    work = tmp_path / ".out.work"
    deadline = time.monotonic() + 120
    while len(list(work.glob("*.done.json"))) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(work.glob("*.done.json")))
    assert 3 <= finished < 20 and not out.exists()
    subprocess.run([sys.executable, str(script), inputs[0], str(out)], check=True)
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_tasks"] >= finished
    subprocess.run([sys.executable, str(script), inputs[0], str(tmp_path / "fresh")], check=True)
    fresh = json.loads((tmp_path / "fresh" / "report.json").read_text())
    assert {**report, "resumed_tasks": 0} == {**fresh, "resumed_tasks": 0}
    assert outputs(out).keys() == outputs(tmp_path / "fresh").keys()
    for name in outputs(out):
        if name != "report.json":
            assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
