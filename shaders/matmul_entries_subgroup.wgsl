// The entry points of the subgroup kernels (matmul_subgroup.wgsl, f32; matmul_subgroup_vec4.wgsl,
// vec4), each of which defines forward, backward_weight and backward_input for one workgroup's
// tile. A standalone entry point computes the launch's own product (single); the pair computes
// both backward products of a layer in one dispatch (see matmul_params.wgsl), its branch uniform
// over the workgroup, so every invocation of it reaches the same subgroup operations.

@compute @workgroup_size(8)
fn matmul_forward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sgid: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    single();
    forward(lid, sgid, sg_size, wid.xy);
}

@compute @workgroup_size(8)
fn matmul_backward_weight(
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sgid: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    single();
    backward_weight(lid, sgid, sg_size, wid.xy);
}

@compute @workgroup_size(8)
fn matmul_backward_input(
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sgid: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    single();
    backward_input(lid, sgid, sg_size, wid.xy);
}

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
