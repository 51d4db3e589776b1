"""Shared test settings: quiet TensorFlow, the TensorFlow backend, deterministic seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts with Keras's automatic names and seeds reset."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    yield
