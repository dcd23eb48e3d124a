// Both backward products of a layer in one dispatch, for the subgroup kernels (see
// matmul_params.wgsl; each kernel file defines backward_weight and backward_input). The branch
// is uniform over the workgroup, so every invocation of it reaches the same subgroup operations.
@compute @workgroup_size(8)
fn matmul_backward_pair(
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sgid: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    if (is_weight_job(wid.y)) {
        weight_job();
        backward_weight(lid, sgid, sg_size, wid.xy);
    } else {
        input_job();
        backward_input(lid, sgid, sg_size, input_job_wid(wid.xy));
    }
}
