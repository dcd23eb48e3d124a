// Bias + activation (forward) and activation derivative (backward), element-wise over [rows, cols].
// Activation codes: 0 identity, 1 relu, 2 sigmoid, 3 tanh (Activation::code in src/model.rs).

struct Elementwise {
    rows: u32,
    cols: u32,
    act: u32,
    _pad: u32,
}

@group(0) @binding(1) var<uniform> ew: Elementwise;

fn element(lid: vec3<u32>, wid: vec3<u32>) -> u32 {
    return (wid.x + grid.offset.x) * 256u + lid.x;
}

// Z += 1 b^T (in place), A = f(Z)
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> z_fwd: array<f32>;
@group(0) @binding(4) var<storage, read_write> a_fwd: array<f32>;

@compute @workgroup_size(256)
fn bias_activation(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = element(lid, wid);
    if (i >= ew.rows * ew.cols) {
        return;
    }
    let z = z_fwd[i] + bias[i % ew.cols];
    z_fwd[i] = z;
    a_fwd[i] = activate(ew.act, z);
}

// delta = G ⊙ f'(Z)
@group(0) @binding(5) var<storage, read> g_bwd: array<f32>;
@group(0) @binding(6) var<storage, read> z_bwd: array<f32>;
@group(0) @binding(7) var<storage, read> a_bwd: array<f32>;
@group(0) @binding(8) var<storage, read_write> delta_bwd: array<f32>;

@compute @workgroup_size(256)
fn activation_backward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = element(lid, wid);
    if (i >= ew.rows * ew.cols) {
        return;
    }
    delta_bwd[i] = g_bwd[i] * activation_derivative(ew.act, z_bwd[i], a_bwd[i]);
}
