"""
nanochat seed: train a small GPT for a fixed wall-clock budget, lowest val bits-per-byte wins.

One file, read top to bottom: settings, model, optimizer, training, summary.
The protected harness (`nanochat_harness`) owns the data, the clock and the metric; this
script only asks it for settings and batches, trains until the budget is spent, and hands
the model back with `H.finish(model, init_kwargs)`: its weights (a state dict) and the arguments
that rebuild it. The harness evaluates it in a separate process that imports this file as a
module and calls `GPT(**init_kwargs)`, so every class is module-level and all training runs
under `if __name__ == "__main__":`.

The recipe, all written here: a GPT with rotary position embeddings, QK-norm, ReLU^2 MLP,
parameter-free RMSNorm, untied input/output embeddings, logit soft-capping, optional value
embeddings and an embedding skip connection; Muon (momentum + Newton-Schulz
orthogonalization) for the 2-D hidden matrices and AdamW for embeddings, head and scalars;
learning rates scheduled by elapsed training time over the budget (or over MAX_EPOCHS passes
of the train split, if that comes first: on a small corpus more passes only memorize it).
On CUDA: bf16 autocast, torch.compile (warmed up on random tokens before the clock starts)
and fused causal attention (ATTN_BACKEND picks which kernel is tried first). On CPU: fp32, no compile.
"""

import contextlib
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import nanochat_harness as H

# ---------------------------------------------------------------------------
# settings (one per line: the offline playbook rewrites single lines)

