"""DCO: the loss against 60-digit arithmetic (N = 1 is CE, the gradient is F·∇CE, finite from p = 1 down to
p = e^−2000), the sampled estimate's weights, the exact pass@k evaluation, and training behaviour: CE pushes
confidence towards 1 where DCO stops once N samples would find the answer."""

import math

import mpmath
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL
from posttrain.core.errors import ConfigError
from posttrain.data_gen import reasoning
from posttrain.trainers.base import answer_logps
from posttrain.trainers.dco import DCOConfig, DCOTrainer, coverage_weight, dco_loss


def exact_loss(s: float, n: int) -> float:
    """−log(1 − (1 − e^s)^N), computed with 60 significant digits of p."""
    with mpmath.workdps(60 + int(-s / 2.3)):
        p = mpmath.exp(mpmath.mpf(s))
        return float(-mpmath.log(1 - (1 - p) ** n))


def exact_weight(p: float, n: int) -> float:
    return exact_weight_at(math.log(p), n)


def exact_weight_at(s: float, n: int) -> float:
    """F(N, e^s), with p = e^s exact (e^−2000 underflows a float)."""
    with mpmath.workdps(60 + int(-s / 2.3)):
        p = mpmath.exp(mpmath.mpf(s))
        return float(n * (1 - p) ** (n - 1) * p / (1 - (1 - p) ** n))


def loss_and_grad(s: float, n: int) -> tuple[float, float]:
    x = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    loss = dco_loss(x, n)
    loss.backward()
    return loss.item(), x.grad.item()


def test_n1_is_sequence_cross_entropy():
    logits = torch.randn(3, 6, 11, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, -100, 4, 2, 7, 1], [-100, 3, 3, 9, -100, -100], [-100, -100, -100, -100, 5, 0]])
    s, _ = answer_logps(logits, labels)
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), reduction="none").view(3, 5)
    assert torch.allclose(dco_loss(s, 1), ce.sum(-1).double(), atol=1e-5)  # summed over each answer's tokens
    assert dco_loss(s, 1).dtype == torch.float64


def test_answer_logps_keeps_the_doubt_of_a_near_sure_answer_that_float32_rounds_away():
    """s comes from float64 log-softmax (base.answer_logps, shared with NPO and SimNPO): a token at logit margin 20
    over 4 others has log p = −log(1 + 4e^−20) ≈ −8.2e-9, which float32 rounds to 0 (1 − p lost)."""
    logits = torch.zeros(1, 3, 5)
    logits[0, 0, 2] = logits[0, 1, 4] = 20.0
    labels = torch.tensor([[-100, 2, 4]])
    assert F.log_softmax(logits[0, :2], -1)[[0, 1], [2, 4]].tolist() == [0.0, 0.0]  # float32
    s, n = answer_logps(logits, labels)
    assert s.dtype == torch.float64 and n.tolist() == [2]
    assert s.item() == pytest.approx(-2 * math.log1p(4 * math.exp(-20)), rel=1e-9)


@pytest.mark.parametrize("p,n", [(0.3, 4), (0.01, 64), (0.2, 64), (0.9, 16), (1e-6, 2)])
def test_gradient_is_coverage_weight_times_ce_gradient(p, n):
    """dℓ_N/ds = −F(N, p): ∇ℓ_N = F(N, p) · ∇ℓ_CE, since ℓ_CE = −s."""
    value, grad = loss_and_grad(math.log(p), n)
    assert value == pytest.approx(exact_loss(math.log(p), n), rel=1e-9)
    assert -grad == pytest.approx(exact_weight(p, n), rel=1e-7)
    weight = coverage_weight(torch.tensor(p, dtype=torch.float64), n).item()
    assert weight == pytest.approx(exact_weight(p, n), rel=1e-7)
    # by hand, N = 4, p = 0.3: F = 4 · 0.7³ · 0.3 / (1 − 0.7⁴) = 0.54060...
    assert coverage_weight(torch.tensor(0.3), 4).item() == pytest.approx(4 * 0.343 * 0.3 / (1 - 0.2401))


