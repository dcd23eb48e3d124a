// Shared by the subgroup matmuls (matmul_subgroup.wgsl, f32 loads and stores; and
// matmul_subgroup_vec4.wgsl, vec4 ones): a workgroup of 8 invocations covers a 32x32 output
// tile, each invocation all 32 rows and 4 columns; rows of L travel between lanes by
// subgroupBroadcast when the workgroup is one subgroup of 8 lanes.

// 8 invocations per workgroup; each covers all 32 rows of the tile and 4 of its 32 columns.
const LANES: u32 = 8u;
const ROWS: u32 = 32u;
const COLS: u32 = 4u;

// One step of the sum for the 32 rows of an invocation: row 4t+i += bt[i] * rv, 4 columns.
// Every index is a constant (here and below), so the accumulators stay in registers: with a
// loop index into `acc` (a store loop over i, say) llvmpipe keeps the array in memory and the
// kernel measured 8x slower.
fn fma_rows(
    acc: ptr<function, array<vec4<f32>, 32>>,
    b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>,
    b4: vec4<f32>, b5: vec4<f32>, b6: vec4<f32>, b7: vec4<f32>,
    rv: vec4<f32>,
) {
    (*acc)[0] = fma(vec4<f32>(b0.x), rv, (*acc)[0]);
    (*acc)[1] = fma(vec4<f32>(b0.y), rv, (*acc)[1]);
    (*acc)[2] = fma(vec4<f32>(b0.z), rv, (*acc)[2]);
    (*acc)[3] = fma(vec4<f32>(b0.w), rv, (*acc)[3]);
    (*acc)[4] = fma(vec4<f32>(b1.x), rv, (*acc)[4]);
    (*acc)[5] = fma(vec4<f32>(b1.y), rv, (*acc)[5]);
    (*acc)[6] = fma(vec4<f32>(b1.z), rv, (*acc)[6]);
    (*acc)[7] = fma(vec4<f32>(b1.w), rv, (*acc)[7]);
    (*acc)[8] = fma(vec4<f32>(b2.x), rv, (*acc)[8]);
    (*acc)[9] = fma(vec4<f32>(b2.y), rv, (*acc)[9]);
    (*acc)[10] = fma(vec4<f32>(b2.z), rv, (*acc)[10]);
    (*acc)[11] = fma(vec4<f32>(b2.w), rv, (*acc)[11]);
    (*acc)[12] = fma(vec4<f32>(b3.x), rv, (*acc)[12]);
    (*acc)[13] = fma(vec4<f32>(b3.y), rv, (*acc)[13]);
    (*acc)[14] = fma(vec4<f32>(b3.z), rv, (*acc)[14]);
    (*acc)[15] = fma(vec4<f32>(b3.w), rv, (*acc)[15]);
    (*acc)[16] = fma(vec4<f32>(b4.x), rv, (*acc)[16]);
    (*acc)[17] = fma(vec4<f32>(b4.y), rv, (*acc)[17]);
    (*acc)[18] = fma(vec4<f32>(b4.z), rv, (*acc)[18]);
    (*acc)[19] = fma(vec4<f32>(b4.w), rv, (*acc)[19]);
    (*acc)[20] = fma(vec4<f32>(b5.x), rv, (*acc)[20]);
    (*acc)[21] = fma(vec4<f32>(b5.y), rv, (*acc)[21]);
    (*acc)[22] = fma(vec4<f32>(b5.z), rv, (*acc)[22]);
    (*acc)[23] = fma(vec4<f32>(b5.w), rv, (*acc)[23]);
    (*acc)[24] = fma(vec4<f32>(b6.x), rv, (*acc)[24]);
    (*acc)[25] = fma(vec4<f32>(b6.y), rv, (*acc)[25]);
    (*acc)[26] = fma(vec4<f32>(b6.z), rv, (*acc)[26]);
    (*acc)[27] = fma(vec4<f32>(b6.w), rv, (*acc)[27]);
    (*acc)[28] = fma(vec4<f32>(b7.x), rv, (*acc)[28]);
    (*acc)[29] = fma(vec4<f32>(b7.y), rv, (*acc)[29]);
    (*acc)[30] = fma(vec4<f32>(b7.z), rv, (*acc)[30]);
    (*acc)[31] = fma(vec4<f32>(b7.w), rv, (*acc)[31]);
}

// One subgroup of exactly 8 active lanes with ids below 8 is the whole workgroup, ids 0..7.
// The same answer for every invocation of the workgroup (uniform), so all of them take the
// same branch on it and all reach the broadcasts.
fn whole_subgroup(sgid: u32, sg_size: u32) -> bool {
    let members = subgroupAdd(1u);
    let ids_below = subgroupAll(sgid < LANES);
    return (members == LANES) & ids_below & (sg_size >= LANES);
}

// Where an invocation works: whether its workgroup is one whole subgroup, its lane s (the
// subgroup id there, else the local index), and the tile's first row and its own first column.
struct Lane {
    whole: bool,
    s: u32,
    row0: u32,
    c0: u32,
}

