// The fused small-MLP path: a whole training step in four to six dispatches when every layer
// is at most MAX_WIDTH wide (the seed model is). Anchor: tiny-cuda-nn's fully fused MLPs; here
// each invocation owns one sample (row) and keeps its activations in private arrays, so a
// step is
//
//   fused_forward   one row per invocation: gather x, Z_l, A_l for every layer, delta_L
//   fire_count      the code layer's firing counts, samples since each unit fired, and kl-freq's
//                   controller (fires.wgsl); or column_sum (reduce.wgsl) for another penalty's
//                   rho_hat
//   fused_backward  one row per invocation: G = delta_l W_l, delta_{l-1} (+ the KL term)
//   fused_update    one parameter per invocation: dW = sum_i delta_l[i,j] A_{l-1}[i,p] (+ db),
//                   then W <- W - lr (dW + lambda W), b <- b - lr db with this step's lr from the
//                   step-values table; or, for another optimizer, only writes dW and db to
//                   `grads_out` for the update kernel after it (update.wgsl)
//   advance_cursor  (data.wgsl) the step state moves on
//
// Their f64 twins are reference::forward, reference::backward and reference::update. Every
// sum runs over rows or inputs in a fixed order: deterministic. Parameter reads are the same
// address across a workgroup (one weight for every row), which GPUs broadcast and CPU adapters
// load once per vector.
//
// Buffers: Z, A and delta of every layer live in three buffers with the same layout: layer l
// (0 = the input X) starts at table[l].out_off, row-major [rows, n_l].

struct Net {
    layers: u32,
    // 0-based index in `table` of the code layer (layer c of docs/design.md is table[c - 1]).
    code: u32,
    rows: u32,
    n0: u32,
    // 0 none, 1 mean-activation KL, 2 hard firing-frequency KL, 3 smooth firing-frequency KL
    sparsity: u32,
    rho: f32,
    beta_over_m: f32,
    temperature: f32,
    inv_m: f32,
    lambda: f32,
    eps: f32,
    total_params: u32,
    // Where row i comes from: 0 row i of `data`; 1 row order[cursor + i]; 2 row cursor + i.
    gather: u32,
    // 1: fused_update only writes the gradient to `grads_out` (another optimizer updates after
    // it); 0: it applies SGD itself.
    grads_only: u32,
    // kl-freq's target anneal (annealed_rho in common.wgsl; 0: none)
    anneal_steps: u32,
    _pad2: u32,
}

const MAX_WIDTH: u32 = 128u;

@group(0) @binding(1) var<uniform> net: Net;
@group(0) @binding(2) var<storage, read> table: array<Layer>;

fn row_index(lid: u32, wid: vec3<u32>) -> u32 {
    return (wid.x + grid.offset.x) * 64u + lid;
}

// ---- fused_forward ---------------------------------------------------------------------------

@group(0) @binding(3) var<storage, read> params_ro: array<f32>;
@group(0) @binding(4) var<storage, read> data: array<f32>;
@group(0) @binding(5) var<storage, read> order: array<u32>;
@group(0) @binding(6) var<storage, read> state_ro: array<u32>;
@group(0) @binding(7) var<storage, read_write> z_fwd: array<f32>;
@group(0) @binding(8) var<storage, read_write> a_fwd: array<f32>;
@group(0) @binding(9) var<storage, read_write> delta_fwd: array<f32>;

@compute @workgroup_size(64)
fn fused_forward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = row_index(lid, wid);
    if (i >= net.rows) {
        return;
    }
    var src = i;
    if (net.gather == 1u) {
        src = order[state_ro[STATE_CURSOR] + i];
    } else if (net.gather == 2u) {
        src = state_ro[STATE_CURSOR] + i;
    }
    var h: array<f32, MAX_WIDTH>;
    var next: array<f32, MAX_WIDTH>;
    for (var f = 0u; f < net.n0; f++) {
        let v = data[src * net.n0 + f];
        h[f] = v;
        a_fwd[table[0].in_off + i * net.n0 + f] = v;
    }
    // Z_l = A_{l-1} W_l^T + b_l, A_l = f_l(Z_l)
    for (var l = 0u; l < net.layers; l++) {
        let ly = table[l];
        for (var j = 0u; j < ly.n_out; j++) {
            var z = params_ro[ly.b_off + j];
            let w = ly.w_off + j * ly.n_in;
            for (var p = 0u; p < ly.n_in; p++) {
                z = fma(h[p], params_ro[w + p], z);
            }
            let a = activate(ly.act, z);
            z_fwd[ly.out_off + i * ly.n_out + j] = z;
            a_fwd[ly.out_off + i * ly.n_out + j] = a;
            next[j] = a;
        }
        for (var j = 0u; j < ly.n_out; j++) {
            h[j] = next[j];
        }
    }
    // delta_L = (1/m) (Xhat - X) ⊙ f_L'(Z_L)
    let last = table[net.layers - 1u];
    for (var f = 0u; f < net.n0; f++) {
        let x = a_fwd[table[0].in_off + i * net.n0 + f];
        let z = z_fwd[last.out_off + i * net.n0 + f];
        delta_fwd[last.out_off + i * net.n0 + f] = (h[f] - x) * net.inv_m * activation_derivative(last.act, z, h[f]);
    }
}

