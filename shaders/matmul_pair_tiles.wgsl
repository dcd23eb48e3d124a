// Both backward products of a layer in one dispatch, for the kernels with 16 x 16 workgroups
// (matmul.wgsl, matmul_tiled64.wgsl; see matmul_params.wgsl; each kernel file defines
// backward_weight and backward_input). The branch is uniform over the workgroup, so every
// invocation reaches the same barriers.
@compute @workgroup_size(16, 16)
fn matmul_backward_pair(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    if (is_weight_job(wid.y)) {
        weight_job();
        backward_weight(lid.xy, wid.xy);
    } else {
        input_job();
        backward_input(lid.xy, input_job_wid(wid.xy));
    }
}
