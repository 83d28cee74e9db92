"""
speedrun seed: train a GPT to the target validation loss in as little time as possible.

One file, read top to bottom: settings, model, optimizer, training, summary.
The protected harness (`speedrun_harness`) owns the clock, the data streams, the validation
and the target; this script builds a model, warms it up off the clock (compilation) on random
tokens, lets the harness restore and verify the initial state, then trains a fixed number of
optimizer steps and hands the model to `H.finish(model, step, init_kwargs)`, which stops the clock and runs the
final validation. The harness re-checks that validation in a separate process that imports
this file as a module, so every class is module-level and all training runs under
`if __name__ == "__main__":`.

The recipe, all written here: a GPT with rotary position embeddings, RMS-normalized queries
and keys, ReLU^2 MLP, parameter-free RMSNorm, zero-initialized output projections, untied
input/output embeddings, logit soft-capping and a learnable mix of the input embedding into
every block; Muon (Nesterov momentum, then Newton-Schulz orthogonalization of each matrix's
update) for the hidden matrices and AdamW for embeddings, head and scalars; a constant
learning rate with a linear warmdown over the last part of the steps. On CUDA: bf16 autocast,
torch.compile and fused causal attention; on several GPUs, data-parallel (torchrun + DDP, the
Muon work split across processes). On CPU: fp32, no compile.
"""

import contextlib
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import speedrun_harness as H

# ---------------------------------------------------------------------------
# settings (one per line: the offline playbook rewrites single lines)

cfg = H.config() if __name__ == "__main__" else {}  # the re-check process imports this file only for its classes
DEVICE = cfg.get("device", "cpu")  # "cpu" or "cuda", chosen by the preset
VOCAB_SIZE = cfg.get("vocab_size", 8192)  # tokenizer vocabulary, fixed by the harness
SEQ_LEN = cfg.get("seq_len", 1024)  # tokens per training sequence (validation rows have this length too)
DEPTH = cfg.get("depth", 12)  # transformer blocks
N_EMBD = cfg.get("n_embd", 768)  # model width
N_HEAD = cfg.get("n_head", 6)  # attention heads (head dim = width / heads)
MLP_RATIO = 4  # hidden width of the MLP, in multiples of the model width
TRAIN_STEPS = cfg.get("train_steps", 1000)  # optimizer steps: the whole plan (the schedule ends here)
TIME_PLAN_S = cfg.get("time_plan_s", 0)  # calibration only (one process): > 0 schedules by seconds on the clock and stops there instead
DEVICE_BATCH = cfg.get("batch_size", 32)  # sequences per forward/backward on each process
TOTAL_BATCH_TOKENS = cfg.get("total_batch_size", 262144)  # tokens per optimizer step, all processes together
VAL_EVERY = cfg.get("val_every", 0)  # optimizer steps between validations (0: only the final one)
STOP_AT_TARGET = False  # end the run at the first intermediate validation that reaches the target
SOFTCAP = 15.0  # logits are squashed to SOFTCAP * tanh(logits / SOFTCAP)
ROPE_BASE = 10000.0  # rotary embedding base
MATRIX_LR = 0.04  # Muon learning rate for the hidden matrices
EMBED_LR = 0.6  # AdamW learning rate for the token embedding
HEAD_LR = 0.004  # AdamW learning rate for the output head
SCALAR_LR = 0.04  # AdamW learning rate for the per-block mixing scalars
ADAM_BETA1 = 0.8  # AdamW first-moment decay
ADAM_BETA2 = 0.95  # AdamW second-moment decay
MUON_MOMENTUM = 0.95  # Muon momentum after its ramp
MUON_MOMENTUM_START = 0.85  # Muon momentum at step 0, raised linearly over MUON_MOMENTUM_STEPS
MUON_MOMENTUM_STEPS = 300  # optimizer steps of the momentum ramp
NS_STEPS = 5  # Newton-Schulz iterations per Muon update
WEIGHT_DECAY = 0.0  # decoupled weight decay on the Muon matrices (scaled by the learning rate)
WARMDOWN_FRAC = 0.4  # fraction of the plan at the end over which the learning rate falls linearly to zero
WARMUP_ITERS = 3 if DEVICE == "cuda" else 1  # untimed warm-up steps on random tokens (compilation); the harness then restores the initial state
COMPILE = DEVICE == "cuda"  # torch.compile the model (CUDA only; compilation is off the clock)
AUTOCAST = DEVICE == "cuda"  # bf16 autocast for matmuls and attention (CUDA only)
LOG_EVERY = 10  # optimizer steps between points of the live loss curve (each costs one sync)
PEAK_FLOPS = 989.5e12  # bf16 dense peak of one H100 SXM, for the MFU figure

