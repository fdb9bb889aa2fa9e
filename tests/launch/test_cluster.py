"""Runs through `pretrain submit` on the real 2-node test cluster (slurm/testcluster/)."""

import re
import subprocess
import time

import pytest
from cluster_runs import CLUSTER_RUN, job_log, job_starts, job_state, pretrain, steps_logged, submit, wait_for_job
from training_runs import valid_losses

from pretrain.launch.sweep import expand

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]


def test_two_node_job_trains_to_the_end_and_a_chained_job_exits_at_once(slurm_conf, data_root, tmp_path):
    run_dir = tmp_path / "two_nodes"
    job_id, chained = submit(data_root, run_dir, chain=2)
    info, seen = wait_for_job(job_id, run_dir, timeout=180)
    assert info["JobState"] == "COMPLETED", job_log(run_dir, job_id)
    assert steps_logged(run_dir)[-1] == 6
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_6"
    print(f"\nsubmit to first step: {seen['first_step']:.1f}s")
    table = pretrain("status", str(run_dir)).stdout
    assert chained in table and "step_6" in table  # the run's latest job
    info, _ = wait_for_job(chained, run_dir, timeout=60)  # afterany: starts once the first ends
    assert info["JobState"] == "COMPLETED" and "nothing to do" in job_log(run_dir, chained)
    assert [start["job_id"] for start in job_starts(run_dir)] == [int(job_id), int(chained)]


@pytest.mark.slow
def test_time_limit_requeues_resumes_and_stops_at_the_restart_limit(slurm_conf, data_root, tmp_path):
    # A 2-minute limit and USR1 45 s before it. Slurm checks limits every 30 s, so the signal
    # comes 45 to 75 s after the start (the trainer took up to 45 s to start on the loaded 2-core
    # machine) and the hard limit 45 to 105 s after the signal (the save and exit take seconds).
    # A run longer than any job and one allowed restart make exactly two jobs at any speed.
    run_dir = tmp_path / "requeue"
    job_id, = submit(data_root, run_dir, "cluster.time=2", "cluster.signal_grace=45", "cluster.max_restarts=1",
                    "train.train_steps=1000000",
                    "train.global_batch_size=32", "train.save_interval=100000", "train.eval_interval=0",
                    "train.log_interval=10")
    info, seen = wait_for_job(job_id, run_dir, timeout=280)
    log = (run_dir / "slurm" / f"{job_id}.out").read_text()  # whole: both jobs' stops
    # Saved for a requeue that the restart limit stops: the requeue exit code, not a timeout.
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "75:0"), log
    assert log.count("requeueing") == 1 and "restart limit (1) reached" in log, log
    assert [s["restart_count"] for s in job_starts(run_dir)] == [0, 1]
    first_stop, second_stop = [int(n) for n in re.findall(r"stopping at step (\d+): received SIGUSR1", log)]
    assert f"resuming from {run_dir / 'checkpoints' / f'step_{first_stop}'}" in log, log
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{second_stop}"
    steps = steps_logged(run_dir)
    assert first_stop < second_stop and all(a < b for a, b in zip(steps, steps[1:])), steps  # continued
    turnaround = seen.get("first_step_after_signal", float("nan")) - seen.get("signal", float("nan"))
    print(f"\nsubmit to first step {seen['first_step']:.1f}s; signal to first step of the requeued job "
          f"{turnaround:.1f}s; stops at steps {first_stop}, {second_stop}")


def test_without_forwarding_each_worker_takes_slurms_own_signal_saves_and_the_job_ends_for_a_requeue(
        signal_every_process_cluster, data_root, tmp_path, monkeypatch):
    # forward_signal=false, on a cluster that signals every process of a step: torchrun's agent
    # ignores USR1 and each worker gets its own copy from Slurm. The test sends USR1 to the batch
    # shell as Slurm does before a time limit, once training runs, so no timing is left to chance.
    # No restart is allowed: the requeue decision is the batch shell's, tested above.
    monkeypatch.setenv("SLURM_CONF", signal_every_process_cluster)
    run_dir = tmp_path / "no_forward"
    start = time.monotonic()
    job_id, = submit(data_root, run_dir, "cluster.forward_signal=false", "cluster.max_restarts=0",
                    "train.train_steps=100000", "train.save_interval=100000", "train.eval_interval=0")
    deadline = time.monotonic() + 120
    while not steps_logged(run_dir) and time.monotonic() < deadline:
        time.sleep(1)
    first_step = time.monotonic() - start
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True)
    info, _ = wait_for_job(job_id, run_dir, timeout=120)
    log = (run_dir / "slurm" / f"{job_id}.out").read_text()
    assert "FORWARD_SIGNAL=0" in (run_dir / "slurm" / "job.sbatch").read_text().splitlines()
    assert (info["JobState"], info["ExitCode"]) == ("FAILED", "75:0"), log  # saved for a requeue
    stops = re.findall(r"stopping at step (\d+): received SIGUSR1", log)
    assert len(stops) == 1, log  # one copy per worker: a second copy would exit without saving
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step_{stops[0]}"
    assert steps_logged(run_dir)[-1] == int(stops[0]) and "restart limit (0) reached" in log, log
    print(f"\nforward_signal=false: submit to first step {first_step:.1f}s, signal to the job's end "
          f"{time.monotonic() - start - first_step:.1f}s, saved at step {stops[0]}")