// ---- fused_backward --------------------------------------------------------------------------

@group(0) @binding(10) var<storage, read> z_bwd: array<f32>;
@group(0) @binding(11) var<storage, read> a_bwd: array<f32>;
@group(0) @binding(12) var<storage, read> rho_hat: array<f32>;
@group(0) @binding(13) var<storage, read_write> delta_bwd: array<f32>;

@compute @workgroup_size(64)
fn fused_backward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = row_index(lid, wid);
    if (i >= net.rows) {
        return;
    }
    var d: array<f32, MAX_WIDTH>;
    var g: array<f32, MAX_WIDTH>;
    let last = table[net.layers - 1u];
    for (var j = 0u; j < last.n_out; j++) {
        d[j] = delta_bwd[last.out_off + i * last.n_out + j];
    }
    for (var l = net.layers - 1u; l >= 1u; l--) {
        let ly = table[l];
        let below = table[l - 1u];
        // G = delta_l W_l
        for (var p = 0u; p < ly.n_in; p++) {
            var s = 0.0;
            for (var j = 0u; j < ly.n_out; j++) {
                s = fma(d[j], params_ro[ly.w_off + j * ly.n_in + p], s);
            }
            g[p] = s;
        }
        // delta_{l-1} = G ⊙ f'(Z_{l-1}), with the KL term at the code layer
        for (var p = 0u; p < ly.n_in; p++) {
            let at = below.out_off + i * ly.n_in + p;
            let z = z_bwd[at];
            let a = a_bwd[at];
            let fp = activation_derivative(below.act, z, a);
            var v = g[p] * fp;
            if (l - 1u == net.code && net.sparsity != 0u) {
                let scale = step_values[min(state_ro[STATE_STEP] + 1u, arrayLength(&step_values)) - 1u].beta_scale;
                let dkl = net.beta_over_m * scale * kl_derivative(net.rho, rho_hat[p], net.eps);
                if (net.sparsity == 1u) {
                    v = (g[p] + dkl) * fp;
                } else if (net.sparsity == 2u) {
                    // straight-through (docs/design.md section 11)
                    let rho_t = annealed_rho(net.rho, state_ro[STATE_STEP] + 1u, net.anneal_steps);
                    v = g[p] * fp + net.beta_over_m * scale * (rho_hat[p] - rho_t) / net.temperature;
                } else {
                    let s = sigmoid(z / net.temperature);
                    v = g[p] * fp + dkl * s * (1.0 - s) / net.temperature;
                }
            }
            d[p] = v;
            delta_bwd[at] = v;
        }
    }
}

// ---- fused_update ----------------------------------------------------------------------------

@group(0) @binding(14) var<storage, read> delta_upd: array<f32>;
@group(0) @binding(15) var<storage, read> a_upd: array<f32>;
@group(0) @binding(16) var<storage, read_write> params_rw: array<f32>;
@group(0) @binding(17) var<storage, read> state_upd: array<u32>;
@group(0) @binding(18) var<storage, read_write> grads_out: array<f32>;
@group(0) @binding(19) var<storage, read> step_values: array<StepValues>;

@compute @workgroup_size(64)
fn fused_update(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = row_index(lid, wid);
    // This step's learning rate (advance_cursor moves the step on after this dispatch).
    let lr = step_values[min(state_upd[STATE_STEP] + 1u, arrayLength(&step_values)) - 1u].lr;
    if (t >= net.total_params) {
        return;
    }
    var l = 0u;
    while (l + 1u < net.layers && table[l + 1u].param_start <= t) {
        l++;
    }
    let ly = table[l];
    let local = t - ly.param_start;
    let nw = ly.n_out * ly.n_in;
    if (local < nw) {
        // dW[j,p] = sum_i delta_l[i,j] A_{l-1}[i,p]
        let j = local / ly.n_in;
        let p = local % ly.n_in;
        var s = 0.0;
        for (var i = 0u; i < net.rows; i++) {
            s = fma(delta_upd[ly.out_off + i * ly.n_out + j], a_upd[ly.in_off + i * ly.n_in + p], s);
        }
        let at = ly.w_off + local;
        if (net.grads_only == 1u) {
            grads_out[at] = s;
        } else {
            params_rw[at] = params_rw[at] - lr * (s + net.lambda * params_rw[at]);
        }
    } else {
        // db[j] = sum_i delta_l[i,j]
        let j = local - nw;
        var s = 0.0;
        for (var i = 0u; i < net.rows; i++) {
            s += delta_upd[ly.out_off + i * ly.n_out + j];
        }
        let at = ly.b_off + j;
        if (net.grads_only == 1u) {
            grads_out[at] = s;
        } else {
            params_rw[at] = params_rw[at] - lr * s;
        }
    }
}
