// The subgroup matmul (matmul_subgroup.wgsl) with vec4 loads and stores, for products whose
// widths are multiples of 4: the launcher uses it in place of the f32 one where they are
// (docs/design.md section 13). Why: llvmpipe turns every load or store whose address differs per
// lane into a loop over the lanes, and a vec4 costs about what one f32 costs there. Same tile
// (32 rows x 4 columns per invocation, rows shared by subgroupBroadcast), same sums in the same
// order (over p, one fma per step), same epilogue arithmetic: the results are those of the f32
// kernel, bit for bit.
//
//   matmul_forward          Z[m,n]  = A[m,k] · W[n,k]^T      k, n multiples of 4: A's and W's rows
//                                                             read along p, 4 steps per vec4
//   matmul_backward_input   G[m,k]  = delta[m,n] · W[n,k]    n, k multiples of 4: delta's rows
//                                                             along p, W's rows along the columns
//   matmul_backward_weight  dW[n,k] = delta[m,n]^T · A[m,k]  n, k multiples of 4: delta's row i
//                                                             holds 4 of the tile's rows, A's row i
//                                                             4 of its columns
//
// Per step of the sum an invocation loads two vec4 instead of eight floats. Written out with
// constant indices and the subgroup test outside the loops: with a loop over the 4 steps of a
// vec4, or the test inside, the kernel measured slower than the f32 one on llvmpipe. Rows past
// the edge read a clamped (valid) index and are not written; with these widths a lane's 4
// columns are all inside or all outside the output.

@group(0) @binding(2) var<storage, read> lhs: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> rhs: array<vec4<f32>>;

// The tile's outputs through the epilogue: columns below the stored width (a_cols()) as vec4
// rows; with epilogue 3 the lane holding the ones column writes the bias gradient, 4 rows to a
// vec4 (the output's rows are a multiple of 4 there).
fn store_tile(acc: ptr<function, array<vec4<f32>, 32>>, s: u32, row0: u32, c0: u32) {
    stage(acc, s);
    let width = a_cols();
    if (c0 < width) {
        var b = vec4<f32>(0.0);
        if (mode() == 1u || mode() == 4u || mode() == 5u) {
            b = bias[c0 / 4u];
        }
        let rows = rows_from(row0, mmv().rows);
        for (var i = 0u; i < rows; i++) {
            store_output4(row0 + i, c0, staged[s][i], b);
        }
    } else if (mode() == 3u && c0 == width) {
        let rows = rows_from(row0, mmv().rows);
        for (var i = 0u; i < rows; i += 4u) {
            let v = vec4<f32>(staged[s][i].x, staged[s][i + 1u].x, staged[s][i + 2u].x, staged[s][i + 3u].x);
            a_out[(row0 + i) / 4u] = v;
        }
    }
}

