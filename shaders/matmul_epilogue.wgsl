// The epilogue of the f32 variants (after matmul_params.wgsl): outputs stored one element at a
// time through the epilogue's mode (see there).

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
        case 3u: {
            if (c == mm.cols - 1u) {
                a_out[r] = v;
            } else {
                out[r * (mm.cols - 1u) + c] = v;
            }
        }
        default: {
            out[at] = v;
        }
    }
}