fn lane(lid: u32, sgid: u32, sg_size: u32, wid: vec2<u32>) -> Lane {
    let whole = whole_subgroup(sgid, sg_size);
    let s = select(lid, sgid, whole);
    return Lane(whole, s, (wid.y + grid.offset.y) * ROWS, ((wid.x + grid.offset.x) * LANES + s) * COLS);
}

// One step of the sum with the 32 rows shared: lane t holds rows 4t..4t+3 in `own`.
fn fma_shared_rows(acc: ptr<function, array<vec4<f32>, 32>>, own: vec4<f32>, rv: vec4<f32>) {
    fma_rows(
        acc,
        subgroupBroadcast(own, 0u),
        subgroupBroadcast(own, 1u),
        subgroupBroadcast(own, 2u),
        subgroupBroadcast(own, 3u),
        subgroupBroadcast(own, 4u),
        subgroupBroadcast(own, 5u),
        subgroupBroadcast(own, 6u),
        subgroupBroadcast(own, 7u),
        rv,
    );
}

// The 4x4 transpose: element j of vec4 i is element i of v[j] (4 rows along p become 4 steps
// of p across rows, and back). Under llvmpipe a vec4's components are separate registers, so it
// costs nothing.
fn transpose4(v: array<vec4<f32>, 4>) -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(
        vec4<f32>(v[0].x, v[1].x, v[2].x, v[3].x),
        vec4<f32>(v[0].y, v[1].y, v[2].y, v[3].y),
        vec4<f32>(v[0].z, v[1].z, v[2].z, v[3].z),
        vec4<f32>(v[0].w, v[1].w, v[2].w, v[3].w),
    );
}

// Four steps of the sum with the rows shared: `a` holds this lane's 4 rows along p, `w0..w3`
// R(4 p4 + q, c0..c0+3) for q = 0..3. Written out: constant indices only (see fma_rows).
fn fma_four_shared(
    acc: ptr<function, array<vec4<f32>, 32>>,
    a: array<vec4<f32>, 4>,
    w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32>,
) {
    let steps = transpose4(a);
    fma_shared_rows(acc, steps[0], w0);
    fma_shared_rows(acc, steps[1], w1);
    fma_shared_rows(acc, steps[2], w2);
    fma_shared_rows(acc, steps[3], w3);
}

// The same four steps with R's 4 columns given as 4 rows of a row-major W: w_i holds
// W[c0 + i, 4 p4 .. 4 p4 + 3], so step q takes (w0[q], w1[q], w2[q], w3[q]) (matmul_forward's R).
fn fma_four_by_w_rows(
    acc: ptr<function, array<vec4<f32>, 32>>,
    a: array<vec4<f32>, 4>,
    w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32>,
) {
    let r = transpose4(array<vec4<f32>, 4>(w0, w1, w2, w3));
    fma_four_shared(acc, a, r[0], r[1], r[2], r[3]);
}

// How many of the tile's rows from row0 exist: the store loops run to it rather than to ROWS
// with a test inside, a trip count the compiler cannot know, so it keeps one copy of the
// epilogue instead of unrolling 32 (llvmpipe then creates the pipeline several times faster).
fn rows_from(row0: u32, rows: u32) -> u32 {
    return select(0u, min(ROWS, rows - row0), row0 < rows);
}

// Each invocation's 32 accumulators on their way out (its own slot: no barrier needed).
var<workgroup> staged: array<array<vec4<f32>, 32>, 8>;

fn stage(acc: ptr<function, array<vec4<f32>, 32>>, s: u32) {
    // The accumulators leave registers through workgroup memory, written with constant indices
    // (see fma_rows); the stores then loop, so the epilogue is compiled once, not 128 times:
    // the pipeline compiles several times faster on llvmpipe, at the same speed.
    staged[s][0] = (*acc)[0];
    staged[s][1] = (*acc)[1];
    staged[s][2] = (*acc)[2];
    staged[s][3] = (*acc)[3];
    staged[s][4] = (*acc)[4];
    staged[s][5] = (*acc)[5];
    staged[s][6] = (*acc)[6];
    staged[s][7] = (*acc)[7];
    staged[s][8] = (*acc)[8];
    staged[s][9] = (*acc)[9];
    staged[s][10] = (*acc)[10];
    staged[s][11] = (*acc)[11];
    staged[s][12] = (*acc)[12];
    staged[s][13] = (*acc)[13];
    staged[s][14] = (*acc)[14];
    staged[s][15] = (*acc)[15];
    staged[s][16] = (*acc)[16];
    staged[s][17] = (*acc)[17];
    staged[s][18] = (*acc)[18];
    staged[s][19] = (*acc)[19];
    staged[s][20] = (*acc)[20];
    staged[s][21] = (*acc)[21];
    staged[s][22] = (*acc)[22];
    staged[s][23] = (*acc)[23];
    staged[s][24] = (*acc)[24];
    staged[s][25] = (*acc)[25];
    staged[s][26] = (*acc)[26];
    staged[s][27] = (*acc)[27];
    staged[s][28] = (*acc)[28];
    staged[s][29] = (*acc)[29];
    staged[s][30] = (*acc)[30];
    staged[s][31] = (*acc)[31];
}
