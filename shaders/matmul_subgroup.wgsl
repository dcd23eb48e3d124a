// Subgroup matmul for CPU-emulated adapters (lavapipe): each invocation computes 32 rows x 4
// columns of outputs, with no workgroup memory; a workgroup is one subgroup of 8 invocations
// covering a 32x32 output tile. Same entry points, bindings and layouts as matmul.wgsl:
//
//   matmul_forward          Z[m,n]  = A[m,k] · W[n,k]^T      (rows=m, cols=n, inner=k)
//   matmul_backward_weight  dW[n,k] = delta[m,n]^T · A[m,k]  (rows=n, cols=k, inner=m)
//   matmul_backward_input   G[m,k]  = delta[m,n] · W[n,k]    (rows=m, cols=k, inner=n)
//
// Why: llvmpipe runs 8 invocations as the lanes of one SIMD vector and turns every load whose
// address differs per lane into a loop over the lanes, so speed follows FMAs per load. At each
// step p of the inner sum, lane s loads 4 values of L (rows 4s..4s+3 of the tile) and 4 of R
// (its own 4 columns), then takes the 32 rows of L from the 8 lanes with subgroupBroadcast
// (a register shuffle there): 8 loads for 128 FMAs, against 8 for 16 in matmul_blocked.wgsl.
//
// Needs wgpu::Features::SUBGROUP (no `enable subgroups;`: naga takes the device feature). The
// broadcast is only used when the workgroup is exactly one subgroup of 8 lanes with ids 0..7
// (checked at run time, uniformly for the workgroup); otherwise (another subgroup size) each
// invocation loads the 32 rows itself, which gives the same result, bit for bit: the sum for
// every output runs over p in order with one fma per step on either path (deterministic).
// Rows and columns past the edge load a clamped (valid) index and are not written; every
// invocation reaches the subgroup operations (no early return).

@group(0) @binding(2) var<storage, read> lhs: array<f32>;
@group(0) @binding(3) var<storage, read> rhs: array<f32>;

// The 4 rows of L that lane `s` loads at step p: L(row0 + 4s + i, p), rows clamped.
fn lhs4(row0: u32, s: u32, lp: u32, l_r: u32, last: u32) -> vec4<f32> {
    let r = row0 + s * 4u;
    return vec4<f32>(
        lhs[min(r, last) * l_r + lp],
        lhs[min(r + 1u, last) * l_r + lp],
        lhs[min(r + 2u, last) * l_r + lp],
        lhs[min(r + 3u, last) * l_r + lp],
    );
}

// Stores outputs [r, c0..c0+4] (through the epilogue), the columns and the row that exist.
fn store4(r: u32, c0: u32, v: vec4<f32>) {
    if (r < mmv().rows) {
        if (c0 < mmv().cols) {
            store_output(r, c0, v.x);
        }
        if (c0 + 1u < mmv().cols) {
            store_output(r, c0 + 1u, v.y);
        }
        if (c0 + 2u < mmv().cols) {
            store_output(r, c0 + 2u, v.z);
        }
        if (c0 + 3u < mmv().cols) {
            store_output(r, c0 + 3u, v.w);
        }
    }
}

// L(r,p) = lhs[r * l_r + p * l_p], R(p,c) = rhs[p * r_p + c * r_c]
fn subgroup_matmul(lid: u32, sgid: u32, sg_size: u32, wid: vec2<u32>, l_r: u32, l_p: u32, r_p: u32, r_c: u32) {
    let at = lane(lid, sgid, sg_size, wid);
    let whole = at.whole;
    let s = at.s;
    let row0 = at.row0;
    let c0 = at.c0;
    let last_c = mmv().cols - 1u;
    let rcol = vec4<u32>(min(c0, last_c), min(c0 + 1u, last_c), min(c0 + 2u, last_c), min(c0 + 3u, last_c)) * r_c;
    var acc: array<vec4<f32>, 32>;
    let inner = mmv().inner;
    let last = mmv().rows - 1u;
    let r_src = rhs_source();
    if (whole) {
        for (var p = 0u; p < inner; p++) {
            let rp = p * r_p;
            let rv = vec4<f32>(rhs_at(r_src, rp + rcol.x), rhs_at(r_src, rp + rcol.y), rhs_at(r_src, rp + rcol.z), rhs_at(r_src, rp + rcol.w));
            let own = lhs4(row0, s, p * l_p, l_r, last);
            fma_shared_rows(&acc, own, ones_column(rv, c0, r_src));
        }
    } else {
        // Another subgroup layout: every invocation loads the 32 rows itself (same sums).
        for (var p = 0u; p < inner; p++) {
            let rp = p * r_p;
            let lp = p * l_p;
            let rv = vec4<f32>(rhs_at(r_src, rp + rcol.x), rhs_at(r_src, rp + rcol.y), rhs_at(r_src, rp + rcol.z), rhs_at(r_src, rp + rcol.w));
            fma_rows(
                &acc,
                lhs4(row0, 0u, lp, l_r, last),
                lhs4(row0, 1u, lp, l_r, last),
                lhs4(row0, 2u, lp, l_r, last),
                lhs4(row0, 3u, lp, l_r, last),
                lhs4(row0, 4u, lp, l_r, last),
                lhs4(row0, 5u, lp, l_r, last),
                lhs4(row0, 6u, lp, l_r, last),
                lhs4(row0, 7u, lp, l_r, last),
                ones_column(rv, c0, r_src),
            );
        }
    }
    stage(&acc, s);
    let rows = rows_from(row0, mmv().rows);
    for (var i = 0u; i < rows; i++) {
        store4(row0 + i, c0, staged[s][i]);
    }
}

fn backward_weight(lid: u32, sgid: u32, sg_size: u32, wid: vec2<u32>) {
    // L(r=j, p=i) = delta[i,j] -> i*n + j (n = rows) ; R(p=i, c) = A[i,c] -> i*k + c (k = a_cols())
    subgroup_matmul(lid, sgid, sg_size, wid, 1u, mmv().rows, a_cols(), 1u);
}

fn backward_input(lid: u32, sgid: u32, sg_size: u32, wid: vec2<u32>) {
    // L(r=i, p=j) = delta[i,j] -> i*n + j (n = inner) ; R(p=j, c) = W[j,c] -> j*k + c (k = cols)
    subgroup_matmul(lid, sgid, sg_size, wid, mmv().inner, 1u, mmv().cols, 1u);
}

fn forward(lid: u32, sgid: u32, sg_size: u32, wid: vec2<u32>) {
    // L = A[m,k]: (r,p) -> r*k + p ; R(p,c) = W[c,p] -> c*k + p
    subgroup_matmul(lid, sgid, sg_size, wid, mmv().inner, 1u, 1u, mmv().inner);
}
