// The optimizers' updates, each over every parameter in one dispatch (docs/design.md section 4).
// Parameters, gradients and the optimizer state (velocity; first and second moments) live in
// flat buffers with the same layout, weights first: weight decay (lambda) applies below
// weights_len only. The gradients hold no weight-decay term: these kernels add it, as an L2 term
// (sgd, momentum, adam) or decoupled (adamw). Step t = step + 1 (the step state) applies entry
// t - 1 of the step-values table: its learning rate and Adam's bias corrections. Every gradient
// is first multiplied by clip[0], the clipping coefficient grad_norm wrote (1 without clipping).
// On the layered path the update also ends the step (`advance_rows` > 0): its first invocation
// sets done = step + 1 and moves the cursor past the step's rows, words no invocation here
// reads (the next gather_rows copies done into step), so the step needs no launch of its own.
//   grad_norm        clip[0] = min(1, max_norm / (||g|| + 1e-6)), ||g|| over every parameter
//                    (PyTorch's clip_grad_norm_), one workgroup summing in a fixed order
//   sgd_update       p <- p - lr (g + lambda p)
//   momentum_update  v <- mu v + (g + lambda p);  p <- p - lr v
//   adam_update      (adamw: p <- p (1 - lr lambda); d = g.  adam: d = g + lambda p)
//                    m <- b1 m + (1 - b1) d;  v <- b2 v + (1 - b2) d^2
//                    p <- p - (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
// (adamw's decay multiplies by 1 - lr lambda with this step's lr)

struct Update {
    len: u32,
    weights_len: u32,
    lambda: f32,
    // adam_update: 1 for AdamW (decoupled weight decay)
    decoupled: u32,
    momentum: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    // grad_norm: the largest global gradient norm
    max_norm: f32,
    // the update kernels: rows to move the cursor by, ending the step (0: advance_cursor does)
    advance_rows: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(1) var<uniform> up: Update;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
@group(0) @binding(3) var<storage, read_write> params: array<f32>;
@group(0) @binding(4) var<storage, read_write> state: array<u32>;
@group(0) @binding(5) var<storage, read_write> moment1: array<f32>;
@group(0) @binding(6) var<storage, read_write> moment2: array<f32>;
@group(0) @binding(7) var<storage, read> step_values: array<StepValues>;
@group(0) @binding(8) var<storage, read> clip: array<f32>;
@group(0) @binding(9) var<storage, read_write> clip_out: array<f32>;

// The entry of this step (t = step + 1) in the step-values table.
fn this_step() -> u32 {
    return min(state[STATE_STEP] + 1u, arrayLength(&step_values)) - 1u;
}

fn decay_at(i: u32) -> f32 {
    return select(0.0, up.lambda, i < up.weights_len);
}

// Each invocation updates PER_INVOCATION parameters, 256 apart, so a workgroup covers 1024
// contiguous ones and neighbouring invocations touch neighbouring addresses: the step state is
// read once per four parameters (on CPU adapters a load every invocation makes is not free).
const PER_INVOCATION: u32 = 4u;

fn first_index(lid: vec3<u32>, wid: vec3<u32>) -> u32 {
    let first = (wid.x + grid.offset.x) * 256u * PER_INVOCATION + lid.x;
    if (first == 0u && up.advance_rows != 0u) {
        state[STATE_DONE] = state[STATE_STEP] + 1u;
        state[STATE_CURSOR] = state[STATE_CURSOR] + up.advance_rows;
    }
    return first;
}

@compute @workgroup_size(256)
fn sgd_update(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let lr = step_values[this_step()].lr;
    let c = clip[0];
    let first = first_index(lid, wid);
    for (var j = 0u; j < PER_INVOCATION; j++) {
        let i = first + j * 256u;
        if (i < up.len) {
            params[i] = params[i] - lr * (grads[i] * c + decay_at(i) * params[i]);
        }
    }
}

@compute @workgroup_size(256)
fn momentum_update(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let lr = step_values[this_step()].lr;
    let c = clip[0];
    let first = first_index(lid, wid);
    for (var j = 0u; j < PER_INVOCATION; j++) {
        let i = first + j * 256u;
        if (i < up.len) {
            let v = up.momentum * moment1[i] + (grads[i] * c + decay_at(i) * params[i]);
            moment1[i] = v;
            params[i] = params[i] - lr * v;
        }
    }
}

@compute @workgroup_size(256)
fn adam_update(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let at = this_step();
    let lr = step_values[at].lr;
    let step_size = step_values[at].step_size;
    let bc2_sqrt = step_values[at].bc2_sqrt;
    let c = clip[0];
    let first = first_index(lid, wid);
    for (var j = 0u; j < PER_INVOCATION; j++) {
        let i = first + j * 256u;
        if (i < up.len) {
            var p = params[i];
            var d = grads[i] * c;
            if (up.decoupled == 1u) {
                p = p * (1.0 - lr * decay_at(i));
            } else {
                d = d + decay_at(i) * p;
            }
            let m = up.beta1 * moment1[i] + (1.0 - up.beta1) * d;
            let v = up.beta2 * moment2[i] + (1.0 - up.beta2) * d * d;
            moment1[i] = m;
            moment2[i] = v;
            params[i] = p - step_size * m / (sqrt(v) / bc2_sqrt + up.eps);
        }
    }
}

@compute @workgroup_size(256)
fn grad_norm(@builtin(local_invocation_id) lid: vec3<u32>) {
    _ = grid.offset; // one workgroup, never split
    let t = lid.x;
    var s = 0.0;
    for (var i = t; i < up.len; i += TREE_WG) {
        s = fma(grads[i], grads[i], s);
    }
    let sum_sq = tree_sum(t, s);
    if (t == 0u) {
        clip_out[0] = min(1.0, up.max_norm / (sqrt(sum_sq) + 1e-6));
    }
}
