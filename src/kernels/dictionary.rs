//! The kernels of the dictionary-learning recipe (docs/design.md section 12): TopK selection
//! (`shaders/topk.wgsl`), the pre-bias (`shaders/prebias.wgsl`) and unit-norm decoder columns
//! (`shaders/decoder.wgsl`). Twins of the same names in `reference.rs`.

use super::{Cost, Kernel, Kernels, Launch, View};
use bytemuck::{Pod, Zeroable};

/// The uniform block of every kernel here (`TopK`, `PreBias`, `Decoder` in the shaders; the
/// last two words are `PreBias`'s offsets).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Dims {
    rows: u32,
    cols: u32,
    third: u32,
    at: [u32; 2],
    _pad: [u32; 3],
}

fn dims(rows: usize, cols: usize, third: usize) -> Dims {
    Dims { rows: rows as u32, cols: cols as u32, third: third as u32, at: [0; 2], _pad: [0; 3] }
}

fn cost(kernel: Kernel, shape: String, flops: usize, floats: usize) -> Cost {
    Cost { label: kernel.name().into(), shape, flops: flops as f64, bytes: 4.0 * floats as f64 }
}

impl Kernels {
    /// `a[i, j] = max(z[i, j], 0)` for the `k` largest values of row i of `z` `[m, n]` (ties
    /// to the lower index), 0 elsewhere: one workgroup per row.
    pub fn topk(&self, z: &View, a: &View, m: usize, n: usize, k: usize) -> Launch {
        // 33 counting passes over each row (32 bits of the radix select, one for the ties),
        // then the write: napkin math of one operation per element per pass.
        let cost = cost(Kernel::TopK, format!("{m}x{n} k{k}"), 34 * m * n, 34 * m * n + m * n);
        self.launch(Kernel::TopK, dims(m, n, k), &[z, a], [m, 1], cost)
    }

    /// `out[i, k] = x[i, k] - b[k]` over `[m, n]`: the encoder's input with the pre-bias.
    pub fn center_rows(&self, x: &View, b: &View, out: &View, m: usize, n: usize) -> Launch {
        let cost = cost(Kernel::CenterRows, format!("{m}x{n}"), m * n, 2 * m * n + n);
        self.launch(Kernel::CenterRows, dims(m, n, 0), &[x, b, out], Self::elementwise_groups(m * n), cost)
    }

    /// `g[out_at + k] -= sum_j g[db1_at + j] w1[j, k]` (`w1` `[hidden, n]`): the pre-bias path's
    /// term of the output bias's gradient, with db_1 and db_L both in the gradients `g`
    /// (disjoint: a pre-bias model has at least two layers).
    pub fn pre_bias_backward(
        &self,
        w1: &View,
        g: &View,
        db1_at: usize,
        out_at: usize,
        hidden: usize,
        n: usize,
    ) -> Launch {
        assert!(db1_at + hidden <= out_at || out_at + n <= db1_at, "pre_bias_backward: db_1 and db_L overlap");
        let params = Dims { at: [db1_at as u32, out_at as u32], ..dims(1, n, hidden) };
        let cost = cost(Kernel::PreBiasBackward, format!("{hidden}x{n}"), 2 * hidden * n, hidden * n + hidden + 2 * n);
        self.launch(Kernel::PreBiasBackward, params, &[w1, g], [n.div_ceil(64), 1], cost)
    }

    /// Removes from each column of `dw` its component along the same column of `w` (both
    /// `[rows, cols]`).
    pub fn decoder_project(&self, w: &View, dw: &View, rows: usize, cols: usize) -> Launch {
        let cost = cost(Kernel::DecoderProject, format!("{rows}x{cols}"), 6 * rows * cols, 4 * rows * cols);
        self.launch(Kernel::DecoderProject, dims(rows, cols, 0), &[w, dw], [cols.div_ceil(64), 1], cost)
    }

    /// Scales each non-zero column of `w` (`[rows, cols]`) to unit norm; `dw` is bound, not read.
    pub fn decoder_normalize(&self, w: &View, dw: &View, rows: usize, cols: usize) -> Launch {
        let cost = cost(Kernel::DecoderNormalize, format!("{rows}x{cols}"), 3 * rows * cols, 3 * rows * cols);
        self.launch(Kernel::DecoderNormalize, dims(rows, cols, 0), &[w, dw], [cols.div_ceil(64), 1], cost)
    }
}
