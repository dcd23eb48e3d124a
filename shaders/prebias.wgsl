// The pre-bias of a dictionary (docs/design.md section 12): the encoder sees X - 1 b_L^T, the
// input less the output layer's bias b_L (the decoder bias b_dec), and b_L's gradient gains
// that path's term.
//   center_rows:       out[i, k] = x[i, k] - b[k]                 over [rows, cols]
//   pre_bias_backward: g[out_at + k] -= sum_j g[db1_at + j] * b[j * cols + k]
//                      over the gradients g (db_1 [hidden] and db_L [cols] both live there,
//                      so they share one binding), b = W_1 [hidden, cols]: dJ/db_L gains
//                      -(db_1^T W_1), since dJ/d(X - 1 b_L^T) = delta_1 W_1 summed over the
//                      rows is db_1^T W_1.
// One invocation per element (center_rows) or per input feature k (pre_bias_backward), which
// sums over j in order: deterministic.

struct PreBias {
    rows: u32,
    cols: u32,
    hidden: u32,
    db1_at: u32,
    out_at: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
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
        acc += out[pb.db1_at + j] * b[j * pb.cols + k];
    }
    out[pb.out_at + k] -= acc;
}
