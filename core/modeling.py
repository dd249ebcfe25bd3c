"""Load a base model and tokenizer by hub name or local path, or build the testbed's from scratch.

Real models go through ``from_pretrained`` exactly as with a hub checkpoint (safetensors only, remote code off
unless asked). The testbed builds a word-level tokenizer from its corpus and a tiny Llama whose head size (64)
suits vLLM's CPU attention.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from posttrain.core.embedded import resolve_name
from posttrain.core.errors import UsageError

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def build_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the whitespace-separated words of ``texts``.

    Every sequence starts with ``<s>`` (added by the post-processor, so prompts at training and at inference are
    encoded alike); TRL's SFT appends ``</s>`` to completions. Words are sorted, so the vocabulary depends only on
    the set of words, not on their order.

    Decoding puts the spaces back: each word comes with the space before it, so ids decode to their words joined by
    single spaces (after one leading space: ``" Question: Where was P1 born ? Answer: C2 ."``), text decoded from
    ids encodes back to them, and a continuation decoded on its own reads right after its prompt (``prompt +
    decode(new_ids)`` = ``"... Answer: C2 ."``), as ``generate``, the text-generation pipeline and vLLM put them
    together. The model is a BPE without merges that looks whole words up first (``ignore_merges``) — word-level
    for every known word; an unknown one falls back to its characters, each ``<unk>`` unless it is a word itself
    — rather than tokenizers' ``WordLevel``: transformers' text-generation pipeline forces its clean-up
    (``" ."`` -> ``"."``) on every tokenizer but BPE, and glued punctuation is not a word the model knows.
    """
    specials = list(SPECIAL_TOKENS.values())
    words = sorted({w for t in texts for w in t.split()} - set(specials))
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=True, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    tok.decoder = decoders.Replace(Regex("^(?!<s>$)"), " ")  # a space before every token but BOS
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **SPECIAL_TOKENS)


def scratch_llama(
    tokenizer,
    hidden_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    intermediate_size: int = 512,
    max_position_embeddings: int = 128,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised Llama sized for ``tokenizer`` (seeded: the same arguments give the same weights)."""
    if hidden_size % num_attention_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None):
    """``AutoTokenizer.from_pretrained`` (an embedded model's name resolved to its directory); pad defaults to eos."""
    tok = AutoTokenizer.from_pretrained(resolve_name(name_or_path), trust_remote_code=trust_remote_code,
                                        revision=revision)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name_or_path: str, dtype: str | None = "float32", trust_remote_code: bool = False, revision: str | None = None,
    quantization=None,
):
    """``AutoModelForCausalLM.from_pretrained`` with safetensors only (an embedded model's name, such as
    ``smollm2-135m-instruct``, resolved to its directory, fetched on first use); ``dtype`` is a torch dtype name or
    "auto"; ``quantization``: a bitsandbytes config (QLoRA, CUDA only), the model then placed as TRL places k-bit
    models."""
    torch_dtype = dtype if dtype in (None, "auto") else getattr(torch, dtype)
    placement = {}
    if quantization is not None:
        from trl import get_kbit_device_map

        placement = {"quantization_config": quantization, "device_map": get_kbit_device_map()}
    return AutoModelForCausalLM.from_pretrained(
        resolve_name(name_or_path), dtype=torch_dtype, trust_remote_code=trust_remote_code, revision=revision,
        use_safetensors=True, **placement,
    )


def check_adapter(path: str, what: str = "adapter") -> None:
    if not (Path(path) / "adapter_config.json").is_file():
        raise UsageError(f"{what} is not a LoRA adapter directory (no adapter_config.json): {path}")


def load_adapter(model, path: str, trainable: bool = True):
    """``model`` wrapped in the LoRA adapter saved at ``path`` (PEFT's ``from_pretrained``; trainable: training goes
    on from its weights)."""
    from peft import PeftModel

    check_adapter(path)
    return PeftModel.from_pretrained(model, path, is_trainable=trainable)


def adapter_base(path: str) -> str | None:
    """The base model a LoRA adapter directory names (``base_model_name_or_path``); None when ``path`` is no
    adapter directory."""
    config = Path(path) / "adapter_config.json"
    return json.loads(config.read_text()).get("base_model_name_or_path") if config.is_file() else None


MODULE_SETTINGS = ("target_modules", "modules_to_save", "target_parameters")  # LoraConfig's lists of names


def linear_layers(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None) -> set[str]:
    """What PEFT's ``all-linear`` targets in a model: the last name components of its linear layers but the output
    layer, found from its config alone (the model built on the meta device: no weights read)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_name(name_or_path), trust_remote_code=trust_remote_code,
                                        revision=revision)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    head = model.get_output_embeddings()
    return {n.rsplit(".", 1)[-1] for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)
            and mod is not head}


def adapter_differs(path: str, settings: dict, all_linear=None) -> dict:
    """Of the LoRA ``settings`` (PEFT ``LoraConfig`` names -> values), those the adapter saved at ``path`` was not
    made with, each with the adapter's own value (a list of modules as its names' sorted last components). Lists of
    modules are compared by those (``q_proj``); ``all-linear`` is ``all_linear()`` (``linear_layers`` of the base
    model); any other string (a regex) as it is written."""
    saved = json.loads((Path(path) / "adapter_config.json").read_text())

    def names(value):
        if value == "all-linear" and all_linear is not None:
            return set(all_linear())
        return {value} if isinstance(value, str) else {str(n).rsplit(".", 1)[-1] for n in value or ()}

    return {k: sorted(names(saved.get(k))) if k in MODULE_SETTINGS else saved.get(k) for k, v in settings.items()
            if (names(v) != names(saved.get(k)) if k in MODULE_SETTINGS else v != saved.get(k))}


def load_frozen(path: str, dtype: str | None = "float32", trust_remote_code: bool = False):
    """A model for inference only, without gradients, in eval mode: a model directory, or a LoRA run directory
    loaded on the base model its adapter config names and merged into it (one plain forward per call)."""
    if (base := adapter_base(path)) is not None:
        model = load_adapter(load_model(base, dtype, trust_remote_code), path, trainable=False).merge_and_unload()
    else:
        model = load_model(path, dtype, trust_remote_code)
    return model.eval().requires_grad_(False)
