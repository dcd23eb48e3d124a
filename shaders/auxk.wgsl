// AuxK's output delta (docs/design.md section 12) over [m, n_0] elements, i < len:
//   delta[aux_at + i] = scale * (recons[i] - (x[i] - xhat[i]))      scale = C / m
// and delta[pad_from .. aux_at] = 0: the AuxK rows start at an aligned row (a binding offset
// must be), and the rows between the main rows and them are zeroed so they add nothing.
// recons = A_aux W_L^T + b_L (the dead latents' decoding), x the input, xhat the main
// reconstruction: the gradient of (C / 2m) ||recons - (X - Xhat)||^2 with the residual held
// constant. It is the delta of the decoder's AuxK rows (m..2m), which the backward pass then
// takes through the decoder and the encoder with the main rows.

struct AuxDelta {
    len: u32,
    pad_from: u32,
    aux_at: u32,
    _pad2: u32,
    scale: f32,
    _pad3: u32,
    _pad4: u32,
    _pad5: u32,
}

@group(0) @binding(1) var<uniform> ad: AuxDelta;
@group(0) @binding(2) var<storage, read> recons: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> xhat: array<f32>;
@group(0) @binding(5) var<storage, read_write> delta: array<f32>;

@compute @workgroup_size(256)
fn auxk_delta(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let g = ad.pad_from + (wid.x + grid.offset.x) * 256u + lid.x;
    if (g >= ad.aux_at + ad.len) {
        return;
    }
    if (g < ad.aux_at) {
        delta[g] = 0.0;
        return;
    }
    let i = g - ad.aux_at;
    delta[g] = ad.scale * (recons[i] - (x[i] - xhat[i]));
}
