// The pre-bias of a dictionary (docs/design.md section 12): the encoder sees X - 1 b_L^T, the
// input less the output layer's bias b_L (the decoder bias b_dec), and b_L's gradient gains
// that path's term.
//   center_rows:       out[i, k] = x[i, k] - b[k]                 over [rows, cols]
//   pre_bias_backward: out[k] -= sum_j x[j] * b[j * cols + k]     x = db_1 [hidden], b = W_1
//                      [hidden, cols], out = db_L [cols]: dJ/db_L gains -(db_1^T W_1), since
//                      dJ/d(X - 1 b_L^T) = delta_1 W_1 summed over the rows is db_1^T W_1.
// One invocation per element (center_rows) or per input feature k (pre_bias_backward), which
// sums over j in order: deterministic.

struct PreBias {
    rows: u32,
    cols: u32,
    hidden: u32,
    _pad: u32,
}

@group(0) @binding(1) var<uniform> pb: PreBias;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn center_rows(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = (wid.x + grid.offset.x) * 256u + lid.x;
    if (i >= pb.rows * pb.cols) {
        return;
    }
    out[i] = x[i] - b[i % pb.cols];
}

@compute @workgroup_size(64)
fn pre_bias_backward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let k = (wid.x + grid.offset.x) * 64u + lid.x;
    if (k >= pb.cols) {
        return;
    }
    var acc = 0.0;
    for (var j = 0u; j < pb.hidden; j++) {
        acc += x[j] * b[j * pb.cols + k];
    }
    out[k] -= acc;
}