def test_cancel_saves_then_resume_finishes(slurm_conf, data_root, tmp_path):
    run_dir = tmp_path / "cancel"
    job_id, = submit(data_root, run_dir, "train.train_steps=5000", "train.save_interval=1000", "train.eval_interval=0",
                    "train.log_interval=5")
    deadline = time.monotonic() + 120
    while not steps_logged(run_dir) and time.monotonic() < deadline:
        time.sleep(1)
    table = pretrain("status", str(run_dir)).stdout
    assert "RUNNING" in table, table
    pretrain("cancel", str(run_dir), "--wait", "60")
    assert job_state(job_id)["JobState"] in {"COMPLETED", "FAILED", "CANCELLED"}
    saved = int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    assert 0 < saved < 5000 and len(job_starts(run_dir)) == 1  # saved on the way out, not requeued
    out = pretrain("resume", str(run_dir), f"train.train_steps={saved + 10}").stdout
    resumed = out.split("submitted job ")[1].split()[0]
    info, _ = wait_for_job(resumed, run_dir, timeout=120)
    assert info["JobState"] == "COMPLETED", job_log(run_dir, resumed)
    steps = steps_logged(run_dir)
    assert steps[-1] == saved + 10 and all(a < b for a, b in zip(steps, steps[1:])), steps


def test_two_point_random_sweep_finishes_and_status_lists_final_valid_losses(slurm_conf, data_root, tmp_path):
    # One node per point, so both points run at once on the 2-node cluster. A random search
    # submits exactly as a grid does once its points are drawn (tests/launch/test_sweep.py).
    sweep_dir = tmp_path / "sweep"
    search = ["optim.lr=tag(log,interval(1e-3,3e-3))", "sweep.n_trials=2", "sweep.seed=0"]
    out = pretrain("submit", "-m", *CLUSTER_RUN, f"data.root={data_root}", f"train.run_dir={sweep_dir}",
                   "cluster.nodes=1", *search).stdout
    lrs = [point.params["optim.lr"] for point in expand(search)]
    job_ids = [line.split()[2] for line in out.splitlines() if line.startswith("submitted job ")]
    assert len(job_ids) == 2, out
    for index, job_id in enumerate(job_ids):
        info, _ = wait_for_job(job_id, sweep_dir / str(index), timeout=180)
        assert info["JobState"] == "COMPLETED", job_log(sweep_dir / str(index), job_id)
    table = pretrain("status", str(sweep_dir)).stdout
    rows = table.splitlines()[2:]
    assert len(rows) == 2, table
    assert len(set(lrs)) == 2 and all(1e-3 <= float(lr) <= 3e-3 for lr in lrs), lrs
    for index, (row, lr) in enumerate(zip(rows, lrs)):
        final = valid_losses(sweep_dir / str(index))[6]
        assert row.split() == [str(index), lr, job_ids[index], "COMPLETED", "6", f"{final:.4f}"], table
    print(f"\n{table}")


def test_srun_launcher_runs_one_task_per_process(slurm_conf, data_root, tmp_path):
    run_dir = tmp_path / "srun"
    job_id, = submit(data_root, run_dir, "cluster.launcher=srun", "train.log_sample_ids=true")
    info, seen = wait_for_job(job_id, run_dir, timeout=180)
    assert info["JobState"] == "COMPLETED", job_log(run_dir, job_id)
    assert "LAUNCHER=srun" in (run_dir / "slurm" / "job.sbatch").read_text()
    assert steps_logged(run_dir)[-1] == 6
    # Two ranks on the two nodes, each logging the samples it read.
    assert len(list((run_dir / "samples").glob("rank_*.jsonl"))) == 2
    assert job_starts(run_dir)[0]["nodes"] == "n[1-2]"
    print(f"\nsrun launcher: submit to first step {seen['first_step']:.1f}s")


def test_failing_preflight_ends_the_job_early_naming_the_node(slurm_conf, data_root, tmp_path):
    # An interpreter the nodes do not have (a venv on the login node's local disk, say).
    run_dir = tmp_path / "preflight"
    job_id, = submit(data_root, run_dir, "cluster.python=/nonexistent/venv/bin/python")
    info, _ = wait_for_job(job_id, run_dir, timeout=60)
    assert info["JobState"] == "FAILED", job_log(run_dir, job_id)
    err = (run_dir / "slurm" / f"{job_id}.err").read_text()
    assert re.search(r"preflight: n[12]: no interpreter /nonexistent/venv/bin/python", err), err
    assert "preflight failed" in (run_dir / "slurm" / f"{job_id}.out").read_text()
    assert not (run_dir / "metrics.jsonl").exists()  # training never started
