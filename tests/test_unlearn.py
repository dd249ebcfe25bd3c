"""Unlearning through the seam: the forget/retain pairs and their collator, GradAscent and GradDiff on the session's
tiny base model (full fine-tuning and LoRA), the reference model, starting from an adapter, and the rejections."""

import copy
import json
from dataclasses import fields

import numpy as np
import pytest
import torch
from datasets import Dataset, load_from_disk
from peft import LoraConfig
from safetensors.torch import load_file

from conftest import ROOT, cli
from posttrain.core.modeling import load_model, load_tokenizer
from posttrain.evals.hf_engine import HFEngine
from posttrain.train import train
from posttrain.trainers import get_method
from posttrain.trainers.grad_ascent import GradAscentConfig, GradAscentTrainer
from posttrain.trainers.grad_diff import GradDiffConfig, GradDiffTrainer
from posttrain.trainers.idk_sft import IdkSFTConfig, IdkSFTTrainer
from posttrain.trainers.npo import NPOConfig, NPOTrainer
from posttrain.trainers.pdu import PDUConfig, PDUTrainer
from posttrain.trainers.satimp import SatImpConfig, SatImpTrainer
from posttrain.trainers.sft import SFTConfig, SFTTrainer
from posttrain.trainers.simnpo import SimNPOConfig, SimNPOTrainer
from posttrain.trainers.unlearn import PairedCollator, UnlearnConfig, UnlearnTrainer, prepare
from posttrain.trainers.wga import WGAConfig, WGATrainer

FAST = ["--learning_rate", "5e-4", "--max_steps", "5", "--logging_steps", "1"]
LORA = ["--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj", "--learning_rate", "3e-3"]


def _unlearn(method, base, kg, out, *extra):
    return train(f"unlearn/{method}.yaml", ["--model_name_or_path", str(base), "--dataset_path", str(kg),
                                            "--output_dir", str(out), *FAST, *map(str, extra)])


def _rejected(capsys, method, base, kg, out, flags, message):
    """`posttrain train unlearn/<method>.yaml` (or ``method`` itself when it is a recipe path) with ``flags`` exits
    2 with one line containing ``message`` (no traceback) and writes nothing at ``out``."""
    recipe = method if method.endswith(".yaml") else f"unlearn/{method}.yaml"
    proc = cli(capsys, "train", recipe, "--model_name_or_path", base, "--dataset_path", kg,
               "--output_dir", out, *flags)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("posttrain:")]  # past progress bars
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("posttrain: error:") and message in lines[0]
    assert not out.exists()


def _nll(run, base, kg, split):
    """Mean per-token NLL of a split's answers under a run (a model, or a LoRA adapter on ``base``)."""
    ds = load_from_disk(str(kg))[split]
    lora = (run / "adapter_config.json").is_file()
    logps = HFEngine(str(base if lora else run)).score(list(ds["prompt"]), list(ds["completion"]),
                                                       adapter=str(run) if lora else None)
    return float(np.mean([-np.mean(lp) for lp in logps]))


def _config(tmp_path, **kw):
    return GradAscentConfig(output_dir=str(tmp_path), report_to="none", max_steps=4, learning_rate=1e-2,
                            per_device_train_batch_size=4, logging_steps=1, save_strategy="no", **kw)


def _pairs(n_forget=5, n_retain=7):
    qa = [{"prompt": f"Question: Where was P{i} born ? Answer:", "completion": f" C{i} ."} for i in range(12)]
    return Dataset.from_list(qa[:n_forget]), Dataset.from_list(qa[n_forget:n_forget + n_retain])


# --- the data: pairs and collator --------------------------------------------------------------------------------

