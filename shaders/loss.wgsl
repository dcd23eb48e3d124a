// The reconstruction loss: its gradient at the output (every step) and its value (on request).
//
//   output_delta: delta_L = (1/m) (Xhat - X) ⊙ f_L'(Z_L)
//   loss_value:   out = [J, reconstruction, weight_decay, sparsity, sum of squared errors]
//                 reconstruction = (1/m) sum_i 0.5 ||xhat_i - x_i||^2
//                 weight_decay   = (lambda/2) sum ||W||^2     (over the weight region only)
//                 sparsity       = beta sum_j KL(rho || rho_hat_j), beta this step's (warm-up)
//   loss_value runs as one workgroup: fixed-order strided sums and a fixed tree (deterministic).

struct Loss {
    rows: u32,
    cols: u32,
    act: u32,
    weights_len: u32,
    inv_m: f32,
    half_lambda: f32,
    rho: f32,
    beta: f32,
    code_width: u32,
    sparsity: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(1) var<uniform> ls: Loss;
@group(0) @binding(2) var<storage, read> xhat: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> z_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> delta: array<f32>;

@compute @workgroup_size(256)
fn output_delta(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = (wid.x + grid.offset.x) * 256u + lid.x;
    if (i >= ls.rows * ls.cols) {
        return;
    }
    delta[i] = (xhat[i] - x[i]) * ls.inv_m * activation_derivative(ls.act, z_out[i], xhat[i]);
}

@group(0) @binding(6) var<storage, read> weights: array<f32>;
@group(0) @binding(7) var<storage, read> rho_hat: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;
// The step state and the step-values table (common.wgsl): this step's share of beta.
@group(0) @binding(9) var<storage, read> state: array<u32>;
@group(0) @binding(10) var<storage, read> step_values: array<StepValues>;

@compute @workgroup_size(256)
fn loss_value(@builtin(local_invocation_id) lid: vec3<u32>) {
    _ = grid.offset; // one workgroup, never split; the binding is kept for a uniform layout
    let t = lid.x;
    var sq = 0.0;
    for (var i = t; i < ls.rows * ls.cols; i += TREE_WG) {
        let d = xhat[i] - x[i];
        sq = fma(d, d, sq);
    }
    let sum_sq = tree_sum(t, sq);
    var ww = 0.0;
    for (var i = t; i < ls.weights_len; i += TREE_WG) {
        ww = fma(weights[i], weights[i], ww);
    }
    let sum_ww = tree_sum(t, ww);
    var kl = 0.0;
    // Modes 4 (L1) and 5 (L0) are measured on the host, from the mean activations and the
    // column norms, and from the firing frequencies.
    if (ls.sparsity != 0u && ls.sparsity < 4u) {
        for (var j = t; j < ls.code_width; j += TREE_WG) {
            kl += kl_divergence(ls.rho, rho_hat[j], ls.eps);
        }
    }
    let sum_kl = tree_sum(t, kl);
    if (t == 0u) {
        let reconstruction = 0.5 * sum_sq * ls.inv_m;
        let weight_decay = ls.half_lambda * sum_ww;
        let scale = step_values[min(state[STATE_STEP] + 1u, arrayLength(&step_values)) - 1u].beta_scale;
        let sparsity = ls.beta * scale * sum_kl;
        out[0] = reconstruction + weight_decay + sparsity;
        out[1] = reconstruction;
        out[2] = weight_decay;
        out[3] = sparsity;
        out[4] = sum_sq;
    }
}
