"""The rendered sbatch script: pinned for the H100 profile, and safe against any run name."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.config import compose_config, compose_dict
from pretrain.errors import ConfigError
from pretrain.launch.submit import prepare

GOLDEN = Path(__file__).parent / "golden"
H100_64_NODES = ["cluster=h100_ib", "cluster.nodes=64", "model=llama_1b", "train.global_batch_size=2048",
                 "train.run_dir=/shared/runs/llama_1b_64n"]


def job_for(overrides, submit_dir="/home/user/pretrain", python="/opt/venv/bin/python"):
    cfg = compose_config(overrides)
    return prepare(cfg, compose_dict(overrides), submit_dir, python)


def test_h100_script_matches_golden_file():
    # To accept a deliberate change: PRETRAIN_UPDATE_GOLDEN=1 pytest tests/launch/test_render.py
    script = job_for(H100_64_NODES).script
    golden = GOLDEN / "h100_ib_64_nodes.sbatch"
    if os.environ.get("PRETRAIN_UPDATE_GOLDEN"):
        golden.write_text(script)
    assert script == golden.read_text()
    assert job_for(H100_64_NODES).script == script  # deterministic


def test_h100_script_asks_for_what_the_profile_says():
    script = job_for(H100_64_NODES).script
    for line in ("#SBATCH --nodes=64", "#SBATCH --gpus-per-node=8", "#SBATCH --exclusive",
                 "#SBATCH --open-mode=append", "#SBATCH --signal=B:USR1@300", "export NCCL_IB_TIMEOUT=22"):
        assert line in script.splitlines()
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


@pytest.mark.parametrize("name", ["x; rm -rf ~", "$(reboot)", "`reboot`", "it's \"quoted\"\nnew line", "a b\\c*"])
def test_a_hostile_run_name_stays_a_name(tmp_path, name):
    run_dir = tmp_path / name
    job = job_for(["cluster=slurm_cpu_test", f"train.run_dir='{_hydra_escape(str(run_dir))}'",
                   f"cluster.job_name='{_hydra_escape(name)}'"], submit_dir=str(tmp_path / name / ".." / name))
    subprocess.run(["bash", "-n"], input=job.script, text=True, check=True)
    # Run the values block in bash: the shell must read back exactly the literal strings.
    values = job.script.split("# ---- values from the config, each quoted ----")[1].split("# ---- end of values")[0]
    probe = values + '\nprintf "%s\\0" "$RUN_DIR" "$SUBMIT_DIR"'
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert result.stdout.split("\0")[:2] == [str(run_dir), str(tmp_path / name / ".." / name)]
    for line in job.script.splitlines():
        if line.startswith("#SBATCH --job-name="):
            assert shlex.split(line[len("#SBATCH --job-name="):]) == [line[len("#SBATCH --job-name="):]]
    assert not (tmp_path / "reboot").exists()


def _hydra_escape(text: str) -> str:
    # Hydra's quoted override values need a backslash before a quote (a lone backslash stays).
    return text.replace("'", "\\'")


def test_local_profile_refuses_to_submit():
    with pytest.raises(ConfigError, match="cluster"):
        job_for([])


@pytest.mark.parametrize("override", ["cluster.partition='gpu; reboot'", "cluster.time=forever",
                                      "cluster.launcher=mpirun"])
def test_bad_cluster_values_are_config_errors(override):
    with pytest.raises(ConfigError, match="cluster"):
        job_for(["cluster=slurm_cpu_test", override])


def test_login_node_commands_do_not_import_torch(tmp_path):
    run_dir = tmp_path / "r"
    (tmp_path / "raw.jsonl").write_text('{"text": "a document"}\n')
    code = (
        "import sys\n"
        "import pretrain.launch, pretrain.launch.commands, pretrain.launch.sbatch, pretrain.launch.status\n"
        "from pretrain.cli import main\n"
        f"assert main(['submit', '--dry-run', 'cluster=slurm_cpu_test', 'train.run_dir={run_dir}']) == 0\n"
        f"assert main(['status', '{tmp_path}']) == 2\n"
        f"assert main(['submit', '-m', '--dry-run', 'cluster=slurm_cpu_test', 'train.run_dir={tmp_path}/rs',\n"
        f"             'optim.lr=interval(1e-4,1e-2)', 'sweep.n_trials=2']) == 0\n"
        f"assert main(['data', 'clean', '--dry-run', 'cluster=slurm_cpu_test', 'data.root={tmp_path}',\n"
        f"             'data.clean.inputs=[{tmp_path}/raw.jsonl]']) == 0\n"
        "heavy = [m for m in ('torch', 'deepspeed', 'megatron') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "#SBATCH --nodes=2" in result.stdout and "# ==== array job: --array=0 ====" in result.stdout
    assert "not a run started by `pretrain submit`" in result.stderr


def test_cli_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pretrain.cli", "submit", "cluster=no_such_profile", "--dry-run"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
