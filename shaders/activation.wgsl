// Bias + activation (forward) and activation derivative (backward), element-wise over [rows, cols].
// Activation codes: 0 identity, 1 relu, 2 sigmoid, 3 tanh (Activation::code in src/model.rs).

struct Grid {
    offset: vec4<u32>,
}

struct Elementwise {
    rows: u32,
    cols: u32,
    act: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> grid: Grid;
@group(0) @binding(1) var<uniform> ew: Elementwise;

fn activate(act: u32, z: f32) -> f32 {
    switch act {
        case 1u: { return max(z, 0.0); }
        case 2u: { return 1.0 / (1.0 + exp(-z)); }
        case 3u: { return tanh(z); }
        default: { return z; }
    }
}

// f'(z), from the output a = f(z) where cheaper: sigmoid a(1-a), tanh 1-a^2, relu [z > 0].
fn activation_derivative(act: u32, z: f32, a: f32) -> f32 {
    switch act {
        case 1u: { return select(0.0, 1.0, z > 0.0); }
        case 2u: { return a * (1.0 - a); }
        case 3u: { return 1.0 - a * a; }
        default: { return 1.0; }
    }
}

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
