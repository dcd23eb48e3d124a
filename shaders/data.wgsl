// Minibatches from device-resident data, so a step uploads nothing:
//   gather_rows     X[i, :] = data[order[cursor + i], :]   (or data[i, :] when gather == 0,
//                   for a minibatch the host wrote itself)
//   advance_cursor  cursor += rows, once per step, after every kernel that reads it
// `order` is the epoch's shuffled sample order, uploaded once per epoch.

struct Gather {
    rows: u32,
    cols: u32,
    gather: u32,
    _pad: u32,
}

@group(0) @binding(1) var<uniform> gp: Gather;
@group(0) @binding(2) var<storage, read> data: array<f32>;
@group(0) @binding(3) var<storage, read> order: array<u32>;
@group(0) @binding(4) var<storage, read> cursor_ro: array<u32>;
@group(0) @binding(5) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(256)
fn gather_rows(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let e = (wid.x + grid.offset.x) * 256u + lid.x;
    if (e >= gp.rows * gp.cols) {
        return;
    }
    let i = e / gp.cols;
    let f = e % gp.cols;
    var src = i;
    if (gp.gather == 1u) {
        src = order[cursor_ro[0] + i];
    }
    x[e] = data[src * gp.cols + f];
}

@group(0) @binding(6) var<storage, read_write> cursor_rw: array<u32>;

@compute @workgroup_size(1)
fn advance_cursor() {
    _ = grid.offset;
    cursor_rw[0] = cursor_rw[0] + gp.rows;
}
