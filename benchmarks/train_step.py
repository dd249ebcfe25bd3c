"""Step time of posttrain's SFT trainer against a plain PyTorch loop on the testbed (same model, data, batch).

    python benchmarks/train_step.py [--steps 40] [--batch 64]

Both run in this one process, alternating in rounds so that machine drift hits both alike; the first steps of each
round are warm-up. Prints per-step medians and ends with `RESULT trainer_over_plain=<x>`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import TrainerCallback

from posttrain import modeling
from posttrain.data_gen import kg
from posttrain.recipe import parse
from posttrain.trainers.sft import SFTConfig, SFTTrainer


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t)


def batches(tok, ds, batch: int):
    """Prompt+completion+EOS, loss on the completion only, right-padded: what TRL's SFT collator builds."""
    out = []
    for i in range(0, len(ds) - batch + 1, batch):
        rows = ds[i:i + batch]
        ids, labels = [], []
        for p, c in zip(rows["prompt"], rows["completion"]):
            full = tok(p + c + tok.eos_token)["input_ids"]
            n = len(tok(p)["input_ids"])
            ids.append(full)
            labels.append([-100] * n + full[n:])
        width = max(map(len, ids))
        pad = lambda xs, v: torch.tensor([x + [v] * (width - len(x)) for x in xs])  # noqa: E731
        out.append({"input_ids": pad(ids, tok.pad_token_id), "labels": pad(labels, -100),
                    "attention_mask": pad([[1] * len(x) for x in ids], 0)})
    return out


def plain_steps(model, data, steps: int, lr: float) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        loss = model(**data[i % len(data)]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
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
