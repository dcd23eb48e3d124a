// The subgroup matmul's weight gradient (matmul_subgroup.wgsl) with vec4 loads and stores,
// for products whose widths are multiples of 4: the launcher uses it in place of the f32 one
// where they are (docs/design.md section 13). Why: llvmpipe turns every load or store whose
// address differs per lane into a loop over the lanes, and a vec4 costs about what one f32
// costs there. In dW = delta^T A both operands are contiguous along the output (delta's row i
// holds the tile's rows j, A's row i its columns), so each step of the sum loads one vec4 of
// each instead of 4 + 4 floats. Same tile (32 rows x 4 columns per invocation, rows shared by
// subgroupBroadcast), same sums in the same order (over p, one fma per step): the results are
// those of the f32 kernel, bit for bit.
//
//   matmul_backward_weight  dW[n,k] = delta[m,n]^T · A[m,k]   (rows=n, cols=k, inner=m; n and
//                                                              k multiples of 4)
//
// (The same treatment of the other two layouts, vec4 along the summed index, measured slower:
// 18.0 -> 29.1 ms for a 256·784→1024 forward product on lavapipe.) Rows past the edge read a
// clamped (valid) index and are not written; with these widths a lane's 4 columns are all
// inside or all outside the output.

@group(0) @binding(2) var<storage, read> lhs: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> rhs: array<vec4<f32>>;

// The tile's outputs through the epilogue: columns below the stored width (a_cols()) as vec4
// rows; with epilogue 3 the lane holding the ones column writes the bias gradient, 4 rows to a
// vec4 (the output's rows are a multiple of 4 there).
fn store_tile(acc: ptr<function, array<vec4<f32>, 32>>, s: u32, row0: u32, c0: u32) {
    stage(acc, s);
    let width = a_cols();
    if (c0 < width) {
        for (var i = 0u; i < ROWS; i++) {
            if (row0 + i < mm.rows) {
                store_output4(row0 + i, c0, staged[s][i]);
            }
        }
    } else if (EPILOGUE == 3u && c0 == width) {
        for (var i = 0u; i < ROWS; i += 4u) {
            if (row0 + i < mm.rows) {
                let v = vec4<f32>(staged[s][i].x, staged[s][i + 1u].x, staged[s][i + 2u].x, staged[s][i + 3u].x);
                a_out[(row0 + i) / 4u] = v;
            }
        }
    }
}

// The tile's corner and this lane's place in it.
fn tile_row0(wid: vec2<u32>) -> u32 {
    return (wid.y + grid.offset.y) * ROWS;
}
fn tile_c0(wid: vec2<u32>, s: u32) -> u32 {
    return ((wid.x + grid.offset.x) * LANES + s) * COLS;
}

@compute @workgroup_size(8)
fn matmul_backward_weight(
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sgid: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    // L(r=j, p=i) = delta[i,j]: 4 rows of the tile are a vec4 of delta's row i (n4 per row) ;
    // R(p=i, c) = A[i,c]: a vec4 of c (k4 per row), the ones column past A's k columns
    let whole = whole_subgroup(sgid, sg_size);
    let s = select(lid, sgid, whole);
    let row0 = tile_row0(wid.xy);
    let c0 = tile_c0(wid.xy, s);
    let n4 = mm.rows / 4u;
    let k = a_cols();
    let k4 = k / 4u;
    let col4 = min(c0, k - 4u) / 4u;
    let g0 = row0 / 4u;
    var acc: array<vec4<f32>, 32>;
    if (whole) {
        let own_group = min(g0 + s, n4 - 1u);
        for (var p = 0u; p < mm.inner; p++) {
            let rv = ones_column(rhs[p * k4 + col4], c0);
            fma_shared_rows(&acc, lhs[p * n4 + own_group], rv);
        }
    } else {
        let last = n4 - 1u;
        for (var p = 0u; p < mm.inner; p++) {
            let rv = ones_column(rhs[p * k4 + col4], c0);
            let at = p * n4;
            fma_rows(
                &acc,
                lhs[at + min(g0, last)],
                lhs[at + min(g0 + 1u, last)],
                lhs[at + min(g0 + 2u, last)],
                lhs[at + min(g0 + 3u, last)],
                lhs[at + min(g0 + 4u, last)],
                lhs[at + min(g0 + 5u, last)],
                lhs[at + min(g0 + 6u, last)],
                lhs[at + min(g0 + 7u, last)],
                rv,
            );
        }
    }
    store_tile(&acc, s, row0, c0);
}