cfg = H.config() if __name__ == "__main__" else {}  # the evaluation process imports this file only for its classes
DEVICE = cfg.get("device", "cpu")  # "cpu" or "cuda", chosen by the preset
SEED = cfg.get("seed", 0)  # run seed, set by the harness
BUDGET_S = cfg.get("budget_s", 20.0)  # training-time budget in seconds (the harness's clock decides)
VOCAB_SIZE = cfg.get("vocab_size", 8192)  # tokenizer vocabulary, fixed by the harness
SEQ_LEN = cfg.get("seq_len", 2048)  # tokens per training sequence
DEPTH = cfg.get("depth", 8)  # transformer blocks
N_EMBD = cfg.get("n_embd", 512)  # model width (rounded to a multiple of 2 * N_HEAD)
N_HEAD = cfg.get("n_head", 4)  # attention heads (head dim = width / heads)
MLP_RATIO = 4  # hidden width of the MLP, in multiples of the model width
TOTAL_BATCH_TOKENS = min(cfg.get("total_batch_size") or cfg.get("batch_size", 32) * SEQ_LEN, 2**18)  # tokens per optimizer step: the preset's hint, at most 2^18 (more steps in a short budget)
BATCH_SIZE = max(1, TOTAL_BATCH_TOKENS // SEQ_LEN)  # sequences per optimizer step
MICRO_BATCH = min(cfg.get("batch_size", 32), 128)  # sequences per forward/backward, at most 128 (128 x 2048 tokens: 54 GB peak on an H100); gradients accumulate over BATCH_SIZE // MICRO_BATCH
QK_NORM = True  # RMS-normalize queries and keys per head before attention
RELU2 = True  # MLP activation: ReLU squared (True) or GELU (False)
LOGIT_SOFTCAP = True  # squash logits with SOFTCAP * tanh(logits / SOFTCAP)
SOFTCAP = 15.0  # soft-cap value for the output logits
VALUE_EMBEDS = True  # add per-layer token embeddings to the attention values (every other layer)
X0_SKIP = True  # learnable mix of the input embedding into every block's residual stream
MATRIX_LR = 0.04  # Muon learning rate for the hidden 2-D matrices
EMBED_LR = 0.6  # AdamW learning rate for the token (and value) embeddings
HEAD_LR = 0.004  # AdamW learning rate for the output head
SCALAR_LR = 0.1  # AdamW learning rate for scalar gates and mixes
ADAM_BETA1 = 0.8  # AdamW first-moment decay
ADAM_BETA2 = 0.95  # AdamW second-moment decay
WEIGHT_DECAY = 0.2  # decoupled weight decay on the Muon matrices (scaled by the learning rate)
MUON_MOMENTUM = 0.95  # Muon momentum (Nesterov) after its warm-up
MUON_MOMENTUM_START = 0.85  # Muon momentum at step 0, raised linearly over MUON_MOMENTUM_STEPS
MUON_MOMENTUM_STEPS = 300  # optimizer steps to reach MUON_MOMENTUM
NS_STEPS = 5  # Newton-Schulz iterations that orthogonalize each Muon update
WARMUP_FRAC = 0.0  # fraction of the time budget spent warming the learning rate up from zero
WARMDOWN_FRAC = 0.5  # fraction of the time budget at the end spent decaying the learning rate
FINAL_LR_FRAC = 0.0  # learning rate at the end of the warmdown, as a fraction of the peak
MAX_EPOCHS = 4.0  # data-constrained corpora: the schedule ends (and training stops) once the train split was read this often; 0: no cap
INIT_STD = 1.0  # std of the hidden-matrix init, in units of 1/sqrt(fan_in)
THREADS = cfg.get("threads", 2)  # CPU threads for torch (CPU presets)
COMPILE = DEVICE == "cuda"  # torch.compile the model (CUDA only; compile time is outside the clock)
AUTOCAST = DEVICE == "cuda"  # bf16 autocast for matmuls and attention (CUDA only)
ATTN_BACKEND = "cudnn"  # fused attention kernel tried first on CUDA: "cudnn" (cuDNN's) or "default" (PyTorch's order: flash)
LOG_EVERY = 5  # optimizer steps between points of the live loss curve
PEAK_FLOPS = 989.5e12  # bf16 dense peak of one H100 SXM, for the MFU figure

# ---------------------------------------------------------------------------
# model


def rms_norm(x):
    """RMSNorm over the last dimension, no learnable parameters."""
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    """Rotary position embeddings: rotate pairs of channels by position-dependent angles."""

    def __init__(self, head_dim, max_len, base=10000.0):
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self._build(max_len)

    def _build(self, length):
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, head_dim/2)
        self.register_buffer("cos", angles.cos()[None, :, None, :], persistent=False)  # (1, T, 1, head_dim/2)
        self.register_buffer("sin", angles.sin()[None, :, None, :], persistent=False)

    def forward(self, x):  # x: (B, T, heads, head_dim)
        T = x.size(1)
        if T > self.cos.size(1):  # evaluation at a longer length than training: extend the table
            device = self.cos.device
            self._build(T)
            self.cos, self.sin = self.cos.to(device), self.sin.to(device)
        cos, sin = self.cos[:, :T].to(x.dtype), self.sin[:, :T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, n_embd, n_head, max_len, qk_norm, value_embed):
        super().__init__()
        self.n_head, self.head_dim = n_head, n_embd // n_head
        self.qk_norm = qk_norm
        self.qkv = nn.Parameter(torch.empty(3, n_embd, n_embd))  # q, k, v projections, stored as one tensor
        self.proj = nn.Parameter(torch.empty(n_embd, n_embd))  # output projection
        self.rotary = Rotary(self.head_dim, max_len)
        # value embeddings enter through a per-head gate that starts half open
        self.ve_gate = nn.Parameter(torch.full((n_head,), 0.5)) if value_embed else None

    def forward(self, x, ve=None):
        B, T, C = x.shape
        q, k, v = F.linear(x, self.qkv.flatten(0, 1)).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        dt = q.dtype  # bf16 under autocast; q, k and v must share it for fused attention
        if ve is not None:
            v = v + (self.ve_gate[:, None] * ve.view(B, T, self.n_head, self.head_dim)).to(dt)
        q, k = self.rotary(q), self.rotary(k)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        q, k, v = (t.to(dt).transpose(1, 2) for t in (q, k, v))  # (B, heads, T, head_dim)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.linear(y.transpose(1, 2).reshape(B, T, C), self.proj)


class MLP(nn.Module):
    def __init__(self, n_embd, ratio, relu2):
        super().__init__()
        self.fc = nn.Parameter(torch.empty(ratio * n_embd, n_embd))
        self.proj = nn.Parameter(torch.empty(n_embd, ratio * n_embd))
        self.relu2 = relu2

    def forward(self, x):
        h = F.linear(x, self.fc)
        h = F.relu(h).square() if self.relu2 else F.gelu(h)
        return F.linear(h, self.proj)


