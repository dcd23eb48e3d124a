#!/usr/bin/env python3
"""The same dictionary-learning recipes as `sae train`, in PyTorch, for comparing recovered-feature
figures.

It trains a one-hidden-layer sparse autoencoder D -> N -> D on data built from a known dictionary
and reports how well the learned decoder columns recover the true directions. It is a reference to
hold `sae train`'s figures against (MMCS, fraction recovered, FVU, L0, dead latents), not a
bit-for-bit replay: the data, the initial weights and the minibatch order come from PyTorch/NumPy
generators.

Data (when --data/--truth are not given): F true directions in R^D, each a standard-normal vector
scaled to unit length (the rows of truth `[F, D]`). Each row is the sum of S distinct directions
chosen uniformly at random, each with a magnitude uniform in [0.5, 1.5], plus Gaussian noise of
std --noise per coordinate. --data X.npy --truth T.npy load float32 arrays instead (X `[rows, D]`,
T `[F, D]`); --dump-data DIR writes the synthetic set as DIR/x.npy and DIR/truth.npy.

Model (PyTorch Linear layout): W_enc `[N, D]`, b_enc `[N]`, W_dec `[D, N]`, b_dec `[D]`.
    z    = (x - b_dec) W_enc^T + b_enc      (x W_enc^T + b_enc with --no-pre-bias)
    a    = code(z)                          (the recipe's code, below)
    xhat = a W_dec^T + b_dec
    J    = mean over rows of sum over features of (xhat - x)^2  +  the recipe's sparsity term
Recipes:
    topk      a = relu(z) on the K largest z of each row (ties to the lower index), 0 elsewhere;
              no sparsity term.
    jumprelu  a = z * H(z - theta), theta = exp(log_threshold) a learned per-latent parameter;
              sparsity term  l0_coefficient * mean over rows of sum_j H(z_j - theta_j).
              The step H passes no gradient to z; theta gets a straight-through gradient with a
              rectangle kernel of width eps (--bandwidth): d/dtheta H(z - theta) =
              -(1/eps) rect((z - theta)/eps), d/dtheta [z H(z - theta)] =
              -(theta/eps) rect((z - theta)/eps), as in the JumpReLU paper (Rajamanoharan et al.
              2024) and SAELens's JumpReLUTrainingSAE.
    l1        a = relu(z); sparsity term  l1_coefficient * mean over rows of
              sum_j |a_j| ||W_dec[:, j]||_2  (SAELens's standard SAE with the penalty scaled by
              the decoder norm).
AuxK (--auxk K, 0 off; `sae train --auxk`): a latent silent for --dead-after samples is dead; the
K largest pre-activations among the dead latents, ReLU'd and decoded (with b_dec), are trained
toward the residual (x - xhat, held constant): J gains --auxk-coefficient (1/32) times the mean
over rows of the sum of squares of (recons - residual).
Init (tied, the default): W_dec columns standard normal scaled to unit length, W_enc = W_dec^T,
b_enc = 0, b_dec = the data mean with the pre-bias (else 0). --no-tied-init draws W_enc on its own
(Kaiming uniform). With --decoder-norm unit (the default) the gradient of each column W_dec[:, j]
loses its component along W_dec[:, j] before each Adam step and every column is scaled back to
unit norm after it.

Optimizer: Adam (betas 0.9, 0.999, eps 1e-8), minibatches of --batch rows, reshuffled each epoch
by a generator seeded with --seed (which also seeds the init; --data-seed seeds the synthetic
data).

Report: one JSON line on stdout and a human line on stderr with
    mmcs       mean over true directions of the best |cos| with any learned decoder column
    frac_0_9   fraction of true directions whose best |cos| exceeds 0.9
    fvu        sum of squared error / sum of squared deviation from the per-feature mean, over the
               whole set, with the final weights
    l0         mean number of active latents per row (final weights, whole set)
    dead       latents never active in the last epoch's training steps
    seconds    wall time of the training loop
--verbose prints MMCS (and loss, L0) after each epoch to stderr.

Set up once:  python3 -m venv venv && venv/bin/pip install torch numpy safetensors
Run:          venv/bin/python tools/torch_dictionary.py --recipe topk --k 3
              venv/bin/python tools/torch_dictionary.py --recipe jumprelu
              venv/bin/python tools/torch_dictionary.py --recipe l1
Defaults (batch 64, lr 4e-3, 20 epochs; topk --k 3; jumprelu --l0-coefficient 0.03
--threshold-init 0.1 --bandwidth 0.05; l1 --l1-coefficient 0.1) were chosen on the default synthetic
set (D=32, F=64, S=3, 20000 rows, N=64), where each recipe reaches MMCS > 0.95 for seeds 0-2 in
about 5 s on one CPU thread. SAELens's JumpReLU defaults (threshold 0.001, bandwidth 0.001) do not
work here: the code starts dense, the thresholds barely move, and the model settles on a dense
basis (L0 ~ 53, MMCS ~ 0.48). jumprelu also needs lr 4e-3 (at 1e-3 the thresholds are still
climbing after 20 epochs: MMCS ~ 0.75).

--save W.safetensors writes the trained weights (W_enc, b_enc, W_dec, b_dec, and threshold for
jumprelu).
"""
import argparse, json, math, os, sys, time
import numpy as np
import torch