# ---------------------------------------------------------------------------
# model


def rms_norm(x):
    """RMSNorm over the last dimension, no learnable parameters."""
    return F.rms_norm(x, (x.size(-1),))


class Rotary(nn.Module):
    """Rotary position embeddings: channel pairs rotated by position-dependent angles."""

    def __init__(self, head_dim, max_len, base=ROPE_BASE):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)  # (T, head_dim / 2)
        self.register_buffer("cos", angles.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", angles.sin()[None, :, None, :], persistent=False)

    def forward(self, x):  # x: (B, T, heads, head_dim)
        T = x.size(1)
        cos, sin = self.cos[:, :T].to(x.dtype), self.sin[:, :T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, n_embd, n_head, max_len):
        super().__init__()
        self.n_head, self.head_dim = n_head, n_embd // n_head
        self.qkv = nn.Parameter(torch.empty(3, n_embd, n_embd))  # q, k, v projections: three matrices for Muon
        self.proj = nn.Parameter(torch.empty(n_embd, n_embd))  # output projection
        self.rotary = Rotary(self.head_dim, max_len)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = F.linear(x, self.qkv.flatten(0, 1)).view(B, T, 3, self.n_head, self.head_dim).unbind(2)
        q, k = rms_norm(self.rotary(q)), rms_norm(self.rotary(k))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return F.linear(y.transpose(1, 2).reshape(B, T, C), self.proj)


class MLP(nn.Module):
    def __init__(self, n_embd, ratio):
        super().__init__()
        self.fc = nn.Parameter(torch.empty(ratio * n_embd, n_embd))
        self.proj = nn.Parameter(torch.empty(n_embd, ratio * n_embd))

    def forward(self, x):
        return F.linear(F.relu(F.linear(x, self.fc)).square(), self.proj)


class Block(nn.Module):
    def __init__(self, n_embd, n_head, mlp_ratio, max_len):
        super().__init__()
        self.attn = Attention(n_embd, n_head, max_len)
        self.mlp = MLP(n_embd, mlp_ratio)
        self.mix = nn.Parameter(torch.tensor([1.0, 0.0]))  # x <- a * x + b * x0 (x0: the normalized input embedding)

    def forward(self, x, x0):
        a, b = self.mix.to(x.dtype).unbind()
        x = a * x + b * x0
        x = x + self.attn(rms_norm(x))
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, seq_len, depth, n_embd, n_head, mlp_ratio=4, softcap=15.0):
        super().__init__()
        self.vocab_size, self.softcap = vocab_size, softcap
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, mlp_ratio, seq_len) for _ in range(depth))
        self.head = nn.Linear(n_embd, vocab_size, bias=False)

    @torch.no_grad()
    def init_weights(self):
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.head.weight, std=0.5 / self.head.weight.size(1) ** 0.5)
        for block in self.blocks:
            d = block.attn.proj.size(1)
            nn.init.normal_(block.attn.qkv, std=d**-0.5)
            nn.init.normal_(block.mlp.fc, std=d**-0.5)
            nn.init.zeros_(block.attn.proj)  # every block starts as the identity
            nn.init.zeros_(block.mlp.proj)

    def forward(self, idx, targets=None):
        x = x0 = rms_norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, x0)
        logits = self.head(rms_norm(x)).float()
        logits = self.softcap * torch.tanh(logits / self.softcap)
        if targets is None:
            return logits  # (B, T, vocab): what the harness validates
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


# ---------------------------------------------------------------------------
# optimizer


