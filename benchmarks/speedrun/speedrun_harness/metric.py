"""The speedrun metric: validation loss = mean cross-entropy (nats per token) over a fixed set of
target tokens, computed from the model's logits.

The fixed set: ``val_tokens / seq_len`` rows of ``seq_len + 1`` tokens, packed from the val split
in file order, once, by nanochat's best-fit packer (every document, or document piece of at
most ``doc_chunk_tokens``, starts with BOS; no padding). Every target token counts, BOS
included, so the count is exactly ``val_tokens``.

The torch functions used here are captured when this module is imported; the out-of-process
evaluation imports it before the candidate's module, so a candidate cannot replace them there.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

_cross_entropy = F.cross_entropy
_no_grad = torch.no_grad
_autocast = torch.autocast
_isfinite = torch.isfinite
_to_float = torch.Tensor.float
_to_double = torch.Tensor.double
_tsum = torch.Tensor.sum
_from_numpy = torch.from_numpy


def n_rows(cfg: dict[str, Any]) -> int:
    seq_len, val_tokens = int(cfg["seq_len"]), int(cfg["val_tokens"])
    if val_tokens <= 0 or val_tokens % seq_len:
        raise ValueError(f"val_tokens ({val_tokens}) must be a positive multiple of seq_len ({seq_len}); fix the preset "
                         f"in task.toml")
    return val_tokens // seq_len


def fixed_rows(tokens: np.ndarray, offsets: np.ndarray, cfg: dict[str, Any]) -> np.ndarray:
    """The fixed rows (n, seq_len + 1) of a split, packed in file order."""
    from nanochat_harness.loader import eval_rows

    n = n_rows(cfg)
    rows = eval_rows(tokens, offsets, int(cfg["seq_len"]), n, int(cfg["bos_id"]),
                     chunk_tokens=int(cfg.get("doc_chunk_tokens", 0) or 0), buffer_docs=int(cfg.get("pack_buffer", 256)))
    if rows is None:
        raise ValueError(f"the split holds fewer than {n} rows of {int(cfg['seq_len']) + 1} tokens; lower val_tokens in "
                         f"the preset (task.toml) or use a larger corpus")
    return rows


def logits_of(model, x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    if x.device.type == "cuda":
        with _autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
    else:
        out = model(x)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"model(idx) returned {type(out).__name__}; it must return the logits tensor (B, T, vocab)")
    want = (x.shape[0], x.shape[1], vocab_size)
    if tuple(out.shape) != want:
        raise ValueError(f"model(idx) returned logits of shape {tuple(out.shape)}; expected {want} (B, T, vocab_size)")
    if not out.is_floating_point():
        raise ValueError(f"model(idx) returned logits of dtype {out.dtype}; expected a floating dtype")
    return out


def loss_over_rows(model, rows: np.ndarray, device: str | torch.device, vocab_size: int, batch_rows: int = 16,
                   rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Mean cross-entropy over every target of ``rows`` (n, T+1). With several processes, process
    ``r`` evaluates rows ``r, r + W, ...`` and the sums are all-reduced; every process runs the
    same number of batches of the same shape (the last ones padded, padding not counted), so a
    compiled model sees one shape."""
    device = torch.device(device)
    n, T1 = rows.shape
    mine = rows[rank::world_size]
    per = -(-n // world_size)
    n_batches = -(-per // batch_rows)
    sum_nats = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with _no_grad():
            for b in range(n_batches):
                part = mine[b * batch_rows:(b + 1) * batch_rows]
                real = len(part)
                if real < batch_rows:
                    part = np.concatenate([part, np.repeat(rows[:1], batch_rows - real, axis=0)], axis=0)
                chunk = _from_numpy(np.ascontiguousarray(part)).to(device)
                x, y = chunk[:, :-1], chunk[:, 1:]
                logits = _to_float(logits_of(model, x, vocab_size))
                nats = _cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1), reduction="none")
                nats = nats.view(batch_rows, T1 - 1)[:real]
                finite &= _isfinite(nats).all()
                sum_nats += _tsum(_to_double(nats))
                count += real * (T1 - 1)
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    if world_size > 1:
        import torch.distributed as dist

        flag = finite.to(torch.int64)
        for t in (sum_nats, count, flag):
            dist.all_reduce(t)
        finite = flag == world_size
    total = int(count.item())
    loss = float(sum_nats.item()) / total if total else math.nan
    return {"loss": loss if bool(finite.item()) else math.nan, "nats": float(sum_nats.item()), "tokens": total,
            "finite": bool(finite.item())}
