"""A dataset whose items draw from numpy's and Python's global RNGs (as user augmentations often do), for the
fresh-process resume test (tests/test_resume_subprocess.py).

Importing it registers the data set "rng_toy_signal": the toy signals of toy_signal.py plus N(0, 0.1^2) numpy
noise and a random.random() sign flip per item. With VERSADIFF_TEST_KILL_AT=N in the environment the process
kills itself (SIGKILL: no cleanup, no atexit) when the N-th item is requested -- a crash in the middle of a step.
"""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import torch
from torch.utils.data import Dataset

import toy_signal  # noqa: F401  (registers the toy modality, codec, encoder, network and flow)
from versadiff.data.registry import DATASETS


class RngSignalDataset(Dataset):
    def __init__(self, size: int = 32, seed: int = 0) -> None:
        self.base = toy_signal.SignalDataset(size, seed)
        self.served = 0
        self.kill_at = int(os.environ.get("VERSADIFF_TEST_KILL_AT", "0"))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        self.served += 1
        if self.kill_at and self.served >= self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        item = dict(self.base[i])
        noise = torch.from_numpy(np.random.normal(0.0, 0.1, size=item["signal"].shape).astype(np.float32))
        sign = -1.0 if random.random() < 0.5 else 1.0
        item["signal"] = sign * item["signal"] + noise
        return item


def _rng_toy_signal(size: int = 32, seed: int = 0) -> Dataset:
    return RngSignalDataset(size, seed)


if "rng_toy_signal" not in DATASETS:
    DATASETS["rng_toy_signal"] = _rng_toy_signal
