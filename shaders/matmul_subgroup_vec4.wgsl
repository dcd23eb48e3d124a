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

// ---------------------------------------------------------------------------------------------
// The wide forward (matmul_forward_wide, chosen by the launcher for big products): a 64x64 tile
// per workgroup, four 32x32 quarters summed in one loop, so that each row of A and each row of W
// a lane loads serves two quarters. Per 4 steps of the sum a lane then makes 16 loads for 2048
// multiply-adds of vec4, where the 32x32 tile makes 8 for 512; under llvmpipe the loads are what
// the kernel spends most on (each is a loop over the lanes with a bounds test per element:
// docs/design.md section 13). Each accumulator takes its 4 steps of a p4 in a row (rows outer,
// steps inner): per output the same chain of fma in the same order as fma_four_by_w_rows, so the
// results are the 32x32 kernel's bit for bit, and an accumulator leaves registers once per 4
// steps rather than 4 times.

// R(4 p4 + q, c0..c0+3) for q = 0..3, from 4 rows of a row-major W (k4 vec4 per row) at w, the
// index of W[c0, 4 p4 .. 4 p4 + 3].
fn w_steps(w: u32, k4: u32) -> array<vec4<f32>, 4> {
    let w0 = rhs[w];
    let w1 = rhs[w + k4];
    let w2 = rhs[w + 2u * k4];
    let w3 = rhs[w + 3u * k4];
    return array<vec4<f32>, 4>(
        vec4<f32>(w0.x, w1.x, w2.x, w3.x),
        vec4<f32>(w0.y, w1.y, w2.y, w3.y),
        vec4<f32>(w0.z, w1.z, w2.z, w3.z),
        vec4<f32>(w0.w, w1.w, w2.w, w3.w),
    );
}

