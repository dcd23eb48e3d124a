// Matrix products of a training step, in the three layouts it needs, so that no transpose is
// ever materialised (row-major everywhere, W is [out, in] as in PyTorch):
//
//   matmul_forward          Z[m,n]  = A[m,k] · W[n,k]^T      (rows=m, cols=n, inner=k)
//   matmul_backward_weight  dW[n,k] = delta[m,n]^T · A[m,k]  (rows=n, cols=k, inner=m)
//   matmul_backward_input   G[m,k]  = delta[m,n] · W[n,k]    (rows=m, cols=k, inner=n)
//
// All three are out[r,c] = sum_p L(r,p) R(p,c); they differ only in the strides used to read
// L and R. 16x16 output tiles, each workgroup stages 16x16 tiles of L and R in workgroup memory.
// Out-of-range elements load as 0, so any size works; each output is written by exactly one
// invocation, and the sum runs in a fixed order (deterministic).

@group(0) @binding(2) var<storage, read> lhs: array<f32>;
@group(0) @binding(3) var<storage, read> rhs: array<f32>;

const TILE: u32 = 16u;
var<workgroup> tile_l: array<array<f32, 16>, 16>; // [r][p]
var<workgroup> tile_r: array<array<f32, 16>, 16>; // [p][c]

// L(r,p) = lhs[r * l_r + p * l_p], R(p,c) = rhs[p * r_p + c * r_c]
fn tiled_matmul(lid: vec2<u32>, wid: vec2<u32>, l_r: u32, l_p: u32, r_p: u32, r_c: u32) {
    let row0 = (wid.y + grid.offset.y) * TILE;
    let col0 = (wid.x + grid.offset.x) * TILE;
    let r = row0 + lid.y;
    let c = col0 + lid.x;
    var acc = 0.0;
    let rows = mmv().rows;
    let cols = mmv().cols;
    let inner = mmv().inner;
    let r_src = rhs_source();
    let tiles = (inner + TILE - 1u) / TILE;
    for (var t = 0u; t < tiles; t++) {
        let p_l = t * TILE + lid.x;
        var v_l = 0.0;
        if (r < rows && p_l < inner) {
            v_l = lhs[r * l_r + p_l * l_p];
        }
        tile_l[lid.y][lid.x] = v_l;
        let p_r = t * TILE + lid.y;
        var v_r = 0.0;
        if (p_r < inner && c < cols) {
            if (c >= r_src.ones_from) {
                v_r = 1.0; // the ones column of [A | 1] (see matmul_epilogue.wgsl)
            } else {
                v_r = rhs_at(r_src, p_r * r_p + c * r_c);
            }
        }
        tile_r[lid.y][lid.x] = v_r;
        workgroupBarrier();
        for (var q = 0u; q < TILE; q++) {
            acc = fma(tile_l[lid.y][q], tile_r[q][lid.x], acc);
        }
        workgroupBarrier();
    }
    if (r < mmv().rows && c < mmv().cols) {
        store_output(r, c, acc);
    }
}

fn backward_weight(lid: vec2<u32>, wid: vec2<u32>) {
    // L(r=j, p=i) = delta[i,j] -> i*n + j (n = rows) ; R(p=i, c) = A[i,c] -> i*k + c (k = a_cols())
    tiled_matmul(lid, wid, 1u, mmv().rows, a_cols(), 1u);
}

fn backward_input(lid: vec2<u32>, wid: vec2<u32>) {
    // L(r=i, p=j) = delta[i,j] -> i*n + j (n = inner) ; R(p=j, c) = W[j,c] -> j*k + c (k = cols)
    tiled_matmul(lid, wid, mmv().inner, 1u, mmv().cols, 1u);
}

fn forward(lid: vec2<u32>, wid: vec2<u32>) {
    // L = A[m,k]: (r,p) -> r*k + p ; R(p,c) = W[c,p] -> c*k + p
    tiled_matmul(lid, wid, mmv().inner, 1u, 1u, mmv().inner);
}
