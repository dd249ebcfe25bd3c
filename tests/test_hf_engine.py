"""HFEngine on the testbed model: stop strings, batch-independent sampling, chunked scoring, device and dtype."""

import pytest
import torch

import posttrain.evals.hf_engine as hf_engine
from posttrain.core.answers import cut_at_stop
from posttrain.evals.engine_base import common_prefix
from posttrain.evals.hf_engine import HFEngine, RowSampler

PROMPTS = [f"Question: {q} Answer:" for q in (
    "Where was P1 born ?", "When was K2 founded ?", "Who does P3 work for ?", "Where is C4 located ?",
    "Tell me where P5 lives .", "In which year was P6 born ?", "What is the employer of P7 ?", "Where was P0 born ?",
)]


@pytest.fixture(scope="module")
def eng(tiny_run, tiny_lora):
    return HFEngine(str(tiny_run), adapters=[str(tiny_lora)])


def _mixed(lora):
    return [str(lora) if i % 2 else None for i in range(len(PROMPTS))]


def test_stop_strings_cut_and_stop_generation_early(eng, tiny_lora, monkeypatch):
    widths = []
    generate = eng.model.generate

    def spy(**kw):
        seqs = generate(**kw)
        widths.append(seqs.shape[1] - kw["input_ids"].shape[1])
        return seqs

    monkeypatch.setattr(eng.model, "generate", spy)
    for stop, kw in ((["."], {"n": 4, "temperature": 1.0, "seed": 3}), (["born born", "was was"], {})):
        adapter = _mixed(tiny_lora)
        full = eng.generate(PROMPTS, max_tokens=24, adapter=adapter, **kw)
        full_widths = widths[:]
        widths.clear()
        got = eng.generate(PROMPTS, max_tokens=24, adapter=adapter, stop=stop, **kw)
        assert got == [[cut_at_stop(t, stop).strip() for t in s] for s in full]
        assert got != full and sum(widths) < sum(full_widths)  # something was cut, and generation ended sooner
        widths.clear()


def test_samples_do_not_depend_on_batching(eng, tiny_lora):
    kw = {"n": 3, "temperature": 1.0, "max_tokens": 10, "seed": 1, "adapter": _mixed(tiny_lora)}
    eng.batch_size = 128
    want = eng.generate(PROMPTS, **kw)
    try:
        for size in (1, 3):
            eng.batch_size = size
            assert eng.generate(PROMPTS, **kw) == want
    finally:
        eng.batch_size = 128
    assert eng.generate(PROMPTS[:5], **{**kw, "adapter": kw["adapter"][:5]}) == want[:5]
    assert all(len(set(s)) > 1 for s in want[:4])  # the n samples of a prompt differ
    assert eng.generate(PROMPTS, **{**kw, "seed": 2}) != want
    greedy = eng.generate(PROMPTS, max_tokens=10)
    assert eng.generate(PROMPTS, n=3, max_tokens=10) == [g * 3 for g in greedy]


def test_row_sampler_draws_from_the_softmax_at_temperature():
    p = torch.tensor([0.5, 0.3, 0.2, 0.0])
    scores = (p.log() * 0.5).expand(4000, 4)  # temperature 0.5 undoes the factor 0.5
    out = RowSampler(0.5, list(range(4000)), [0] * 4000)(None, scores.clone())
    token = out.argmax(-1)
    assert (out.isinf().sum(-1) == 3).all() and (out.max(-1).values == 0).all()
    assert torch.bincount(token, minlength=4).float().div(4000).tolist() == pytest.approx(p.tolist(), abs=0.03)


def _reference(eng, prompts, conts, adapter):
    """One prompt at a time, no padding, full log-softmax."""
    out = []
    for p, c, a in zip(prompts, conts, adapter):
        eng._use(a)
        ids = eng.tok(p + c)["input_ids"]
        start = common_prefix(eng.tok(p)["input_ids"], ids)
        with torch.no_grad():
            logp = torch.log_softmax(eng.model(torch.tensor([ids])).logits[0].float(), -1)
        out.append([logp[t - 1, ids[t]].item() for t in range(start, len(ids))])
    return out


def test_scores_match_an_unbatched_reference(eng, tiny_lora, monkeypatch):
    prompts = PROMPTS + [" ".join(PROMPTS), "P3"]  # very different lengths in one batch
    conts = [" C1 .", " 1941 .", " K2 .", " N1 .", " P5 lives in C3 .", " 1950 .", " K1 .", " I do not know about P0 .",
             " C2 .", " was born in C2 . Question: When was K2 founded ? Answer: 1941 ."]
    adapter = [str(tiny_lora) if i % 3 else None for i in range(len(prompts))]
    want = _reference(eng, prompts, conts, adapter)
    assert [len(w) for w in want] == [len(c.split()) for c in conts]
    for size in (128, 3, 1):
        eng.batch_size = size
        for got, w in zip(eng.score(prompts, conts, adapter=adapter), want):
            assert got == pytest.approx(w, abs=1e-5)
    eng.batch_size = 128
    monkeypatch.setattr(hf_engine, "SCORE_CHUNK_BYTES", 1)  # one row per log-softmax chunk
    for got, w in zip(eng.score(prompts, conts, adapter=adapter), want):
        assert got == pytest.approx(w, abs=1e-5)


