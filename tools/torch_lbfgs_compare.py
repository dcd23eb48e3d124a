#!/usr/bin/env python3
"""`sae train --optimizer lbfgs` against `torch.optim.LBFGS(history_size=100,
line_search_fn="strong_wolfe")` on UFLDL's sparse autoencoder exercise, from the same weights.

The problem (docs/design.md section 9): 8x8 natural-image patches in [0.1, 0.9] (made with
`sae patches`), a 64-25-64 sigmoid autoencoder, J = (1/2m) sum ||xhat - x||^2
+ (lambda/2) sum ||W||^2 + beta sum_j KL(rho || rho_hat_j), rho_hat over the whole set,
rho 0.01, beta 3, lambda 1e-4. The initial weights are UFLDL's (uniform in +-sqrt(6/(n_in +
n_out + 1)), zero biases), saved as a plain PyTorch state dict that `sae train --init` reads
with the model flags. PyTorch runs in float32 (as sae does) and float64, each as one
`LBFGS.step` of --iterations iterations with max_eval unbounded (PyTorch's default caps it at
1.25 x max_iter); sae runs --epochs iterations. Prints one JSON line per run, then the ratio.

Set up once:  python3 -m venv venv && venv/bin/pip install torch numpy safetensors
Run:          target/release/sae patches examples/images/*.png --out patches.npy
              venv/bin/python tools/torch_lbfgs_compare.py --sae target/release/sae --data patches.npy
"""
import argparse, json, os, subprocess, tempfile, time
import numpy as np
import torch
from safetensors.torch import save_file

RHO, BETA, LAMBDA = 0.01, 3.0, 1e-4
EPS = 1e-6  # sae clamps rho_hat to [eps, 1 - eps] in the KL (model::RHO_HAT_EPS)


def ufldl_init(n_in, n_hidden, seed):
    g = torch.Generator().manual_seed(seed)
    r = (6.0 / (n_in + n_hidden + 1)) ** 0.5
    return {
        "enc1.weight": (torch.rand(n_hidden, n_in, generator=g, dtype=torch.float64) * 2 - 1) * r,
        "enc1.bias": torch.zeros(n_hidden, dtype=torch.float64),
        "dec1.weight": (torch.rand(n_in, n_hidden, generator=g, dtype=torch.float64) * 2 - 1) * r,
        "dec1.bias": torch.zeros(n_in, dtype=torch.float64),
    }


def objective(p, x):
    a = torch.sigmoid(x @ p["enc1.weight"].T + p["enc1.bias"])
    xhat = torch.sigmoid(a @ p["dec1.weight"].T + p["dec1.bias"])
    m = x.shape[0]
    rec = 0.5 * ((xhat - x) ** 2).sum() / m
    wd = 0.5 * LAMBDA * ((p["enc1.weight"] ** 2).sum() + (p["dec1.weight"] ** 2).sum())
    q = a.mean(0).clamp(EPS, 1 - EPS)
    kl = (RHO * torch.log(RHO / q) + (1 - RHO) * torch.log((1 - RHO) / (1 - q))).sum()
    return rec + wd + BETA * kl


def torch_run(init, data, iterations, dtype):
    p = {k: v.to(dtype).clone().requires_grad_(True) for k, v in init.items()}
    x = torch.tensor(data, dtype=dtype)
    opt = torch.optim.LBFGS(
        list(p.values()), lr=1, max_iter=iterations, max_eval=100 * iterations, history_size=100,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        j = objective(p, x)
        j.backward()
        return j

    t0 = time.time()
    opt.step(closure)
    secs = time.time() - t0
    state = opt.state[opt._params[0]]
    with torch.no_grad():
        j = objective(p, x).item()
    return {"who": f"torch {str(dtype).split('.')[-1]}", "J": j, "iterations": state["n_iter"],
            "evaluations": state["func_evals"], "seconds": round(secs, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sae", default="target/release/sae")
    ap.add_argument("--data", required=True, help="patches (.npy) from `sae patches`")
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    data = np.load(args.data).astype(np.float32)
    n_in = data.shape[1]
    init = ufldl_init(n_in, 25, args.seed)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        init_path = os.path.join(tmp, "init.safetensors")
        save_file({k: v.to(torch.float32).contiguous() for k, v in init.items()}, init_path)
        # Both start from the f32 weights sae reads.
        init = {k: v.to(torch.float32).to(torch.float64) for k, v in init.items()}
        out = os.path.join(tmp, "run")
        cmd = [args.sae, "train", "--data", args.data, "--init", init_path, "--layers", f"{n_in},25",
               "--code-activation", "sigmoid", "--output-activation", "sigmoid", "--sparsity", "kl",
               "--rho", str(RHO), "--beta", str(BETA), "--weight-decay", str(LAMBDA),
               "--optimizer", "lbfgs", "--epochs", str(args.iterations), "--out", out]
        t0 = time.time()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        secs = time.time() - t0
        lines = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
        last = lines[-1]
        results.append({"who": "sae", "J": last["loss"], "iterations": last["epoch"],
                        "evaluations": last["evaluations"], "seconds": round(secs, 1),
                        "terms": {k: last[k] for k in ("reconstruction", "weight_decay", "sparsity")}})
    for dtype in (torch.float32, torch.float64):
        results.append(torch_run(init, data, args.iterations, dtype))
    for r in results:
        print(json.dumps(r))
    sae_j = results[0]["J"]
    for r in results[1:]:
        print(json.dumps({"sae J / " + r["who"] + " J": sae_j / r["J"]}))


if __name__ == "__main__":
    main()