def orthogonalize(G, steps):
    """Approximately replace G = U S V^T by U V^T (batched over leading dims) with a quintic
    Newton-Schulz iteration. The coefficients (3.4445, -4.7750, 2.0315), published with Muon,
    push every singular value into roughly [0.7, 1.2] in a few steps, which is all Muon needs."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * (A @ A)) @ X
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, then each matrix's update orthogonalized (a tensor of more than two dims
    is a stack of matrices: its last two). With several processes, matrix i is updated by process
    i % world_size and broadcast from there, so the Newton-Schulz work is split, not repeated."""

    def __init__(self, params, lr, momentum=0.95, ns_steps=5, weight_decay=0.0, rank=0, world_size=1):
        super().__init__(list(params), dict(lr=lr, momentum=momentum, ns_steps=ns_steps, weight_decay=weight_decay))
        self.rank, self.world_size = rank, world_size

    @torch.no_grad()
    def step(self):
        handles = []
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            for i, p in enumerate(group["params"]):
                owner = i % self.world_size
                if owner == self.rank and p.grad is not None:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    buf = state["momentum_buffer"]
                    buf.lerp_(p.grad, 1 - mom)
                    update = orthogonalize(p.grad.lerp(buf, mom), group["ns_steps"])  # Nesterov look-ahead
                    scale = max(1.0, p.size(-2) / p.size(-1)) ** 0.5  # same RMS per input unit, tall or wide
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(update.to(p.dtype), alpha=-lr * scale)
                if self.world_size > 1:
                    handles.append(torch.distributed.broadcast(p.data, src=owner, async_op=True))
        for h in handles:
            h.wait()


def build_optimizers(model, dist):
    matrices = [p for p in model.blocks.parameters() if p.ndim >= 2]
    scalars = [p for p in model.blocks.parameters() if p.ndim < 2]
    adam = torch.optim.AdamW(
        [dict(params=[model.wte.weight], lr=EMBED_LR), dict(params=[model.head.weight], lr=HEAD_LR),
         dict(params=scalars, lr=SCALAR_LR)],
        betas=(ADAM_BETA1, ADAM_BETA2), eps=1e-10, weight_decay=0.0, fused=DEVICE == "cuda")
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, ns_steps=NS_STEPS, weight_decay=WEIGHT_DECAY,
                rank=dist.rank, world_size=dist.world_size)
    for opt in (adam, muon):
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
    return adam, muon


def lr_multiplier(progress):
    """Learning-rate factor for progress in [0, 1]: 1, then linearly to 0 over the last WARMDOWN_FRAC."""
    if progress < 1.0 - WARMDOWN_FRAC:
        return 1.0
    return max(0.0, (1.0 - progress) / WARMDOWN_FRAC)


def set_schedule(adam, muon, progress, step):
    mult = lr_multiplier(progress)
    for opt in (adam, muon):
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * mult
    ramp = min(step / MUON_MOMENTUM_STEPS, 1.0)
    for g in muon.param_groups:
        g["momentum"] = MUON_MOMENTUM_START + ramp * (MUON_MOMENTUM - MUON_MOMENTUM_START)
    return mult


# ---------------------------------------------------------------------------
# training


def flops_per_token(model, n_embd):
    """Training FLOPs per token: 6 per matrix weight (forward + backward) plus the attention
    scores and values (12 * depth * width * seq_len, counting the full T x T matrix)."""
    matmul = sum(p.numel() for p in model.blocks.parameters() if p.ndim >= 2) + model.head.weight.numel()
    return 6 * matmul + 12 * len(model.blocks) * n_embd * SEQ_LEN


