#!/usr/bin/env python3
"""Research prototype for the forum's model (all-ReLU 20-80-40-4 mirrored, firing-frequency
target), in PyTorch: the hard-frequency KL with a straight-through push, plus an optional
integral term on the code layer's bias. Not used by the engine or the tests; it records what
was measured so the engine's design can start from it (see the project's closing notes).

The push: KL(rho || q_j) of the hard batch frequency q_j, with dq_j/dz_ij taken as
q_j (1 - q_j) / (T m) (q modelled as logistic in the unit's shift), so every row of unit j gets
dJ/dz_ij = beta (q_j - rho) / (T m): bounded, and non-zero for a unit that never fires.
The integral term: b_j -= integral * (q_j - rho) after each optimizer step (plain SGD).

Data: like the built-in context vectors (four bumps over 20 features, each on with
probability 0.25 at strength U(0.3, 1), baseline 0.05, N(0, 0.03^2) noise), not bit-identical.

Run:  venv/bin/python tools/torch_forum_frequency.py "[dict(integral=0.01), dict(T=0.3)]"
Prints, per setting, how many of the 12 runs (ReLU/sigmoid output x rho 0.05/0.25 x seeds
0-2) end with every unit's frequency in the issue's band and FVU under its bound.
"""
import math, sys
import numpy as np
import torch

torch.set_num_threads(2)


def data(n, seed):
    rng = np.random.default_rng(seed)
    f = np.arange(20)
    x = np.full((n, 20), 0.05)
    for k in range(4):
        on = rng.random(n) < 0.25
        s = 0.3 + 0.7 * rng.random(n)
        x += 0.9 * (on * s)[:, None] * np.exp(-((f - (2.5 + 5 * k)) / 3) ** 2)[None, :]
    x += 0.03 * rng.standard_normal((n, 20))
    return np.clip(x, 0, 1).astype(np.float32)

class KLHard(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, q_used, rho, beta, T):
        m = z.shape[0]
        q = (z > 0).float().mean(0).clamp(1e-6, 1-1e-6)
        ctx.save_for_backward(q_used); ctx.c = (rho, beta, T, m)
        return beta * (rho*torch.log(rho/q) + (1-rho)*torch.log((1-rho)/(1-q))).sum()
    @staticmethod
    def backward(ctx, g):
        (q,) = ctx.saved_tensors; rho, beta, T, m = ctx.c
        d = g * beta * (q - rho) / (T * m)
        return d.expand(m, -1).clone(), None, None, None, None

def run(seed, rho, out_act, beta=3.0, T=0.5, lr=0.003, epochs=10, batch=32, n=8192, ema=0.0, cosine=False, dead=False, integral=0.0):
    torch.manual_seed(seed)
    x = data(n, seed)
    sizes = [20,80,40,4,40,80,20]
    layers = torch.nn.ModuleList([torch.nn.Linear(a,b) for a,b in zip(sizes[:-1], sizes[1:])])
    for l in layers:
        r = (6/(l.in_features+l.out_features+1))**0.5
        torch.nn.init.uniform_(l.weight, -r, r); torch.nn.init.zeros_(l.bias)
    if dead:
        with torch.no_grad(): layers[2].bias[0] = -20.0
    opt = torch.optim.Adam(layers.parameters(), lr=lr)
    steps = epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5*(1+math.cos(math.pi*t/steps)) if cosine else 1.0)
    X = torch.tensor(x)
    def fwd(xb):
        h = xb; zc = None
        for i,l in enumerate(layers):
            z = l(h)
            if i == 2: zc = z
            h = torch.sigmoid(z) if (i == 5 and out_act=='sigmoid') else torch.relu(z)
        return h, zc
    g = torch.Generator().manual_seed(seed)
    qe = None
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            xb = X[perm[i:i+batch]]
            xh, zc = fwd(xb)
            qb = (zc.detach() > 0).float().mean(0)
            qe = qb if qe is None else ema*qe + (1-ema)*qb
            loss = 0.5*((xh-xb)**2).sum()/xb.shape[0] + KLHard.apply(zc, qe.clamp(1e-6,1-1e-6), rho, beta, T)
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
            if integral:
                with torch.no_grad(): layers[2].bias -= integral * (qb - rho)
    with torch.no_grad():
        xh, zc = fwd(X)
        fvu = ((xh-X)**2).sum() / ((X-X.mean(0))**2).sum()
        freq = (zc>0).float().mean(0).numpy()
    return fvu.item(), freq

def ok(rho, fvu, q):
    lo, hi, f = (0.03, 0.08, 0.8) if rho == 0.05 else (0.2, 0.3, 0.5)
    return fvu < f and all(lo <= v <= hi for v in q)

if __name__ == "__main__":
    cfgs = eval(sys.argv[1])
    for kw in cfgs:
        tot=0; good=0
        lines=[]
        for out_act in ['relu','sigmoid']:
            for rho in [0.05,0.25]:
                res=[run(s, rho, out_act, **kw) for s in [0,1,2]]
                for f,q in res:
                    tot+=1; good+=ok(rho,f,q)
                lines.append(f"  {out_act} rho {rho}: " + " | ".join(f"fvu {f:.2f} {np.round(q,3)}" for f,q in res))
        print(kw, f"{good}/{tot} meet the bands", flush=True)
        print("\n".join(lines), flush=True)