// Four steps of the sum for 32 rows and two column groups (lo, hi): lane t holds rows 4t..4t+3
// along p in `a`, so the broadcast of a[j] from lane t is row 4t+j at the 4 steps. Written out
// with constant indices (see fma_rows).
fn fma_four_rows_outer(
    lo: ptr<function, array<vec4<f32>, 32>>,
    hi: ptr<function, array<vec4<f32>, 32>>,
    a: array<vec4<f32>, 4>,
    l: array<vec4<f32>, 4>,
    h: array<vec4<f32>, 4>,
) {
    let b0 = subgroupBroadcast(a[0], 0u);
    (*lo)[0] = fma(vec4<f32>(b0.w), l[3], fma(vec4<f32>(b0.z), l[2], fma(vec4<f32>(b0.y), l[1], fma(vec4<f32>(b0.x), l[0], (*lo)[0]))));
    (*hi)[0] = fma(vec4<f32>(b0.w), h[3], fma(vec4<f32>(b0.z), h[2], fma(vec4<f32>(b0.y), h[1], fma(vec4<f32>(b0.x), h[0], (*hi)[0]))));
    let b1 = subgroupBroadcast(a[1], 0u);
    (*lo)[1] = fma(vec4<f32>(b1.w), l[3], fma(vec4<f32>(b1.z), l[2], fma(vec4<f32>(b1.y), l[1], fma(vec4<f32>(b1.x), l[0], (*lo)[1]))));
    (*hi)[1] = fma(vec4<f32>(b1.w), h[3], fma(vec4<f32>(b1.z), h[2], fma(vec4<f32>(b1.y), h[1], fma(vec4<f32>(b1.x), h[0], (*hi)[1]))));
    let b2 = subgroupBroadcast(a[2], 0u);
    (*lo)[2] = fma(vec4<f32>(b2.w), l[3], fma(vec4<f32>(b2.z), l[2], fma(vec4<f32>(b2.y), l[1], fma(vec4<f32>(b2.x), l[0], (*lo)[2]))));
    (*hi)[2] = fma(vec4<f32>(b2.w), h[3], fma(vec4<f32>(b2.z), h[2], fma(vec4<f32>(b2.y), h[1], fma(vec4<f32>(b2.x), h[0], (*hi)[2]))));
    let b3 = subgroupBroadcast(a[3], 0u);
    (*lo)[3] = fma(vec4<f32>(b3.w), l[3], fma(vec4<f32>(b3.z), l[2], fma(vec4<f32>(b3.y), l[1], fma(vec4<f32>(b3.x), l[0], (*lo)[3]))));
    (*hi)[3] = fma(vec4<f32>(b3.w), h[3], fma(vec4<f32>(b3.z), h[2], fma(vec4<f32>(b3.y), h[1], fma(vec4<f32>(b3.x), h[0], (*hi)[3]))));
    let b4 = subgroupBroadcast(a[0], 1u);
    (*lo)[4] = fma(vec4<f32>(b4.w), l[3], fma(vec4<f32>(b4.z), l[2], fma(vec4<f32>(b4.y), l[1], fma(vec4<f32>(b4.x), l[0], (*lo)[4]))));
    (*hi)[4] = fma(vec4<f32>(b4.w), h[3], fma(vec4<f32>(b4.z), h[2], fma(vec4<f32>(b4.y), h[1], fma(vec4<f32>(b4.x), h[0], (*hi)[4]))));
    let b5 = subgroupBroadcast(a[1], 1u);
    (*lo)[5] = fma(vec4<f32>(b5.w), l[3], fma(vec4<f32>(b5.z), l[2], fma(vec4<f32>(b5.y), l[1], fma(vec4<f32>(b5.x), l[0], (*lo)[5]))));
    (*hi)[5] = fma(vec4<f32>(b5.w), h[3], fma(vec4<f32>(b5.z), h[2], fma(vec4<f32>(b5.y), h[1], fma(vec4<f32>(b5.x), h[0], (*hi)[5]))));
    let b6 = subgroupBroadcast(a[2], 1u);
    (*lo)[6] = fma(vec4<f32>(b6.w), l[3], fma(vec4<f32>(b6.z), l[2], fma(vec4<f32>(b6.y), l[1], fma(vec4<f32>(b6.x), l[0], (*lo)[6]))));
    (*hi)[6] = fma(vec4<f32>(b6.w), h[3], fma(vec4<f32>(b6.z), h[2], fma(vec4<f32>(b6.y), h[1], fma(vec4<f32>(b6.x), h[0], (*hi)[6]))));
    let b7 = subgroupBroadcast(a[3], 1u);
    (*lo)[7] = fma(vec4<f32>(b7.w), l[3], fma(vec4<f32>(b7.z), l[2], fma(vec4<f32>(b7.y), l[1], fma(vec4<f32>(b7.x), l[0], (*lo)[7]))));
    (*hi)[7] = fma(vec4<f32>(b7.w), h[3], fma(vec4<f32>(b7.z), h[2], fma(vec4<f32>(b7.y), h[1], fma(vec4<f32>(b7.x), h[0], (*hi)[7]))));
    let b8 = subgroupBroadcast(a[0], 2u);
    (*lo)[8] = fma(vec4<f32>(b8.w), l[3], fma(vec4<f32>(b8.z), l[2], fma(vec4<f32>(b8.y), l[1], fma(vec4<f32>(b8.x), l[0], (*lo)[8]))));
    (*hi)[8] = fma(vec4<f32>(b8.w), h[3], fma(vec4<f32>(b8.z), h[2], fma(vec4<f32>(b8.y), h[1], fma(vec4<f32>(b8.x), h[0], (*hi)[8]))));
    let b9 = subgroupBroadcast(a[1], 2u);
    (*lo)[9] = fma(vec4<f32>(b9.w), l[3], fma(vec4<f32>(b9.z), l[2], fma(vec4<f32>(b9.y), l[1], fma(vec4<f32>(b9.x), l[0], (*lo)[9]))));
    (*hi)[9] = fma(vec4<f32>(b9.w), h[3], fma(vec4<f32>(b9.z), h[2], fma(vec4<f32>(b9.y), h[1], fma(vec4<f32>(b9.x), h[0], (*hi)[9]))));
    let b10 = subgroupBroadcast(a[2], 2u);
    (*lo)[10] = fma(vec4<f32>(b10.w), l[3], fma(vec4<f32>(b10.z), l[2], fma(vec4<f32>(b10.y), l[1], fma(vec4<f32>(b10.x), l[0], (*lo)[10]))));
    (*hi)[10] = fma(vec4<f32>(b10.w), h[3], fma(vec4<f32>(b10.z), h[2], fma(vec4<f32>(b10.y), h[1], fma(vec4<f32>(b10.x), h[0], (*hi)[10]))));
    let b11 = subgroupBroadcast(a[3], 2u);
    (*lo)[11] = fma(vec4<f32>(b11.w), l[3], fma(vec4<f32>(b11.z), l[2], fma(vec4<f32>(b11.y), l[1], fma(vec4<f32>(b11.x), l[0], (*lo)[11]))));
    (*hi)[11] = fma(vec4<f32>(b11.w), h[3], fma(vec4<f32>(b11.z), h[2], fma(vec4<f32>(b11.y), h[1], fma(vec4<f32>(b11.x), h[0], (*hi)[11]))));
    let b12 = subgroupBroadcast(a[0], 3u);
    (*lo)[12] = fma(vec4<f32>(b12.w), l[3], fma(vec4<f32>(b12.z), l[2], fma(vec4<f32>(b12.y), l[1], fma(vec4<f32>(b12.x), l[0], (*lo)[12]))));
    (*hi)[12] = fma(vec4<f32>(b12.w), h[3], fma(vec4<f32>(b12.z), h[2], fma(vec4<f32>(b12.y), h[1], fma(vec4<f32>(b12.x), h[0], (*hi)[12]))));
    let b13 = subgroupBroadcast(a[1], 3u);
    (*lo)[13] = fma(vec4<f32>(b13.w), l[3], fma(vec4<f32>(b13.z), l[2], fma(vec4<f32>(b13.y), l[1], fma(vec4<f32>(b13.x), l[0], (*lo)[13]))));
    (*hi)[13] = fma(vec4<f32>(b13.w), h[3], fma(vec4<f32>(b13.z), h[2], fma(vec4<f32>(b13.y), h[1], fma(vec4<f32>(b13.x), h[0], (*hi)[13]))));
    let b14 = subgroupBroadcast(a[2], 3u);
    (*lo)[14] = fma(vec4<f32>(b14.w), l[3], fma(vec4<f32>(b14.z), l[2], fma(vec4<f32>(b14.y), l[1], fma(vec4<f32>(b14.x), l[0], (*lo)[14]))));
    (*hi)[14] = fma(vec4<f32>(b14.w), h[3], fma(vec4<f32>(b14.z), h[2], fma(vec4<f32>(b14.y), h[1], fma(vec4<f32>(b14.x), h[0], (*hi)[14]))));
    let b15 = subgroupBroadcast(a[3], 3u);
    (*lo)[15] = fma(vec4<f32>(b15.w), l[3], fma(vec4<f32>(b15.z), l[2], fma(vec4<f32>(b15.y), l[1], fma(vec4<f32>(b15.x), l[0], (*lo)[15]))));
    (*hi)[15] = fma(vec4<f32>(b15.w), h[3], fma(vec4<f32>(b15.z), h[2], fma(vec4<f32>(b15.y), h[1], fma(vec4<f32>(b15.x), h[0], (*hi)[15]))));
    let b16 = subgroupBroadcast(a[0], 4u);
    (*lo)[16] = fma(vec4<f32>(b16.w), l[3], fma(vec4<f32>(b16.z), l[2], fma(vec4<f32>(b16.y), l[1], fma(vec4<f32>(b16.x), l[0], (*lo)[16]))));
    (*hi)[16] = fma(vec4<f32>(b16.w), h[3], fma(vec4<f32>(b16.z), h[2], fma(vec4<f32>(b16.y), h[1], fma(vec4<f32>(b16.x), h[0], (*hi)[16]))));
    let b17 = subgroupBroadcast(a[1], 4u);
    (*lo)[17] = fma(vec4<f32>(b17.w), l[3], fma(vec4<f32>(b17.z), l[2], fma(vec4<f32>(b17.y), l[1], fma(vec4<f32>(b17.x), l[0], (*lo)[17]))));
    (*hi)[17] = fma(vec4<f32>(b17.w), h[3], fma(vec4<f32>(b17.z), h[2], fma(vec4<f32>(b17.y), h[1], fma(vec4<f32>(b17.x), h[0], (*hi)[17]))));
    let b18 = subgroupBroadcast(a[2], 4u);
    (*lo)[18] = fma(vec4<f32>(b18.w), l[3], fma(vec4<f32>(b18.z), l[2], fma(vec4<f32>(b18.y), l[1], fma(vec4<f32>(b18.x), l[0], (*lo)[18]))));
    (*hi)[18] = fma(vec4<f32>(b18.w), h[3], fma(vec4<f32>(b18.z), h[2], fma(vec4<f32>(b18.y), h[1], fma(vec4<f32>(b18.x), h[0], (*hi)[18]))));
    let b19 = subgroupBroadcast(a[3], 4u);
    (*lo)[19] = fma(vec4<f32>(b19.w), l[3], fma(vec4<f32>(b19.z), l[2], fma(vec4<f32>(b19.y), l[1], fma(vec4<f32>(b19.x), l[0], (*lo)[19]))));
    (*hi)[19] = fma(vec4<f32>(b19.w), h[3], fma(vec4<f32>(b19.z), h[2], fma(vec4<f32>(b19.y), h[1], fma(vec4<f32>(b19.x), h[0], (*hi)[19]))));
    let b20 = subgroupBroadcast(a[0], 5u);
    (*lo)[20] = fma(vec4<f32>(b20.w), l[3], fma(vec4<f32>(b20.z), l[2], fma(vec4<f32>(b20.y), l[1], fma(vec4<f32>(b20.x), l[0], (*lo)[20]))));
    (*hi)[20] = fma(vec4<f32>(b20.w), h[3], fma(vec4<f32>(b20.z), h[2], fma(vec4<f32>(b20.y), h[1], fma(vec4<f32>(b20.x), h[0], (*hi)[20]))));
    let b21 = subgroupBroadcast(a[1], 5u);
    (*lo)[21] = fma(vec4<f32>(b21.w), l[3], fma(vec4<f32>(b21.z), l[2], fma(vec4<f32>(b21.y), l[1], fma(vec4<f32>(b21.x), l[0], (*lo)[21]))));
    (*hi)[21] = fma(vec4<f32>(b21.w), h[3], fma(vec4<f32>(b21.z), h[2], fma(vec4<f32>(b21.y), h[1], fma(vec4<f32>(b21.x), h[0], (*hi)[21]))));
    let b22 = subgroupBroadcast(a[2], 5u);
    (*lo)[22] = fma(vec4<f32>(b22.w), l[3], fma(vec4<f32>(b22.z), l[2], fma(vec4<f32>(b22.y), l[1], fma(vec4<f32>(b22.x), l[0], (*lo)[22]))));
    (*hi)[22] = fma(vec4<f32>(b22.w), h[3], fma(vec4<f32>(b22.z), h[2], fma(vec4<f32>(b22.y), h[1], fma(vec4<f32>(b22.x), h[0], (*hi)[22]))));
    let b23 = subgroupBroadcast(a[3], 5u);
    (*lo)[23] = fma(vec4<f32>(b23.w), l[3], fma(vec4<f32>(b23.z), l[2], fma(vec4<f32>(b23.y), l[1], fma(vec4<f32>(b23.x), l[0], (*lo)[23]))));
    (*hi)[23] = fma(vec4<f32>(b23.w), h[3], fma(vec4<f32>(b23.z), h[2], fma(vec4<f32>(b23.y), h[1], fma(vec4<f32>(b23.x), h[0], (*hi)[23]))));
    let b24 = subgroupBroadcast(a[0], 6u);
    (*lo)[24] = fma(vec4<f32>(b24.w), l[3], fma(vec4<f32>(b24.z), l[2], fma(vec4<f32>(b24.y), l[1], fma(vec4<f32>(b24.x), l[0], (*lo)[24]))));
    (*hi)[24] = fma(vec4<f32>(b24.w), h[3], fma(vec4<f32>(b24.z), h[2], fma(vec4<f32>(b24.y), h[1], fma(vec4<f32>(b24.x), h[0], (*hi)[24]))));
    let b25 = subgroupBroadcast(a[1], 6u);
    (*lo)[25] = fma(vec4<f32>(b25.w), l[3], fma(vec4<f32>(b25.z), l[2], fma(vec4<f32>(b25.y), l[1], fma(vec4<f32>(b25.x), l[0], (*lo)[25]))));
    (*hi)[25] = fma(vec4<f32>(b25.w), h[3], fma(vec4<f32>(b25.z), h[2], fma(vec4<f32>(b25.y), h[1], fma(vec4<f32>(b25.x), h[0], (*hi)[25]))));
    let b26 = subgroupBroadcast(a[2], 6u);
    (*lo)[26] = fma(vec4<f32>(b26.w), l[3], fma(vec4<f32>(b26.z), l[2], fma(vec4<f32>(b26.y), l[1], fma(vec4<f32>(b26.x), l[0], (*lo)[26]))));
    (*hi)[26] = fma(vec4<f32>(b26.w), h[3], fma(vec4<f32>(b26.z), h[2], fma(vec4<f32>(b26.y), h[1], fma(vec4<f32>(b26.x), h[0], (*hi)[26]))));
    let b27 = subgroupBroadcast(a[3], 6u);
    (*lo)[27] = fma(vec4<f32>(b27.w), l[3], fma(vec4<f32>(b27.z), l[2], fma(vec4<f32>(b27.y), l[1], fma(vec4<f32>(b27.x), l[0], (*lo)[27]))));
    (*hi)[27] = fma(vec4<f32>(b27.w), h[3], fma(vec4<f32>(b27.z), h[2], fma(vec4<f32>(b27.y), h[1], fma(vec4<f32>(b27.x), h[0], (*hi)[27]))));
    let b28 = subgroupBroadcast(a[0], 7u);
    (*lo)[28] = fma(vec4<f32>(b28.w), l[3], fma(vec4<f32>(b28.z), l[2], fma(vec4<f32>(b28.y), l[1], fma(vec4<f32>(b28.x), l[0], (*lo)[28]))));
    (*hi)[28] = fma(vec4<f32>(b28.w), h[3], fma(vec4<f32>(b28.z), h[2], fma(vec4<f32>(b28.y), h[1], fma(vec4<f32>(b28.x), h[0], (*hi)[28]))));
    let b29 = subgroupBroadcast(a[1], 7u);
    (*lo)[29] = fma(vec4<f32>(b29.w), l[3], fma(vec4<f32>(b29.z), l[2], fma(vec4<f32>(b29.y), l[1], fma(vec4<f32>(b29.x), l[0], (*lo)[29]))));
    (*hi)[29] = fma(vec4<f32>(b29.w), h[3], fma(vec4<f32>(b29.z), h[2], fma(vec4<f32>(b29.y), h[1], fma(vec4<f32>(b29.x), h[0], (*hi)[29]))));
    let b30 = subgroupBroadcast(a[2], 7u);
    (*lo)[30] = fma(vec4<f32>(b30.w), l[3], fma(vec4<f32>(b30.z), l[2], fma(vec4<f32>(b30.y), l[1], fma(vec4<f32>(b30.x), l[0], (*lo)[30]))));
    (*hi)[30] = fma(vec4<f32>(b30.w), h[3], fma(vec4<f32>(b30.z), h[2], fma(vec4<f32>(b30.y), h[1], fma(vec4<f32>(b30.x), h[0], (*hi)[30]))));
    let b31 = subgroupBroadcast(a[3], 7u);
    (*lo)[31] = fma(vec4<f32>(b31.w), l[3], fma(vec4<f32>(b31.z), l[2], fma(vec4<f32>(b31.y), l[1], fma(vec4<f32>(b31.x), l[0], (*lo)[31]))));
    (*hi)[31] = fma(vec4<f32>(b31.w), h[3], fma(vec4<f32>(b31.z), h[2], fma(vec4<f32>(b31.y), h[1], fma(vec4<f32>(b31.x), h[0], (*hi)[31]))));
}

