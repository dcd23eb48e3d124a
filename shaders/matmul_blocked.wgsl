// Register-blocked matmul, no workgroup memory: each invocation computes a 4x4 block of
// outputs, loading 4 values of L and 4 of R per step of the inner loop for 16 FMAs. Same entry
// points and layouts as matmul.wgsl (see there):
//
//   matmul_forward          Z[m,n]  = A[m,k] · W[n,k]^T      (rows=m, cols=n, inner=k)
//   matmul_backward_weight  dW[n,k] = delta[m,n]^T · A[m,k]  (rows=n, cols=k, inner=m)
//   matmul_backward_input   G[m,k]  = delta[m,n] · W[n,k]    (rows=m, cols=k, inner=n)
//
// Why a second variant: on CPU-emulated adapters (llvmpipe/lavapipe) workgroup barriers are
// expensive and shared memory buys nothing, so FMAs per load is what counts; on GPUs the
// shared-memory tiles of matmul.wgsl are the usual choice. Both are tested against the
// reference. Rows and columns past the edge load a clamped (valid) index and are not written,
// so the inner loop has no branches. Fixed summation order: deterministic.

@group(0) @binding(2) var<storage, read> lhs: array<f32>;
@group(0) @binding(3) var<storage, read> rhs: array<f32>;

// A workgroup of 64 invocations as 8x8 blocks of 4x4: a 32x32 output tile.
const BLOCK: u32 = 4u;
const SIDE: u32 = 8u;

// L(r,p) = lhs[r * l_r + p * l_p], R(p,c) = rhs[p * r_p + c * r_c]
fn blocked_matmul(lid: u32, wid: vec2<u32>, l_r: u32, l_p: u32, r_p: u32, r_c: u32) {
    let r0 = ((wid.y + grid.offset.y) * SIDE + lid / SIDE) * BLOCK;
    let c0 = ((wid.x + grid.offset.x) * SIDE + lid % SIDE) * BLOCK;
    if (r0 >= mmv().rows || c0 >= mmv().cols) {
        return;
    }
    var lrow: array<u32, 4>;
    var rcol: array<u32, 4>;
    for (var i = 0u; i < BLOCK; i++) {
        lrow[i] = min(r0 + i, mmv().rows - 1u) * l_r;
        rcol[i] = min(c0 + i, mmv().cols - 1u) * r_c;
    }
    var acc: array<vec4<f32>, 4>;
    let inner = mmv().inner;
    let r_src = rhs_source();
    for (var p = 0u; p < inner; p++) {
        let lp = p * l_p;
        let rp = p * r_p;
        let loaded = vec4<f32>(rhs_at(r_src, rp + rcol[0]), rhs_at(r_src, rp + rcol[1]), rhs_at(r_src, rp + rcol[2]), rhs_at(r_src, rp + rcol[3]));
        let rv = ones_column(loaded, c0, r_src);
        acc[0] = fma(vec4<f32>(lhs[lrow[0] + lp]), rv, acc[0]);
        acc[1] = fma(vec4<f32>(lhs[lrow[1] + lp]), rv, acc[1]);
        acc[2] = fma(vec4<f32>(lhs[lrow[2] + lp]), rv, acc[2]);
        acc[3] = fma(vec4<f32>(lhs[lrow[3] + lp]), rv, acc[3]);
    }
    for (var i = 0u; i < BLOCK; i++) {
        let r = r0 + i;
        if (r < mmv().rows) {
            for (var j = 0u; j < BLOCK; j++) {
                if (c0 + j < mmv().cols) {
                    store_output(r, c0 + j, acc[i][j]);
                }
            }
        }
    }
}

@compute @workgroup_size(64)
fn matmul_forward(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    single();
    blocked_matmul(lid, wid.xy, mmv().inner, 1u, 1u, mmv().inner);
}

@compute @workgroup_size(64)
fn matmul_backward_weight(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    single();
    backward_weight(lid, wid.xy);
}

fn backward_weight(lid: u32, wid: vec2<u32>) {
    blocked_matmul(lid, wid, 1u, mmv().rows, a_cols(), 1u);
}

@compute @workgroup_size(64)
fn matmul_backward_input(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    single();
    backward_input(lid, wid.xy);
}

fn backward_input(lid: u32, wid: vec2<u32>) {
    blocked_matmul(lid, wid, mmv().inner, 1u, mmv().cols, 1u);
}

// Both backward products of a layer in one dispatch (see matmul_params.wgsl).
@compute @workgroup_size(64)
fn matmul_backward_pair(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    if (is_weight_job(wid.y)) {
        weight_job();
        backward_weight(lid, wid.xy);
    } else {
        input_job();
        backward_input(lid, input_job_wid(wid.xy));
    }
}
