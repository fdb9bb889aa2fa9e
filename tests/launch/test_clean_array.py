"""`pretrain data clean` as a Slurm array job: the scripts (no cluster), and on the real test
cluster the same output as a local run, and a failed share redone alone on a second submit."""

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cluster_runs import pretrain

from pretrain.config import compose_config, compose_dict
from pretrain.launch.clean_array import array_spec, prepare

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron sigma tau upsilon".split()


def write_inputs(folder: Path, files: int = 4, docs: int = 25) -> list[Path]:
    """jsonl files with copies of documents inside and across files, near-copies, short ones and e-mails."""
    rng = random.Random(0)
    common = [" ".join(rng.choice(WORDS) for _ in range(80)) for _ in range(12)]
    folder.mkdir(parents=True)
    paths = []
    for f in range(files):
        lines = []
        for i in range(docs):
            kind = rng.random()
            if kind < 0.4:
                text = rng.choice(common)
            elif kind < 0.55:
                text = rng.choice(common) + " " + rng.choice(WORDS)  # a near-duplicate
            elif kind < 0.65:
                text = "too short"
            else:
                text = " ".join(rng.choice(WORDS) for _ in range(80)) + f" mail me at user{i}@example.org"
            lines.append(json.dumps({"id": f"{f}-{i}", "text": text}))
        paths.append(folder / f"part-{f}.jsonl")
        paths[-1].write_text("\n".join(lines) + "\n")
    return paths


def clean_overrides(inputs: Path, root: Path) -> list[str]:
    return [f"data.clean.inputs=[{inputs}/*.jsonl]", f"data.root={root}", "data.clean.profile=basic",
            "data.clean.min_chars=50", "data.clean.near_dedup.enabled=true", "data.clean.pii.enabled=true",
            "data.clean.progress=false", "data.clean.docs_per_shard=20"]


def test_array_spec_groups_consecutive_indices():
    assert array_spec([0, 1, 2, 3], 0) == "0-3"
    assert array_spec([0, 1, 2, 5, 7, 8], 3) == "0-2,5,7-8%3"
    assert array_spec([4], 2) == "4%2"


def test_dry_run_prints_an_array_over_every_task_and_the_final_job(tmp_path):
    write_inputs(tmp_path / "in")
    run = [sys.executable, "-m", "pretrain.cli", "data", "clean", *clean_overrides(tmp_path / "in", tmp_path / "d"),
           "cluster=slurm_cpu_test", "cluster.array_tasks=3", "cluster.array_parallelism=2", "--dry-run"]
    result = subprocess.run(run, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "# ==== array job: --array=0-2%2 ====" in result.stdout  # 4 clean tasks in 3 shares
    assert "SHARES=3" in result.stdout and "#SBATCH --output=tasks-%A_%a.out" in result.stdout
    assert "PART=final" in result.stdout
    assert not (tmp_path / "d").exists()  # nothing written


def test_a_missing_input_is_one_line_before_anything_is_submitted(tmp_path):
    run = [sys.executable, "-m", "pretrain.cli", "data", "clean", f"data.clean.inputs=[{tmp_path}/none.jsonl]",
           f"data.root={tmp_path}/d", "cluster=slurm_cpu_test"]
    result = subprocess.run(run, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("pretrain: error: data.clean.inputs"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "d").exists()


@pytest.mark.parametrize("name", ["x; rm -rf ~", "$(reboot)", "it's \"quoted\"\nnew line"])
def test_a_hostile_data_root_stays_a_name_in_both_scripts(tmp_path, name):
    write_inputs(tmp_path / "in")
    root = tmp_path / name
    escaped = str(root).replace("'", "\\'")
    overrides = [*clean_overrides(tmp_path / "in", tmp_path)[:1], f"data.root='{escaped}'", "cluster=slurm_cpu_test"]
    jobs = prepare(compose_config(overrides), compose_dict(overrides), submit_dir=str(root), python="/opt/py")
    for script in (jobs.tasks_script, jobs.final_script):
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)
        values = script.split("# ---- values from the config, each quoted ----")[1].split("# ---- end of values")[0]
        probe = values + '\nprintf "%s\\0" "$STAGE_DIR" "$SUBMIT_DIR"'
        result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True)
        assert result.stdout.split("\0")[:2] == [f"{root / 'cleaned'}.slurm", str(root)]
    assert not (tmp_path / "reboot").exists()


