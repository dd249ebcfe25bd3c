"""Step time of posttrain's SFT trainer against a plain PyTorch loop (same model, data, batch).

    python benchmarks/train_step.py [--steps 40] [--batch 64]
    POSTTRAIN_CACHE=/work/cache python benchmarks/train_step.py --real [--steps 5 --warmup 1 --rounds 2 --batch 16]

Testbed (the default): the testbed model's shape from scratch (full fine-tuning) on the knowledge-graph corpus,
lr 3e-3; defaults --steps 40 --warmup 5 --rounds 2 --batch 64. Ends with `RESULT trainer_over_plain=<x>`.

Real model (``--real``, or ``--model smollm2-135m-instruct``: an embedded model's name, resolved by
``posttrain.core.modeling.load_model``): SmolLM2-135M-Instruct (fp32) wrapped in a LoRA (r 16, alpha 32, dropout 0,
``target_modules="all-linear"``, the config built from TRL's ``ModelConfig`` as ``posttrain train`` builds it) by
``peft.get_peft_model``, one fresh wrapped model per run; conversational prompt/completion rows (world capital
questions under the template's default system turn and their one-sentence answers, ~45-55 tokens), tokenised for
the plain loop as TRL's SFT tokenises them (``posttrain.trainers.base.tokenize``: loss on the assistant turn only),
lr 1e-4; defaults --steps 5 --warmup 1 --rounds 2 --batch 16 (~10 s a step on 2 cores). Ends with
`RESULT model=<name> trainer_over_plain=<x>`.

Both run in this one process, alternating in rounds so that machine drift hits both alike; the first ``--warmup``
steps of each round are dropped. Prints per-step medians (the plain loop: forward, backward, clipping, AdamW over the
trainable parameters; the trainer: TRL's whole step, timed by a callback from step begin to step end).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import TrainerCallback

from posttrain.core import modeling
from posttrain.data_gen import kg
from posttrain.recipe import parse
from posttrain.trainers.base import tokenize as sft_tokenize
from posttrain.trainers.sft import SFTConfig, SFTTrainer


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)


def batches(tok, ds, batch: int):
    """Prompt/completion rows as TRL's SFT tokenises them (``base.tokenize``: prompt + completion + EOS, or for
    conversational rows the chat template; loss on the completion / assistant turn), right-padded: what TRL's SFT
    collator builds."""
    out = []
    for i in range(0, len(ds) - batch + 1, batch):
        rows = ds[i:i + batch]
        ids, labels = [], []
        for p, c in zip(rows["prompt"], rows["completion"]):
            full, n = sft_tokenize(tok, p, c)
            ids.append(full)
            labels.append([-100] * n + full[n:])
        width = max(map(len, ids))
        pad = lambda xs, v: torch.tensor([x + [v] * (width - len(x)) for x in xs])  # noqa: E731
        out.append({"input_ids": pad(ids, tok.pad_token_id), "labels": pad(labels, -100),
                    "attention_mask": pad([[1] * len(x) for x in ids], 0)})
    return out


CAPITALS = ("France:Paris Germany:Berlin Italy:Rome Spain:Madrid Portugal:Lisbon Poland:Warsaw Austria:Vienna "
            "Hungary:Budapest Greece:Athens Sweden:Stockholm Norway:Oslo Finland:Helsinki Egypt:Cairo Kenya:Nairobi "
            "Japan:Tokyo China:Beijing India:New_Delhi Thailand:Bangkok Vietnam:Hanoi Australia:Canberra "
            "Canada:Ottawa Mexico:Mexico_City Brazil:Brasilia Argentina:Buenos_Aires Chile:Santiago Peru:Lima "
            "Colombia:Bogota Turkey:Ankara Iran:Tehran Ireland:Dublin Belgium:Brussels Denmark:Copenhagen")


def capital_rows(n: int):
    """``n`` conversational rows (the 32 capitals under two question forms, cycled): a user question, the
    template's default system turn, and a one-sentence assistant answer."""
    from datasets import Dataset

    pairs = [tuple(w.replace("_", " ") for w in item.split(":")) for item in CAPITALS.split()]
    forms = ("What is the capital of {}?", "Which city is the capital of {}?")
    rows = [(f.format(c), f"The capital of {c} is {k}, its seat of government.") for f in forms for c, k in pairs]
    rows = [rows[i % len(rows)] for i in range(n)]
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q, _ in rows],
                              "completion": [[{"role": "assistant", "content": a}] for _, a in rows]})


def lora_model(name: str, r: int, seed: int):
    """``name`` (fp32) wrapped by peft in a fresh LoRA on every linear layer, the config as ``posttrain train``
    builds it from a recipe's model keys (TRL's ``get_peft_config``)."""
    from peft import get_peft_model
    from trl import ModelConfig, get_peft_config

    config = get_peft_config(ModelConfig(model_name_or_path=name, use_peft=True, lora_r=r, lora_alpha=2 * r,
                                         lora_dropout=0.0, lora_target_modules="all-linear"))
    torch.manual_seed(seed)
    return get_peft_model(modeling.load_model(name, "float32"), config)


