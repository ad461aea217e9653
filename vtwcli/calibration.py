"""Calibration: choose the withdrawal layer K by the KL criterion, sharing the prefix across candidates.

For each sample, P_full is the next-token distribution of the full model and P_K that of the model
withdrawn at layer K (at the last prompt position, or at every answer position with the teacher-forced
criterion). K is the first candidate whose mean KL(P_K || P_full) over the samples is <= threshold (the
default ``mean`` rule; vtwcli.selection has the others, the bootstrap distribution of K and its warnings).

Why it is cheap: layers 0..K-1 of the withdrawn model compute exactly what the full model computes. One
full forward per batch records the hidden state entering every layer and every layer's keys/values.
Each candidate K then runs only layers K..L-1, only on the kept tokens from the first vision token on:
text before the first vision token never attended to a vision token (causal attention), so its cached
keys/values serve every K unchanged. Everything here is exact, checked in the tests against a plain
``withdraw(model, layer=K)`` forward.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from vtwcli.adapters import adapter_for
from vtwcli.defaults import DEFAULT_THRESHOLD
from vtwcli.errors import VtwError
from vtwcli.measure.runs import withdrawn_at
from vtwcli.profile.model import first_layer_under
from vtwcli.selection import (ACCURACY_CONFIDENCE, DEFAULT_RULE, AutoOptions, RoundFigures, accuracy_interval,
                              k_bootstrap, layer_choice, parse_rule, samples_auto, selection_warnings, straddles)
# the search itself; `calibrate` looks shared_prefix_kl up here, so it can be replaced in this module
from vtwcli.shared_prefix import BatchKL, attention_layers, kl_divergence, prefix_is_shared, shared_prefix_kl
from vtwcli.withdrawal import exact_layers, format_layers, inexact_reason

CRITERIA = ("last_token", "teacher_forced")
DIRECTIONS = ("withdrawn_to_full", "full_to_withdrawn")


@dataclass
class CalibrationOptions:
    threshold: float = DEFAULT_THRESHOLD
    min_layer: int = 1
    criterion: str = "last_token"
    direction: str = "withdrawn_to_full"
    batch_size: int = 8
    bootstrap_resamples: int = 1000
    seed: int = 0
    max_new_tokens: int = 8
    diagnose: bool = False
    evaluate: bool = True
    # Which vision tokens are withdrawn ("image", "video"); None: every kind the model has.
    kinds: tuple[str, ...] | None = None
    # How K is read off the curve (vtwcli.selection.parse_rule): mean, upper or stable=P.
    select: str = DEFAULT_RULE
    # --samples auto: draw seeded rounds until K is stable; None: use the selections' samples as given.
    auto: AutoOptions | None = None

    def check_values(self) -> None:
        """Every check that needs no model (vtwcli.validate): run before it loads, so a bad value costs none."""
        from vtwcli.validate import check_calibration_options

        check_calibration_options(self)

    def validate(self, num_layers: int) -> None:
        self.check_values()
        if num_layers < 2:
            raise VtwError(f"the model has {num_layers} decoder layer; calibration needs at least 2 (a withdrawal "
                           "layer K in 1..L-1 with a layer after it); use a model with more layers")
        if not 1 <= self.min_layer <= num_layers - 1:
            raise VtwError(f"--min-layer {self.min_layer} is out of range for {num_layers} decoder layers; "
                           f"use 1..{num_layers - 1}")


# ---------------------------------------------------------------------------------------------------------
# Statistics and the choice of K


def layer_statistics(kl: np.ndarray, layers: list[int], *, resamples: int, seed: int) -> list[dict]:
    """Per layer: mean, max, p90 and a seeded percentile-bootstrap 95% interval of the mean."""
    rng = np.random.default_rng(seed)
    n = kl.shape[0]
    picks = rng.integers(0, n, size=(resamples, n))
    boot_means = kl[picks].mean(axis=1)  # (resamples, layers)
    low, high = np.percentile(boot_means, [2.5, 97.5], axis=0)
    return [{"layer": int(layer), "kl_mean": float(kl[:, i].mean()), "kl_max": float(kl[:, i].max()),
             "kl_p90": float(np.percentile(kl[:, i], 90)), "kl_ci_low": float(min(low[i], kl[:, i].mean())),
             "kl_ci_high": float(max(high[i], kl[:, i].mean()))} for i, layer in enumerate(layers)]


# ---------------------------------------------------------------------------------------------------------
# Accuracy of greedy answers


@torch.no_grad()
def greedy_answers(model, processor, samples, *, batch_size: int, max_new_tokens: int,
                   layer: int | None = None, kinds: tuple[str, ...] | None = None) -> list[str]:
    from vtwcli.prompts import make_batch

    answers: list[str] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        inputs = make_batch(processor, chunk).to(model.device)
        with withdrawn_at(model, layer, kinds):
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=processor.tokenizer.pad_token_id)
        answers += processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return answers


# ---------------------------------------------------------------------------------------------------------
# The whole calibration


@dataclass
class DatasetSelection:
    dataset: object  # vtwcli.datasets.Dataset
    samples: list  # in file order; with --samples auto, every sample in its seeded draw order
    seed: int


@dataclass
class CalibrationResult:
    layers: list[int]
    per_layer: list[dict]
    layer: int | None
    per_dataset: list[dict]
    per_sample: list[dict]
    cost: dict
    diagnose: list[dict] | None = None
    evaluation: dict | None = None
    options: CalibrationOptions = field(default_factory=CalibrationOptions)
    # Why the candidates stop before L - 1 (layers after layers[-1] cannot be withdrawn exactly), or None.
    limit: str | None = None
    selection: dict = field(default_factory=dict)  # the profile's calibration.selection
    selections: list[DatasetSelection] = field(default_factory=list)  # the samples used (file order)

    @property
    def found(self) -> bool:
        return self.layer is not None


def _with_answers(processor, inputs: dict, samples) -> tuple[dict, torch.Tensor]:
    """Append each reference answer to its prompt (re-left-padded) and mark the positions that predict it."""
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows, masks, scored = [], [], []
    for i, sample in enumerate(samples):
        prompt = inputs["input_ids"][i][inputs["attention_mask"][i].bool()]
        answer = torch.tensor(tokenizer(sample.answer_text, add_special_tokens=False)["input_ids"],
                              dtype=prompt.dtype, device=prompt.device)
        if answer.numel() == 0:
            raise VtwError(f"{sample.where()}: the answer tokenizes to nothing; give a non-empty answer")
        rows.append(torch.cat([prompt, answer]))
        scored.append(torch.arange(len(prompt) - 1, len(prompt) + len(answer) - 1))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=rows[0].dtype, device=rows[0].device)
    mask = torch.zeros_like(ids)
    score = torch.zeros_like(ids, dtype=torch.bool)
    for i, (row, positions) in enumerate(zip(rows, scored)):
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
        score[i, positions + width - len(row)] = True
        masks.append(mask[i])
    extended = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    extended.update(input_ids=ids, attention_mask=mask)
    # Other per-token inputs (token_type_ids, mm_token_type_ids: which tokens are image / video) follow the
    # new layout; the answer tokens are text (0).
    shape = inputs["input_ids"].shape
    for key, value in inputs.items():
        if key in ("input_ids", "attention_mask") or not isinstance(value, torch.Tensor) or value.shape != shape:
            continue
        moved = torch.zeros(ids.shape, dtype=value.dtype, device=value.device)
        for i, row in enumerate(rows):
            prompt = value[i][inputs["attention_mask"][i].bool()]
            moved[i, width - len(row):width - len(row) + len(prompt)] = prompt
        extended[key] = moved
    return extended, score


class _NoStore:
    """Stand-in for a checkpoint store: remembers nothing."""

    def get(self, key, check=None):
        return None

    def put(self, key, value) -> None:
        pass


def calibrate(model, processor, selections: list[DatasetSelection], options: CalibrationOptions,
              progress: Callable[[str, int], None] | None = None, store=None) -> CalibrationResult:
    """Run the KL criterion over every selected sample and choose K.

    ``progress(phase, n)`` reports finished samples ("kl", then "eval"). ``store`` (see
    :mod:`vtwcli.checkpoint`) keeps each batch's results as they finish, so an interrupted run resumes
    where it stopped and produces the same profile: batches are fixed by the sample order and batch size.
    With ``options.auto`` each selection holds every sample in its seeded draw order
    (:func:`vtwcli.datasets.draw_order`); rounds of ``auto.step`` samples per dataset are measured until the
    K distribution is stable (:func:`vtwcli.selection.samples_auto`), and the result keeps the drawn ones.
    """
    from vtwcli.calibration_records import answers_record_problem, kl_record_problem, refuse_non_finite_kl
    from vtwcli.prompts import check_prompts_fit, make_batch, refuse_videos_without_video_input, score_answer

    store = store if store is not None else _NoStore()  # an empty CheckpointStore is falsy (len 0)
    adapter = adapter_for(model)
    num_layers = len(adapter.decoder_layers(model))
    options.validate(num_layers)
    adapter.check_kinds(model.config, options.kinds)
    refuse_videos_without_video_input(adapter, model.config, [s for selection in selections for s in selection.samples],
                                      "calibrate")
    text_config = adapter.text_config(model.config)
    exact = exact_layers(adapter, text_config, num_layers)
    # K = L withdraws nothing (KL 0): not a candidate. Where withdrawal is exact only up to some layer (KV
    # sharing), the search stops there and the profile says why (calibration.max_layer / max_layer_reason).
    max_layer = num_layers - 1
    while max_layer >= options.min_layer and max_layer not in exact:
        max_layer -= 1
    limit = None
    if max_layer < num_layers - 1:
        limit = inexact_reason(adapter, text_config, num_layers, max_layer + 1)
        if max_layer < options.min_layer:
            below = [k for k in exact if k < num_layers]
            hint = f"use --min-layer in {format_layers(below)}" if below else "no layer < L can be withdrawn exactly"
            raise VtwError(f"--min-layer {options.min_layer}: withdrawal is exact on this model only at layers "
                           f"{format_layers(exact)} ({limit}); {hint}")
    layers = list(range(options.min_layer, max_layer + 1))
    check_prompts_fit(processor, model.config, adapter, [s.samples for s in selections],
                      batch_size=options.batch_size, answers=options.criterion == "teacher_forced",
                      new_tokens=options.max_new_tokens if options.evaluate else 0)
    started = time.perf_counter()

    def batches():
        # The dataset's position is part of each checkpoint key: two files may share a name (a/set.jsonl,
        # b/set.jsonl) and must never read each other's batches.
        for index, selection in enumerate(selections):
            for start in range(0, len(selection.samples), options.batch_size):
                yield index, selection, start, selection.samples[start:start + options.batch_size]

    def kl_of_batch(chunk) -> dict:
        inputs = dict(make_batch(processor, chunk).to(model.device))
        score_mask = None
        if options.criterion == "teacher_forced":
            inputs, score_mask = _with_answers(processor, inputs, chunk)
        result = shared_prefix_kl(model, inputs, layers, score_mask=score_mask, direction=options.direction,
                                  diagnose=options.diagnose, kinds=options.kinds)
        share = None if result.attention_share is None else result.attention_share.tolist()
        return {"kl": result.kl.tolist(), "work_full": result.token_layers_full,
                "work_candidates": result.token_layers_candidates, "share": share}

    # (dataset position, sample id) -> KL per candidate layer: two files may share a name (a/set.jsonl,
    # b/set.jsonl) and ids, never their rows
    measured: dict[tuple[int, str], list[float]] = {}
    shares = []
    work = {"full": 0, "candidates": 0}

    def measure(index: int, chunk: list, key: str) -> None:
        done = store.get(key, check=lambda value: kl_record_problem(value, len(chunk), len(layers)))
        if done is None:
            done = kl_of_batch(chunk)
            refuse_non_finite_kl(done["kl"], chunk, layers)
            store.put(key, done)
        work["full"] += done["work_full"]
        work["candidates"] += done["work_candidates"]
        if done["share"] is not None:
            shares.append(torch.tensor(done["share"]))
        for sample, row in zip(chunk, done["kl"]):
            measured[(index, sample.id)] = [float(v) for v in row]
        if progress:
            progress("kl", len(chunk))

    def rows_of(chosen: list[DatasetSelection]) -> tuple[np.ndarray, list[str]]:
        """KL rows of ``chosen`` (aligned with ``selections``) and each row's dataset position (the strata)."""
        rows = [measured[(d, x.id)] for d, s in enumerate(chosen) for x in s.samples]
        return np.asarray(rows, dtype=np.float64), [str(d) for d, s in enumerate(chosen) for _ in s.samples]

    auto = None
    if options.auto is None:
        for index, selection, start, chunk in batches():
            measure(index, chunk, f"kl/{index}/{selection.dataset.name}/{start}")
    else:
        # Rounds of `step` more samples per dataset, in each dataset's seeded draw order; every round's K
        # distribution is computed on the samples drawn so far, in file order (as the profile stores them).
        drawn = [0] * len(selections)

        def measure_round(counts: list[int]) -> RoundFigures:
            for d, selection in enumerate(selections):
                for start in range(drawn[d], counts[d], options.batch_size):
                    chunk = selection.samples[start:min(start + options.batch_size, counts[d])]
                    measure(d, chunk, f"kl/{d}/{selection.dataset.name}/auto/{start}")
                drawn[d] = counts[d]
            _, distribution, chosen, per_layer = _choose(*rows_of(_first_drawn(selections, counts)), layers, options)
            return RoundFigures(distribution, straddles(per_layer, chosen, options.threshold))

        auto = samples_auto([len(s.samples) for s in selections], measure_round, options.auto)
        selections = _first_drawn(selections, auto.counts)

    search_seconds = time.perf_counter() - started  # the KL search alone: the accuracy below is timed apart
    kl, owners = rows_of(selections)
    per_sample = [{"dataset": s.dataset.name, "id": x.id, "kl": measured[(d, x.id)]}
                  for d, s in enumerate(selections) for x in s.samples]
    rule, distribution, chosen, per_layer = _choose(kl, owners, layers, options)

    per_dataset = []
    for index, selection in enumerate(selections):
        rows = np.array([i for i, owner in enumerate(owners) if owner == str(index)])
        curve = [{"layer": layer, "kl_mean": float(kl[rows, i].mean())} for i, layer in enumerate(layers)]
        per_dataset.append({"name": selection.dataset.name, "layer": first_layer_under(curve, options.threshold),
                            "per_layer": curve})

    selection_section = {"rule": str(rule), "k_bootstrap": distribution,
                         "warnings": selection_warnings(rule, chosen, per_layer, options.threshold, distribution,
                                                        per_dataset)}
    if auto is not None:
        selection_section["samples_auto"] = {
            "target": options.auto.target, "step": options.auto.step, "budget": options.auto.budget,
            "stopped": auto.stopped, "samples": sum(auto.counts),
            "rounds": [r.to_dict() for r in auto.rounds]}

    diagnose = None
    if shares:
        mean_share = torch.cat(shares, dim=1).mean(dim=1)  # (attention layers, 3)
        diagnose = [{"layer": i, "system": float(s[0]), "vision": float(s[1]), "text": float(s[2])}
                    for i, s in zip(attention_layers(model), mean_share)]

    def accuracy(layer: int | None) -> dict:
        correct = []
        for index, selection, start, chunk in batches():  # `selections` is final here
            key = f"answers/{'full' if layer is None else layer}/{index}/{selection.dataset.name}/{start}"
            answers = store.get(key, check=lambda value: answers_record_problem(value, len(chunk)))
            if answers is None:
                answers = greedy_answers(model, processor, chunk, batch_size=len(chunk),
                                         max_new_tokens=options.max_new_tokens, layer=layer, kinds=options.kinds)
                store.put(key, answers)
            correct += [score_answer(answer, sample) for answer, sample in zip(answers, chunk)]
            if progress:
                progress("eval", len(chunk))
        low, high = accuracy_interval(float(np.mean(correct)), len(correct))
        return {"accuracy": float(np.mean(correct)), "accuracy_ci": [low, high]}

    evaluation, evaluation_started = None, time.perf_counter()
    if options.evaluate:
        withdrawn = accuracy(chosen) if chosen is not None else {"accuracy": None, "accuracy_ci": None}
        evaluation = {"samples": len(kl), "baseline": accuracy(None), "withdrawn": dict(withdrawn, layer=chosen),
                      "interval": {"method": "wilson", "confidence": ACCURACY_CONFIDENCE}}

    cost = {"full_forward_equivalents": (work["full"] + work["candidates"]) / work["full"], "seconds": search_seconds,
            "evaluation_seconds": time.perf_counter() - evaluation_started if options.evaluate else None,
            "shared_prefix": prefix_is_shared(adapter.layer_types(text_config, num_layers), min(layers))}
    return CalibrationResult(layers=layers, per_layer=per_layer, layer=chosen, per_dataset=per_dataset,
                             per_sample=per_sample, cost=cost, diagnose=diagnose, evaluation=evaluation,
                             options=options, limit=limit, selection=selection_section, selections=selections)