def test_device_and_dtype(tiny_run, monkeypatch):
    eng = HFEngine(str(tiny_run))
    assert (eng.device, eng.dtype, next(eng.model.parameters()).dtype) == ("cpu", "float32", torch.float32)
    bf16 = HFEngine(str(tiny_run), dtype="bfloat16")
    assert (bf16.dtype, next(bf16.model.parameters()).dtype) == ("bfloat16", torch.bfloat16)
    seen = []
    monkeypatch.setattr(hf_engine, "resolve_dtype", lambda *a: seen.append(a) or "float32")
    HFEngine(str(tiny_run), device="cpu")
    assert seen == [(None, "cpu", "float32")]  # the checkpoint's own dtype, read from its config


def test_a_prompt_of_no_tokens_is_one_line_for_direct_callers_too(tiny_chat_model):
    """The chat model's tokenizer adds no BOS, so "" has no token: the engine (which `posttrain probe` calls without
    `eval`'s up-front check) refuses it in one line instead of answering from padding alone."""
    from posttrain.core.errors import UsageError

    engine = HFEngine(str(tiny_chat_model), batch_size=4)
    for call in (lambda: engine.generate(["Which country is Lyon in?", ""], max_tokens=2),
                 lambda: engine.score([""], [" Paris."])):
        with pytest.raises(UsageError, match="^prompt 1 is empty|^prompt 0 is empty"):
            call()
    assert len(engine.generate(["Which country is Lyon in?"], max_tokens=2)) == 1


def _direct_stats(eng, prompt, cont, adapter):
    """One text, no padding: the continuation's log-probs, argmax flags and vocabulary moments of log p, in fp64."""
    eng._use(adapter)
    ids = eng.tok(prompt + cont)["input_ids"]
    start = common_prefix(eng.tok(prompt)["input_ids"], ids)
    with torch.no_grad():
        logp = torch.log_softmax(eng.model(torch.tensor([ids])).logits[0].double(), -1)[start - 1:len(ids) - 1]
    targets = torch.tensor(ids[start:])
    p = logp.exp()
    mu = (p * logp).sum(-1)
    return {"logprobs": logp[torch.arange(len(targets)), targets].tolist(),
            "argmax": (logp.argmax(-1) == targets).tolist(), "mean": mu.tolist(),
            "std": ((p * logp**2).sum(-1) - mu**2).sqrt().tolist()}


def test_token_stats_match_a_direct_forward_pass(eng, tiny_lora, monkeypatch):
    prompts = PROMPTS + [" ".join(PROMPTS)]
    conts = [" C1 .", " 1941 .", " K2 .", " N1 .", " P5 lives in C3 .", " 1950 .", " K1 .", " I do not know about P0 .",
             " was born in C2 . Question: When was K2 founded ? Answer: 1941 ."]
    adapter = [str(tiny_lora) if i % 3 else None for i in range(len(prompts))]
    want = [_direct_stats(eng, p, c, a) for p, c, a in zip(prompts, conts, adapter)]
    flags = [f for w in want for f in w["argmax"]]
    assert any(flags) and not all(flags)
    for size in (128, 2):
        eng.batch_size = size
        got = eng.token_stats(prompts, conts, adapter=adapter)
        assert [g["logprobs"] for g in got] == eng.score(prompts, conts, adapter=adapter)  # the same forward pass
        for g, w in zip(got, want):
            assert g["argmax"] == w["argmax"]
            for key in ("logprobs", "mean", "std"):
                assert g[key] == pytest.approx(w[key], abs=1e-4), key
    eng.batch_size = 128
    monkeypatch.setattr(hf_engine, "SCORE_CHUNK_BYTES", 1)  # one row per log-softmax chunk
    for g, w in zip(eng.token_stats(prompts, conts, adapter=adapter), want):
        assert g["argmax"] == w["argmax"] and g["std"] == pytest.approx(w["std"], abs=1e-4)


def _manual_grad_norms(eng, prompt, cont, adapter):
    """Backward of the mean continuation NLL through .grad, over every parameter (base) or the adapter's LoRA ones."""
    eng._use(adapter)
    own = None if adapter is None else f".{eng._adapters[adapter]}."
    chosen = [w for n, w in eng.model.named_parameters() if own is None or own in f".{n}."]
    flags = {w: w.requires_grad for w in eng.model.parameters()}
    for w in flags:
        w.requires_grad_(any(w is c for c in chosen))
    ids = eng.tok(prompt + cont)["input_ids"]
    start = common_prefix(eng.tok(prompt)["input_ids"], ids)
    eng.model.zero_grad(set_to_none=True)
    logp = torch.log_softmax(eng.model(torch.tensor([ids])).logits[0].float(), -1)
    (-logp[torch.arange(start - 1, len(ids) - 1), ids[start:]].mean()).backward()
    norms = [w.grad.norm().item() for w in chosen if w.grad is not None]
    eng.model.zero_grad(set_to_none=True)
    for w, f in flags.items():
        w.requires_grad_(f)
    return norms


def test_grad_norms_match_a_manual_backward_and_leave_the_model_as_it_was(eng, tiny_lora):
    prompts, conts = PROMPTS[:4], [" C1 .", " 1941 .", " K2 .", " N1 ."]
    adapter = [None, str(tiny_lora), None, str(tiny_lora)]
    before = {n: w.requires_grad for n, w in eng.model.named_parameters()}
    got = eng.grad_norms(prompts, conts, adapter=adapter)
    assert {n: w.requires_grad for n, w in eng.model.named_parameters()} == before
    assert all(w.grad is None for w in eng.model.parameters()) and not eng.model.training
    want = [_manual_grad_norms(eng, p, c, a) for p, c, a in zip(prompts, conts, adapter)]
    lora = [n for n in before if "lora_" in n]
    assert [len(g) for g in got] == [len(before) - len(lora), len(lora), len(before) - len(lora), len(lora)]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, rel=1e-4) and all(x > 0 for x in g)
    assert got[0] != got[2]  # per sample