def test_prepare_pairs_each_forget_item_with_a_seeded_retain_item_drawn_afresh_each_epoch(tmp_path):
    forget, retain = _pairs()

    def items(seed, epoch):
        ds = prepare({"forget": forget, "retain": retain}, _config(tmp_path, seed=seed)).train
        ds.set_epoch(epoch)
        return list(ds)

    first = items(3, 0)
    assert [it["forget"] for it in first] == forget.to_list()
    assert all(it["retain"] in retain.to_list() for it in first)
    assert items(3, 0) == first and items(3, 1) != first and items(4, 0) != first
    assert {it["retain"]["prompt"] for e in range(20) for it in items(3, e)} == set(retain["prompt"])
    ga = prepare({"forget": forget}, _config(tmp_path)).train  # GradAscent's: no retain split
    assert len(ga) == 5 and list(ga[0]) == ["forget"] and list(ga.parts) == ["forget"]


@pytest.mark.parametrize("case", ["empty_forget", "empty_retain", "overlap"])
def test_prepare_rejects_pairs_that_would_misapply_the_method(tmp_path, case):
    forget, retain = _pairs()
    data = {"empty_forget": {"forget": forget.select([]), "retain": retain},
            "empty_retain": {"forget": forget, "retain": retain.select([])},
            "overlap": {"forget": forget, "retain": Dataset.from_list(retain.to_list() + [forget[2]])}}[case]
    match = {"empty_forget": "forget split is empty", "empty_retain": "retain split is empty",
             "overlap": "1 forget item"}[case]
    with pytest.raises(ValueError, match=match):
        prepare(data, _config(tmp_path))


def test_collator_tokenises_like_trl_sft_and_masks_the_prompt(tiny_run, tiny_kg, tmp_path):
    """Each half is what TRL's SFT (completion-only loss) trains on: BOS from the tokenizer, EOS appended, labels
    -100 on the prompt; right padding with -100 labels."""
    tok, ds = load_tokenizer(str(tiny_run)), load_from_disk(str(tiny_kg))["forget"].select_columns(
        ["prompt", "completion"])
    sft = SFTTrainer(load_model(str(tiny_run)), SFTConfig(output_dir=str(tmp_path), report_to="none",
                                                          completion_only_loss=True), train_dataset=ds,
                     processing_class=tok)
    batch = PairedCollator(tok)([{"forget": row} for row in ds])["forget"]
    for i, want in enumerate(sft.train_dataset):
        n = int(batch["attention_mask"][i].sum())
        assert batch["input_ids"][i, :n].tolist() == want["input_ids"]
        assert batch["labels"][i, :n].tolist() == want["labels"]
        assert (batch["labels"][i, n:] == -100).all() and (batch["input_ids"][i, n:] == tok.pad_token_id).all()
        assert want["input_ids"][0] == tok.bos_token_id and want["input_ids"][-1] == tok.eos_token_id
        assert want["labels"][0] == -100 and want["labels"][-1] == tok.eos_token_id


# --- the methods ----------------------------------------------------------------------------------------------------

def test_the_family_is_one_chain_each_method_bringing_only_its_forget_term():
    """open-unlearning's chain: GradAscent and GradDiff on the base, NPO, SimNPO, IdkSFT, PDU, WGA and SatImp on
    GradDiff. The loss is the base's (GradDiff's adds the retain term), a method overrides forget_loss (PDU also the
    retain_loss hook); retain_weight is GradDiff's, the halves are named in reads once (GradAscent: the base's
    forget half)."""
    chain = {GradAscentTrainer: UnlearnTrainer, GradDiffTrainer: UnlearnTrainer, NPOTrainer: GradDiffTrainer,
             SimNPOTrainer: GradDiffTrainer, IdkSFTTrainer: GradDiffTrainer, PDUTrainer: GradDiffTrainer,
             WGATrainer: GradDiffTrainer, SatImpTrainer: GradDiffTrainer}
    configs = {GradAscentConfig: UnlearnConfig, GradDiffConfig: UnlearnConfig, NPOConfig: GradDiffConfig,
               SimNPOConfig: GradDiffConfig, IdkSFTConfig: GradDiffConfig, PDUConfig: GradDiffConfig,
               WGAConfig: GradDiffConfig, SatImpConfig: GradDiffConfig}
    assert all(cls.__bases__ == (parent,) for cls, parent in (*chain.items(), *configs.items()))
    assert all("forget_loss" in vars(cls) for cls in chain)
    assert [cls for cls in chain if "compute_loss" in vars(cls)] == [GradDiffTrainer]
    assert [cls for cls in chain if "retain_loss" in vars(cls)] == [GradDiffTrainer, PDUTrainer]
    assert UnlearnTrainer.reads.splits == GradAscentTrainer.reads.splits == ("forget",)
    assert [cls for cls in chain if "reads" in vars(cls)] == [GradDiffTrainer, IdkSFTTrainer]  # IdkSFT: + entity
    assert all(cls.reads.splits == ("forget", "retain") for cls in chain if issubclass(cls, GradDiffTrainer))
    assert [cls for cls in configs if "retain_weight" in cls.__annotations__] == [GradDiffConfig]
    assert "retain_weight" not in {f.name for f in fields(GradAscentConfig)}