// Where a workgroup is not one subgroup: each invocation its own two vec4 of columns, one
// output row at a time, with the same chain of fma per output (slow, and short: it only has to
// be right, and the wide pipeline's compile stays shorter than with the 32x32 kernel's paths).
fn forward_wide_per_lane(s: u32, tile: vec2<u32>) {
    let row0 = tile.y * 64u;
    let rows = select(0u, min(64u, mmv().rows - row0), row0 < mmv().rows);
    let k4 = mmv().inner / 4u;
    for (var half = 0u; half < 2u; half++) {
        let c0 = (tile.x * 16u + s) * 4u + 32u * half;
        if (c0 < a_cols()) {
            var b = vec4<f32>(0.0);
            if (mode() == 1u || mode() == 4u) {
                b = bias[c0 / 4u];
            }
            for (var i = 0u; i < rows; i++) {
                var v = vec4<f32>(0.0);
                for (var p4 = 0u; p4 < k4; p4++) {
                    let a = lhs[(row0 + i) * k4 + p4];
                    let w = w_steps(c0 * k4 + p4, k4);
                    v = fma(vec4<f32>(a.w), w[3], fma(vec4<f32>(a.z), w[2], fma(vec4<f32>(a.y), w[1], fma(vec4<f32>(a.x), w[0], v))));
                }
                store_output4(row0 + i, c0, v, b);
            }
        }
    }
}

