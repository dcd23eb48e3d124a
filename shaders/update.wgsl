// SGD with weight decay over every parameter in one dispatch, lr from the step state:
//   p <- p - lr * (g + lambda * p)   for the weights (the first weights_len elements)
//   p <- p - lr * g                  for the biases (the rest)
// Parameters and gradients live in two flat buffers with the same layout.

struct Sgd {
    len: u32,
    weights_len: u32,
    lambda: f32,
    _pad: u32,
}

@group(0) @binding(1) var<uniform> sgd: Sgd;
@group(0) @binding(2) var<storage, read> grads: array<f32>;
@group(0) @binding(3) var<storage, read_write> params: array<f32>;
// The step state (common.wgsl): the learning rate of this step.
@group(0) @binding(4) var<storage, read> state: array<u32>;

// Each invocation updates PER_INVOCATION parameters, 256 apart, so a workgroup covers 1024
// contiguous ones and neighbouring invocations touch neighbouring addresses: the step state's
// learning rate is loaded once per four parameters (on CPU adapters a load every invocation
// makes is not free).
const PER_INVOCATION: u32 = 4u;

@compute @workgroup_size(256)
fn sgd_update(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let lr = bitcast<f32>(state[STATE_LR]);
    let first = (wid.x + grid.offset.x) * 256u * PER_INVOCATION + lid.x;
    for (var j = 0u; j < PER_INVOCATION; j++) {
        let i = first + j * 256u;
        if (i < sgd.len) {
            let decay = select(0.0, sgd.lambda, i < sgd.weights_len);
            params[i] = params[i] - lr * (grads[i] + decay * params[i]);
        }
    }
}
