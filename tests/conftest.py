"""Shared test settings: quiet TensorFlow, the TensorFlow backend, deterministic seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts with Keras's automatic names and seeds reset.

    ``free_memory=False``: Keras's own ``gc.collect()`` took 1 to 10 s per test once Ray and
    TensorFlow had filled the heap (minutes over the suite); Python's collector still runs.
    """
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(0)
    yield


# ---- Ray for the sweep tests (issue 5; owned by the sweep helper) --------------------------------
@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One local Ray instance (2 CPUs, no dashboard) shared by every test that needs it.

    Its temporary folder lives under pytest's temporary folder; it is shut down at the end.
    """
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        yield ray
        return
    temp = tmp_path_factory.mktemp("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=str(temp),
             configure_logging=False,
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}})
    try:
        yield ray
    finally:
        ray.shutdown()
# ---- end of the sweep section --------------------------------------------------------------------
