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
// Fusing these saves a dispatch and a round trip of the matrix through memory per layer.
// Bindings 5-9 are bound in every mode (to a four-element placeholder where unused).

override EPILOGUE: u32 = 0u;

struct Matmul {
    rows: u32,
    cols: u32,
    inner: u32,
    act: u32,
    inv_m: f32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(1) var<uniform> mm: Matmul;
// With epilogue 3 the right operand has an extra last column of ones (columns past the edge
// also read 1 there: their outputs are never stored).
fn ones_column(rv: vec4<f32>, c0: u32) -> vec4<f32> {
    if (EPILOGUE == 3u) {
        return select(rv, vec4<f32>(1.0), vec4<u32>(c0, c0 + 1u, c0 + 2u, c0 + 3u) >= vec4<u32>(mm.cols - 1u));
    }
    return rv;
}

// Row stride of A in matmul_backward_weight: the output has one more column than A with
// epilogue 3 (the ones column is not stored in A).
fn a_cols() -> u32 {
    if (EPILOGUE == 3u) {
        return mm.cols - 1u;
    }
    return mm.cols;
}

