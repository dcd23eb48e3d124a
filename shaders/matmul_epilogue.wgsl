// What every matmul variant does with an output element (prepended to each variant file, after
// common.wgsl). The pipeline-overridable constant EPILOGUE selects, at pipeline creation, so a
// pipeline carries only its own epilogue:
//   0  out = v                                       plain product
//   1  out = Z = v + b[c], a_out = f(Z)              matmul_forward with bias + activation
//   2  out = v * f'(z_in, a_in)                      matmul_backward_input with the activation
//                                                    derivative: delta_{l-1} = (delta_l W_l) ⊙ f'
// Fusing these saves a dispatch and a round trip of the matrix through memory per layer.
// Bindings 5-8 are bound in every mode (to a one-element placeholder where unused).

override EPILOGUE: u32 = 0u;

struct Matmul {
    rows: u32,
    cols: u32,
    inner: u32,
    act: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(1) var<uniform> mm: Matmul;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> a_out: array<f32>;
@group(0) @binding(7) var<storage, read> z_in: array<f32>;
@group(0) @binding(8) var<storage, read> a_in: array<f32>;

fn store_output(r: u32, c: u32, v: f32) {
    let at = r * mm.cols + c;
    switch EPILOGUE {
        case 1u: {
            let z = v + bias[c];
            out[at] = z;
            a_out[at] = activate(mm.act, z);
        }
        case 2u: {
            out[at] = v * activation_derivative(mm.act, z_in[at], a_in[at]);
        }
        default: {
            out[at] = v;
        }
    }
}