def plain_steps(model, data, steps: int, lr: float) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    times = []
    model.train()
    for i in range(steps):
        t = time.perf_counter()
        loss = model(**data[i % len(data)]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return times


def trainer_steps(model, tok, ds, steps: int, batch: int, lr: float) -> list[float]:
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=batch, learning_rate=lr,
                         weight_decay=0.0, logging_steps=10**6, save_strategy="no", report_to="none",
                         disable_tqdm=True, seed=0)
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[timer])
        trainer.train()
    return timer.times


def real(a) -> None:
    name = a.model or "smollm2-135m-instruct"
    tok = modeling.load_tokenizer(name)
    ds = capital_rows(a.batch * a.steps)
    data = batches(tok, ds, a.batch)
    widths = [b["input_ids"].shape[1] for b in data]
    plain, trainer = [], []
    for r in range(a.rounds):
        t0 = time.perf_counter()
        plain += plain_steps(lora_model(name, a.lora_r, r), data, a.steps, 1e-4)[a.warmup:]
        t1 = time.perf_counter()
        trainer += trainer_steps(lora_model(name, a.lora_r, r), tok, ds, a.steps, a.batch, 1e-4)[a.warmup:]
        print(f"round {r}: plain {t1 - t0:.1f} s, trainer {time.perf_counter() - t1:.1f} s (wall, with set-up)",
              flush=True)
    model = lora_model(name, a.lora_r, 0)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    p, t = statistics.median(plain), statistics.median(trainer)
    print(f"{name}: {(n_all - n_train) / 1e6:.1f}M params + LoRA r {a.lora_r} all-linear {n_train / 1e6:.2f}M "
          f"(trainable); batch "
          f"{a.batch} x {min(widths)}-{max(widths)} tokens, {a.steps} steps ({a.warmup} warm-up) x {a.rounds} rounds, "
          f"torch threads {torch.get_num_threads()}")
    print(f"plain loop   median step {p * 1000:.1f} ms over {len(plain)} steps: "
          f"{' '.join(f'{x:.2f}' for x in plain)} s")
    print(f"SFTTrainer   median step {t * 1000:.1f} ms over {len(trainer)} steps: "
          f"{' '.join(f'{x:.2f}' for x in trainer)} s")
    print(f"RESULT model={name} trainer_over_plain={t / p:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=None, help="steps per run (testbed 40, real model 5)")
    ap.add_argument("--warmup", type=int, default=None, help="steps dropped per run (testbed 5, real model 1)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=None, help="testbed 64, real model 16")
    ap.add_argument("--real", action="store_true", help="the real model with LoRA (smollm2-135m-instruct unless "
                                                        "--model)")
    ap.add_argument("--model", default=None, help="an embedded model's name (smollm2-135m-instruct) or a model "
                                                  "directory: the real-model benchmark")
    ap.add_argument("--lora-r", type=int, default=16)
    a = ap.parse_args()
    if a.real or a.model:
        for k, v in (("steps", 5), ("warmup", 1), ("batch", 16)):
            setattr(a, k, v if getattr(a, k) is None else getattr(a, k))
        return real(a)
    for k, v in (("steps", 40), ("warmup", 5), ("batch", 64)):
        setattr(a, k, v if getattr(a, k) is None else getattr(a, k))
    dd = kg.generate(kg.Config())
    ds = dd["corpus"].select_columns(["prompt", "completion"])
    tok = modeling.build_word_tokenizer(t for s in dd.values() for c in ("prompt", "completion")
                                        if c in s.column_names for t in s[c])
    data = batches(tok, ds, a.batch)
    s = parse("testbed/base.yaml").scratch  # the testbed model's shape
    build = lambda seed: modeling.scratch_llama(tok, s.hidden_size, s.num_hidden_layers,  # noqa: E731
                                                s.num_attention_heads, s.intermediate_size, seed=seed)
    plain, trainer = [], []
    for r in range(a.rounds):
        plain += plain_steps(build(r), data, a.steps, 3e-3)[a.warmup:]
        trainer += trainer_steps(build(r), tok, ds, a.steps, a.batch, 3e-3)[a.warmup:]
    n_params = sum(p.numel() for p in build(0).parameters())
    p, t = statistics.median(plain), statistics.median(trainer)
    print(f"model {n_params / 1e6:.2f}M params, batch {a.batch}, torch threads {torch.get_num_threads()}")
    print(f"plain loop   median step {p * 1000:.1f} ms over {len(plain)} steps")
    print(f"SFTTrainer   median step {t * 1000:.1f} ms over {len(trainer)} steps")
    print(f"RESULT trainer_over_plain={t / p:.2f}")


if __name__ == "__main__":
    main()
