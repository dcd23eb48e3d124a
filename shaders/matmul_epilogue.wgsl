// The epilogue of the f32 variants (after matmul_params.wgsl): outputs stored one element at a
// time through the epilogue's mode (see there).

@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> a_out: array<f32>;
@group(0) @binding(7) var<storage, read> z_in: array<f32>;
@group(0) @binding(8) var<storage, read> a_in: array<f32>;
@group(0) @binding(9) var<storage, read_write> delta_out: array<f32>;

// R(p, c) at index i: the right operand, or in matmul_backward_pair's weight job A_{l-1} from
// a_in (see matmul_params.wgsl).
fn rhs_at(r: RhsSource, i: u32) -> f32 {
    if (r.from_a_in) {
        return a_in[i];
    }
    return rhs[i];
}

fn store_output(r: u32, c: u32, v: f32) {
    let at = r * mmv().cols + c;
    switch mode() {
        case 1u: {
            let z = v + bias[c];
            out[at] = z;
            a_out[at] = activate(mmv().act, z);
        }
        case 2u: {
            out[at] = v * activation_derivative(mmv().act, z_in[at], a_in[at]);
        }
        case 4u: {
            let z = v + bias[c];
            let a = activate(mmv().act, z);
            out[at] = z;
            a_out[at] = a;
            // output_delta's arithmetic (loss.wgsl), z_in holding the target X.
            delta_out[at] = (a - z_in[at]) * mmv().inv_m * activation_derivative(mmv().act, z, a);
        }
        case 5u: {
            // kl_backward's arithmetic (sparsity.wgsl), bias holding its dkl.
            let fprime = activation_derivative(mmv().act, z_in[at], a_in[at]);
            if (mmv().soft == 0u) {
                out[at] = (v + bias[c]) * fprime;
            } else {
                let s = sigmoid(z_in[at] / mmv().temperature);
                out[at] = v * fprime + bias[c] * s * (1.0 - s) / mmv().temperature;
            }
        }
        case 3u: {
            if (c == mmv().cols - 1u) {
                a_out[r] = v;
            } else if (from_a_in()) {
                delta_out[r * (mmv().cols - 1u) + c] = v;
            } else {
                out[r * (mmv().cols - 1u) + c] = v;
            }
        }
        default: {
            out[at] = v;
        }
    }
}
