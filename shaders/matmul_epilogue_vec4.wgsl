// The epilogue of the vec4 subgroup matmul (after matmul_params.wgsl): the modes of
// matmul_epilogue.wgsl, four outputs of a row at a time as one vec4 (columns c0..c0+3, c0 a
// multiple of 4, in rows of a width that is a multiple of 4), with the same f32 arithmetic per
// element. Mode 3's bias gradient column is written by the kernel (matmul_subgroup_vec4.wgsl).

@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> a_out: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> z_in: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> a_in: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> delta_out: array<vec4<f32>>;

// R's vec4 at index i: the right operand, or in matmul_backward_pair's weight job A_{l-1} from
// a_in (see matmul_params.wgsl).
fn rhs4_at(r: RhsSource, i: u32) -> vec4<f32> {
    if (r.from_a_in) {
        return a_in[i];
    }
    return rhs[i];
}

// Outputs [r, c0..c0+4) of the stored width a_cols() (the ones column's are not stored here),
// the same f32 arithmetic per element as store_output; `b` is bias[c0..c0+4) (modes 1, 4, 5),
// loaded once per invocation by the caller.
fn store_output4(r: u32, c0: u32, v: vec4<f32>, b: vec4<f32>) {
    let at = (r * a_cols() + c0) / 4u;
    switch mode() {
        case 1u: {
            let z = v + b;
            out[at] = z;
            a_out[at] = activate4(mmv().act, z);
        }
        case 2u: {
            out[at] = v * derivative4(mmv().act, z_in[at], a_in[at]);
        }
        case 4u: {
            let z = v + b;
            let a = activate4(mmv().act, z);
            out[at] = z;
            a_out[at] = a;
            delta_out[at] = (a - z_in[at]) * mmv().inv_m * derivative4(mmv().act, z, a);
        }
        case 5u: {
            // kl_backward's arithmetic (sparsity.wgsl), b holding its dkl.
            let fprime = derivative4(mmv().act, z_in[at], a_in[at]);
            if (mmv().soft == 0u) {
                out[at] = (v + b) * fprime;
            } else {
                let z = z_in[at] / mmv().temperature;
                let s = vec4<f32>(sigmoid(z.x), sigmoid(z.y), sigmoid(z.z), sigmoid(z.w));
                out[at] = v * fprime + b * s * (1.0 - s) / mmv().temperature;
            }
        }
        case 3u: {
            if (from_a_in()) {
                delta_out[at] = v;
            } else {
                out[at] = v;
            }
        }
        default: {
            out[at] = v;
        }
    }
}
