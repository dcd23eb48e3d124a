// The wide tiles of the vec4 subgroup kernel (after matmul_subgroup_vec4.wgsl, whose loaders,
// lane layout and store path they share), chosen by the launcher for big products
// (`matmul::wide_fits`): a 64x64 tile per workgroup, four 32x32 quarters
// summed in one loop, so that each row of L and each row of R a lane loads serves two quarters.
// Per 4 steps of the sum a lane then makes 16 loads for 2048 multiply-adds of vec4, where the
// 32x32 tile makes 8 for 512; under llvmpipe the loads are what the kernel spends most on (each
// is a loop over the lanes with a bounds test per element: docs/design.md section 13). Each
// accumulator takes its 4 steps of a p4 in a row (rows outer, steps inner): per output the same
// chain of fma in the same order as the 32x32 kernel's, so the results are that kernel's bit for
// bit, and an accumulator leaves registers once per 4 steps rather than 4 times.
//
//   matmul_forward_wide          Z = A W^T    R(4 p4 + q, c) from W's rows along p (w_steps)
//   matmul_backward_input_wide   G = delta W  R(4 p4 + q, c) from W's rows along the columns
//                                             (input_steps); epilogue 2 as matmul_backward_input
//
// The weight gradient keeps 32x32 tiles: a wide version (its L 4 steps at a time from 4 rows of
// delta) measured no faster on the mnist model's weight gradients, in three alternating rounds.

// R(4 p4 + q, c0..c0+3) for q = 0..3 in the forward product: 4 rows of a row-major W (k4 vec4
// per row) from w, the index of W[c0, 4 p4 .. 4 p4 + 3].
fn w_steps(w: u32, k4: u32) -> array<vec4<f32>, 4> {
    return transpose4(array<vec4<f32>, 4>(rhs[w], rhs[w + k4], rhs[w + 2u * k4], rhs[w + 3u * k4]));
}

// The same in the input gradient: W[4 p4 + q, c0..c0+3], the vec4 c4 = c0 / 4 of W's rows
// (cols4 vec4 per row).
fn input_steps(c4: u32, p4: u32, cols4: u32) -> array<vec4<f32>, 4> {
    let at = 4u * p4 * cols4 + c4;
    return array<vec4<f32>, 4>(rhs[at], rhs[at + cols4], rhs[at + 2u * cols4], rhs[at + 3u * cols4]);
}

// R's 4 steps at columns c0..c0+3 for either product (`forward` is uniform).
fn r_steps(forward: bool, c0: u32, p4: u32) -> array<vec4<f32>, 4> {
    if (forward) {
        return w_steps(c0 * (mmv().inner / 4u) + p4, mmv().inner / 4u);
    }
    return input_steps(c0 / 4u, p4, mmv().cols / 4u);
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
// be right, and the pipeline compiles faster than with the 32x32 kernel's paths).
fn wide_per_lane(forward: bool, s: u32, tile: vec2<u32>) {
    let row0 = tile.y * 64u;
    let rows = select(0u, min(64u, mmv().rows - row0), row0 < mmv().rows);
    let l4 = mmv().inner / 4u;
    for (var half = 0u; half < 2u; half++) {
        let c0 = (tile.x * 16u + s) * 4u + 32u * half;
        if (c0 < a_cols()) {
            var b = vec4<f32>(0.0);
            if (mode() == 1u || mode() == 4u) {
                b = bias[c0 / 4u];
            }
            for (var i = 0u; i < rows; i++) {
                var v = vec4<f32>(0.0);
                for (var p4 = 0u; p4 < l4; p4++) {
                    let a = lhs[(row0 + i) * l4 + p4];
                    let r = r_steps(forward, c0, p4);
                    v = fma(vec4<f32>(a.w), r[3], fma(vec4<f32>(a.z), r[2], fma(vec4<f32>(a.y), r[1], fma(vec4<f32>(a.x), r[0], v))));
                }
                store_output4(row0 + i, c0, v, b);
            }
        }
    }
}

// Both wide products: L's rows along p (l4 vec4 per row) in both; R by r_steps.
fn wide(forward: bool, lid: u32, sgid: u32, sg_size: u32, wid: vec2<u32>) {
    let tile = wid + grid.offset.xy;
    if (!whole_subgroup(sgid, sg_size)) {
        wide_per_lane(forward, lid, tile);
        return;
    }
    // Rows row0.. (lo) and row0 + 32.. (hi); lane s's columns c_lo..c_lo+3 and c_hi..c_hi+3,
    // R read at a clamped column past the edge (those outputs are not stored).
    let row0 = tile.y * 64u;
    let c_lo = (tile.x * 16u + sgid) * 4u;
    let c_hi = c_lo + 32u;
    let l4 = mmv().inner / 4u;
    let last = mmv().rows - 1u;
    let r_lo = row0 + 4u * sgid;
    let r_hi = r_lo + 32u;
    let read_lo = min(c_lo, mmv().cols - 4u);
    let read_hi = min(c_hi, mmv().cols - 4u);
    var lo_lo: array<vec4<f32>, 32>;
    var lo_hi: array<vec4<f32>, 32>;
    var hi_lo: array<vec4<f32>, 32>;
    var hi_hi: array<vec4<f32>, 32>;
    for (var p4 = 0u; p4 < l4; p4++) {
        let l = r_steps(forward, read_lo, p4);
        let h = r_steps(forward, read_hi, p4);
        fma_four_rows_outer(&lo_lo, &lo_hi, rows_along_p(r_lo, p4, l4, last), l, h);
        fma_four_rows_outer(&hi_lo, &hi_hi, rows_along_p(r_hi, p4, l4, last), l, h);
    }
    store_tile(&lo_lo, sgid, row0, c_lo);
    store_tile(&lo_hi, sgid, row0, c_hi);
    store_tile(&hi_lo, sgid, row0 + 32u, c_lo);
    store_tile(&hi_hi, sgid, row0 + 32u, c_hi);
}

@compute @workgroup_size(8)
fn matmul_forward_wide(
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sgid: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    single();
    wide(true, lid, sgid, sg_size, wid.xy);
}

@compute @workgroup_size(8)
fn matmul_backward_input_wide(
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sgid: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    single();
    wide(false, lid, sgid, sg_size, wid.xy);
}

