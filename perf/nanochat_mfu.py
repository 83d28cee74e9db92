"""Steady-state throughput and MFU of the nanochat seed's training step, variant by variant, in one process.

    python3 perf/nanochat_mfu.py --out $OUT
    python3 perf/nanochat_mfu.py --out $OUT --variants default,cudnn,cudnn+micro128 --steps 20 --profile cudnn

What it is for: choosing between ways of running the same model (attention kernel, micro-batch,
compiled optimizer) before paying for full runs. It builds the seed's model at the h100 presets'
size (depth 8, width 512, 4 heads, sequence 2048, vocab 8192, 262,144 tokens per optimizer step),
compiles it as the seed does, and times optimizer steps on random tokens: the step is the seed's
(bf16 autocast, gradient accumulation, fused AdamW + Muon, one host sync per step), the clock is
the host's around whole steps after a warm-up. MFU uses the seed's own FLOP count and peak.

No harness, no data loader, no sandbox: these are upper bounds for the same step inside a real
run. The figures that count are the ones `nanochat_gpu.py` records through `autolab run`.

Variants are names joined by "+": ``default`` (PyTorch's attention order: flash first),
``cudnn`` (cuDNN's fused attention first), ``micro128`` (128 rows per forward, no accumulation),
``muon_compile`` (Newton-Schulz under torch.compile). Also checks that the cuDNN and flash
paths agree: loss and gradients of one micro-batch, relative difference.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "seeds" / "nanochat"), str(REPO / "benchmarks" / "nanochat")]

SIZE = dict(vocab=8192, seq_len=2048, depth=8, n_embd=512, n_head=4, total_tokens=2**18)


def new_model(S):
    """The seed's GPT at SIZE (width 512 is already a multiple of 2 * heads), initialized as the seed does, on CUDA."""
    model = S.GPT(SIZE["vocab"], SIZE["seq_len"], SIZE["depth"], SIZE["n_embd"], SIZE["n_head"], S.MLP_RATIO,
                  S.QK_NORM, S.RELU2, S.SOFTCAP if S.LOGIT_SOFTCAP else 0.0, S.VALUE_EMBEDS, S.X0_SKIP)
    model.init_weights(S.INIT_STD)
    return model.cuda()


def measure(S, name: str, steps: int, warmup: int, profile_dir: Path | None, orthogonalize) -> dict:
    import torch

    variant = set(name.split("+"))
    unknown = variant - {"default", "cudnn", "micro128", "muon_compile"}
    if unknown:
        raise SystemExit(f"unknown variant part(s) {sorted(unknown)} in {name!r}: use default, cudnn, micro128, muon_compile")
    torch._dynamo.reset()
    S.orthogonalize = torch.compile(orthogonalize) if "muon_compile" in variant else orthogonalize
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    T = SIZE["seq_len"]
    micro = 128 if "micro128" in variant else 64
    accum = SIZE["total_tokens"] // (micro * T)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
    t0 = time.monotonic()
    S.ATTN_BACKEND = "cudnn" if "cudnn" in variant else "default"
    with S.attention_kernels():
        model = new_model(S)
        train_model, (adam, muon) = torch.compile(model), S.build_optimizers(model)
        g = torch.Generator(device="cuda").manual_seed(0)
        pool = torch.randint(0, SIZE["vocab"], (4, micro, T + 1), device="cuda", generator=g)

        def step(i: int) -> float:
            loss_sum = torch.zeros((), device="cuda")
            for k in range(accum):
                rows = pool[(i * accum + k) % len(pool)]
                x, y = rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
                with autocast:
                    loss = train_model(x, y)
                (loss / accum).backward()
                loss_sum += loss.detach()
            adam.step()
            muon.step()
            model.zero_grad(set_to_none=True)
            return loss_sum.item() / accum   # the seed's one host sync per step

        for i in range(warmup):
            step(i)
        compile_s = time.monotonic() - t0
        t1 = time.perf_counter()
        losses = [step(warmup + i) for i in range(steps)]
        dt = time.perf_counter() - t1
        if profile_dir is not None:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for i in range(3):
                    step(warmup + steps + i)
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90)
            (profile_dir / f"profile-{name.replace('+', '_')}.txt").write_text(table)
    flops = S.count_flops_per_token(model, SIZE["n_embd"])
    tps = steps * accum * micro * T / dt
    row = {"variant": name, "micro": micro, "accum": accum, "step_ms": round(1000 * dt / steps, 2),
           "tokens_per_s": round(tps), "mfu": round(100 * flops * tps / S.PEAK_FLOPS, 2),
           "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 1), "compile_s": round(compile_s, 1),
           "last_loss": round(losses[-1], 4), "flops_per_token": flops}
    del model, train_model, adam, muon
    return row