def _choose(kl: np.ndarray, names: list[str], layers: list[int], options: CalibrationOptions):
    """(rule, K distribution, chosen K, per-layer statistics) of a samples x layers KL matrix."""
    rule = parse_rule(options.select)
    per_layer = layer_statistics(kl, layers, resamples=options.bootstrap_resamples, seed=options.seed)
    distribution = k_bootstrap(kl, names, layers, options.threshold, resamples=options.bootstrap_resamples,
                               seed=options.seed)
    return rule, distribution, layer_choice(rule, per_layer, options.threshold, distribution), per_layer


def _first_drawn(selections: list[DatasetSelection], counts: list[int]) -> list[DatasetSelection]:
    """Each selection cut to its first ``counts[d]`` samples in draw order, put back in file order (the
    samples ``sample_dataset(counts[d], seed)`` takes, in its order)."""
    out = []
    for selection, n in zip(selections, counts):
        position = {sample.id: i for i, sample in enumerate(selection.dataset.samples)}
        drawn = sorted(selection.samples[:n], key=lambda sample: position[sample.id])
        out.append(DatasetSelection(dataset=selection.dataset, samples=drawn, seed=selection.seed))
    return out


def calibration_section(result: CalibrationResult) -> dict:
    """The profile's `calibration` block."""
    options = result.options
    section = {
        "criterion": options.criterion,
        "direction": options.direction,
        "threshold": float(options.threshold),
        "min_layer": options.min_layer,
        "layer": result.layer,
        "bootstrap": {"resamples": options.bootstrap_resamples, "seed": options.seed, "confidence": 0.95},
        "per_layer": result.per_layer,
        "per_dataset": result.per_dataset,
        "per_sample": result.per_sample,
        "cost": result.cost,
    }
    if result.selection:
        section["selection"] = result.selection
    if options.kinds is not None:
        section["withdraw"] = list(options.kinds)
    if result.limit is not None:
        section["max_layer"] = result.layers[-1]
        section["max_layer_reason"] = result.limit
    if result.diagnose is not None:
        section["diagnose"] = result.diagnose
    return section
