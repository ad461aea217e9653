#!/usr/bin/env python
"""Measure the bundled tiny LLaVA model (the figures quoted in docs/MODEL_CARD.md).

    python training/eval_bundled_model.py [--model vtwcli/data/bundled_model] [--per-task 150]

Loads the model exactly as a user would (offline ``AutoModelForImageTextToText`` +
``AutoProcessor``, prompts built with ``processor.apply_chat_template``, inputs with
``processor(images=..., text=..., padding=True)``) and reports:

* accuracy on a held-out synthetic test set (seed TEST_SEED, verified disjoint from the
  training stream) with the image, with a blank white image, and with the vision
  tokens withdrawn at every decoder layer K; the chance level (best image-blind guess);
* KL_K = mean over test samples of KL(P_K || P_full), float32, of the next-token
  distribution at the last prompt position, where P_K withdraws the vision tokens at
  decoder layer K (layers 0..K-1 see all tokens, layers K..L-1 only the non-vision
  tokens at their original RoPE positions);
* the first K with KL_K <= 0.003 and the accuracy there;
* greedy ``generate()`` accuracy on a subset, and accuracy on the bundled
  ``vtwcli/data/datasets/synthetic_*`` calibration sets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vtw_common as C  # noqa: E402

TEST_SEED = 4242
KL_THRESHOLD = 0.003
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batched(xs, n):
    for i in range(0, len(xs), n):
        yield xs[i:i + n]


def encode(processor, images, questions):
    texts = [C.prompt_for(processor, q) for q in questions]
    enc = processor(images=images, text=texts, return_tensors="pt", padding=True)
    return enc


def test_set(per_task, train_meta, check_disjoint=True):
    samples = []
    i = 0
    while len(samples) < per_task * len(C.TASKS):
        samples.append(C.sample_stream_item(TEST_SEED, i))
        i += 1
    n_overlap = None
    if check_disjoint and train_meta:
        seen = train_meta.get("samples_seen", 0)
        seed = train_meta.get("train_seed")
        keys = {C.sample_key(s) for s in samples}
        n_overlap = sum(C.sample_key(C.sample_stream_item(seed, j)) in keys for j in range(seen))
    return samples, n_overlap


@torch.no_grad()
def evaluate(model, processor, samples, ks, bs=64, blank=False):
    tok = processor.tokenizer
    gold_all, full_lp, wd_lp = [], [], {k: [] for k in ks}
    for chunk in batched(samples, bs):
        imgs = [C.blank_image() if blank else s.image for s in chunk]
        enc = encode(processor, imgs, [s.question for s in chunk])
        assert bool(enc["attention_mask"].all()), "fixed-length prompts expected"
        gold = torch.tensor([tok.convert_tokens_to_ids(s.answer) for s in chunk])
        full, out = C.forward_with_withdrawal(model, enc["input_ids"], enc["pixel_values"], ks, positions=(-1,))
        # cross-check the manual path against the stock HF forward
        ref = model(**enc).logits[:, -1].float()
        assert torch.allclose(ref, full[:, 0].float(), atol=1e-3), (ref - full[:, 0]).abs().max()
        gold_all.append(gold)
        full_lp.append(F.log_softmax(full[:, 0].float(), -1))
        for k in ks:
            wd_lp[k].append(F.log_softmax(out[k][:, 0].float(), -1))
    gold = torch.cat(gold_all)
    lp_full = torch.cat(full_lp)
    res = {"acc": (lp_full.argmax(-1) == gold).float().mean().item(), "per_task": {}}
    tasks = [s.task for s in samples]
    present = [t for t in C.TASKS if t in tasks]
    for t in present:
        idx = torch.tensor([i for i, x in enumerate(tasks) if x == t], dtype=torch.long)
        res["per_task"][t] = (lp_full[idx].argmax(-1) == gold[idx]).float().mean().item()
    res["withdrawn"] = {}
    for k in ks:
        lp = torch.cat(wd_lp[k])
        kl = (lp.exp() * (lp - lp_full)).sum(-1)
        res["withdrawn"][k] = {
            "acc": (lp.argmax(-1) == gold).float().mean().item(),
            "kl": kl.mean().item(),
            "per_task_acc": {t: (lp[[i for i, x in enumerate(tasks) if x == t]].argmax(-1)
                                 == gold[[i for i, x in enumerate(tasks) if x == t]]).float().mean().item()
                             for t in present},
        }
    return res


@torch.no_grad()
def generate_acc(model, processor, samples, bs=32):
    ok = 0
    for chunk in batched(samples, bs):
        enc = encode(processor, [s.image for s in chunk], [s.question for s in chunk])
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
        texts = processor.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        ok += sum(t.strip().lower() == s.answer for t, s in zip(texts, chunk))
    return ok / len(samples)


def load_bundled_datasets(root):
    sets = {}
    if not os.path.isdir(root):
        return sets
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name, "data.jsonl")
        if not name.startswith("synthetic_") or not os.path.exists(path):
            continue
        items = []
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    img = Image.open(os.path.join(os.path.dirname(path), r["image"])).convert("RGB")
                    items.append(C.Sample(task=r["task"], question=r["question"], answer=r["answer"], image=img))
        sets[name] = items
    return sets


def cross_check_vtwcli(model, processor, samples, ks):
    """Compare against vtwcli.withdraw if the library is available (optional)."""
    try:
        sys.path.insert(0, REPO)
        from vtwcli import withdraw  # type: ignore
    except Exception as e:  # pragma: no cover
        return f"vtwcli.withdraw not importable ({type(e).__name__}: {e})"
    try:
        res = {}
        chunk = samples[:64]
        enc = encode(processor, [s.image for s in chunk], [s.question for s in chunk])
        with torch.no_grad():
            full = F.log_softmax(model(**enc).logits[:, -1].float(), -1)
            mfull, mout = C.forward_with_withdrawal(model, enc["input_ids"], enc["pixel_values"], ks)
            for k in ks:
                with withdraw(model, layer=k):
                    lp = F.log_softmax(model(**enc).logits[:, -1].float(), -1)
                mlp = F.log_softmax(mout[k][:, 0].float(), -1)
                res[k] = {"kl_vtwcli": (lp.exp() * (lp - full)).sum(-1).mean().item(),
                          "kl_manual": (mlp.exp() * (mlp - full)).sum(-1).mean().item(),
                          "max_abs_logprob_diff": (lp - mlp).abs().max().item()}
        return res
    except Exception as e:  # pragma: no cover
        return f"vtwcli.withdraw cross-check failed ({type(e).__name__}: {e})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(REPO, "vtwcli/data/bundled_model"))
    ap.add_argument("--datasets", default=os.path.join(REPO, "vtwcli/data/datasets"))
    ap.add_argument("--per-task", type=int, default=150)
    ap.add_argument("--generate-n", type=int, default=200)
    ap.add_argument("--no-disjoint-check", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()

    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(a.model)
    model = AutoModelForImageTextToText.from_pretrained(a.model, dtype=torch.float32).eval()
    L = model.config.text_config.num_hidden_layers
    meta = {}
    mp = os.path.join(a.model, "training_meta.json")
    if os.path.exists(mp):
        meta = json.load(open(mp))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {type(model).__name__}, {n_params} params ({n_params / 1e6:.2f}M), {L} decoder layers")
    print(f"prompt example: {C.prompt_for(processor, 'What color is the circle?')!r}")

    samples, overlap = test_set(a.per_task, meta, check_disjoint=not a.no_disjoint_check)
    print(f"test set: {len(samples)} samples (seed {TEST_SEED}); overlap with the "
          f"{meta.get('samples_seen', '?')} training samples: {overlap}")
    ks = list(range(0, L + 1))
    res = evaluate(model, processor, samples, ks)
    blank = evaluate(model, processor, samples, [1], blank=True)
    chance = C.chance_accuracy()

    print(f"\nchance level (best image-blind guess): {chance * 100:.1f}%")
    print(f"accuracy with image:        {res['acc'] * 100:.1f}%   per task "
          + ", ".join(f"{t} {v * 100:.1f}" for t, v in res["per_task"].items()))
    print(f"accuracy with blank image:  {blank['acc'] * 100:.1f}%   per task "
          + ", ".join(f"{t} {v * 100:.1f}" for t, v in blank["per_task"].items()))
    print(f"accuracy withdrawn @ K=1:   {res['withdrawn'][1]['acc'] * 100:.1f}%   per task "
          + ", ".join(f"{t} {v * 100:.1f}" for t, v in res["withdrawn"][1]["per_task_acc"].items()))
    print("\n  K   KL(P_K||P_full)   acc_K")
    first = None
    for k in ks:
        w = res["withdrawn"][k]
        print(f"  {k:<3d} {w['kl']:<17.5f} {w['acc'] * 100:.1f}%")
        if first is None and k >= 1 and w["kl"] <= KL_THRESHOLD:
            first = k
    acc_first = res["withdrawn"][first]["acc"] if first is not None else None
    print(f"\nfirst K with KL_K <= {KL_THRESHOLD}: {first} (of {L} layers); accuracy there "
          f"{acc_first * 100:.1f}% vs full {res['acc'] * 100:.1f}%")

    gen = generate_acc(model, processor, samples[: a.generate_n])
    print(f"generate() exact-match accuracy on {min(a.generate_n, len(samples))} test samples: {gen * 100:.1f}%")

    ds_res = {}
    for name, items in load_bundled_datasets(a.datasets).items():
        r = evaluate(model, processor, items, [first] if first is not None else [])
        ds_res[name] = {"n": len(items), "acc": r["acc"]}
        if first is not None:
            ds_res[name][f"acc_withdrawn@{first}"] = r["withdrawn"][first]["acc"]
            ds_res[name][f"kl@{first}"] = r["withdrawn"][first]["kl"]
        ds_res[name]["generate_acc"] = generate_acc(model, processor, items)
        print(f"dataset {name}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in ds_res[name].items()))

    xc = cross_check_vtwcli(model, processor, samples, [1, first or L // 2])
    print(f"vtwcli.withdraw cross-check: {xc}")

    checks = {
        "acc_with_image>=0.90": res["acc"] >= 0.90,
        "blank<=chance+0.10": blank["acc"] <= chance + 0.10,
        "withdrawn@1<=chance+0.10": res["withdrawn"][1]["acc"] <= chance + 0.10,
        "first_K<=3L/4": first is not None and first <= 3 * L // 4,
        "acc@first_K within 2 points": acc_first is not None and abs(acc_first - res["acc"]) <= 0.02,
    }
    print("\nchecks: " + ", ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in checks.items()))
    print(f"eval wall time {time.time() - t0:.0f}s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"params": n_params, "layers": L, "chance": chance, "full": res, "blank": blank,
                       "first_k": first, "acc_first_k": acc_first, "generate_acc": gen, "datasets": ds_res,
                       "test_overlap": overlap, "vtwcli_cross_check": xc, "checks": checks, "train_meta": meta},
                      f, indent=2, default=str)


if __name__ == "__main__":
    main()