def synthetic(d, f, s, rows, noise, seed):
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((f, d))
    truth /= np.linalg.norm(truth, axis=1, keepdims=True)
    # S distinct directions per row, uniformly: the first S of a random permutation of 0..F-1.
    idx = np.argsort(rng.random((rows, f)), axis=1)[:, :s]
    mag = rng.uniform(0.5, 1.5, size=(rows, s))
    coef = np.zeros((rows, f))
    np.put_along_axis(coef, idx, mag, axis=1)
    x = coef @ truth + noise * rng.standard_normal((rows, d))
    return x.astype(np.float32), truth.astype(np.float32)


def rectangle(u):
    return ((u > -0.5) & (u < 0.5)).to(u)


class Step(torch.autograd.Function):
    """H(z - theta): no gradient to z, straight-through rectangle-kernel gradient to theta."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        g_theta = (-(1.0 / eps) * rectangle((z - theta) / eps) * g).sum(0)
        return None, g_theta, None


class JumpReLU(torch.autograd.Function):
    """z H(z - theta): gradient H(z - theta) to z, straight-through gradient to theta."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        g_z = (z > theta).to(z) * g
        g_theta = (-(theta / eps) * rectangle((z - theta) / eps) * g).sum(0)
        return g_z, g_theta, None


def topk_mask(z, k):
    # A stable descending sort keeps the lower index first among equal values.
    order = torch.sort(z, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros_like(z)
    mask.scatter_(1, order, 1.0)
    return mask


class SAE(torch.nn.Module):
    def __init__(self, d, n, args, data_mean, gen):
        super().__init__()
        self.recipe, self.k, self.eps, self.pre_bias = args.recipe, args.k, args.bandwidth, args.pre_bias
        w_dec = torch.randn(d, n, generator=gen)
        w_dec /= w_dec.norm(dim=0, keepdim=True)
        if args.tied_init:
            w_enc = w_dec.t().clone()
        else:
            bound = math.sqrt(6.0 / d)  # Kaiming uniform, fan_in = D
            w_enc = (torch.rand(n, d, generator=gen) * 2 - 1) * bound
        self.W_enc = torch.nn.Parameter(w_enc)
        self.b_enc = torch.nn.Parameter(torch.zeros(n))
        self.W_dec = torch.nn.Parameter(w_dec)
        self.b_dec = torch.nn.Parameter(data_mean.clone() if args.pre_bias else torch.zeros(d))
        if self.recipe == "jumprelu":
            self.log_threshold = torch.nn.Parameter(torch.full((n,), math.log(args.threshold_init)))

    def threshold(self):
        return torch.exp(self.log_threshold)

    def pre_activations(self, x):
        return (x - self.b_dec if self.pre_bias else x) @ self.W_enc.t() + self.b_enc

    def forward(self, x):
        """Returns (xhat, a, sparsity term)."""
        z = (x - self.b_dec if self.pre_bias else x) @ self.W_enc.t() + self.b_enc
        zero = z.new_zeros(())
        if self.recipe == "topk":
            a, sparsity = torch.relu(z) * topk_mask(z.detach(), self.k), zero
        elif self.recipe == "jumprelu":
            theta = self.threshold()
            a = JumpReLU.apply(z, theta, self.eps)
            sparsity = Step.apply(z, theta, self.eps).sum(1).mean()
        else:
            a = torch.relu(z)
            sparsity = (a.abs() * self.W_dec.norm(dim=0)).sum(1).mean()
        return a @ self.W_dec.t() + self.b_dec, a, sparsity


def mmcs(w_dec, truth):
    cols = w_dec / w_dec.norm(dim=0, keepdim=True).clamp_min(1e-12)  # [D, N]
    t = truth / truth.norm(dim=1, keepdim=True)
    best = (t @ cols).abs().max(dim=1).values
    return best.mean().item(), (best > 0.9).float().mean().item()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--auxk", type=int, default=0,
                   help="AuxK: the K largest pre-activations of the dead latents reconstruct the residual (0: off)")
    p.add_argument("--auxk-coefficient", type=float, default=1 / 32)
    p.add_argument("--dead-after", type=int, default=10000, help="samples without firing that make a latent dead")
    p.add_argument("--recipe", choices=["topk", "jumprelu", "l1"], default="topk")
    g = p.add_argument_group("data")
    g.add_argument("--data", help="X.npy, float32 [rows, D]")
    g.add_argument("--truth", help="T.npy, float32 [F, D]")
    g.add_argument("--dim", "-D", type=int, default=32)
    g.add_argument("--features", "-F", type=int, default=64)
    g.add_argument("--active", "-S", type=int, default=3, help="true features per row")
    g.add_argument("--rows", type=int, default=20000)
    g.add_argument("--noise", type=float, default=0.01)
    g.add_argument("--data-seed", type=int, default=0)
    g.add_argument("--dump-data", metavar="DIR", help="write the data as DIR/x.npy and DIR/truth.npy")
    g = p.add_argument_group("model")
    g.add_argument("--latents", "-N", type=int, default=None, help="default: F")
    g.add_argument("--k", type=int, default=3)
    g.add_argument("--l0-coefficient", type=float, default=0.03)
    g.add_argument("--threshold-init", type=float, default=0.1)
    g.add_argument("--bandwidth", type=float, default=0.05)
    g.add_argument("--l1-coefficient", type=float, default=0.1)
    g.add_argument("--pre-bias", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--tied-init", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--decoder-norm", choices=["unit", "none"], default="unit")
    g = p.add_argument_group("training")
    g.add_argument("--lr", type=float, default=4e-3)
    g.add_argument("--batch", type=int, default=64)
    g.add_argument("--epochs", type=int, default=20)
    g.add_argument("--seed", type=int, default=0, help="init and shuffle")
    g.add_argument("--threads", type=int, default=1)
    g.add_argument("--verbose", action="store_true")
    g.add_argument("--save", metavar="W.safetensors")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if (args.data is None) != (args.truth is None):
        p.error("--data and --truth go together")
    if args.data:
        x_np = np.load(args.data).astype(np.float32)
        t_np = np.load(args.truth).astype(np.float32)
    else:
        x_np, t_np = synthetic(args.dim, args.features, args.active, args.rows, args.noise, args.data_seed)
    if args.dump_data:
        os.makedirs(args.dump_data, exist_ok=True)
        np.save(os.path.join(args.dump_data, "x.npy"), x_np)
        np.save(os.path.join(args.dump_data, "truth.npy"), t_np)
    x, truth = torch.from_numpy(x_np), torch.from_numpy(t_np)
    rows, d = x.shape
    n = args.latents or truth.shape[0]
    if args.recipe == "topk" and not 1 <= args.k <= n:
        p.error("--k must be between 1 and the latent count")

    gen = torch.Generator().manual_seed(args.seed)
    model = SAE(d, n, args, x.mean(0), gen)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    unit = args.decoder_norm == "unit"
    coef = {"topk": 0.0, "jumprelu": args.l0_coefficient, "l1": args.l1_coefficient}[args.recipe]
    # AuxK (`sae train --auxk`): samples since each latent last fired, counted before the term.
    since = torch.zeros(n)

    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        perm = torch.randperm(rows, generator=gen)
        fired = torch.zeros(n, dtype=torch.bool)
        tot_loss, tot_l0 = 0.0, 0.0
        for s in range(0, rows, args.batch):
            xb = x[perm[s:s + args.batch]]
            xhat, a, sparsity = model(xb)
            loss = (xhat - xb).pow(2).sum(1).mean() + coef * sparsity
            if args.auxk > 0:
                fired_now = (a.detach() != 0).any(0)
                since = torch.where(fired_now, torch.zeros_like(since), since + xb.shape[0])
                dead = since >= args.dead_after
                if dead.any():
                    z = model.pre_activations(xb).masked_fill(~dead, float("-inf"))
                    v, i = z.topk(min(args.auxk, n), dim=1)
                    a_aux = torch.zeros_like(z).scatter(1, i, v.clamp(min=0))
                    recons = a_aux @ model.W_dec.t() + model.b_dec
                    loss = loss + args.auxk_coefficient * (recons - (xb - xhat).detach()).pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if unit:
                with torch.no_grad():
                    w, gw = model.W_dec, model.W_dec.grad
                    gw -= w * (w * gw).sum(0, keepdim=True)  # columns are unit norm here
            opt.step()
            if unit:
                with torch.no_grad():
                    model.W_dec /= model.W_dec.norm(dim=0, keepdim=True)
            active = a.detach() != 0
            fired |= active.any(0)
            tot_loss += loss.item() * xb.shape[0]
            tot_l0 += active.sum().item()
        if args.verbose:
            m, fr = mmcs(model.W_dec.detach(), truth)
            extra = ""
            if args.recipe == "jumprelu":
                th = model.threshold().detach()
                extra = f" theta median {th.median().item():.4f}"
            print(f"epoch {epoch + 1:3d}  loss {tot_loss / rows:.5f}  L0 {tot_l0 / rows:.3f}  "
                  f"mmcs {m:.4f}  frac>0.9 {fr:.3f}  dead {int((~fired).sum())}{extra}", file=sys.stderr)
    seconds = time.perf_counter() - t0

    with torch.no_grad():
        xhat, a, _ = model(x)
        fvu = ((xhat - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
        l0 = (a != 0).sum(1).float().mean().item()
    m, fr = mmcs(model.W_dec.detach(), truth)
    dead = int((~fired).sum()) if args.epochs > 0 else n
    report = {"recipe": args.recipe, "rows": rows, "dim": d, "features": truth.shape[0], "latents": n,
              "seed": args.seed, "epochs": args.epochs, "batch": args.batch, "lr": args.lr,
              "mmcs": round(m, 5), "frac_0_9": round(fr, 5), "fvu": round(fvu, 6), "l0": round(l0, 4),
              "dead": dead, "seconds": round(seconds, 2)}
    if args.recipe == "topk":
        report["k"] = args.k
    elif args.recipe == "jumprelu":
        report.update(l0_coefficient=args.l0_coefficient, threshold_init=args.threshold_init,
                      bandwidth=args.bandwidth)
    else:
        report["l1_coefficient"] = args.l1_coefficient
    print(json.dumps(report))
    print(f"{args.recipe} N={n} seed {args.seed}: MMCS {m:.4f}, {fr:.3f} of true directions > 0.9, "
          f"FVU {fvu:.5f}, L0 {l0:.3f}, {dead} dead, {seconds:.1f} s", file=sys.stderr)

    if args.save:
        from safetensors.torch import save_file
        tensors = {k: v.detach().contiguous() for k, v in model.named_parameters() if k != "log_threshold"}
        if args.recipe == "jumprelu":
            tensors["threshold"] = model.threshold().detach().contiguous()
        save_file(tensors, args.save, metadata={"args": json.dumps(vars(args))})


if __name__ == "__main__":
    main()
