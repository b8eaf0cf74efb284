"Settings shared by every test module."
import pytest, torch

@pytest.fixture(scope='session', autouse=True)
def one_thread():
    "The tests use tiny models and inputs: one intra-op thread is faster, and immune to OpenMP stalls when another process holds a core."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