fn forward_wide(lid: u32, sgid: u32, sg_size: u32, wid: vec2<u32>) {
    let tile = wid + grid.offset.xy;
    if (!whole_subgroup(sgid, sg_size)) {
        forward_wide_per_lane(lid, tile);
        return;
    }
    // Rows row0.. (lo) and row0 + 32.. (hi); lane s's columns c_lo..c_lo+3 and c_hi..c_hi+3.
    let row0 = tile.y * 64u;
    let c_lo = (tile.x * 16u + sgid) * 4u;
    let c_hi = c_lo + 32u;
    let inner = mmv().inner;
    let k4 = inner / 4u;
    let last = mmv().rows - 1u;
    let w_lo = min(c_lo, mmv().cols - 4u) * k4;
    let w_hi = min(c_hi, mmv().cols - 4u) * k4;
    let r_lo = row0 + 4u * sgid;
    let r_hi = r_lo + 32u;
    var lo_lo: array<vec4<f32>, 32>;
    var lo_hi: array<vec4<f32>, 32>;
    var hi_lo: array<vec4<f32>, 32>;
    var hi_hi: array<vec4<f32>, 32>;
    for (var p4 = 0u; p4 < k4; p4++) {
        let l = w_steps(w_lo + p4, k4);
        let h = w_steps(w_hi + p4, k4);
        fma_four_rows_outer(&lo_lo, &lo_hi, rows_along_p(r_lo, p4, k4, last), l, h);
        fma_four_rows_outer(&hi_lo, &hi_hi, rows_along_p(r_hi, p4, k4, last), l, h);
    }
    store_tile(&lo_lo, sgid, row0, c_lo);
    store_tile(&lo_hi, sgid, row0, c_hi);
    store_tile(&hi_lo, sgid, row0 + 32u, c_lo);
    store_tile(&hi_hi, sgid, row0 + 32u, c_hi);
}

// The vec4 kernel's own entry point (the f32 kernel has no wide tile).
@compute @workgroup_size(8)
fn matmul_forward_wide(
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sgid: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    single();
    forward_wide(lid, sgid, sg_size, wid.xy);
}
