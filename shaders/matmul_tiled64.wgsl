// GPU-grade matmul: a 64x64 output tile per workgroup of 16x16 invocations, each invocation a
// 4x4 register block. Per step of 16 along the inner dimension the workgroup stages a 64x16
// tile of L and a 16x64 tile of R in workgroup memory (4 loads per invocation per operand),
// then each invocation reads 4 values of L and 4 of R as two vec4 loads for 16 FMAs (one FMA
// per two scalar loads in matmul.wgsl's 16x16 tiles): the shape of kernel that reaches a large
// share of peak on discrete GPUs. Same entry points and layouts as matmul.wgsl:
//
//   matmul_forward          Z[m,n]  = A[m,k] · W[n,k]^T      (rows=m, cols=n, inner=k)
//   matmul_backward_weight  dW[n,k] = delta[m,n]^T · A[m,k]  (rows=n, cols=k, inner=m)
//   matmul_backward_input   G[m,k]  = delta[m,n] · W[n,k]    (rows=m, cols=k, inner=n)
//
// Out-of-range elements load as 0, so any size works; each output is written by exactly one
// invocation, and its sum runs over p in order with one fma per step (deterministic).

@group(0) @binding(2) var<storage, read> lhs: array<f32>;
@group(0) @binding(3) var<storage, read> rhs: array<f32>;

const TILE: u32 = 64u;
const DEPTH: u32 = 16u;
// [p][r / 4] and [p][c / 4]: an invocation's 4 rows (columns) are one vec4.
var<workgroup> tile_l: array<array<vec4<f32>, 16>, 16>;
var<workgroup> tile_r: array<array<vec4<f32>, 16>, 16>;

// L(r,p) = lhs[r * l_r + p * l_p], R(p,c) = rhs[p * r_p + c * r_c]
fn tiled64_matmul(lid: vec2<u32>, wid: vec2<u32>, l_r: u32, l_p: u32, r_p: u32, r_c: u32) {
    let row0 = (wid.y + grid.offset.y) * TILE;
    let col0 = (wid.x + grid.offset.x) * TILE;
    let t = lid.y * 16u + lid.x;
    var acc: array<vec4<f32>, 4>;
    let rows = mmv().rows;
    let cols = mmv().cols;
    let inner = mmv().inner;
    let r_src = rhs_source();
    let steps = (inner + DEPTH - 1u) / DEPTH;
    for (var s = 0u; s < steps; s++) {
        let p0 = s * DEPTH;
        // 1024 elements of each operand's tile, 4 per invocation: element e is (e / 64, e % 64)
        // as (p, r) of L and (p, c) of R, so neighbouring invocations load neighbouring rows
        // (columns).
        for (var q = 0u; q < 4u; q++) {
            let e = t + q * 256u;
            let p = e / TILE;
            let i = e % TILE;
            let r = row0 + i;
            let c = col0 + i;
            var v_l = 0.0;
            if (r < rows && p0 + p < inner) {
                v_l = lhs[r * l_r + (p0 + p) * l_p];
            }
            tile_l[p][i / 4u][i % 4u] = v_l;
            var v_r = 0.0;
            if (c < cols && p0 + p < inner) {
                if (c >= r_src.ones_from) {
                    v_r = 1.0; // the ones column of [A | 1] (see matmul_epilogue.wgsl)
                } else {
                    v_r = rhs_at(r_src, (p0 + p) * r_p + c * r_c);
                }
            }
            tile_r[p][i / 4u][i % 4u] = v_r;
        }
        workgroupBarrier();
        for (var p = 0u; p < DEPTH; p++) {
            let a = tile_l[p][lid.y];
            let b = tile_r[p][lid.x];
            acc[0] = fma(vec4<f32>(a.x), b, acc[0]);
            acc[1] = fma(vec4<f32>(a.y), b, acc[1]);
            acc[2] = fma(vec4<f32>(a.z), b, acc[2]);
            acc[3] = fma(vec4<f32>(a.w), b, acc[3]);
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + lid.x * 4u + j;
            if (r < mmv().rows && c < mmv().cols) {
                store_output(r, c, acc[i][j]);
            }
        }
    }
}

fn backward_weight(lid: vec2<u32>, wid: vec2<u32>) {
    // L(r=j, p=i) = delta[i,j] -> i*n + j (n = rows) ; R(p=i, c) = A[i,c] -> i*k + c (k = a_cols())
    tiled64_matmul(lid, wid, 1u, mmv().rows, a_cols(), 1u);
}

fn backward_input(lid: vec2<u32>, wid: vec2<u32>) {
    // L(r=i, p=j) = delta[i,j] -> i*n + j (n = inner) ; R(p=j, c) = W[j,c] -> j*k + c (k = cols)
    tiled64_matmul(lid, wid, mmv().inner, 1u, mmv().cols, 1u);
}

fn forward(lid: vec2<u32>, wid: vec2<u32>) {
    // L = A[m,k]: (r,p) -> r*k + p ; R(p,c) = W[c,p] -> c*k + p
    tiled64_matmul(lid, wid, mmv().inner, 1u, 1u, mmv().inner);
}
