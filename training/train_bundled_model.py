#!/usr/bin/env python
"""Train the tiny LLaVA demo/test model bundled with vtwcli.

    python training/train_bundled_model.py --out vtwcli/data/bundled_model

CPU only, no downloads: the tokenizer, processor and model are built from scratch
(see ``vtw_common.py``). The defaults are the settings of the bundled model: the run
stops after ``--time-limit-min`` (52) minutes of wall time or ``--steps`` steps,
whichever comes first, and the LR schedule (linear warm-up, constant, cosine decay
over the last 40%) follows whichever of the two is further along, so the decay always
completes inside the time budget. On 2 CPU cores this is well under 2 hours. Because
the schedule is time-based, the number of steps (and thus the exact weights) depends
on the machine's speed; ``--time-limit-min 0 --steps N`` gives a purely step-based,
deterministic run.

Training data is an infinite, deterministic stream of synthetic samples
(``vtw_common.sample_stream_item(seed, i)``), balanced over the 4 tasks. The loss is
the cross-entropy of the answer token after the prompt (and of ``</s>`` after the
answer), computed exactly on the prompt that ``processor.apply_chat_template`` +
``processor(...)`` produce.

Stochastic withdrawal: in a fraction ``--withdraw-prob`` of the steps a withdrawal
layer K is drawn uniformly from ``[--k-min, --k-max]``; the decoder is then run once
on all tokens up to layer K and branched: the full branch continues with all tokens,
the withdrawn branch continues with only the non-vision tokens (original RoPE
positions, causal mask over the kept tokens). The withdrawn branch gets its own
answer cross-entropy plus ``--kl-weight`` * KL(P_K || P_full) (full detached), which
forces the visual information to migrate into the text tokens in the early layers.

Auxiliary probe loss (``--aux-weight``): a linear probe on the projected image tokens
predicts, for every 12x12 patch, the colour and the shape type covering it and
whether a shape centre lies in it. This dense signal makes the from-scratch vision
tower learn much faster on CPU; the probe head is discarded and is not part of the
saved model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vtw_common as C  # noqa: E402

TRAIN_SEED = 1234
QUICK_EVAL_SEED = 777  # only for the periodic progress numbers


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="vtwcli/data/bundled_model")
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2.5e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--decay-start", type=float, default=0.6, help="fraction of steps at constant LR before cosine decay")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--withdraw-prob", type=float, default=0.75)
    ap.add_argument("--k-min", type=int, default=3)
    ap.add_argument("--k-max", type=int, default=5)
    ap.add_argument("--kl-weight", type=float, default=1.0)
    ap.add_argument("--wd-ce-weight", type=float, default=1.0)
    ap.add_argument("--eos-weight", type=float, default=0.1)
    ap.add_argument("--aux-weight", type=float, default=0.5,
                    help="weight of the auxiliary per-patch (colour, shape, centre) probe loss on the projected "
                         "image tokens; the probe head is discarded (0 disables)")
    ap.add_argument("--blind-k1-weight", type=float, default=0.0,
                    help="weight of a term that trains the K=1-withdrawn output towards the image-blind prior "
                         "(uniform over the task's answers), keeping visual information out of the text tokens "
                         "in layer 0 so the withdrawal curve has a clear transition")
    ap.add_argument("--init-from", default=None, help="continue from the weights saved in this directory")
    ap.add_argument("--start-step", type=int, default=0,
                    help="offset into the training stream (steps already done by the --init-from run)")
    ap.add_argument("--text-layers", type=int, default=8)
    ap.add_argument("--text-hidden", type=int, default=128)
    ap.add_argument("--text-inter", type=int, default=384)
    ap.add_argument("--vision-layers", type=int, default=3)
    ap.add_argument("--vision-hidden", type=int, default=128)
    ap.add_argument("--seed", type=int, default=TRAIN_SEED)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=int, default=150)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--time-limit-min", type=float, default=52.0,
                    help="stop (and save) after this many minutes even if --steps is not reached (0: no limit)")
    ap.add_argument("--fp16", action="store_true", help="save weights in float16 (default float32)")
    return ap.parse_args()


def make_batch(seed, start, bs, pc, answer_ids, eos_id, with_aux=False):
    samples = [C.sample_stream_item(seed, start + j, with_aux) for j in range(bs)]
    ids = [pc.ids(s.question) + [answer_ids[s.answer], eos_id] for s in samples]
    input_ids = torch.tensor(ids, dtype=torch.long)
    pixel_values = C.images_to_tensor([s.image for s in samples])
    return input_ids, pixel_values, samples


def progress(step, elapsed, a):
    """Fraction of the run done: by steps, or by wall time when --time-limit-min is set
    (whichever is further), so that the LR decay always completes before the deadline."""
    f = step / a.steps
    if a.time_limit_min > 0:
        f = max(f, elapsed / (a.time_limit_min * 60))
    return min(1.0, f)


def lr_at(step, frac, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    if frac < a.decay_start:
        return a.lr
    t = (frac - a.decay_start) / max(1e-9, 1 - a.decay_start)
    return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def save(model, processor, out, meta, fp16):
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    m = model
    if fp16:
        import copy
        m = copy.deepcopy(model).half()
    m.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    with open(os.path.join(tmp, "training_meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    old = out.rstrip("/") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out):
        os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


@torch.no_grad()
def quick_eval(model, pc, answer_ids, eos_id, n=256, ks=(1, 4, 6)):
    model.eval()
    ids, pv, samples = make_batch(QUICK_EVAL_SEED, 0, n, pc, answer_ids, eos_id)
    full, out = C.forward_with_withdrawal(model, ids, pv, ks, positions=(-3,))
    gold = ids[:, -2]
    res = {"acc": (full[:, 0].argmax(-1) == gold).float().mean().item()}
    lp_full = F.log_softmax(full[:, 0].float(), -1)
    for k in ks:
        lp = F.log_softmax(out[k][:, 0].float(), -1)
        res[f"acc@{k}"] = (lp.argmax(-1) == gold).float().mean().item()
        res[f"kl@{k}"] = (lp.exp() * (lp - lp_full)).sum(-1).mean().item()
    model.train()
    return res


def main():
    a = parse_args()
    torch.set_num_threads(a.threads)
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)

    processor = C.build_processor()
    tok = processor.tokenizer
    pc = C.PromptCache(processor)
    answer_ids = {w: tok.convert_tokens_to_ids(w) for t in C.TASKS for w in C.ANSWERS[t]}
    eos_id = tok.eos_token_id
    model = C.build_model(processor, a.text_layers, a.text_hidden, a.text_inter, a.vision_layers, a.vision_hidden,
                          seed=a.seed)
    if a.init_from:
        from transformers import LlavaForConditionalGeneration
        model = LlavaForConditionalGeneration.from_pretrained(a.init_from, dtype=torch.float32)
        print(f"initialised from {a.init_from}", flush=True)
    L = model.config.text_config.num_hidden_layers
    task_answer_ids = {t: torch.tensor([answer_ids[w] for w in C.ANSWERS[t]]) for t in C.TASKS}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params: {n_params} ({n_params / 1e6:.2f}M); text layers {L}", flush=True)

    hid = model.config.text_config.hidden_size
    aux_head = torch.nn.Linear(hid, (1 + len(C.COLOR_NAMES)) + (1 + len(C.SHAPES)) + 2)
    decay, no_decay = list(aux_head.parameters()), []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in n or "embed" in n else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.98), eps=1e-8)
    krng = random.Random(a.seed + 1)
    model.train()
    t0 = time.time()
    ema = {}
    meta = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv), "args": vars(a),
            "params": n_params, "train_seed": a.seed}
    step = 0
    for step in range(a.steps):
        cur_lr = lr_at(step, progress(step, time.time() - t0, a), a)
        for g in opt.param_groups:
            g["lr"] = cur_lr
        use_aux = a.aux_weight > 0
        ids, pv, samples = make_batch(a.seed, (a.start_step + step) * a.batch_size, a.batch_size, pc, answer_ids, eos_id, use_aux)
        withdraw = krng.random() < a.withdraw_prob
        k = krng.randint(a.k_min, a.k_max) if withdraw else None
        ks = ([k] if withdraw else []) + ([1] if a.blind_k1_weight > 0 else [])
        full, out, feats = C.forward_with_withdrawal(model, ids, pv, ks, positions=(-3, -2),
                                                     return_feats=True)
        gold = ids[:, -2]
        ce = F.cross_entropy(full[:, 0].float(), gold)
        ce_eos = F.cross_entropy(full[:, 1].float(), ids[:, -1])
        loss = ce + a.eos_weight * ce_eos
        logs = {"ce": ce.item(), "acc": (full[:, 0].argmax(-1) == gold).float().mean().item()}
        if use_aux:
            tgt = torch.from_numpy(np.stack([s.aux for s in samples]))  # (B, N, 3)
            z = aux_head(feats)
            nc, ns = 1 + len(C.COLOR_NAMES), 1 + len(C.SHAPES)
            aux = (F.cross_entropy(z[..., :nc].reshape(-1, nc), tgt[..., 0].reshape(-1))
                   + F.cross_entropy(z[..., nc:nc + ns].reshape(-1, ns), tgt[..., 1].reshape(-1))
                   + F.cross_entropy(z[..., nc + ns:].reshape(-1, 2), tgt[..., 2].reshape(-1)))
            loss = loss + a.aux_weight * aux
            logs["aux"] = aux.item()
        if a.blind_k1_weight > 0:
            lp1 = F.log_softmax(out[1][:, 0].float(), -1)
            blind = torch.stack([lp1[i, task_answer_ids[smp.task]].mean() for i, smp in enumerate(samples)])
            blind = -blind.mean()
            loss = loss + a.blind_k1_weight * blind
            logs["blind1"] = blind.item()
        if withdraw:
            lk = out[k][:, 0].float()
            ce_k = F.cross_entropy(lk, gold)
            lp_k = F.log_softmax(lk, -1)
            lp_f = F.log_softmax(full[:, 0].float().detach(), -1)
            kl = (lp_k.exp() * (lp_k - lp_f)).sum(-1).mean()
            loss = loss + a.wd_ce_weight * ce_k + a.kl_weight * kl
            logs.update({"ce_k": ce_k.item(), "kl_k": kl.item()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(aux_head.parameters()), 1.0)
        opt.step()
        for kk, v in logs.items():
            ema[kk] = v if kk not in ema else 0.95 * ema[kk] + 0.05 * v
        elapsed = time.time() - t0
        if (step + 1) % a.log_every == 0:
            print(f"step {step + 1} lr {cur_lr:.2e} t {elapsed / 60:.1f}m "
                  + " ".join(f"{kk} {v:.4f}" for kk, v in ema.items()), flush=True)
        stop = a.time_limit_min > 0 and elapsed > a.time_limit_min * 60
        if (step + 1) % a.save_every == 0 or step + 1 == a.steps or stop:
            q = quick_eval(model, pc, answer_ids, eos_id)
            print(f"[eval] step {step + 1} " + " ".join(f"{kk} {v:.4f}" for kk, v in q.items()), flush=True)
            meta.update({"steps_done": step + 1, "wall_time_s": round(elapsed, 1), "quick_eval": q,
                         "samples_seen": (a.start_step + step + 1) * a.batch_size})
            save(model, processor, a.out, meta, a.fp16)
            print(f"saved {a.out} at step {step + 1}", flush=True)
        if stop:
            print("time limit reached", flush=True)
            break
    print(f"done in {(time.time() - t0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
