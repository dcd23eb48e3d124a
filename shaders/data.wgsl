// Minibatches from device-resident data, so a step uploads nothing:
//   gather_rows     X[i, :] = data[r(i), :], where r(i) is
//                     gather 0: i                (a minibatch the host wrote itself)
//                     gather 1: order[cursor + i] (a training step's shuffled minibatch)
//                     gather 2: cursor + i        (evaluation in file order)
//                   and step = done: the step count the update of the step before advanced
//                   (gather_rows is the first kernel of a layered step)
//   advance_cursor  cursor += rows, step += steps and done = step, once per step (or
//                   evaluation batch), after every kernel that reads the step state, where the
//                   update does not advance it (the fused path, an evaluation)
// `order` is the epoch's shuffled sample order, uploaded once per epoch; the cursor and step
// live in the step state (common.wgsl).

struct Gather {
    rows: u32,
    cols: u32,
    gather: u32,
    // advance_cursor: steps to count
    steps: u32,
    // gather_rows: 1 for a row an invocation (CPU adapters, where a workgroup costs more than
    // its loads), 0 for an element an invocation (GPUs: neighbouring invocations read
    // neighbouring addresses)
    per_row: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(1) var<uniform> gp: Gather;
@group(0) @binding(2) var<storage, read> data: array<f32>;
@group(0) @binding(3) var<storage, read> order: array<u32>;
@group(0) @binding(5) var<storage, read_write> x: array<f32>;
@group(0) @binding(6) var<storage, read_write> state: array<u32>;

// The data row that row i of the minibatch is.
fn source_row(i: u32) -> u32 {
    if (gp.gather == 1u) {
        return order[state[STATE_CURSOR] + i];
    } else if (gp.gather == 2u) {
        return state[STATE_CURSOR] + i;
    }
    return i;
}

@compute @workgroup_size(64)
fn gather_rows(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let id = (wid.x + grid.offset.x) * 64u + lid.x;
    if (id == 0u) {
        // Read by no other invocation here (they read the cursor).
        state[STATE_STEP] = state[STATE_DONE];
    }
    if (gp.per_row != 0u) {
        if (id < gp.rows) {
            let src = source_row(id);
            for (var f = 0u; f < gp.cols; f++) {
                x[id * gp.cols + f] = data[src * gp.cols + f];
            }
        }
    } else if (id < gp.rows * gp.cols) {
        let i = id / gp.cols;
        x[id] = data[source_row(i) * gp.cols + id % gp.cols];
    }
}

@compute @workgroup_size(1)
fn advance_cursor() {
    _ = grid.offset;
    state[STATE_CURSOR] = state[STATE_CURSOR] + gp.rows;
    let step = state[STATE_STEP] + gp.steps;
    state[STATE_STEP] = step;
    state[STATE_DONE] = step;
}
