import torch

from posttrain.core import modeling
from posttrain.trainers.sft import SFTConfig, SFTTrainer

TEXTS = ["Question: Where was P1 born ? Answer:", " C2 .", "P1 was born in C2 ."]


def test_word_tokenizer_adds_bos_and_splits_eos_off_the_last_word():
    tok = modeling.build_word_tokenizer(TEXTS)
    ids = tok("Question: Where was P1 born ? Answer: C2 .</s>")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids[-1] == tok.eos_token_id and ids[-2] == tok.convert_tokens_to_ids(".")
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == " Question: Where was P1 born ? Answer: C2 ."
    assert tok("P9 unknownword")["input_ids"][1:] == [tok.unk_token_id] * 2


def test_decoding_puts_single_spaces_between_words_and_before_a_continuation(tmp_path):
    """Every word decodes with the space before it: text decoded from ids encodes back to them, and a continuation
    decoded on its own reads right after its prompt — also with the clean-up the text-generation pipeline forces."""
    tok = modeling.build_word_tokenizer(TEXTS)
    tok.save_pretrained(tmp_path)
    tok = modeling.load_tokenizer(str(tmp_path))  # as a user loads it
    text = "Question: Where was P1 born ? Answer: C2 ."
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == "<s> " + text and tok.decode(ids, skip_special_tokens=True) == " " + text
    assert tok(tok.decode(ids, skip_special_tokens=True))["input_ids"] == ids
    n = len(tok(TEXTS[0])["input_ids"])
    for clean_up in (None, False, True):
        assert tok.decode(ids[n:], skip_special_tokens=True, clean_up_tokenization_spaces=clean_up) == " C2 ."
    assert TEXTS[0] + tok.decode(ids[n:]) == text
    assert tok.decode(tok("P1   born\tin\n C2")["input_ids"], skip_special_tokens=True) == " P1 born in C2"


def test_text_generation_pipeline_reads_words_separated_by_single_spaces(tiny_run):
    """A user's own `pipeline("text-generation", model=RUN)` (which decodes the new tokens on their own, with
    clean-up on) prints the prompt, one space, and the generated words separated by single spaces."""
    from transformers import pipeline

    prompt = "Question: Where was P7 born ? Answer:"
    pipe = pipeline("text-generation", model=str(tiny_run))
    text = pipe(prompt, max_new_tokens=4, do_sample=False)[0]["generated_text"]
    tok = pipe.tokenizer
    enc = tok(prompt, return_tensors="pt")
    new = pipe.model.generate(**enc, max_new_tokens=4, do_sample=False)[0, enc["input_ids"].shape[1]:]
    words = [w for w in tok.convert_ids_to_tokens(new.tolist()) if w not in tok.all_special_tokens]
    assert words and text == prompt + "".join(" " + w for w in words)
    assert "  " not in text and tok(text)["input_ids"][:len(enc["input_ids"][0]) + len(words)] == (
        enc["input_ids"][0].tolist() + tok.convert_tokens_to_ids(words))


def test_trl_sft_sequences_have_one_bos_and_end_with_eos(tmp_path):
    from datasets import Dataset

    tok = modeling.build_word_tokenizer(TEXTS)
    model = modeling.scratch_llama(tok, hidden_size=128, num_hidden_layers=1, num_attention_heads=2)
    ds = Dataset.from_list([{"prompt": TEXTS[0], "completion": TEXTS[1]}])
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, report_to="none")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    row = trainer.train_dataset[0]
    ids, labels = row["input_ids"], row["labels"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1 and ids[-1] == tok.eos_token_id
    # the loss covers the completion and its EOS, not the prompt
    assert tok.decode([t for t in labels if t != -100]) == " C2 . </s>"
    assert not args.bf16 and not args.gradient_checkpointing  # CPU: fp32, no checkpointing


def test_scratch_llama_is_seeded_and_has_head_dim_64():
    tok = modeling.build_word_tokenizer(TEXTS)
    a = modeling.scratch_llama(tok, hidden_size=128, num_hidden_layers=1, num_attention_heads=2, seed=3)
    b = modeling.scratch_llama(tok, hidden_size=128, num_hidden_layers=1, num_attention_heads=2, seed=3)
    assert a.config.hidden_size // a.config.num_attention_heads == 64
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_saved_model_loads_by_path_like_a_hub_model(tmp_path):
    tok = modeling.build_word_tokenizer(TEXTS)
    model = modeling.scratch_llama(tok, hidden_size=128, num_hidden_layers=1, num_attention_heads=2)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = modeling.load_model(str(tmp_path))
    tok2 = modeling.load_tokenizer(str(tmp_path))
    x = tok2(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**x).logits, loaded(**x).logits)
    assert tok2(TEXTS[0])["input_ids"] == tok(TEXTS[0])["input_ids"]


def test_weight_decay_skips_embeddings():
    tok = modeling.build_word_tokenizer(TEXTS)
    model = modeling.scratch_llama(tok, hidden_size=128, num_hidden_layers=1, num_attention_heads=2)
    names = SFTTrainer.get_decay_parameter_names(None, model)
    assert "model.embed_tokens.weight" not in names
    assert "model.layers.0.self_attn.q_proj.weight" in names
    assert not any("norm" in n for n in names)


def test_adapter_differs_names_the_lora_settings_an_adapter_was_not_made_with(tmp_path):
    """``init_adapter``'s check: module lists by their last name components, ``all-linear`` as PEFT resolves it on
    the base model (found from its config, on the meta device)."""
    from peft import LoraConfig, get_peft_model

    tok = modeling.build_word_tokenizer(TEXTS)
    base = modeling.scratch_llama(tok, hidden_size=128, num_hidden_layers=1, num_attention_heads=2)
    base.save_pretrained(tmp_path / "base")
    linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert modeling.linear_layers(str(tmp_path / "base")) == linear  # not lm_head
    get_peft_model(base, LoraConfig(r=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")) \
        .save_pretrained(tmp_path / "adapter")
    adapter = str(tmp_path / "adapter")

    def differs(**settings):
        return modeling.adapter_differs(adapter, settings, lambda: modeling.linear_layers(str(tmp_path / "base")))

    assert differs(r=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM") == {}
    assert differs(target_modules=sorted(linear, reverse=True)) == {}
    assert differs(r=4, use_dora=True) == {"r": 8, "use_dora": False}
    assert differs(target_modules=["q_proj", "v_proj"]) == {"target_modules": sorted(linear)}
