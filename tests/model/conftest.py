"""Shared by the model tests: megatron's parallel state for one process."""

import pytest
from dist_utils import single_process_group


@pytest.fixture(scope="module")
def megatron_state():
    """A one-process gloo group and megatron's parallel state (TP=1), for a test module."""
    with single_process_group() as layout:
        yield layout