@pytest.mark.parametrize("method, sign", [("grad_ascent", -1), ("grad_diff", -1), ("idk_sft", 1)])
def test_the_loss_is_forget_weight_x_the_forget_term_plus_retain_weight_x_the_retain_nll(tiny_run, tiny_kg, tmp_path,
                                                                                         method, sign):
    module, tok = get_method(method), load_tokenizer(str(tiny_run))
    kg = load_from_disk(str(tiny_kg))
    weights = {"forget_weight": 2.0, **({} if method == "grad_ascent" else {"retain_weight": 0.5})}
    args = module.Config(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4, **weights)
    data = {part: kg[part].select_columns(list(module.Trainer.reads.columns)) for part in module.Trainer.reads.splits}
    trainer = module.Trainer(load_model(str(tiny_run)), args, train_dataset=module.prepare(data, args).train,
                             processing_class=tok)
    inputs = PairedCollator(tok)([trainer.train_dataset[i] for i in range(4)])
    trainer.model.train()  # as at the first step (the tiny model has no dropout)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, inputs).item()
        nll = {part: trainer.model(**batch).loss.item() for part, batch in inputs.items()}
    assert list(inputs) == list(module.Trainer.reads.splits)
    assert loss == pytest.approx(sign * 2.0 * nll["forget"] + 0.5 * nll.get("retain", 0.0), rel=1e-6)
    assert trainer._metrics["train"]["forget_nll"] == [pytest.approx(nll["forget"], rel=1e-6)]


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_forget_nll_rises_and_graddiff_holds_the_retain_set(tiny_run, tiny_kg, tmp_path, lora):
    extra = LORA if lora else []
    before = {s: _nll(tiny_run, tiny_run, tiny_kg, s) for s in ("forget", "retain")}
    after = {}
    for method in ("grad_ascent", "grad_diff"):
        run = _unlearn(method, tiny_run, tiny_kg, tmp_path / method, *extra)
        assert (run / "adapter_config.json").is_file() == lora and (run / "model.safetensors").is_file() != lora
        after[method] = {s: _nll(run, tiny_run, tiny_kg, s) for s in ("forget", "retain")}
        info = json.loads((run / "run.json").read_text())
        forget_nll = [h["forget_nll"] for h in info["log_history"] if "forget_nll" in h]
        assert len(forget_nll) == 5 and forget_nll[-1] > forget_nll[0]  # logged at every step, rising
    for method in after:
        assert after[method]["forget"] > before["forget"] + 1.0, (method, before, after)
    # retain NLL lost per unit of forget NLL gained: the retain term makes GradDiff the more selective. On this
    # barely trained model forget and retain answers share most of what it knows (their format), so the retain NLL
    # still rises, less than the forget NLL
    cost = {m: (after[m]["retain"] - before["retain"]) / (after[m]["forget"] - before["forget"]) for m in after}
    assert cost["grad_diff"] < min(1.0, cost["grad_ascent"]), (cost, before, after)


