"""The local Slurm test cluster (slurm/testcluster/start.sh), found or skipped with a reason.

The cluster is found through SLURM_CONF, else at the start script's default place. Tests
marked `slurm` skip, saying why, when no cluster answers; the rest of the suite runs.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DEFAULT_CONF = Path(os.environ.get("PRETRAIN_SLURM_DIR", "/tmp/pretrain-slurm")) / "etc" / "slurm.conf"


def find_cluster() -> tuple[str | None, str]:
    """(the SLURM_CONF path, "") when a cluster answers; (None, why not) otherwise."""
    conf = os.environ.get("SLURM_CONF") or str(DEFAULT_CONF)
    if not Path(conf).is_file():
        return None, f"no Slurm test cluster: {conf} missing (run slurm/testcluster/start.sh)"
    if shutil.which("sinfo") is None:
        return None, "no Slurm test cluster: sinfo not installed (run slurm/testcluster/start.sh)"
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20,
                            env={**os.environ, "SLURM_CONF": conf})
    if result.returncode != 0:
        return None, f"no Slurm test cluster answers at {conf}: {result.stderr.strip()[:200]}"
    return conf, ""


CLUSTER = find_cluster()


def pytest_report_header(config):
    conf, why = CLUSTER
    return f"slurm test cluster: {conf}" if conf else f"slurm test cluster: {why}; slurm tests skip"


@pytest.fixture(scope="session")
def slurm_conf() -> str:
    conf, why = CLUSTER
    if conf is None:
        pytest.skip(why)
    os.environ["SLURM_CONF"] = conf  # the CLI and the job's own scontrol/srun calls read it
    return conf


@pytest.fixture(autouse=True)
def _needs_cluster(request):
    if request.node.get_closest_marker("slurm"):
        request.getfixturevalue("slurm_conf")


@pytest.fixture(scope="module")
def signal_every_process_cluster(slurm_conf):
    """A second 2-node test cluster whose slurmd signal every process of a step (proctrack/linuxproc),
    as proctrack/cgroup does on most GPU clusters; its SLURM_CONF path. Stopped after the module."""
    start = Path(__file__).resolve().parents[2] / "slurm" / "testcluster"
    env = {**os.environ, "PRETRAIN_SLURM_DIR": f"{DEFAULT_CONF.parents[1]}-linuxproc",
           "PRETRAIN_SLURM_PORT": str(int(os.environ.get("PRETRAIN_SLURM_PORT", 17000)) + 100),
           "PRETRAIN_SLURM_PROCTRACK": "linuxproc"}
    result = subprocess.run([str(start / "start.sh")], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    yield result.stdout.strip().splitlines()[-1]
    subprocess.run([str(start / "stop.sh")], capture_output=True, timeout=60, env=env)


@pytest.fixture(scope="session")
def data_root(dataset_dir) -> Path:
    """The session's tiny real dataset (tests/conftest.py) as a data.root folder."""
    return dataset_dir.parent
