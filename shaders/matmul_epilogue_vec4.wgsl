// The epilogue of the vec4 weight gradient (after matmul_params.wgsl): modes 0 and 3 of
// matmul_epilogue.wgsl (the only ones matmul_backward_weight is built with), four outputs of a
// row at a time as one vec4 (columns c0..c0+3, c0 a multiple of 4, in rows of a width that is a
// multiple of 4). Bindings 5, 7, 8 and 9 are declared for the shared bind-group layout, unused.

@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> a_out: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> z_in: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> a_in: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> delta_out: array<vec4<f32>>;

// Outputs [r, c0..c0+4) of the stored width a_cols() (the ones column's are not stored here).
fn store_output4(r: u32, c0: u32, v: vec4<f32>) {
    out[(r * a_cols() + c0) / 4u] = v;
}