fn backward_weight(lid: u32, sgid: u32, sg_size: u32, wid: vec2<u32>) {
    // L(r=j, p=i) = delta[i,j]: 4 rows of the tile are a vec4 of delta's row i (n4 per row) ;
    // R(p=i, c) = A[i,c]: a vec4 of c (k4 per row), the ones column past A's k columns
    let at = lane(lid, sgid, sg_size, wid);
    let whole = at.whole;
    let s = at.s;
    let row0 = at.row0;
    let c0 = at.c0;
    let n4 = mmv().rows / 4u;
    let k = a_cols();
    let k4 = k / 4u;
    let col4 = min(c0, k - 4u) / 4u;
    let g0 = row0 / 4u;
    let inner = mmv().inner;
    let r_from = rhs_source();
    var acc: array<vec4<f32>, 32>;
    if (whole) {
        let own_group = min(g0 + s, n4 - 1u);
        for (var p = 0u; p < inner; p++) {
            let rv = ones_column(rhs4_at(r_from, p * k4 + col4), c0, r_from);
            fma_shared_rows(&acc, lhs[p * n4 + own_group], rv);
        }
    } else {
        let last = n4 - 1u;
        for (var p = 0u; p < inner; p++) {
            let rv = ones_column(rhs4_at(r_from, p * k4 + col4), c0, r_from);
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

// Rows r..r+3 of a row-major L with w4 vec4 per row, at 4 steps of p (4 p4 .. 4 p4 + 3), each
// row clamped to `last`.
fn rows_along_p(r: u32, p4: u32, w4: u32, last: u32) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(
        lhs[min(r, last) * w4 + p4],
        lhs[min(r + 1u, last) * w4 + p4],
        lhs[min(r + 2u, last) * w4 + p4],
        lhs[min(r + 3u, last) * w4 + p4],
    );
}

// Without broadcasts (another subgroup layout): L(r, p) read one element at a time, and the
// 32 rows of step p for every lane (slow, and short: this path only has to be right, and a
// longer one took llvmpipe twice as long to compile).
fn lhs_at(r: u32, p: u32, w4: u32, last: u32) -> f32 {
    return lhs[min(r, last) * w4 + p / 4u][p % 4u];
}

fn rows_at(row0: u32, t: u32, p: u32, w4: u32, last: u32) -> vec4<f32> {
    let r = row0 + 4u * t;
    return vec4<f32>(lhs_at(r, p, w4, last), lhs_at(r + 1u, p, w4, last), lhs_at(r + 2u, p, w4, last), lhs_at(r + 3u, p, w4, last));
}

fn fma_step_loaded(acc: ptr<function, array<vec4<f32>, 32>>, row0: u32, p: u32, w4: u32, last: u32, rv: vec4<f32>) {
    fma_rows(
        acc,
        rows_at(row0, 0u, p, w4, last),
        rows_at(row0, 1u, p, w4, last),
        rows_at(row0, 2u, p, w4, last),
        rows_at(row0, 3u, p, w4, last),
        rows_at(row0, 4u, p, w4, last),
        rows_at(row0, 5u, p, w4, last),
        rows_at(row0, 6u, p, w4, last),
        rows_at(row0, 7u, p, w4, last),
        rv,
    );
}

fn backward_input(lid: u32, sgid: u32, sg_size: u32, wid: vec2<u32>) {
    // L(r=i, p=j) = delta[i,j]: rows along p (n4 vec4 per row) ; R(p=j, c) = W[j,c]: a vec4 of c
    let at = lane(lid, sgid, sg_size, wid);
    let whole = at.whole;
    let s = at.s;
    let row0 = at.row0;
    let c0 = at.c0;
    let col4 = min(c0, mmv().cols - 4u) / 4u;
    let cols4 = mmv().cols / 4u;
    let inner = mmv().inner;
    let n4 = inner / 4u;
    let last = mmv().rows - 1u;
    var acc: array<vec4<f32>, 32>;
    if (whole) {
        let r = row0 + 4u * s;
        for (var p4 = 0u; p4 < n4; p4++) {
            let p = 4u * p4;
            fma_four_shared(
                &acc,
                rows_along_p(r, p4, n4, last),
                rhs[p * cols4 + col4],
                rhs[(p + 1u) * cols4 + col4],
                rhs[(p + 2u) * cols4 + col4],
                rhs[(p + 3u) * cols4 + col4],
            );
        }
    } else {
        for (var p = 0u; p < inner; p++) {
            fma_step_loaded(&acc, row0, p, n4, last, rhs[p * cols4 + col4]);
        }
    }
    store_tile(&acc, s, row0, c0);
}

fn forward(lid: u32, sgid: u32, sg_size: u32, wid: vec2<u32>) {
    // L = A[m,k]: rows along p (k4 vec4 per row) ; R(p,c) = W[c,p]: W's rows along p too
    let at = lane(lid, sgid, sg_size, wid);
    let whole = at.whole;
    let s = at.s;
    let row0 = at.row0;
    let c0 = at.c0;
    let cc = min(c0, mmv().cols - 4u);
    let inner = mmv().inner;
    let k4 = inner / 4u;
    let last = mmv().rows - 1u;
    var acc: array<vec4<f32>, 32>;
    if (whole) {
        let r = row0 + 4u * s;
        for (var p4 = 0u; p4 < k4; p4++) {
            let w = cc * k4 + p4;
            fma_four_by_w_rows(&acc, rows_along_p(r, p4, k4, last), rhs[w], rhs[w + k4], rhs[w + 2u * k4], rhs[w + 3u * k4]);
        }
    } else {
        for (var p = 0u; p < inner; p++) {
            let p4 = p / 4u;
            let q = p % 4u;
            let rv = vec4<f32>(rhs[cc * k4 + p4][q], rhs[(cc + 1u) * k4 + p4][q], rhs[(cc + 2u) * k4 + p4][q], rhs[(cc + 3u) * k4 + p4][q]);
            fma_step_loaded(&acc, row0, p, k4, last, rv);
        }
    }
    store_tile(&acc, s, row0, c0);
}
