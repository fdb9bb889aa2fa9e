"""Sweep expansion (Hydra multirun syntax → points) and the sweep's files and status table; no cluster."""

import json
import subprocess
import sys

import pytest

from pretrain.errors import ConfigError
from pretrain.launch.status import sweep_table
from pretrain.launch.sweep import expand, prepare_sweep, write_sweep

BASE = ["cluster=slurm_cpu_test"]


def test_comma_lists_expand_to_a_cartesian_product_first_key_slowest():
    points = expand(["model=tiny", "optim.lr=1e-4,3e-4", "train.seed=1,2,3"])
    assert [p.params for p in points] == [{"optim.lr": lr, "train.seed": seed}
                                          for lr in ("0.0001", "0.0003") for seed in ("1", "2", "3")]
    assert points[4].overrides == ["model=tiny", "optim.lr=0.0003", "train.seed=2"]


def test_range_choice_and_glob_follow_hydra():
    assert [p.params for p in expand(["train.seed=range(1,4)"])] == [{"train.seed": s} for s in ("1", "2", "3")]
    assert [p.params for p in expand(["optim.lr=choice(0.1,0.2)"])] == [{"optim.lr": "0.1"}, {"optim.lr": "0.2"}]
    assert [p.overrides for p in expand(["model=glob(tin*)"])] == [["model=tiny"]]


def test_quoted_commas_and_lists_are_not_sweeps():
    assert [p.overrides for p in expand(["train.run_dir='a,b'", "+x=[1,2]"])] == [["train.run_dir='a,b'", "+x=[1,2]"]]


@pytest.mark.parametrize("override, key", [("train.run_dir=a,b", "train.run_dir"),
                                           ("optim.lr=1,(", "overrides"),
                                           ("model=glob(nothing*)", "model")])
def test_unsweepable_overrides_are_config_errors(override, key):
    with pytest.raises(ConfigError) as error:
        expand([override])
    assert error.value.key == key


RANDOM = ["optim.lr=tag(log,interval(1e-4,1e-2))", "train.seed=range(1,4)", "optim.warmup_steps=int(interval(0,20))",
          "model=tiny"]


def test_random_search_draws_n_distinct_points_within_bounds_the_same_for_the_same_seed():
    points = expand([*RANDOM, "sweep.n_trials=6", "sweep.seed=1"])
    assert len(points) == 6 and len({p.params["optim.lr"] for p in points}) == 6
    for point in points:
        assert 1e-4 <= float(point.params["optim.lr"]) <= 1e-2
        assert point.params["train.seed"] in ("1", "2", "3")  # range(1,4): the grid's values
        assert 0 <= int(point.params["optim.warmup_steps"]) <= 20
        assert point.overrides == [f"optim.lr={point.params['optim.lr']}", f"train.seed={point.params['train.seed']}",
                                   f"optim.warmup_steps={point.params['optim.warmup_steps']}", "model=tiny"]
    assert [p.params for p in expand([*RANDOM, "sweep.seed=1", "sweep.n_trials=6"])] == [p.params for p in points]
    assert [p.params for p in expand([*RANDOM, "sweep.n_trials=6", "sweep.seed=2"])] != [p.params for p in points]
    # Log-uniform: about half the draws fall below the geometric middle 1e-3 (a uniform draw: 9%).
    lrs = [float(p.params["optim.lr"]) for p in expand([*RANDOM, "sweep.n_trials=100"])]
    assert 30 <= sum(lr < 1e-3 for lr in lrs) <= 70


@pytest.mark.parametrize("overrides, key", [(["optim.lr=1,2", "sweep.n_trials=3"], "sweep.n_trials"),
                                            (["optim.lr=interval(0,1)", "sweep.trials=3"], "sweep.trials"),
                                            (["optim.lr=interval(0,1)", "sweep.n_trials=0"], "sweep.n_trials"),
                                            (["optim.lr=interval(0,1)", "train.run_dir=a,b"], "train.run_dir")])
def test_bad_random_search_settings_are_config_errors(overrides, key):
    with pytest.raises(ConfigError) as error:
        expand(overrides)
    assert error.value.key == key


