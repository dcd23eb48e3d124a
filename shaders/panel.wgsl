// The layered forward pass of a narrow model in one dispatch, for CPU adapters with subgroups
// (docs/design.md section 5, "Panel forward"). A workgroup of 8 invocations (one subgroup) owns a
// panel of 32 rows and runs every layer over it: for each layer and each 32-column tile of its
// outputs, the subgroup matmul's vec4 tile (matmul_subgroup_vec4.wgsl's matmul_forward: 32 rows x
// 4 columns per invocation, rows shared by subgroupBroadcast) with epilogue 1 (Z = v + b,
// A = f(Z)), and on the last layer of a training step epilogue 4 (the output delta against
// X = A_0). The same sums in the same order and the same f32 arithmetic after them, so the
// results are the per-layer launches' bit for bit. A layer reads only its own panel's rows of
// A_{l-1}, which this workgroup wrote; storageBarrier makes them visible before the next layer.
// Z and A of every layer live in one buffer each, layer l at the layer table's offsets (as the
// fused path lays them out); every width is a multiple of 4.

struct Panel {
    rows: u32,
    layers: u32,
    // 1: the last layer also writes delta_L = (A_L - X) inv_m f'(Z_L, A_L) (a training step)
    output_delta: u32,
    inv_m: f32,
}

@group(0) @binding(1) var<uniform> panel: Panel;
@group(0) @binding(2) var<storage, read> table: array<Layer>;
@group(0) @binding(3) var<storage, read> params: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> z_all: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> a_all: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> delta_out: array<vec4<f32>>;

// Rows r..r+3 of the layer's input (k4 vec4 a row from vec4 index `base`) at step p4, clamped.
fn panel_rows(base: u32, r: u32, p4: u32, k4: u32) -> array<vec4<f32>, 4> {
    let last = panel.rows - 1u;
    return array<vec4<f32>, 4>(
        a_all[base + min(r, last) * k4 + p4],
        a_all[base + min(r + 1u, last) * k4 + p4],
        a_all[base + min(r + 2u, last) * k4 + p4],
        a_all[base + min(r + 3u, last) * k4 + p4],
    );
}

// Without broadcasts (another subgroup layout): one element at a time (short; see the vec4
// matmul's fallback).
fn panel_at(base: u32, r: u32, p: u32, k4: u32) -> f32 {
    return a_all[base + min(r, panel.rows - 1u) * k4 + p / 4u][p % 4u];
}

fn panel_rows_at(base: u32, row0: u32, t: u32, p: u32, k4: u32) -> vec4<f32> {
    let r = row0 + 4u * t;
    return vec4<f32>(panel_at(base, r, p, k4), panel_at(base, r + 1u, p, k4), panel_at(base, r + 2u, p, k4), panel_at(base, r + 3u, p, k4));
}

@compute @workgroup_size(8)
fn panel_forward(
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sgid: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let whole = whole_subgroup(sgid, sg_size);
    let s = select(lid, sgid, whole);
    let row0 = (wid.x + grid.offset.x) * ROWS;
    for (var l = 0u; l < panel.layers; l++) {
        let t = table[l];
        let k4 = t.n_in / 4u;
        let base = t.in_off / 4u;
        let last_layer = panel.output_delta != 0u && l + 1u == panel.layers;
        for (var tile = 0u; tile * ROWS < t.n_out; tile++) {
            let c0 = (tile * LANES + s) * COLS;
            // Row cc of W [n_out, n_in], clamped: this lane's 4 columns are rows cc..cc+3 of W.
            let cc = min(c0, t.n_out - 4u);
            let w = (t.w_off + cc * t.n_in) / 4u;
            var acc: array<vec4<f32>, 32>;
            if (whole) {
                let r = row0 + 4u * s;
                for (var p4 = 0u; p4 < k4; p4++) {
                    let wp = w + p4;
                    let rows = panel_rows(base, r, p4, k4);
                    fma_four_by_w_rows(&acc, rows, params[wp], params[wp + k4], params[wp + 2u * k4], params[wp + 3u * k4]);
                }
            } else {
                for (var p = 0u; p < t.n_in; p++) {
                    let p4 = p / 4u;
                    let q = p % 4u;
                    let rv = vec4<f32>(params[w + p4][q], params[w + k4 + p4][q], params[w + 2u * k4 + p4][q], params[w + 3u * k4 + p4][q]);
                    fma_rows(
                        &acc,
                        panel_rows_at(base, row0, 0u, p, k4),
                        panel_rows_at(base, row0, 1u, p, k4),
                        panel_rows_at(base, row0, 2u, p, k4),
                        panel_rows_at(base, row0, 3u, p, k4),
                        panel_rows_at(base, row0, 4u, p, k4),
                        panel_rows_at(base, row0, 5u, p, k4),
                        panel_rows_at(base, row0, 6u, p, k4),
                        panel_rows_at(base, row0, 7u, p, k4),
                        rv,
                    );
                }
            }
            stage(&acc, s);
            if (c0 < t.n_out) {
                // Epilogues 1 and 4 of matmul_epilogue_vec4.wgsl, X = A_0 at offset 0.
                let b = params[(t.b_off + c0) / 4u];
                let out = t.out_off / 4u;
                let rows = rows_from(row0, panel.rows);
                for (var i = 0u; i < rows; i++) {
                    let at = ((row0 + i) * t.n_out + c0) / 4u;
                    let z = staged[s][i] + b;
                    let a = activate4(t.act, z);
                    z_all[out + at] = z;
                    a_all[out + at] = a;
                    if (last_layer) {
                        delta_out[at] = (a - a_all[at]) * panel.inv_m * derivative4(t.act, z, a);
                    }
                }
            }
        }
        // This layer's rows of A, written by this workgroup, are the next layer's input.
        storageBarrier();
    }
}