class Block(nn.Module):
    def __init__(self, n_embd, n_head, mlp_ratio, max_len, qk_norm, relu2, value_embed, x0_skip):
        super().__init__()
        self.attn = Attention(n_embd, n_head, max_len, qk_norm, value_embed)
        self.mlp = MLP(n_embd, mlp_ratio, relu2)
        # residual mix: x <- a * x + b * x0 (x0 = the normalized input embedding), a=1, b=0 at init
        self.mix = nn.Parameter(torch.tensor([1.0, 0.0])) if x0_skip else None

    def forward(self, x, x0, ve=None):
        if self.mix is not None:
            a, b = self.mix.to(x.dtype).unbind()
            x = a * x + b * x0
        x = x + self.attn(rms_norm(x), ve)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, seq_len, depth, n_embd, n_head, mlp_ratio=4, qk_norm=True, relu2=True,
                 softcap=15.0, value_embeds=False, x0_skip=True):
        super().__init__()
        self.vocab_size, self.softcap = vocab_size, softcap
        self.wte = nn.Embedding(vocab_size, n_embd)
        # value embeddings on every other layer, always including the last one
        self.ve_layers = [i for i in range(depth) if value_embeds and (depth - 1 - i) % 2 == 0]
        self.ve = nn.ModuleDict({str(i): nn.Embedding(vocab_size, n_embd) for i in self.ve_layers})
        self.blocks = nn.ModuleList(
            Block(n_embd, n_head, mlp_ratio, seq_len, qk_norm, relu2, i in self.ve_layers, x0_skip) for i in range(depth)
        )
        self.head = nn.Linear(n_embd, vocab_size, bias=False)

    @torch.no_grad()
    def init_weights(self, init_std=1.0):
        for emb in [self.wte, *self.ve.values()]:
            nn.init.normal_(emb.weight, std=1.0)
        nn.init.normal_(self.head.weight, std=0.5 / self.head.weight.size(1) ** 0.5)
        for block in self.blocks:
            d = block.attn.proj.size(1)
            nn.init.normal_(block.attn.qkv, std=init_std / d**0.5)
            nn.init.normal_(block.mlp.fc, std=init_std / d**0.5)
            nn.init.zeros_(block.attn.proj)  # every block starts as the identity
            nn.init.zeros_(block.mlp.proj)

    def forward(self, idx, targets=None):
        x = x0 = rms_norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            ve = self.ve[str(i)](idx) if str(i) in self.ve else None
            x = block(x, x0, ve)
        logits = self.head(rms_norm(x)).float()
        if self.softcap:
            logits = self.softcap * torch.tanh(logits / self.softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


# ---------------------------------------------------------------------------
# optimizer


def orthogonalize(G, steps):
    """Approximate U V^T of G = U S V^T with a quintic Newton-Schulz iteration (batched over leading dims).

    The coefficients push every singular value into roughly [0.7, 1.2] within a few steps,
    which is all Muon needs; it runs in bf16 on CUDA.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """Momentum, then orthogonalize the update of each matrix (Nesterov, decoupled weight decay).

    Parameters of the same shape are stacked so that each shape costs one batched iteration.
    A parameter with more than 2 dims is a stack of matrices (its last two dims).
    """

    def __init__(self, params, lr, momentum=0.95, ns_steps=5, weight_decay=0.0):
        params = list(params)
        shapes = sorted({tuple(p.shape) for p in params})
        groups = [{"params": [p for p in params if tuple(p.shape) == s]} for s in shapes]
        super().__init__(groups, dict(lr=lr, momentum=momentum, ns_steps=ns_steps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = torch.stack([p.grad for p in params])
            state = self.state[params[0]]
            if "buf" not in state:
                state["buf"] = torch.zeros_like(grads)
            buf, mom = state["buf"], group["momentum"]
            buf.lerp_(grads, 1 - mom)
            update = grads.lerp(buf, mom)  # Nesterov look-ahead
            update = orthogonalize(update, group["ns_steps"])
            rows, cols = params[0].shape[-2:]
            scale = max(1.0, rows / cols) ** 0.5  # equal RMS per input unit for tall and wide matrices
            lr, wd = group["lr"], group["weight_decay"]
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_add_(params, list(update.to(params[0].dtype).unbind(0)), alpha=-lr * scale)


def build_optimizers(model):
    matrices = [p for n, p in model.blocks.named_parameters() if p.ndim >= 2]
    scalars = [p for n, p in model.blocks.named_parameters() if p.ndim < 2]
    embeds = [model.wte.weight, *[e.weight for e in model.ve.values()]]
    adam_groups = [
        dict(params=embeds, lr=EMBED_LR),
        dict(params=[model.head.weight], lr=HEAD_LR),
        dict(params=scalars, lr=SCALAR_LR),
    ]
    adam_groups = [g for g in adam_groups if g["params"]]
    fused = DEVICE == "cuda"
    adam = torch.optim.AdamW(adam_groups, betas=(ADAM_BETA1, ADAM_BETA2), eps=1e-10, weight_decay=0.0, fused=fused)
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, ns_steps=NS_STEPS, weight_decay=WEIGHT_DECAY)
    for opt in (adam, muon):
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return adam, muon


def lr_multiplier(progress):
    """Learning-rate factor as a function of progress = elapsed training time / budget."""
    if progress < WARMUP_FRAC:
        return max(progress / WARMUP_FRAC, 0.01)  # never exactly zero: the first step still moves
    if progress > 1.0 - WARMDOWN_FRAC:
        frac = (1.0 - progress) / WARMDOWN_FRAC  # 1 -> 0 over the warmdown
        return FINAL_LR_FRAC + (1.0 - FINAL_LR_FRAC) * max(frac, 0.0)
    return 1.0


# ---------------------------------------------------------------------------
# training


def attention_kernels():
    """Context in which F.scaled_dot_product_attention tries ATTN_BACKEND's kernel first; shapes it
    cannot serve fall back to PyTorch's usual order. torch.compile picks the kernel when it traces."""
    if DEVICE != "cuda" or ATTN_BACKEND == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend as B, sdpa_kernel

    assert ATTN_BACKEND == "cudnn", f"ATTN_BACKEND = {ATTN_BACKEND!r}: use 'default' or 'cudnn'"
    return sdpa_kernel([B.CUDNN_ATTENTION, B.FLASH_ATTENTION, B.EFFICIENT_ATTENTION, B.MATH], set_priority=True)


def count_flops_per_token(model, n_embd):
    """Training FLOPs per token: 6 per matmul weight (forward + backward) plus attention scores and values
    (12 * depth * width * seq_len, the usual convention that counts the full T x T score matrix)."""
    matmul = sum(p.numel() for p in model.blocks.parameters() if p.ndim >= 2) + model.head.weight.numel()
    return 6 * matmul + 12 * len(model.blocks) * n_embd * SEQ_LEN


def main():
    t_start = time.time()
    torch.manual_seed(SEED)
    if DEVICE == "cpu":
        torch.set_num_threads(THREADS)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    n_embd = max(2 * N_HEAD, (N_EMBD // (2 * N_HEAD)) * 2 * N_HEAD)
    model = GPT(VOCAB_SIZE, SEQ_LEN, DEPTH, n_embd, N_HEAD, MLP_RATIO, QK_NORM, RELU2,
                SOFTCAP if LOGIT_SOFTCAP else 0.0, VALUE_EMBEDS, X0_SKIP)
    model.init_weights(INIT_STD)
    model.to(DEVICE)
    num_params = sum(p.numel() for p in model.parameters())
    flops_per_token = count_flops_per_token(model, n_embd)
    adam, muon = build_optimizers(model)
    train_model = torch.compile(model) if COMPILE else model
    micro = max(1, min(MICRO_BATCH, BATCH_SIZE))
    accum = max(1, BATCH_SIZE // micro)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=AUTOCAST)

    if COMPILE:  # compile and warm up on random tokens (no training data, no optimizer step), shaped and laid out
        for _ in range(2):  # like the loader's batches: contiguous (B, T) int64, or the first real step recompiles
            fake_x = torch.randint(0, VOCAB_SIZE, (micro, SEQ_LEN), device=DEVICE)
            fake_y = torch.randint(0, VOCAB_SIZE, (micro, SEQ_LEN), device=DEVICE)
            with autocast:
                train_model(fake_x, fake_y).backward()
            model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    loader = H.train_loader(micro, SEQ_LEN, DEVICE)
    x, y = next(loader)  # prefetch: the first step waits on nothing
    step, tokens, loss_val = 0, 0, float("nan")
    horizon = BUDGET_S  # seconds the schedule runs for; shortened by MAX_EPOCHS once an epoch's duration is known
    steady_t0, steady_tokens = None, 0  # throughput after the first steps, for the MFU figure
    step_s = 0.0  # duration of the last step: a step that cannot finish within the budget is not started
    while H.time_left() > step_s:
        t_step = H.elapsed()
        progress = t_step / horizon
        if progress >= 1.0:
            break
        mult = lr_multiplier(progress)
        for opt in (adam, muon):
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * mult
        ramp = min(step / MUON_MOMENTUM_STEPS, 1.0)
        for g in muon.param_groups:
            g["momentum"] = MUON_MOMENTUM_START + ramp * (MUON_MOMENTUM - MUON_MOMENTUM_START)

        loss_sum = torch.zeros((), device=DEVICE)
        for _ in range(accum):
            with autocast:
                loss = train_model(x, y)
            (loss / accum).backward()
            loss_sum += loss.detach()
            x, y = next(loader)
        adam.step()
        muon.step()
        model.zero_grad(set_to_none=True)

        step += 1
        tokens += accum * micro * SEQ_LEN
        loss_val = loss_sum.item() / accum  # one sync per step keeps the clock honest on CUDA
        step_s = H.elapsed() - t_step
        if not math.isfinite(loss_val):
            print(f"loss is {loss_val} at step {step}; stopping")
            break
        if MAX_EPOCHS and horizon == BUDGET_S and getattr(loader, "epoch", 0) >= 1:  # first pass over the data done
            horizon = min(BUDGET_S, MAX_EPOCHS * H.elapsed())
        if step == 10:
            steady_t0, steady_tokens = time.time(), tokens
        if step % LOG_EVERY == 0:
            H.log(step, loss_val, lr_mult=mult)

    if DEVICE == "cuda":
        torch.cuda.synchronize()
    training_seconds = H.elapsed()
    steady_t1 = time.time()  # the end of the MFU window: saving the model below is not training
    H.log(step, loss_val, lr_mult=0.0)
    H.finish(model, dict(vocab_size=VOCAB_SIZE, seq_len=SEQ_LEN, depth=DEPTH, n_embd=n_embd, n_head=N_HEAD,
                         mlp_ratio=MLP_RATIO, qk_norm=QK_NORM, relu2=RELU2, softcap=SOFTCAP if LOGIT_SOFTCAP else 0.0,
                         value_embeds=VALUE_EMBEDS, x0_skip=X0_SKIP))  # weights + how to rebuild the model

    # ---------------------------------------------------------------------------
    # summary
    tokens_per_s = tokens / max(training_seconds, 1e-9)
    steady_tps = (tokens - steady_tokens) / max(steady_t1 - steady_t0, 1e-9) if steady_t0 else tokens_per_s
    if DEVICE == "cuda":
        peak_mem_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mem_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("---")
    print(f"training_seconds: {training_seconds:.1f}")
    print(f"total_seconds: {time.time() - t_start:.1f}")
    print(f"steps: {step}")
    print(f"tokens: {tokens}")
    print(f"tokens_per_s: {tokens_per_s:.0f}")
    if DEVICE == "cuda":
        print(f"mfu: {100 * flops_per_token * steady_tps / PEAK_FLOPS:.1f}")
    print(f"peak_mem_mb: {peak_mem_mb:.0f}")
    print(f"num_params: {num_params}")
    print(f"depth: {DEPTH}")
    print(f"train_loss: {loss_val:.4f}")


if __name__ == "__main__":
    with attention_kernels():
        main()
