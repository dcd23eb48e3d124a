// TopK selection of the code layer (docs/design.md section 12) over Z_c [rows, cols]:
//   a[i, j] = max(z[i, j], 0) if z[i, j] is among the k largest of row i, else 0,
// ties going to the lower index. One workgroup of 256 invocations per row. A radix select on
// each value's order-preserving u32 key finds T, the k-th largest key of the row, one bit at a
// time (32 counting passes); units with a key above T are kept, and of those equal to T the
// k - #{key > T} of lowest index: each invocation owns a contiguous chunk of the row, so an
// exclusive scan of the chunks' tie counts ranks the ties by index. Only integer comparisons
// and counts decide, so the selection is exact and the same on every run and adapter.
// With dead_after > 0 only the dead latents take part (since[j] >= dead_after samples since
// latent j fired): AuxK's selection. The others rank below every value and are never kept.

struct TopK {
    rows: u32,
    cols: u32,
    k: u32,
    dead_after: u32,
}

@group(0) @binding(1) var<uniform> tk: TopK;
@group(0) @binding(2) var<storage, read> z: array<f32>;
@group(0) @binding(3) var<storage, read_write> a: array<f32>;
@group(0) @binding(4) var<storage, read> since: array<u32>;

const TOPK_WG: u32 = 256u;
var<workgroup> topk_count: atomic<u32>;
var<workgroup> topk_scan: array<u32, 256>;

// A u32 whose unsigned order is the f32 order of v (negative values flipped whole, positive
// ones with the sign bit set).
fn order_key(v: f32) -> u32 {
    let u = bitcast<u32>(v);
    return select(u | 0x80000000u, ~u, (u & 0x80000000u) != 0u);
}

fn eligible(j: u32) -> bool {
    return tk.dead_after == 0u || since[j] >= tk.dead_after;
}

// The key of unit j of the row at `base`: 0, below every value's, when it does not take part.
fn unit_key(base: u32, j: u32) -> u32 {
    return select(0u, order_key(z[base + j]), eligible(j));
}

// The number of keys >= t in the row at `base`; this invocation counts [start, end). Every
// invocation of the workgroup must call it.
fn count_at_least(base: u32, start: u32, end: u32, t: u32, lid: u32) -> u32 {
    workgroupBarrier();
    if (lid == 0u) {
        atomicStore(&topk_count, 0u);
    }
    workgroupBarrier();
    var c = 0u;
    for (var j = start; j < end; j++) {
        c += select(0u, 1u, unit_key(base, j) >= t);
    }
    atomicAdd(&topk_count, c);
    workgroupBarrier();
    return atomicLoad(&topk_count);
}

@compute @workgroup_size(256)
fn topk(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let lid = lid3.x;
    // Rows past the end still run the barriers, reading row 0 and writing nothing.
    let row = wid.x + grid.offset.x;
    let live = row < tk.rows;
    let base = select(0u, row * tk.cols, live);
    let chunk = (tk.cols + TOPK_WG - 1u) / TOPK_WG;
    let start = min(lid * chunk, tk.cols);
    let end = min(start + chunk, tk.cols);

    // T: the largest key with at least k keys >= it.
    var t = 0u;
    for (var bit = 31i; bit >= 0i; bit--) {
        let candidate = t | (1u << u32(bit));
        if (count_at_least(base, start, end, candidate, lid) >= tk.k) {
            t = candidate;
        }
    }
    // Keys above T are all kept; `need` of the ties, lowest index first.
    // (No key is above the largest one; every invocation still takes part in the count.)
    let above_next = count_at_least(base, start, end, min(t, 0xfffffffeu) + 1u, lid);
    let need = tk.k - select(above_next, 0u, t == 0xffffffffu);
    var ties = 0u;
    for (var j = start; j < end; j++) {
        ties += select(0u, 1u, unit_key(base, j) == t);
    }
    // Exclusive scan of the tie counts over the invocations (Hillis-Steele, in order).
    workgroupBarrier();
    topk_scan[lid] = ties;
    workgroupBarrier();
    for (var stride = 1u; stride < TOPK_WG; stride *= 2u) {
        var v = topk_scan[lid];
        if (lid >= stride) {
            v += topk_scan[lid - stride];
        }
        workgroupBarrier();
        topk_scan[lid] = v;
        workgroupBarrier();
    }
    var rank = topk_scan[lid] - ties;
    if (!live) {
        return;
    }
    for (var j = start; j < end; j++) {
        let v = z[base + j];
        let key = unit_key(base, j);
        var keep = key > t;
        if (key == t) {
            keep = rank < need;
            rank += 1u;
        }
        a[base + j] = select(0.0, max(v, 0.0), keep && eligible(j));
    }
}

// The same selection for narrow rows, one invocation per element and no barriers: unit j of row
// i is kept when its rank, #{j' : key j' > key j} + #{j' < j : key j' = key j}, is below k (ties
// to the lower index, as above). O(cols) comparisons an element: for rows up to
// TOPK_RANK_MAX_COLS wide (src/kernels/dictionary.rs), where the radix select's 33 barrier-
// separated passes cost more than the comparisons (and on CPU adapters far more).
@compute @workgroup_size(256)
fn topk_rank(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let idx = (wid.x + grid.offset.x) * 256u + lid.x;
    if (idx >= tk.rows * tk.cols) {
        return;
    }
    let j = idx % tk.cols;
    let base = idx - j;
    let key = unit_key(base, j);
    var rank = 0u;
    for (var q = 0u; q < tk.cols; q++) {
        let other = unit_key(base, q);
        rank += select(0u, 1u, other > key || (other == key && q < j));
    }
    a[idx] = select(0.0, max(z[idx], 0.0), rank < tk.k && eligible(j));
}
