// JumpReLU (docs/design.md section 12): a learned threshold theta_j = exp(t_j) per code unit.
//   jumprelu_forward:  a = z where z > theta_j, else 0, element-wise over [rows, cols]
//   jumprelu_backward: one invocation per unit j, summing its rows in order (deterministic):
//                      delta_ij = g_ij [z_ij > theta_j]       (G = delta_{c+1} W_{c+1})
//                      dt_j = theta_j sum_i K(u_ij) (-(theta_j / eps) g_ij - c / eps)
//                      K(u) = [|u| < 1/2], u = (z - theta) / eps: the straight-through
//                      gradient of the log threshold (the JumpReLU paper's pseudo-derivatives
//                      of z H(z - theta) and of H(z - theta), times dtheta/dt = theta); c the
//                      L0 weight over m, times this step's share of it (a warm-up).

struct Jump {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
    eps: f32,
    l0_over_m: f32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(1) var<uniform> jr: Jump;
@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read> t: array<f32>;
@group(0) @binding(4) var<storage, read_write> a: array<f32>;
@group(0) @binding(5) var<storage, read> g: array<f32>;
@group(0) @binding(6) var<storage, read_write> dt: array<f32>;
@group(0) @binding(7) var<storage, read> state: array<u32>;
@group(0) @binding(8) var<storage, read> step_values: array<StepValues>;

@compute @workgroup_size(256)
fn jumprelu_forward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = (wid.x + grid.offset.x) * 256u + lid.x;
    if (i >= jr.rows * jr.cols) {
        return;
    }
    let v = z[i];
    a[i] = select(0.0, v, v > exp(t[i % jr.cols]));
}

@compute @workgroup_size(64)
fn jumprelu_backward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let j = (wid.x + grid.offset.x) * 64u + lid.x;
    if (j >= jr.cols) {
        return;
    }
    let theta = exp(t[j]);
    let scale = step_values[min(state[STATE_STEP] + 1u, arrayLength(&step_values)) - 1u].beta_scale;
    let c = jr.l0_over_m * scale;
    var sum = 0.0;
    for (var i = 0u; i < jr.rows; i++) {
        let at = i * jr.cols + j;
        let v = z[at];
        a[at] = select(0.0, g[at], v > theta);
        if (abs((v - theta) / jr.eps) < 0.5) {
            sum += -(theta / jr.eps) * g[at] - c / jr.eps;
        }
    }
    dt[j] = theta * sum;
}
