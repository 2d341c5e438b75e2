import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the tiny denoisers and VAR models are faster so, and a shared 2-core box does not make
    OpenMP spin-wait."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
