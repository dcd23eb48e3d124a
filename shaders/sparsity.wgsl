// The KL sparsity gradient at the code layer (docs/design.md section 4), element-wise over [rows, cols]:
// (beta is this step's: times the step-values table's beta_scale during a warm-up)
//   mode 1, mean-activation KL:  delta = (G + (beta/m) KL'(rho_hat_j)) ⊙ f_c'(Z)
//   mode 2, hard firing-frequency KL, straight-through (docs/design.md section 11):
//                                delta = G ⊙ f_c'(Z) + (beta/(T m)) (rho_hat_j - rho_t),
//                                rho_t this step's target (annealed_rho, common.wgsl)
//   mode 3, smooth firing-frequency KL: delta = G ⊙ f_c'(Z) + (beta/m) KL'(rho_hat_j) s(1-s)/T,
//                                s = sigmoid(Z/T)
//   mode 4, L1 weighted by the decoder's column norms (section 12), a ReLU code:
//                                delta = (G + (C/m) ||w_j||) ⊙ f_c'(Z), the norms in rho_hat
// KL'(q) (kl_derivative in common.wgsl) with q clamped to [eps, 1-eps].

struct Kl {
    rows: u32,
    cols: u32,
    act: u32,
    mode: u32,
    rho: f32,
    beta_over_m: f32,
    temperature: f32,
    eps: f32,
    // kl-freq's target anneal (annealed_rho in common.wgsl; 0: none)
    anneal_steps: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(1) var<uniform> kl: Kl;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> z: array<f32>;
@group(0) @binding(4) var<storage, read> a: array<f32>;
@group(0) @binding(5) var<storage, read> rho_hat: array<f32>;
@group(0) @binding(6) var<storage, read_write> delta: array<f32>;
// The step state and the step-values table (common.wgsl): this step's share of beta.
@group(0) @binding(7) var<storage, read> state: array<u32>;
@group(0) @binding(8) var<storage, read> step_values: array<StepValues>;

@compute @workgroup_size(256)
fn kl_backward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = (wid.x + grid.offset.x) * 256u + lid.x;
    if (i >= kl.rows * kl.cols) {
        return;
    }
    let j = i % kl.cols;
    let scale = step_values[min(state[STATE_STEP] + 1u, arrayLength(&step_values)) - 1u].beta_scale;
    let fprime = activation_derivative(kl.act, z[i], a[i]);
    if (kl.mode == 4u) {
        delta[i] = (g[i] + kl.beta_over_m * scale * rho_hat[j]) * fprime;
        return;
    }
    if (kl.mode == 2u) {
        let rho_t = annealed_rho(kl.rho, state[STATE_STEP] + 1u, kl.anneal_steps);
        delta[i] = g[i] * fprime + kl.beta_over_m * scale * (rho_hat[j] - rho_t) / kl.temperature;
        return;
    }
    let dkl = kl.beta_over_m * scale * kl_derivative(kl.rho, rho_hat[j], kl.eps);
    if (kl.mode == 1u) {
        delta[i] = (g[i] + dkl) * fprime;
    } else {
        let s = sigmoid(z[i] / kl.temperature);
        delta[i] = g[i] * fprime + dkl * s * (1.0 - s) / kl.temperature;
    }
}