def submit_clean(overrides: list[str]) -> tuple[str | None, str, str]:
    out = pretrain("data", "clean", *overrides, "cluster=slurm_cpu_test", "cluster.array_parallelism=2").stdout
    array = out.split("submitted array job ")[1].split()[0] if "submitted array job" in out else None
    return array, out.split("submitted final job ")[1].split()[0], out


def job_records(job_id: str) -> list[dict[str, str]]:
    """scontrol's records of a job: one per array task for an array job."""
    out = subprocess.run(["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True).stdout
    return [dict(word.partition("=")[::2] for word in line.split() if "=" in word) for line in out.splitlines()]


def wait_until_ended(job_id: str, timeout: float = 150) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = job_records(job_id)
        if records and all(r.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for r in records):
            return records
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} did not end within {timeout}s: {job_records(job_id)}")


def output_files(cleaned: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(cleaned.iterdir())}


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_array_clean_matches_the_local_run_and_a_resubmit_redoes_only_the_failed_share(slurm_conf, tmp_path):
    inputs = write_inputs(tmp_path / "in")
    pretrain("data", "clean", *clean_overrides(tmp_path / "in", tmp_path / "local"))
    local = output_files(tmp_path / "local" / "cleaned")
    # A file that is not jsonl fails its clean task with a one-line error: its array task fails.
    good = inputs[2].read_bytes()
    inputs[2].write_text("not json\n" * 5)
    overrides = clean_overrides(tmp_path / "in", tmp_path / "array")
    start = time.monotonic()
    array_id, final_id, _ = submit_clean(overrides)
    records = wait_until_ended(array_id)
    first_array = time.monotonic() - start
    states = {r["ArrayTaskId"]: r["JobState"] for r in records}
    assert states == {"0": "COMPLETED", "1": "COMPLETED", "2": "FAILED", "3": "COMPLETED"}, states
    assert wait_until_ended(final_id)[0]["JobState"] == "CANCELLED"  # its dependency can never be met
    stage = tmp_path / "array" / "cleaned.slurm"
    assert "pretrain: error: " in (stage / f"tasks-{array_id}_2.err").read_text()
    work = tmp_path / "array" / ".cleaned.work"
    assert sorted(p.name for p in work.glob("*.done.json")) == [f"task-00000{i}.done.json" for i in (0, 1, 3)]

    inputs[2].write_bytes(good)
    start = time.monotonic()
    array_id, final_id, out = submit_clean(overrides)
    assert "(--array=2%2: 1 of 4 shares)" in out, out
    assert [r["JobState"] for r in wait_until_ended(array_id)] == ["COMPLETED"]
    assert wait_until_ended(final_id)[0]["JobState"] == "COMPLETED", (stage / f"final-{final_id}.err").read_text()
    print(f"\narray clean: submit to the end of a 4-task array {first_array:.1f}s; "
          f"resubmit of 1 share to the final job's end {time.monotonic() - start:.1f}s")
    # Only the failed share ran again; the final job then found all four tasks marked done.
    assert sorted(p.name for p in stage.glob(f"tasks-{array_id}_*.out")) == [f"tasks-{array_id}_2.out"]
    assert "ran 1 unfinished clean tasks" in (stage / f"tasks-{array_id}_2.out").read_text()

    array = output_files(tmp_path / "array" / "cleaned")
    local_report, array_report = json.loads(local.pop("report.json")), json.loads(array.pop("report.json"))
    assert array == local  # the cleaned shards and the data card, byte for byte
    assert array_report.pop("resumed_tasks") == 4 and local_report.pop("resumed_tasks") == 0
    assert array_report == local_report
    kept, dropped = array_report["kept"], sum(array_report["dropped"].values())
    assert kept + dropped == array_report["input_documents"] == 100
    assert array_report["dropped"]["duplicate"] and array_report["dropped"]["near_duplicate"] and kept
