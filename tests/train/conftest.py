"""The session's tiny real dataset, as the data.root that training runs read."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_root(dataset_dir) -> Path:
    """The shared pipeline run, as a data.root folder (cleaned/, tokenizer/, dataset/)."""
    return dataset_dir.parent
