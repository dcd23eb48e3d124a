// Firing counts of the code layer, once per training step (docs/design.md section 11), over
// Z_c [rows, cols], one invocation per unit j summing its rows in order (deterministic, as
// column_sum):
//   freq[j] = scale * #{i : z_ij > 0}                 the hard firing frequency (scale 1/m)
//   track:   since_fired[j] = 0 if unit j fired in these rows, else since_fired[j] + rows
//            (saturating at 2^32 - 1): samples since the unit last fired
//   control: bias[j] -= control * beta_scale * (freq[j] - rho_t)
//            kl-freq's frequency controller: an integral term on the code bias, outside the
//            optimizer, ramped with beta during a warm-up (the step-values table's beta_scale),
//            toward this step's target rho_t (annealed_rho, common.wgsl)
// The bias moves before the step's backward pass and update, which do not read it (the
// optimizer's update adds its own step to the moved value).
//
// fire_count_rho also sums the penalty's rho_hat in the same launch, column_sum's arithmetic:
//   rho_hat[j] = scale * sum_i t(x[i, j]),  t the value (kl: x = A_c) or sigmoid(x / T)
//   (kl-soft-freq: x = Z_c), one launch instead of two per training step;
// and with term_at > 0 the KL gradient's column term, kl_backward's dkl, at rho_hat[term_at + j]:
//   term[j] = (beta/m) beta_scale KL'(rho_hat[j])
// which the code layer's backward pair adds in its epilogue (mode 5, matmul_params.wgsl).

struct Fires {
    rows: u32,
    cols: u32,
    track: u32,
    // kl-freq's target anneal (annealed_rho in common.wgsl; 0: none)
    anneal_steps: u32,
    scale: f32,
    rho: f32,
    control: f32,
    // fire_count_rho: column_term's transform of x_rho (0 the value, 2 sigmoid(x / temperature))
    rho_transform: u32,
    temperature: f32,
    // the KL term (term_at 0: none): the penalty's rho, beta / m and the clamp eps
    kl_rho: f32,
    beta_over_m: f32,
    eps: f32,
    term_at: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(1) var<uniform> fc: Fires;
@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read_write> freq: array<f32>;
@group(0) @binding(4) var<storage, read_write> since_fired: array<u32>;
@group(0) @binding(5) var<storage, read_write> bias: array<f32>;
@group(0) @binding(6) var<storage, read> state: array<u32>;
@group(0) @binding(7) var<storage, read> step_values: array<StepValues>;
@group(0) @binding(8) var<storage, read> x_rho: array<f32>;
@group(0) @binding(9) var<storage, read_write> rho_hat: array<f32>;

@compute @workgroup_size(64)
fn fire_count(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let j = (wid.x + grid.offset.x) * 64u + lid.x;
    if (j >= fc.cols) {
        return;
    }
    count_fires(j);
}

@compute @workgroup_size(64)
fn fire_count_rho(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let j = (wid.x + grid.offset.x) * 64u + lid.x;
    if (j >= fc.cols) {
        return;
    }
    count_fires(j);
    var acc = 0.0;
    for (var i = 0u; i < fc.rows; i++) {
        acc += column_term(fc.rho_transform, x_rho[i * fc.cols + j], fc.temperature);
    }
    let r = fc.scale * acc;
    rho_hat[j] = r;
    if (fc.term_at != 0u) {
        // kl_backward's dkl (sparsity.wgsl), in the same order.
        let scale = step_values[min(state[STATE_STEP] + 1u, arrayLength(&step_values)) - 1u].beta_scale;
        rho_hat[fc.term_at + j] = fc.beta_over_m * scale * kl_derivative(fc.kl_rho, r, fc.eps);
    }
}

fn count_fires(j: u32) {
    var count = 0u;
    for (var i = 0u; i < fc.rows; i++) {
        count += select(0u, 1u, z[i * fc.cols + j] > 0.0);
    }
    let f = fc.scale * f32(count);
    freq[j] = f;
    if (fc.track != 0u) {
        let before = since_fired[j];
        let after = select(before + fc.rows, 0xffffffffu, before > 0xffffffffu - fc.rows);
        since_fired[j] = select(after, 0u, count > 0u);
    }
    if (fc.control != 0.0) {
        let t = state[STATE_STEP] + 1u;
        let scale = step_values[min(t, arrayLength(&step_values)) - 1u].beta_scale;
        bias[j] -= fc.control * scale * (f - annealed_rho(fc.rho, t, fc.anneal_steps));
    }
}
