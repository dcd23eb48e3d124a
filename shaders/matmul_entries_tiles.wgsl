// The entry points of the kernels with 16 x 16 workgroups (matmul.wgsl, matmul_tiled64.wgsl),
// each of which defines forward, backward_weight and backward_input for one workgroup's tile. A
// standalone entry point computes the launch's own product (single); the pair computes both
// backward products of a layer in one dispatch (see matmul_params.wgsl), its branch uniform over
// the workgroup, so every invocation reaches the same barriers.

@compute @workgroup_size(16, 16)
fn matmul_forward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    single();
    forward(lid.xy, wid.xy);
}

@compute @workgroup_size(16, 16)
fn matmul_backward_weight(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    single();
    backward_weight(lid.xy, wid.xy);
}

@compute @workgroup_size(16, 16)
fn matmul_backward_input(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    single();
    backward_input(lid.xy, wid.xy);
}

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