def agreement(S) -> dict:
    """Loss and gradients of one micro-batch under flash and under cuDNN attention (eager, bf16 autocast)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    model = new_model(S)
    with torch.no_grad():   # the seed starts its projections at zero; perturb them so attention matters
        for b in model.blocks:
            b.attn.proj.normal_(std=0.02)
            b.mlp.proj.normal_(std=0.02)
    x = torch.randint(0, SIZE["vocab"], (8, SIZE["seq_len"]), device="cuda")
    y = torch.randint(0, SIZE["vocab"], (8, SIZE["seq_len"]), device="cuda")
    out = {}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        model.zero_grad(set_to_none=True)
        with sdpa_kernel([backend]), torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x, y)
        loss.backward()
        out[name] = (loss.item(), torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None]))
    (lf, gf), (lc, gc) = out["flash"], out["cudnn"]
    return {"loss_flash": lf, "loss_cudnn": lc, "loss_rel_diff": abs(lf - lc) / abs(lf),
            "grad_rel_diff": ((gf - gc).norm() / gf.norm()).item()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--variants", default="default,cudnn,cudnn+micro128,cudnn+muon_compile")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per variant")
    ap.add_argument("--warmup", type=int, default=4, help="untimed steps first (compilation happens here)")
    ap.add_argument("--profile", default="", help="comma-separated variants to profile (3 steps, CUDA kernels)")
    ap.add_argument("--apply-best", type=Path, default=None, metavar="TRAIN_PY",
                    help="rewrite this train.py's ATTN_BACKEND and MICRO_BATCH to the fastest variant that ran "
                         "(cuDNN only if it agreed with flash); a copy goes to OUT")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)

    import torch

    import train as S   # the seed, imported as a module: its settings at their defaults, no training runs

    S.DEVICE, S.SEQ_LEN = "cuda", SIZE["seq_len"]   # what the seed's functions read from its module settings
    orthogonalize = S.orthogonalize                 # the eager Newton-Schulz; muon_compile wraps it
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "size": SIZE}
    try:
        info["agreement"] = agreement(S)
    except Exception as e:  # noqa: BLE001 - reported, the timings still run
        info["agreement"] = {"error": f"{type(e).__name__}: {e}"}
    print("agreement:", info["agreement"], flush=True)
    profiled = set(filter(None, a.profile.split(",")))
    rows = []
    for name in a.variants.split(","):
        try:
            row = measure(S, name, a.steps, a.warmup, a.out if name in profiled else None, orthogonalize)
        except Exception as e:  # noqa: BLE001 - one failing variant must not lose the others
            row = {"variant": name, "error": f"{type(e).__name__}: {str(e)[:500]}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
        (a.out / "mfu.json").write_text(json.dumps({**info, "rows": rows}, indent=1))
    print("\n| variant | micro x accum | step ms | tokens/s | MFU % | peak GB | compile s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | error: {r['error'][:120]} |")
        else:
            print(f"| {r['variant']} | {r['micro']} x {r['accum']} | {r['step_ms']} | {r['tokens_per_s']:,} | {r['mfu']} | "
                  f"{r['peak_mem_gb']} | {r['compile_s']} |")
    if a.apply_best:
        choice = apply_best(a.apply_best, rows, info["agreement"])
        info["applied"] = choice
        (a.out / "mfu.json").write_text(json.dumps({**info, "rows": rows}, indent=1))
        (a.out / "train.py").write_text(a.apply_best.read_text())
        print(f"applied to {a.apply_best}: {choice}")
    return 0


AGREE = {"loss_rel_diff": 1e-2, "grad_rel_diff": 5e-2}   # bf16 kernels differ in rounding, not in what they compute


def apply_best(train_py: Path, rows: list[dict], agreement: dict) -> dict:
    """Set the seed's ATTN_BACKEND and MICRO_BATCH cap to the fastest measured variant that is a
    setting of the seed (not muon_compile); cuDNN only where it agreed with flash."""
    cudnn_ok = "error" not in agreement and all(agreement[k] < v for k, v in AGREE.items())
    ok = [r for r in rows if "error" not in r and "muon_compile" not in r["variant"]
          and (cudnn_ok or "cudnn" not in r["variant"])]
    if not ok:
        raise SystemExit("no variant ran cleanly; train.py left as it was")
    best = max(ok, key=lambda r: r["tokens_per_s"])
    backend = "cudnn" if "cudnn" in best["variant"] else "default"
    text = train_py.read_text()
    new = re.sub(r'^ATTN_BACKEND = "\w+"', f'ATTN_BACKEND = "{backend}"', text, count=1, flags=re.M)
    new = re.sub(r'^(MICRO_BATCH = min\(cfg\.get\("batch_size", 32\), )\d+\)', rf"\g<1>{best['micro']})", new,
                 count=1, flags=re.M)
    train_py.write_text(new)
    return {"variant": best["variant"], "attn_backend": backend, "micro_batch_cap": best["micro"],
            "cudnn_agreed": cudnn_ok, "changed": new != text}


if __name__ == "__main__":
    sys.exit(main())
