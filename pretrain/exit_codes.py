"""Exit codes of `pretrain` commands, for shells and sbatch scripts to act on."""

OK = 0
BAD_INPUT = 2
"""A config key or input file is wrong; the message names it. Retrying will not help."""
DIVERGED = 3
"""Stopped after too many non-finite losses in a row; requeueing will not help."""
HUNG = 4
"""A rank made no progress for train.step_timeout seconds (a dead peer or a stuck collective)."""
STORAGE = 74
"""A checkpoint could not be written (disk full, no permission); the previous one is intact."""
REQUEUE = 75
"""Stopped on SIGUSR1/SIGTERM with every trained step in the latest checkpoint (saved at the stop, or
none trained since the load when the signal came during start-up): submit again to continue (EX_TEMPFAIL)."""
INTERRUPTED = 130
"""Stopped by Ctrl-C (SIGINT); the latest checkpoint is intact."""