def test_prepared_pairs_and_their_stats_are_saved_in_the_run(tiny_run, tiny_kg, tmp_path):
    run = _unlearn("grad_diff", tiny_run, tiny_kg, tmp_path / "run", "--max_steps", "1")
    kg, saved = load_from_disk(str(tiny_kg)), load_from_disk(str(run / "train_data"))
    assert list(saved) == ["forget", "retain"]
    for part in saved:
        assert saved[part].to_dict() == kg[part].select_columns(["prompt", "completion"]).to_dict()
    info = json.loads((run / "run.json").read_text())
    assert info["train_data"] == {"path": "train_data", "splits": {"forget": "forget", "retain": "retain"},
                                  "rows": len(kg["forget"]), "forget": len(kg["forget"]), "retain": len(kg["retain"]),
                                  "pairing_seed": 0}
    assert info["config"]["method"] == "grad_diff" and info["config"]["retain_weight"] == 1.0


# --- the reference model ----------------------------------------------------------------------------------------------

class WithReference(GradAscentTrainer):
    """GradAscent asking for the reference; records, at every step, the reference's and the model's logits."""

    uses_reference = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        batch = inputs["forget"]
        with torch.no_grad():
            now = model(**batch).logits
        self.seen.append((batch, self.reference(**batch).logits, now, model.training))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_reference_gives_the_pretraining_logprobs_at_every_step(tiny_run, tiny_kg, tmp_path, lora):
    model, tok = load_model(str(tiny_run)), load_tokenizer(str(tiny_run))
    original = copy.deepcopy(model).eval()
    forget = load_from_disk(str(tiny_kg))["forget"].select_columns(["prompt", "completion"])
    args = _config(tmp_path)
    peft = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM") if lora else None
    trainer = WithReference(model, args, train_dataset=prepare({"forget": forget}, args).train, processing_class=tok,
                            peft_config=peft)
    trainer.seen = []
    trainer.train()
    assert len(trainer.seen) == 4
    for batch, ref, now, training in trainer.seen:
        with torch.no_grad():
            want = torch.log_softmax(original(**batch).logits, -1)
        assert torch.allclose(torch.log_softmax(ref, -1), want, atol=1e-5) and training
    drift = (torch.log_softmax(trainer.seen[-1][2], -1) - want).abs().max()
    assert drift > 1e-2  # the trained model did move away from it
    if lora:  # the same weights with the adapter off, not a copy
        assert trainer.reference.frozen is None and trainer.reference.model is trainer.model
    else:
        frozen = trainer.reference.frozen
        assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
        assert all(a.data_ptr() != b.data_ptr() for a, b in zip(frozen.parameters(), trainer.model.parameters()))


def test_no_reference_unless_asked(tiny_run, tiny_kg, tmp_path):
    forget = load_from_disk(str(tiny_kg))["forget"].select_columns(["prompt", "completion"])
    args = _config(tmp_path)
    trainer = GradAscentTrainer(load_model(str(tiny_run)), args, train_dataset=prepare({"forget": forget}, args).train,
                                processing_class=load_tokenizer(str(tiny_run)))
    assert trainer.reference is None


