// Unit-norm decoder columns (docs/design.md section 12), over W_L [rows, cols] = [n_0, n_c]:
// column j is code unit j's dictionary direction w_j.
//   decoder_project:   dw_j -= (dw_j . w_j / ||w_j||^2) w_j   before the update: the gradient's
//                      component along each column is removed (skipped where w_j = 0)
//   decoder_normalize: w_j /= ||w_j||                         after the update (skipped where 0)
// One invocation per column, summing its rows in order: deterministic.

struct Decoder {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(1) var<uniform> dn: Decoder;
@group(0) @binding(2) var<storage, read_write> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> dw: array<f32>;

@compute @workgroup_size(64)
fn decoder_project(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let j = (wid.x + grid.offset.x) * 64u + lid.x;
    if (j >= dn.cols) {
        return;
    }
    var dot = 0.0;
    var norm2 = 0.0;
    for (var i = 0u; i < dn.rows; i++) {
        let v = w[i * dn.cols + j];
        dot += dw[i * dn.cols + j] * v;
        norm2 += v * v;
    }
    if (norm2 > 0.0) {
        let s = dot / norm2;
        for (var i = 0u; i < dn.rows; i++) {
            dw[i * dn.cols + j] -= s * w[i * dn.cols + j];
        }
    }
}

@compute @workgroup_size(64)
fn decoder_normalize(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let j = (wid.x + grid.offset.x) * 64u + lid.x;
    if (j >= dn.cols) {
        return;
    }
    var norm2 = 0.0;
    for (var i = 0u; i < dn.rows; i++) {
        let v = w[i * dn.cols + j];
        norm2 += v * v;
    }
    if (norm2 > 0.0) {
        let inv = 1.0 / sqrt(norm2);
        for (var i = 0u; i < dn.rows; i++) {
            w[i * dn.cols + j] *= inv;
        }
    }
}