def main():
    t_start = time.time()
    dist = H.init()  # seed, threads, device, process group (torchrun)
    if DEVICE == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if TIME_PLAN_S and dist.world_size > 1:
        raise ValueError("TIME_PLAN_S (calibration) needs one process: processes could stop at different steps")
    model = GPT(VOCAB_SIZE, SEQ_LEN, DEPTH, N_EMBD, N_HEAD, MLP_RATIO, SOFTCAP)
    model.init_weights()
    model.to(dist.device)
    num_params = sum(p.numel() for p in model.parameters())
    adam, muon = build_optimizers(model, dist)
    ddp = None
    train_model = model
    if dist.world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dist.local_rank] if DEVICE == "cuda" else None,
                                                        broadcast_buffers=False)
        train_model = ddp
    eval_model = model
    if COMPILE:
        train_model = torch.compile(train_model)
        eval_model = torch.compile(model)
    accum = TOTAL_BATCH_TOKENS // (DEVICE_BATCH * SEQ_LEN * dist.world_size)
    assert accum >= 1 and accum * DEVICE_BATCH * SEQ_LEN * dist.world_size == TOTAL_BATCH_TOKENS, \
        "TOTAL_BATCH_TOKENS must be a multiple of DEVICE_BATCH * SEQ_LEN * processes"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=AUTOCAST)

    def train_step(batches):
        """One optimizer step over `accum` micro-batches; returns the mean loss (a tensor)."""
        total = torch.zeros((), device=dist.device)
        for i, (x, y) in enumerate(batches):
            last = i == accum - 1
            sync = contextlib.nullcontext() if ddp is None or last else ddp.no_sync()
            with sync, autocast:
                loss = train_model(x, y)
            (loss / accum).backward()
            total += loss.detach()
        adam.step()
        muon.step()
        model.zero_grad(set_to_none=True)
        return total / accum

    # --- untimed warm-up on random tokens: compile the training and validation paths, then the
    # harness puts the state of H.begin back and checks it (no training happens off the clock)
    H.begin(model, adam, muon)
    for it in range(WARMUP_ITERS):
        set_schedule(adam, muon, 0.0, it)
        train_step([H.warmup_batch(DEVICE_BATCH, SEQ_LEN) for _ in range(accum)])
    if WARMUP_ITERS:
        H.validate(eval_model)
    H.warmup_done(model, adam, muon, restore=True)  # the clock starts here

    # --- the timed run
    loader = H.train_loader(DEVICE_BATCH, SEQ_LEN)
    step, loss_val, mult = 0, float("nan"), 1.0
    tokens_per_step = TOTAL_BATCH_TOKENS
    steady_t, steady_step = None, 0
    while True:
        progress = H.elapsed() / TIME_PLAN_S if TIME_PLAN_S else step / TRAIN_STEPS
        if progress >= 1.0:
            break
        mult = set_schedule(adam, muon, progress, step)
        loss = train_step(next(loader) for _ in range(accum))
        step += 1
        if step == 10:
            steady_t, steady_step = H.elapsed(), step
        if step % LOG_EVERY == 0:
            loss_val = loss.item()
            H.log(step, loss_val, lr_mult=round(mult, 4))
            if not math.isfinite(loss_val):
                print(f"loss is {loss_val} at step {step}; stopping")
                break
        if VAL_EVERY and step % VAL_EVERY == 0 and (TIME_PLAN_S or step < TRAIN_STEPS):
            H.validate(eval_model, step)
            if H.out_of_time() or (STOP_AT_TARGET and H.target_reached()):
                break
    loss_val = loss.item() if step else loss_val
    steady_tps = (step - steady_step) * tokens_per_step / max(H.elapsed() - steady_t, 1e-9) if steady_t else 0.0
    val_loss = H.finish(model, step, init_kwargs=dict(vocab_size=VOCAB_SIZE, seq_len=SEQ_LEN, depth=DEPTH, n_embd=N_EMBD,
                                                     n_head=N_HEAD, mlp_ratio=MLP_RATIO, softcap=SOFTCAP))  # stops the clock, final validation, saves the weights
    time_s = H.elapsed()  # the clock's final reading: the run's time

    # ---------------------------------------------------------------------------
    # summary
    if DEVICE == "cuda":
        peak_mem_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mem_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if dist.is_main:
        print("---")
        print(f"time_s: {time_s:.3f}")
        print(f"val_loss: {val_loss:.4f}")
        print(f"target: {H.target():.4f}")
        print(f"steps: {step}")
        print(f"tokens: {step * tokens_per_step}")
        print(f"tokens_per_s: {step * tokens_per_step / max(time_s, 1e-9):.0f}")
        if DEVICE == "cuda":
            print(f"mfu: {100 * flops_per_token(model, N_EMBD) * steady_tps / (PEAK_FLOPS * dist.world_size):.1f}")
        print(f"peak_mem_mb: {peak_mem_mb:.0f}")
        print(f"num_params: {num_params}")
        print(f"world_size: {dist.world_size}")
        print(f"train_loss: {loss_val:.4f}")
        print(f"total_seconds: {time.time() - t_start:.1f}")
    if dist.world_size > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
