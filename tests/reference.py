"""The plain way to score (PEFT's): each row alone, one uncached pass over the whole sequence.

The fast path's tests compare against this.
"""

import torch
import torch.nn.functional as F

from prompttune.core.template import SoftSlot


def virtual_kv(method):
    """The per-layer KV a method puts before all text (prefix methods), else None."""
    return method.kv() if hasattr(method, "kv") else None


def reference_scores(pm, rows) -> torch.Tensor:
    """Each row alone in one uncached pass: [virtual KV] + [prefix | row | label tokens] as one sequence."""
    bb = pm.backbone
    kv = virtual_kv(pm.method)
    n_kv = kv[0][0].shape[2] if kv else 0
    prefix = [pm.method.slot_embeddings(s) if isinstance(s, SoftSlot) else bb.embed(s) for s in pm.segments]
    rows_w = bb.lm_rows(pm.candidates).float()
    out = []
    for row in rows:
        pieces = pm.compiled.split_row(pm.compiled.render_row(row.fields))
        row_emb = [
            pm.method.slot_embeddings(p) if isinstance(p, SoftSlot) else bb.embed(torch.tensor(bb.tokenize(p)))
            for p in pieces
        ]
        form_scores = []
        for toks, cand in zip(pm.form_token_ids, pm.form_tokens, strict=True):
            emb = torch.cat([*prefix, *row_emb, bb.embed(torch.tensor(toks[:-1], dtype=torch.long))], 0)
            t = emb.shape[0]
            hidden = bb.run(None, torch.ones(1, n_kv + t, dtype=torch.long), torch.arange(n_kv, n_kv + t)[None], kv,
                            inputs_embeds=emb[None])[0]  # fmt: skip
            logp = F.log_softmax(hidden[-len(toks) :].float() @ rows_w.T, -1)
            form_scores.append(sum(logp[j, c] for j, c in enumerate(cand)))
        fs = torch.stack(form_scores)
        labels = torch.stack(
            [
                torch.logsumexp(fs[pm.form_label == i], 0) - torch.log(torch.tensor(float((pm.form_label == i).sum())))
                for i in range(len(pm.verbalizer.labels))
            ]
        )
        out.append(F.log_softmax(labels, -1))
    return torch.stack(out)