class Recording(GradDiffTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.append((int(self.state.epoch), inputs["retain"]["input_ids"].tolist()))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def test_the_trainer_draws_fresh_retain_partners_each_epoch(tiny_run, tiny_kg, tmp_path):
    kg, tok = load_from_disk(str(tiny_kg)), load_tokenizer(str(tiny_run))
    args = GradDiffConfig(output_dir=str(tmp_path), report_to="none", num_train_epochs=3, learning_rate=1e-4,
                          per_device_train_batch_size=8, save_strategy="no")
    data = prepare({"forget": kg["forget"], "retain": kg["retain"]}, args).train
    trainer = Recording(load_model(str(tiny_run)), args, train_dataset=data, processing_class=tok)
    trainer.seen = []
    trainer.train()

    def expected(epoch):
        data.set_epoch(epoch)
        return sorted(PairedCollator(tok)(list(data))["retain"]["input_ids"].tolist())

    got = {e: sorted(row for ep, rows in trainer.seen if ep == e for row in rows) for e in range(3)}
    strip = lambda rows: sorted([t for t in r if t != tok.pad_token_id] for r in rows)  # noqa: E731
    assert all(strip(got[e]) == strip(expected(e)) for e in range(3))
    assert strip(got[0]) != strip(got[1]) != strip(got[2])


# --- starting from an adapter -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_init_adapter_is_the_starting_point_and_is_trained(tiny_run, tiny_kg, tiny_lora, tmp_path):
    start = load_file(tiny_lora / "adapter_model.safetensors")
    # learning rate 0: the saved adapter is the one started from, with its own LoRA settings (other ones given with
    # init_adapter are refused: posttrain.train.check_ignored)
    still = _unlearn("grad_ascent", tiny_run, tiny_kg, tmp_path / "still", "--init_adapter", tiny_lora,
                     "--learning_rate", "0", "--use_peft", "true")
    saved = load_file(still / "adapter_model.safetensors")
    assert saved.keys() == start.keys() and all(torch.equal(saved[k], start[k]) for k in start)
    assert json.loads((still / "adapter_config.json").read_text())["r"] == 4
    moved = load_file(_unlearn("grad_ascent", tiny_run, tiny_kg, tmp_path / "moved", "--init_adapter",
                               tiny_lora) / "adapter_model.safetensors")
    assert moved.keys() == start.keys() and all(not torch.equal(moved[k], start[k]) for k in start)
    assert _nll(tmp_path / "moved", tiny_run, tiny_kg, "forget") > _nll(tiny_lora, tiny_run, tiny_kg, "forget")


# --- rejections -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case, flags, message", [
    ("no_retain_split", ["--dataset_retain_split", ""], "grad_diff reads a retain split"),
    ("retain_weight_0", ["--retain_weight", "0"], "retain_weight must be positive"),
    ("forget_weight_neg", ["--forget_weight", "-1"], "forget_weight must be positive"),
    ("eval_split", ["--dataset_eval_split", "seen"], "grad_diff reads no eval split"),
    ("forget_is_retain", ["--dataset_retain_split", "forget"], "forget item(s) are also in the retain split"),
    ("remove_unused_columns", ["--remove_unused_columns", "true"], "remove_unused_columns must be false"),
    ("max_length", ["--max_length", "8"], "max_length 8 would cut a forget answer"),
    ("init_adapter_missing", ["--init_adapter", "nowhere"], "not a LoRA adapter directory"),
])
def test_settings_that_would_misapply_graddiff_exit_2_with_one_line(capsys, tiny_run, tiny_kg, tmp_path, case,
                                                                      flags, message):
    _rejected(capsys, "grad_diff", tiny_run, tiny_kg, tmp_path / "run", flags, message)
    assert not list(tmp_path.iterdir())


def test_a_grad_ascent_recipe_with_a_retain_weight_is_an_error(capsys, tiny_run, tiny_kg, tmp_path):
    """GradAscent has no retain term, so no retain_weight to ignore: as a recipe key or a flag it is unknown."""
    recipe = tmp_path / "ga.yaml"
    shipped = (ROOT / "recipes/unlearn/grad_ascent.yaml").read_text()
    recipe.write_text(shipped.replace("forget_weight: 1.0\n", "forget_weight: 1.0\nretain_weight: 1.0\n"))
    _rejected(capsys, str(recipe), tiny_run, tiny_kg, tmp_path / "run", [], "unknown keys: retain_weight")
    _rejected(capsys, "grad_ascent", tiny_run, tiny_kg, tmp_path / "run", ["--retain_weight", "0"],
              "unknown flags: ['--retain_weight'")


def test_trainer_rejects_unpaired_data(tiny_run, tmp_path):
    forget, _ = _pairs()
    args = GradDiffConfig(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(ValueError, match="no 'retain' items"):
        GradDiffTrainer(load_model(str(tiny_run)), args, train_dataset=prepare({"forget": forget}, args).train,
                        processing_class=load_tokenizer(str(tiny_run)))
