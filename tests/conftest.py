from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from qtoolkit.data.fashion_mnist import DEFAULT_ROOT, FILES

REPO = Path(__file__).resolve().parents[1]
HAS_FMNIST = all((DEFAULT_ROOT / name).is_file() for pair in FILES.values() for name in pair)

needs_fmnist = pytest.mark.skipif(
    not HAS_FMNIST, reason="Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)"
)


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    torch.manual_seed(0)
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_(tensor|channel).*deprecated.*")
        yield
