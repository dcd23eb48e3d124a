// What every matmul variant does with an output element (prepended to each variant file, after
// common.wgsl, before its epilogue file: matmul_epilogue.wgsl for f32 elements,
// matmul_epilogue_vec4.wgsl for vec4). The pipeline-overridable constant EPILOGUE selects, at
// pipeline creation, so a pipeline carries only its own epilogue:
//   0  out = v                                       plain product
//   1  out = Z = v + b[c], a_out = f(Z)              matmul_forward with bias + activation
//   2  out = v * f'(z_in, a_in)                      matmul_backward_input with the activation
//                                                    derivative: delta_{l-1} = (delta_l W_l) ⊙ f'
//   3  out = dW, a_out = db                          matmul_backward_weight over [A | 1]: the last
//                                                    output column (R = 1) is the bias gradient
//   4  mode 1, and delta_out = (A - X) inv_m f'(Z, A)   the last forward layer with the output
//                                                    delta (X, the target, in z_in): the backward
//                                                    pass's first term without a dispatch of its own
//   5  out = (v + t[c]) * f'(z_in, a_in)             the code layer's delta with the KL gradient
//      or v * f' + t[c] s (1 - s) / T, s = sigmoid(z_in / T) (soft)    (kl_backward's kl and
//                                                    kl-soft-freq), the column term t (its dkl) in
//                                                    bias
// Fusing these saves a dispatch and a round trip of the matrix through memory per layer.
// Bindings 5-9 are bound in every mode (to a four-element placeholder where unused).

override EPILOGUE: u32 = 0u;

struct Matmul {
    rows: u32,
    cols: u32,
    inner: u32,
    act: u32,
    inv_m: f32,
    // matmul_backward_pair: workgroup rows (y) of its weight job, before the input job's
    pair_rows: u32,
    // epilogue 5: 1 for kl-soft-freq's form, with its temperature
    soft: u32,
    temperature: f32,
}

@group(0) @binding(1) var<uniform> params: Matmul;

// The product an invocation computes and its epilogue mode: the launch's own, or in
// matmul_backward_pair (PAIR) one of its two jobs (`weight_job`, `input_job`), set at the top of
// the entry point. Read through mmv(), mode() and from_a_in(): in every other pipeline PAIR is
// false and they are the uniform and the constant EPILOGUE, which the compiler folds (a private
// copy read in the summing loops measured up to twice as slow on llvmpipe).
override PAIR: bool = false;
var<private> pair_mm: Matmul;
var<private> pair_mode: u32;
// The pair's weight job: R (A_{l-1}) read from a_in, binding 8, and dW stored to delta_out,
// binding 9 (the input job keeps the bindings of matmul_backward_input).
var<private> pair_weight: bool;

fn mmv() -> Matmul {
    if (PAIR) {
        return pair_mm;
    }
    return params;
}

fn mode() -> u32 {
    if (PAIR) {
        return pair_mode;
    }
    return EPILOGUE;
}

fn from_a_in() -> bool {
    return PAIR && pair_weight;
}

fn single() {
    pair_mm = params;
    pair_mode = EPILOGUE;
    pair_weight = false;
}

// matmul_backward_pair, in one dispatch (docs/design.md section 5):
//   workgroup rows y <  pair_rows: dW_l = delta_l^T [A_{l-1} | 1]   rows n, cols k + 1, inner m
//                                  (matmul_backward_weight, epilogue 3)
//   workgroup rows y >= pair_rows: G = delta_l W_l, through EPILOGUE    rows m, cols k, inner n
//                                  (matmul_backward_input; the uniform holds this product)
// Both read delta_l; neither reads what the other writes.
fn is_weight_job(wid_y: u32) -> bool {
    return wid_y + grid.offset.y < params.pair_rows;
}

fn weight_job() {
    pair_mm = Matmul(params.inner, params.cols + 1u, params.rows, 0u, 0.0, 0u, 0u, 0.0);
    pair_mode = 3u;
    pair_weight = true;
}

fn input_job() {
    single();
}

// The workgroup id within the input job (with the grid offset added back, row 0 is the job's
// first; u32 arithmetic wraps, so the sum is right in any dispatch of a split grid).
fn input_job_wid(wid: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(wid.x, wid.y - params.pair_rows);
}

// Where R comes from, read once before a kernel's summing loop (from the private copies above,
// which the loop then does not read again): whether from a_in (the pair's weight job), and the
// first column that reads 1 (epilogue 3's ones column; none otherwise).
struct RhsSource {
    from_a_in: bool,
    ones_from: u32,
}

fn rhs_source() -> RhsSource {
    return RhsSource(from_a_in(), select(0xffffffffu, mmv().cols - 1u, mode() == 3u));
}

// With epilogue 3 the right operand has an extra last column of ones (columns past the edge
// also read 1 there: their outputs are never stored).
fn ones_column(rv: vec4<f32>, c0: u32, r: RhsSource) -> vec4<f32> {
    return select(rv, vec4<f32>(1.0), vec4<u32>(c0, c0 + 1u, c0 + 2u, c0 + 3u) >= vec4<u32>(r.ones_from));
}

// Row stride of A in matmul_backward_weight: the output has one more column than A with
// epilogue 3 (the ones column is not stored in A).
fn a_cols() -> u32 {
    if (mode() == 3u) {
        return mmv().cols - 1u;
    }
    return mmv().cols;
}
