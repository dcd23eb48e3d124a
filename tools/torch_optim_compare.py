#!/usr/bin/env python3
"""Per-step losses of `sae train --optimizer X` against PyTorch's optimizer of the same name, in
float64, from the same initial weights and the same minibatches.

It writes a data file and an initial checkpoint (safetensors, with the model spec `sae train
--init` reads), runs `sae train --no-shuffle --log-every 1` on them, replays the same steps with
`torch.optim.SGD(momentum)` / `Adam` / `AdamW` in float64, and prints the largest relative
difference of the per-step loss J (measured before each step's update, as both report it).

Set up once:  python3 -m venv venv && venv/bin/pip install torch numpy safetensors
Run:          venv/bin/python tools/torch_optim_compare.py --sae target/release/sae
Prints one JSON line per optimizer.
"""
import argparse, json, os, subprocess, tempfile
import numpy as np
import torch
from safetensors.torch import save_file

SIZES = [20, 80, 40, 4]
RHO, BETA = 0.05, 3.0


def build(sizes):
    dims = sizes + sizes[-2::-1]
    code = len(sizes) - 1  # 1-based index of the code layer
    names = [f"enc{l}" for l in range(1, code + 1)] + [f"dec{l}" for l in range(1, len(dims) - code)]
    acts = ["relu"] * (len(dims) - 1)
    acts[code - 1] = "sigmoid"
    acts[-1] = "sigmoid"
    return dims, names, acts, code


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sae", default="target/release/sae")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    args = p.parse_args()
    torch.set_default_dtype(torch.float64)
    rng = np.random.default_rng(0)
    dims, names, acts, code = build(SIZES)
    x_all = rng.uniform(0.0, 1.0, size=(args.rows, dims[0])).astype(np.float32)
    init = {}
    for l in range(1, len(dims)):
        r = np.sqrt(6.0 / (dims[l - 1] + dims[l] + 1))
        init[f"{names[l - 1]}.weight"] = rng.uniform(-r, r, size=(dims[l], dims[l - 1])).astype(np.float32)
        init[f"{names[l - 1]}.bias"] = np.zeros(dims[l], dtype=np.float32)
    spec = {"sizes": dims, "activations": acts, "code_layer": code}
    tmp = tempfile.mkdtemp()
    data_path, init_path = os.path.join(tmp, "x.npy"), os.path.join(tmp, "init.safetensors")
    np.save(data_path, x_all)
    save_file({k: torch.from_numpy(v) for k, v in init.items()}, init_path, metadata={"sae_spec": json.dumps(spec)})

    settings = [
        ("momentum", 0.05, ["--momentum", "0.9"], lambda ps, lr, wd: torch.optim.SGD(ps, lr=lr, momentum=0.9, weight_decay=wd)),
        ("adam", 0.003, [], lambda ps, lr, wd: torch.optim.Adam(ps, lr=lr, weight_decay=wd)),
        ("adamw", 0.003, [], lambda ps, lr, wd: torch.optim.AdamW(ps, lr=lr, weight_decay=wd)),
    ]
    for name, lr, extra, make in settings:
        out = os.path.join(tmp, name)
        cmd = [args.sae, "train", "--preset", "classic", "--data", data_path, "--init", init_path, "--no-shuffle", "--log-every", "1",
               "--optimizer", name, "--lr", str(lr), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
               "--weight-decay", str(args.weight_decay), "--rho", str(RHO), "--beta", str(BETA), "--out", out] + extra
        subprocess.run(cmd, check=True, capture_output=True)
        sae_losses = [json.loads(l)["loss"] for l in open(os.path.join(out, "metrics.jsonl")) if '"kind":"step"' in l]

        ws = [torch.tensor(init[f"{n}.weight"], dtype=torch.float64, requires_grad=True) for n in names]
        bs = [torch.tensor(init[f"{n}.bias"], dtype=torch.float64, requires_grad=True) for n in names]
        decoupled = name == "adamw"
        wd = args.weight_decay
        # Weight decay on the weights only, as sae applies it.
        opt = make([{"params": ws, "weight_decay": wd}, {"params": bs, "weight_decay": 0.0}], lr, wd)
        losses = []
        x_t = torch.tensor(x_all, dtype=torch.float64)
        for _ in range(args.epochs):
            for start in range(0, args.rows, args.batch_size):
                x = x_t[start:start + args.batch_size]
                a, m = x, x.shape[0]
                for l, (w, b) in enumerate(zip(ws, bs)):
                    z = a @ w.T + b
                    a = torch.sigmoid(z) if acts[l] == "sigmoid" else torch.relu(z)
                    if l + 1 == code:
                        q = a.mean(0).clamp(1e-6, 1 - 1e-6)
                        kl = (RHO * torch.log(RHO / q) + (1 - RHO) * torch.log((1 - RHO) / (1 - q))).sum()
                rec = 0.5 * ((a - x) ** 2).sum() / m
                j = rec + BETA * kl
                # J as sae reports it: with adamw the decay is not part of J (and not in the gradient).
                reported = j if decoupled else j + 0.5 * wd * sum((w ** 2).sum() for w in ws)
                losses.append(reported.item())
                opt.zero_grad()
                j.backward()  # the L2 term's gradient comes from the optimizer's weight_decay
                opt.step()
        rel = [abs(s - t) / abs(t) for s, t in zip(sae_losses, losses)]
        print(json.dumps({"optimizer": name, "lr": lr, "steps": len(rel), "max_rel_diff": max(rel),
                          "first_loss": losses[0], "last_loss_torch": losses[-1], "last_loss_sae": sae_losses[-1]}))


if __name__ == "__main__":
    main()
