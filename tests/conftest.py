"""Test-wide settings: offline, no telemetry, deterministic CPU threads; `fixtures` and `faults`
importable here and in the processes the tests start."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))
# Worker processes (Ray's, the CLI's) import tests/faults.py through the worker's testing hook.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.dirname(os.path.abspath(__file__)),
                                                         os.environ.get("PYTHONPATH")]))


import pytest  # noqa: E402
import torch  # noqa: E402

# Triton reads TRITON_INTERPRET once, when it is imported, and importing transformers imports it:
# on a machine without CUDA every test module must see the interpreter, whichever imports first.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    """A tiny random Llama (tests/fixtures.py), shared read-only by the modules that do not make their own."""
    from fixtures import make_tiny_model

    return str(make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """fixtures.SENTENCES three times over as a textdir corpus: 3 languages x 12 rows."""
    from fixtures import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus"))
