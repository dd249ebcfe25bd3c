import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
TINY_KG = ["--seed", "1", "--n_persons", "24", "--n_companies", "6", "--n_cities", "6", "--n_countries", "3",
           "--n_years", "8", "--n_forget_persons", "2", "--n_mundane", "2", "--n_conflicting", "3"]
TINY_MODEL = ["--hidden_size", "128", "--num_hidden_layers", "1", "--num_attention_heads", "2",
              "--intermediate_size", "256"]


def posttrain(*args, check=False, cwd=None):
    """Run the console entry point in a subprocess, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "posttrain", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)
    if check and proc.returncode:
        raise AssertionError(f"posttrain {' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    return proc


def cli(capsys, *args) -> subprocess.CompletedProcess:
    """``posttrain ARGS`` in this process (``posttrain.cli.main``), as ``posttrain(...)`` returns it: the exit code
    (2 for bad input, from a ``UsageError`` or the argument parser) and what went to stdout and stderr."""
    from posttrain.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["posttrain", *map(str, args)], code, out.out, out.err)


def run_weights(run: Path) -> dict:
    """A run directory's trained weights: its LoRA adapter, else its model."""
    from safetensors.torch import load_file

    name = "adapter_model.safetensors" if (run / "adapter_config.json").is_file() else "model.safetensors"
    return load_file(run / name)


def max_weight_diff(a: Path, b: Path) -> float:
    """Largest |difference| between two runs' weights (the same tensors required)."""
    wa, wb = run_weights(a), run_weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def tiny_dataset(tmp_path_factory, generator: str) -> Path:
    """``posttrain gen GENERATOR`` with the tiny knowledge graph's settings, in a fresh temp dir."""
    from posttrain.gen import gen

    out = tmp_path_factory.mktemp("data") / generator
    gen(generator, out, TINY_KG)
    return out


@pytest.fixture(scope="session")
def tiny_kg(tmp_path_factory):
    return tiny_dataset(tmp_path_factory, "kg")


@pytest.fixture(scope="session")
def tiny_run(tiny_kg, tmp_path_factory):
    """A tiny testbed model trained for a few steps through `posttrain train`."""
    from posttrain.train import train

    out = tmp_path_factory.mktemp("runs") / "base"
    train("recipes/testbed/base.yaml", ["--dataset_path", str(tiny_kg), "--output_dir", str(out), *TINY_MODEL,
                                        "--max_steps", "30", "--logging_steps", "5"])
    return out


@pytest.fixture(scope="session")
def tiny_trained(tiny_kg, tmp_path_factory):
    """``tiny_run``'s recipe trained for 150 steps: answer NLL about 0.7, where ``tiny_run``'s is about 2. For methods
    whose forget weight is the token's own probability (WGA, SatImp), which barely pull on an unknown answer."""
    from posttrain.train import train

    out = tmp_path_factory.mktemp("runs") / "trained"
    train("recipes/testbed/base.yaml", ["--dataset_path", str(tiny_kg), "--output_dir", str(out), *TINY_MODEL,
                                        "--max_steps", "150", "--logging_steps", "50"])
    return out


@pytest.fixture(scope="session")
def tiny_lora(tiny_run, tiny_kg, tmp_path_factory):
    """A LoRA adapter (rank 4 on q/v) trained for a few steps on top of ``tiny_run``."""
    from posttrain.train import train

    out = tmp_path_factory.mktemp("lora") / "run"
    train(str(ROOT / "recipes/testbed/base.yaml"), [
        "--from_scratch", "false", "--model_name_or_path", str(tiny_run), "--dataset_path", str(tiny_kg),
        "--output_dir", str(out), "--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
        "--max_steps", "5", "--learning_rate", "5e-2"])
    return out


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def chat_model_dir(out: Path, seed: int = 0) -> Path:
    """A tiny random Llama with a byte-level BPE tokenizer (any text encodes) and a ChatML chat template whose
    end-of-turn token ``<|im_end|>`` is the eos token, as SmolLM2-Instruct's: a stand-in for a hub chat model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    from posttrain.core.modeling import scratch_llama

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["What is the capital of France? The capital of France is Paris.", "I am sure. I am unsure.",
              "I don't know. Which country is Lyon in? Lyon is in France.", "user assistant system"]
    bpe.train_from_iterator(corpus * 4, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML
    model = scratch_llama(tok, hidden_size=64, num_hidden_layers=1, num_attention_heads=1, intermediate_size=128,
                          max_position_embeddings=256, seed=seed)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                               bos_token_id=tok.bos_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory):
    """A saved tiny chat model directory (``chat_model_dir``)."""
    return chat_model_dir(tmp_path_factory.mktemp("chat") / "model")
