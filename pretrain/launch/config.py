"""Configuration of where a run executes: this machine, or a Slurm cluster and its site settings."""

import re
from dataclasses import dataclass, field

from pretrain.errors import ConfigError, check_choice, check_positive

# Values that land on `#SBATCH` lines are parsed by sbatch itself, not by a shell, so quoting
# cannot protect them: they must be plain words.
SBATCH_WORD = re.compile(r"^[A-Za-z0-9_.,:=@%+/&|\[\]*()!-]*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TIME = re.compile(r"^(\d+-)?\d+(:\d\d){0,2}$")


@dataclass
class ClusterConfig:
    name: str = "local"
    """The profile's name (configs/cluster/NAME.yaml)."""
    scheduler: str = "local"
    """local (`pretrain train` on this machine) or slurm (`pretrain submit` writes an sbatch job)."""
    launcher: str = "torchrun"
    """torchrun: one srun task per node running torchrun (c10d rendezvous on the first node);
    srun: one srun task per process, ranks from SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS."""
    nodes: int = 1
    gpus_per_node: int = 0
    """GPUs requested per node (`--gpus-per-node`); 0 for CPU-only nodes."""
    processes_per_node: int = 0
    """Training processes per node; 0 means one per GPU (or 1 without GPUs)."""
    cpus_per_task: int = 0
    """`--cpus-per-task`; 0 leaves it to the site's default."""
    mem: str = ""
    """`--mem` per node, e.g. 480G, or 0 for all of it; empty leaves it to the site's default."""
    time: str = "01:00:00"
    """Wall-clock limit of one job ([D-]HH:MM:SS); a requeue starts a fresh one."""
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    exclusive: bool = False
    job_name: str = ""
    """Slurm job name; empty means the run directory's name (unsafe characters become _)."""
    signal_grace: int = 300
    """Seconds before the time limit at which Slurm sends USR1 (`--signal=B:USR1@N`): time to save."""
    max_restarts: int = 10
    """Requeues after a time-limit stop before the job gives up (SLURM_RESTART_COUNT)."""
    forward_signal: bool = False
    """torchrun launcher: let the agent pass USR1 on to its workers. Needed where Slurm signals
    only each task's process group (proctrack/pgid, the test cluster); leave off where it signals
    every process of the step (proctrack/cgroup), or workers would get the signal twice."""
    python: str = ""
    """Interpreter on the compute nodes; empty means the one running `pretrain submit`."""
    master_port_base: int = 20000
    """Rendezvous port = base + job id mod 10000, so jobs sharing a node do not collide."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment of the job (NCCL_IB_HCA, NCCL_SOCKET_IFNAME, NCCL_IB_TIMEOUT, ...)."""
    modules: list[str] = field(default_factory=list)
    """Environment modules to `module load` before the run."""
    container_image: str = ""
    """pyxis/enroot image for the training step (`srun --container-image`); empty runs on the host."""
    container_mounts: list[str] = field(default_factory=list)
    """`srun --container-mounts` entries (SRC:DST[:FLAGS]); the run directory must be among them."""
    preflight: bool = True
    """Check every node (GPUs visible, run directory writable) before training; fail naming the node."""
    array_tasks: int = 0
    """`pretrain data clean` on Slurm: array tasks sharing the clean tasks; 0: one per clean task
    (at most 1000, Slurm's default MaxArraySize)."""
    array_parallelism: int = 0
    """Array tasks running at once (`--array=...%K`); 0 leaves it to the scheduler."""

    def __post_init__(self):
        check_choice("cluster.scheduler", self.scheduler, ("local", "slurm"))
        check_choice("cluster.launcher", self.launcher, ("torchrun", "srun"))
        check_positive("cluster.nodes", self.nodes)
        for key in ("gpus_per_node", "processes_per_node", "cpus_per_task", "signal_grace", "max_restarts",
                    "array_tasks", "array_parallelism"):
            check_positive(f"cluster.{key}", getattr(self, key), allow_zero=True)
        if not TIME.match(self.time):
            raise ConfigError("cluster.time", f"must be [D-]HH:MM:SS or minutes, got {self.time!r}")
        for key in ("mem", "partition", "account", "qos", "constraint"):
            if not SBATCH_WORD.match(getattr(self, key)):
                raise ConfigError(f"cluster.{key}", f"has characters sbatch cannot take: {getattr(self, key)!r}")
        for name in self.env:
            if not ENV_NAME.match(name):
                raise ConfigError("cluster.env", f"{name!r} is not an environment variable name")

    @property
    def procs_per_node(self) -> int:
        return self.processes_per_node or self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node
