"""What every Lightning run of the package shares (contrastive training in `training`, the
supervised baselines in `evaluation`), kept below both layers."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's INFO banners and its notices about frozen (eval-mode) modules, tiny
    loaders and deprecations: they are expected here and bury the progress bar."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        quiet = "treespec|num_workers|eval mode|logging interval|before the epoch ended|exists and is not empty"
        warnings.filterwarnings("ignore", message=f".*({quiet}).*")
        yield
