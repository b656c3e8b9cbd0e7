"""Diagnostics for the first GPU runs: conv gradient accuracy against a float64 CPU reference."""
import torch
import torch.nn.functional as F

import fastdl

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


def run(fn, x, w, b, g):
    x, w, b = (t.clone().requires_grad_() for t in (x, w, b))
    y = fn(x, w, b)
    return [y.detach(), *torch.autograd.grad(y, (w, b, x), g)]


for n, c, h, k, r, p in [(8, 64, 27, 192, 5, 2), (1, 64, 27, 192, 5, 2), (4, 64, 27, 192, 5, 2),
                         (16, 64, 27, 192, 5, 2), (8, 64, 56, 64, 3, 1)]:
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(n, c, h, h, generator=gen), torch.randn(k, c, r, r, generator=gen), torch.randn(k, generator=gen)
    g = torch.randn(n, k, h + 2 * p - r + 1, h + 2 * p - r + 1, generator=gen)
    ref = run(lambda a, ww, bb: F.conv2d(a, ww, bb, padding=p), *(t.double() for t in (x, w, b, g)))
    rows = {}
    for name, dt, fn in [
        ("fastdl f32", torch.float32, lambda a, ww, bb: fastdl.ops.conv2d(a, ww, bb, padding=p)),
        ("fastdl f64", torch.float64, lambda a, ww, bb: fastdl.ops.conv2d(a, ww, bb, padding=p)),
        ("cudnn f32", torch.float32, lambda a, ww, bb: F.conv2d(a, ww, bb, padding=p)),
    ]:
        for bench in (False, True):
            torch.backends.cudnn.benchmark = bench
            got = run(fn, *(t.to("cuda", dt) for t in (x, w, b, g)))
            errs = [((a.double().cpu() - e).abs().max() / e.abs().max()).item() for a, e in zip(got, ref)]
            rows[f"{name} bench={bench}"] = errs
    print(f"N{n} C{c} {h}x{h} K{k} {r}x{r} pad {p}: max |err| / max |ref| for y, dw, db, dx")
    for name, errs in rows.items():
        print(f"  {name:24s} " + " ".join(f"{e:.2e}" for e in errs))
