// BatchTopK's threshold (docs/design.md section 12).
//   batch_threshold: one workgroup over A_c [rows, cols] after a training step's selection:
//                    low = the smallest positive activation kept; then
//                    theta = low where theta < 0 (not yet set), else
//                    theta = decay theta + (1 - decay) low            (nothing kept: unchanged)
//                    the running estimate inference uses. A fixed tree of minima: deterministic.
//   threshold_code:  a = z where z > theta, else 0, element-wise over [rows, cols]: the code at
//                    inference (theta >= 0, so the ReLU is implied).

struct Threshold {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
    decay: f32,
    theta: f32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(1) var<uniform> th: Threshold;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read_write> theta: array<f32>;
@group(0) @binding(4) var<storage, read> z: array<f32>;
@group(0) @binding(5) var<storage, read_write> code: array<f32>;

var<workgroup> lowest: array<f32, 256>;

const NONE_KEPT: f32 = 3.0e38;

@compute @workgroup_size(256)
fn batch_threshold(@builtin(local_invocation_id) lid3: vec3<u32>) {
    let lid = lid3.x;
    var low = NONE_KEPT;
    for (var i = lid; i < th.rows * th.cols; i += 256u) {
        let v = a[i];
        if (v > 0.0) {
            low = min(low, v);
        }
    }
    lowest[lid] = low;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            lowest[lid] = min(lowest[lid], lowest[lid + stride]);
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let m = lowest[0];
        if (m < NONE_KEPT) {
            let old = theta[0];
            theta[0] = select(th.decay * old + (1.0 - th.decay) * m, m, old < 0.0);
        }
    }
}

@compute @workgroup_size(256)
fn threshold_code(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = (wid.x + grid.offset.x) * 256u + lid.x;
    if (i >= th.rows * th.cols) {
        return;
    }
    let v = z[i];
    code[i] = select(0.0, v, v > th.theta);
}