def test_cli_dry_run_random_search_prints_the_seeded_points(tmp_path):
    overrides = [*BASE, "optim.lr=tag(log,interval(1e-4,1e-2))", "sweep.n_trials=3", "sweep.seed=7",
                 f"train.run_dir={tmp_path / 'rs'}"]
    result = subprocess.run([sys.executable, "-m", "pretrain.cli", "submit", "-m", *overrides, "--dry-run"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # Another process, the same points: nothing depends on the process (hash seeds, clock).
    expected = [f"# ==== point {i}: optim.lr={p.params['optim.lr']} ====" for i, p in enumerate(expand(overrides))]
    assert [line for line in result.stdout.splitlines() if line.startswith("# ==== point")] == expected
    assert f"RUN_DIR={tmp_path / 'rs' / '2'}" in result.stdout and not (tmp_path / "rs").exists()


def test_each_point_gets_its_own_run_dir_job_name_and_the_wandb_group(tmp_path):
    sweep_dir, points, jobs = prepare_sweep([*BASE, "optim.lr=1e-4,3e-4", f"train.run_dir={tmp_path / 'sw'}"])
    assert sweep_dir == tmp_path / "sw"
    assert [job.run_dir for job in jobs] == [sweep_dir / "0", sweep_dir / "1"]
    assert "#SBATCH --job-name=sw_1" in jobs[1].script.splitlines()
    assert "lr: 0.0003" in jobs[1].config_yaml and "group: sw" in jobs[1].config_yaml
    _, _, named = prepare_sweep([*BASE, "optim.lr=1e-4,3e-4", "logging.wandb.group=mine", "cluster.job_name=j",
                                 f"train.run_dir={tmp_path / 'sw'}"])
    assert "group: mine" in named[0].config_yaml and "#SBATCH --job-name=j" in named[0].script.splitlines()


def test_sweep_json_lists_the_points_and_a_second_sweep_into_it_is_refused(tmp_path):
    overrides = [*BASE, "optim.lr=1e-4,3e-4", f"train.run_dir={tmp_path / 'sw'}"]
    sweep_dir, points, jobs = prepare_sweep(overrides)
    write_sweep(sweep_dir, overrides, points, jobs)
    record = json.loads((sweep_dir / "sweep.json").read_text())
    assert [(p["index"], p["run_dir"], p["params"]) for p in record["points"]] == \
        [(0, "0", {"optim.lr": "0.0001"}), (1, "1", {"optim.lr": "0.0003"})]
    with pytest.raises(ConfigError, match="holds a sweep already"):
        write_sweep(sweep_dir, overrides, points, jobs)


def test_status_of_a_sweep_lists_each_point_and_its_final_valid_loss(tmp_path):
    overrides = [*BASE, "optim.lr=1e-4,3e-4", f"train.run_dir={tmp_path / 'sw'}"]
    sweep_dir, points, jobs = prepare_sweep(overrides)
    write_sweep(sweep_dir, overrides, points, jobs)
    (sweep_dir / "0" / "slurm").mkdir(parents=True)
    (sweep_dir / "0" / "slurm" / "submitted.jsonl").write_text('{"job_id": "999999"}\n')
    metrics = [{"step": 3, "loss": 5.0}, {"step": 3, "valid_loss": 4.5}, {"step": 6, "loss": 4.0},
               {"step": 6, "valid_loss": 3.25}]
    (sweep_dir / "0" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    lines = sweep_table(sweep_dir).splitlines()
    assert lines[1].split() == ["POINT", "optim.lr", "JOB", "STATE", "STEP", "VALID_LOSS"]
    assert lines[2].split()[:3] == ["0", "0.0001", "999999"] and lines[2].split()[-2:] == ["6", "3.2500"]
    assert lines[3].split() == ["1", "0.0003", "-", "not", "submitted", "-", "-"]


def test_cli_dry_run_sweep_prints_every_point_and_writes_nothing(tmp_path):
    run = [sys.executable, "-m", "pretrain.cli", "submit", "-m", *BASE, "optim.lr=1e-4,3e-4",
           f"train.run_dir={tmp_path / 'sw'}", "--dry-run"]
    result = subprocess.run(run, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "# ==== point 1: optim.lr=0.0003 ====" in result.stdout
    assert f"RUN_DIR={tmp_path / 'sw' / '1'}" in result.stdout
    assert not (tmp_path / "sw").exists()


def test_a_comma_list_without_multirun_says_how_to_sweep():
    result = subprocess.run([sys.executable, "-m", "pretrain.cli", "submit", *BASE, "optim.lr=1e-4,3e-4", "--dry-run"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "pretrain submit -m" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
