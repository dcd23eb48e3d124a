// The L1 penalty of a dictionary (docs/design.md section 12), SAELens v6's: the L1 of each
// latent weighted by its decoder column's norm,
//   J_l1 = (C / m) sum_i sum_j |a_ij| ||w_j||,   w_j = column j of W_L [rows, cols]
// (C this step's: times the step-values table's beta_scale during a warm-up).
//   column_norms:   out[j] = ||w_j||                      one invocation per column
//   l1_decoder_grad: dw_j += (C/m) (sum_i |a_ij|) w_j / ||w_j||   over a [m, cols], after the
//                   decoder's weight gradient (skipped where w_j = 0); one invocation per
//                   column, summing its rows in order: deterministic.
// The code's term, (C/m) ||w_j|| sign(a_ij) f'(z_ij), is kl_backward's mode 4, with the norms in
// place of rho_hat.

struct L1 {
    rows: u32,
    cols: u32,
    m: u32,
    _pad0: u32,
    coef_over_m: f32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(1) var<uniform> l1: L1;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> norms: array<f32>;
@group(0) @binding(4) var<storage, read> a: array<f32>;
@group(0) @binding(5) var<storage, read_write> dw: array<f32>;
@group(0) @binding(6) var<storage, read> state: array<u32>;
@group(0) @binding(7) var<storage, read> step_values: array<StepValues>;

fn column_norm(j: u32) -> f32 {
    var norm2 = 0.0;
    for (var i = 0u; i < l1.rows; i++) {
        let v = w[i * l1.cols + j];
        norm2 += v * v;
    }
    return sqrt(norm2);
}

@compute @workgroup_size(64)
fn column_norms(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let j = (wid.x + grid.offset.x) * 64u + lid.x;
    if (j >= l1.cols) {
        return;
    }
    norms[j] = column_norm(j);
}

@compute @workgroup_size(64)
fn l1_decoder_grad(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let j = (wid.x + grid.offset.x) * 64u + lid.x;
    if (j >= l1.cols) {
        return;
    }
    let norm = column_norm(j);
    if (norm <= 0.0) {
        return;
    }
    var total = 0.0;
    for (var i = 0u; i < l1.m; i++) {
        total += abs(a[i * l1.cols + j]);
    }
    let scale = step_values[min(state[STATE_STEP] + 1u, arrayLength(&step_values)) - 1u].beta_scale;
    let s = l1.coef_over_m * scale * total / norm;
    for (var i = 0u; i < l1.rows; i++) {
        dw[i * l1.cols + j] += s * w[i * l1.cols + j];
    }
}