def test_gradient_through_a_model_is_f_times_the_ce_gradient():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 7).double()
    x, labels = torch.randn(2, 4, 5, dtype=torch.float64), torch.tensor([[-100, 3, 1, 6], [-100, -100, 2, 2]])

    def grads(n):
        layer.zero_grad()
        s, _ = answer_logps(layer(x), labels)
        dco_loss(s, n)[0].backward()
        return layer.weight.grad.clone(), s[0].exp().item()

    ce, p = grads(1)
    dco, _ = grads(8)
    assert torch.allclose(dco, exact_weight(p, 8) * ce, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("s", [0.0, -1e-30, -1e-13, -1e-8, -0.5, -30.0, -44.0, -200.0, -800.0, -2000.0])
@pytest.mark.parametrize("n", [2, 64, 1024])
def test_stable_for_p_near_0_and_1(s, n):
    value, grad = loss_and_grad(s, n)
    assert math.isfinite(value) and math.isfinite(grad) and value >= 0
    assert 0 <= -grad <= 1 + 1e-12  # F in [0, 1]
    if s <= -1e-8:  # above that, s is capped at −1e-12 (p = 1 to float64 precision)
        assert value == pytest.approx(exact_loss(s, n), rel=1e-9, abs=1e-300)
        assert -grad == pytest.approx(float(exact_weight_at(s, n)), rel=1e-6, abs=1e-300)
    if s < -100:
        assert value == pytest.approx(-math.log(n) - s) and grad == -1.0


def test_coverage_weight_limits():
    p = torch.tensor([0.0, 1e-12, 0.01, 0.1, 0.5, 0.99, 1.0])
    for n in (2, 16, 64):
        f = coverage_weight(p, n)
        assert f[0] == 1.0 and f[-1] == 0.0 and torch.all(f[1:] <= f[:-1])
    assert torch.all(coverage_weight(p, 1) == 1.0)
    # past p ≈ 1/N the weight is small: a problem solved often enough stops pulling confidence up
    assert coverage_weight(torch.tensor(0.2), 64).item() < 1e-4 < coverage_weight(torch.tensor(0.01), 64).item()


@pytest.mark.parametrize("bad,match", [
    (dict(n=0), "n must be at least 1"),
    (dict(p_estimate="mode"), "p_estimate must be"),
    (dict(p_samples=0), "p_samples"),
    (dict(completion_only_loss=False), "completion_only_loss"),
    (dict(packing=True), "packing"),
    (dict(padding_free=True), "padding_free"),
    (dict(eval_pass_at=[0, 4]), "eval_pass_at"),
])
def test_config_rejects(bad, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        DCOConfig(output_dir=str(tmp_path), **bad)


def test_trainer_rejects_bad_verifier_and_short_max_length(tmp_path):
    from posttrain.core import modeling

    ds = reasoning.generate(reasoning.Config(task="multiply", n_train=8, n_test=1))["train"].select_columns(
        ["prompt", "completion"])
    tok = modeling.build_word_tokenizer(list(ds["prompt"]) + list(ds["completion"]))
    model = modeling.scratch_llama(tok, 32, 1, 1, 64, 128)
    with pytest.raises(ConfigError, match="would cut an answer"):
        DCOTrainer(model, DCOConfig(output_dir=str(tmp_path), max_length=8), train_dataset=ds, processing_class=tok)
    with pytest.raises(ConfigError, match="not an importable"):
        DCOTrainer(model, DCOConfig(output_dir=str(tmp_path), p_estimate="sampled", verifier="nowhere:f"),
                   train_dataset=ds, processing_class=tok)


def small_multiply(tmp_path, form="direct", n_train=32):
    from posttrain.gen import gen

    return gen("reasoning", tmp_path / "mult", ["--task", "multiply", "--form", form, "--n_train", str(n_train),
                                                "--n_valid", "16", "--n_test", "16"])


def train_dco(data, out, *flags):
    from posttrain.train import train

    return train("recipes/dco/direct.yaml", ["--dataset_path", str(data), "--output_dir", str(out), *TINY_MODEL,
                                             "--dataset_eval_split", "train", "--logging_steps", "1", *flags])


def evals(run) -> list[dict]:
    import json

    return [e for e in json.loads((run / "run.json").read_text())["log_history"] if "eval_exact_pass@1" in e]


@pytest.mark.slow
def test_dco_limits_confidence_where_ce_does_not(tmp_path):
    """Trained on the same problems: CE drives each answer's probability towards 1; DCO(N=64) stops pulling once
    an answer is likely enough to be among 64 samples, so pass@64 on them is as high and pass@1 far lower."""
    data = small_multiply(tmp_path)
    common = ("--max_steps", "150", "--per_device_train_batch_size", "32", "--learning_rate", "3e-3",
              "--eval_steps", "150", "--save_steps", "150")
    ce = evals(train_dco(data, tmp_path / "ce", "--n", "1", *common))[-1]
    dco = evals(train_dco(data, tmp_path / "dco", "--n", "64", *common))[-1]
    assert ce["eval_exact_pass@64"] > 0.95 and dco["eval_exact_pass@64"] > 0.95
    assert ce["eval_exact_pass@1"] > 0.9 and dco["eval_exact_pass@1"] < 0.5


@pytest.mark.slow
def test_exact_pass_at_k_matches_the_engines_probability(tmp_path):
    """The eval metric equals 1 − (1 − p)^k with p from the HF engine's scores of the gold completion."""
    from datasets import load_from_disk

    from posttrain.evals.hf_engine import HFEngine

    data = small_multiply(tmp_path)
    run = train_dco(data, tmp_path / "run", "--max_steps", "20", "--eval_steps", "20", "--save_steps", "20",
                    "--learning_rate", "3e-3")
    logged = evals(run)[-1]
    train = load_from_disk(str(data))["train"]
    scores = HFEngine(str(run)).score(train["prompt"], train["completion"])
    p = torch.tensor([math.exp(sum(s)) for s in scores], dtype=torch.float64)
    for k in (1, 4, 16, 64):
        assert logged[f"eval_exact_pass@{k}"] == pytest.approx(float((1 - (1 - p) ** k).mean()), rel=1e-4)


@pytest.mark.parametrize("verifier,weight", [("operator:ne", 0.0), ("operator:eq", 1.0)])
def test_sampled_estimate_weights_ce_by_f_of_the_verified_fraction(tmp_path, verifier, weight):
    """DCO_a: p̂ = the fraction of sampled completions the verifier accepts; every sample accepted (p̂ = 1) gives
    F = 0 and leaves the model unchanged, none (p̂ = 0) gives F = 1: the trace's CE."""
    from posttrain.core import modeling

    ds = reasoning.generate(reasoning.Config(task="multiply", n_train=8, n_test=1))["train"].select_columns(
        ["prompt", "completion"])
    tok = modeling.build_word_tokenizer(list(ds["prompt"]) + list(ds["completion"]))
    model = modeling.scratch_llama(tok, 32, 1, 1, 64, 128)
    before = [p.detach().clone() for p in model.parameters()]
    args = DCOConfig(output_dir=str(tmp_path), p_estimate="sampled", verifier=verifier, p_samples=3, max_new_tokens=4,
                     max_steps=1, per_device_train_batch_size=8, logging_steps=1, report_to="none", n=16,
                     save_strategy="no", learning_rate=1e-2)
    trainer = DCOTrainer(model, args, train_dataset=ds, processing_class=tok)
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["dco/p_hat"] == 1.0 - weight and log["dco/weight"] == weight
    assert log["loss"] == pytest.approx(weight * log["dco/nll"], rel=1e-5)
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert changed == (weight > 0)


@pytest.mark.slow
def test_several_eval_splits_and_the_best_checkpoint(tmp_path):
    """``dataset_eval_split: valid,test``: each split evaluated (eval_<split>_ metrics), both kept in the run; the
    run is the checkpoint best on the metric the recipe names, and the last one is kept beside it."""
    import json

    from datasets import load_from_disk

    from posttrain.core.errors import UsageError

    data = small_multiply(tmp_path)
    with pytest.raises(UsageError, match="unknown split 'nope'"):
        train_dco(data, tmp_path / "bad", "--dataset_eval_split", "valid,nope", "--max_steps", "2")
    run = train_dco(data, tmp_path / "run", "--dataset_eval_split", "valid,test", "--max_steps", "30",
                    "--eval_steps", "10", "--save_steps", "10", "--metric_for_best_model", "valid_exact_pass@64",
                    "--learning_rate", "3e-3")
    log = json.loads((run / "run.json").read_text())["log_history"]
    evals = [h for h in log if "eval_valid_exact_pass@64" in h]
    assert [h["step"] for h in evals] == [10, 20, 30]
    assert [h["step"] for h in log if "eval_test_exact_pass@1" in h] == [10, 20, 30]
    assert set(load_from_disk(str(run / "train_data"))) == {"train", "eval_valid", "eval_test"}
    best = max(evals, key=lambda h: h["eval_valid_exact_pass@64"])["step"]
    kept = set(run.glob("checkpoint-*"))  # the last and the best are always among the two kept
    assert {run / "checkpoint-30", run / f"checkpoint-{best}"} <= kept and len(kept) <= 2
    from safetensors.torch import load_file

    kept = load_file(str(run / f"checkpoint-{best}" / "model.safetensors"))
    assert all(torch.equal(v, load_file(str(run / "model.safetensors"))[k]) for k, v in kept.items())
