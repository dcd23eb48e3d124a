// Deterministic column reduction: out[j] = scale * sum_i t(x[i, j]) over a [rows, cols] matrix.
// One invocation per column sums its rows in order: no atomics and no barriers, so the result
// is the same bit for bit on every run, and neighbouring invocations read neighbouring
// addresses. Used for rho_hat (scale 1/m), bias gradients (scale 1) and firing frequencies.
// Transforms: 0 the value, 1 the hard firing indicator [x > 0], 2 sigmoid(x / T).

struct Reduce {
    rows: u32,
    cols: u32,
    transform: u32,
    _pad: u32,
    scale: f32,
    temperature: f32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(1) var<uniform> rd: Reduce;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn column_sum(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let j = (wid.x + grid.offset.x) * 64u + lid.x;
    if (j >= rd.cols) {
        return;
    }
    var acc = 0.0;
    for (var i = 0u; i < rd.rows; i++) {
        acc += column_term(rd.transform, x[i * rd.cols + j], rd.temperature);
    }
    out[j] = rd.scale * acc;
}
