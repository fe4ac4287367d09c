import os
import sys

import pytest
import torch

# Two cores: one pool at a time is faster than torch, numba and OpenBLAS fighting over them.
torch.set_num_threads(int(os.environ.get("TAUFORGE_TEST_THREADS", "2")))
sys.path.insert(0, os.path.dirname(__file__))

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
