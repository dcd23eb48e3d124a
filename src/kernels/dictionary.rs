//! The kernels of the dictionary-learning recipe (docs/design.md section 12): TopK selection
//! (`shaders/topk.wgsl`), the pre-bias (`shaders/prebias.wgsl`) and unit-norm decoder columns
//! (`shaders/decoder.wgsl`). Twins of the same names in `reference.rs`.

use super::{Cost, Kernel, Kernels, Launch, View};
use bytemuck::{Pod, Zeroable};

/// Rows up to this wide take `topk_rank` (n comparisons an element, no barriers); wider ones the
/// radix select. Measured on lavapipe at 64 x 64: the radix select took 5.1 ms, 75 % of a
/// dictionary step (its 33 passes are separated by workgroup barriers, each costly there).
pub const TOPK_RANK_MAX_COLS: usize = 128;

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

/// `AuxDelta` of `shaders/auxk.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AuxDelta {
    len: u32,
    pad_from: u32,
    aux_at: u32,
    _pad: u32,
    scale: f32,
    _pad1: [u32; 3],
}

/// `Threshold` of `shaders/threshold.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Threshold {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
    decay: f32,
    theta: f32,
    _pad1: [u32; 2],
}

/// `Jump` of `shaders/jumprelu.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Jump {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
    eps: f32,
    l0_over_m: f32,
    _pad1: [u32; 2],
}

/// `L1` of `shaders/l1.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct L1 {
    rows: u32,
    cols: u32,
    m: u32,
    _pad: u32,
    coef_over_m: f32,
    _pad1: [u32; 3],
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
        self.topk_among(z, a, m, n, k, None)
    }

    /// The same among the units `since[j] >= dead_after` only (`since` u32, one a unit):
    /// AuxK's selection of the dead latents; the others are 0. `None`: every unit.
    pub fn topk_among(&self, z: &View, a: &View, m: usize, n: usize, k: usize, dead: Option<(&View, u64)>) -> Launch {
        let kernel = if n <= TOPK_RANK_MAX_COLS { Kernel::TopKRank } else { Kernel::TopK };
        self.topk_with(kernel, z, a, (m, n, k), dead)
    }

    /// The same with the entry point chosen: `topk` (a radix select, a workgroup a row) or
    /// `topk_rank` (an invocation an element, comparing it with its row). Both are exact and
    /// agree bit for bit (`check::topk`).
    pub fn topk_with(
        &self,
        kernel: Kernel,
        z: &View,
        a: &View,
        (m, n, k): (usize, usize, usize),
        dead: Option<(&View, u64)>,
    ) -> Launch {
        let (since, dead_after) = dead.map_or((z, 0), |(v, after)| (v, after.clamp(1, u32::MAX as u64) as u32));
        let params = Dims { at: [dead_after, 0], ..dims(m, n, k) };
        let label = format!("{m}x{n} k{k}");
        if kernel == Kernel::TopKRank {
            // n comparisons an element.
            let cost = cost(Kernel::TopKRank, label, m * n * n, m * n * n + m * n);
            return self.launch(Kernel::TopKRank, params, &[z, a, since], Self::elementwise_groups(m * n), cost);
        }
        // 33 counting passes over each row (32 bits of the radix select, one for the ties),
        // then the write: napkin math of one operation per element per pass.
        let cost = cost(Kernel::TopK, label, 34 * m * n, 34 * m * n + m * n);
        self.launch(Kernel::TopK, params, &[z, a, since], [m, 1], cost)
    }

    /// `delta[aux_at + i] = scale (recons[i] - (x[i] - xhat[i]))` for `i < len`, and
    /// `delta[pad_from..aux_at] = 0`: AuxK's output delta, its rows at an aligned offset in
    /// `delta` (bound whole), the rows between the main ones and them zeroed.
    #[allow(clippy::too_many_arguments)]
    pub fn auxk_delta(
        &self,
        recons: &View,
        x: &View,
        xhat: &View,
        delta: &View,
        (pad_from, aux_at): (usize, usize),
        len: usize,
        scale: f64,
    ) -> Launch {
        assert!(pad_from <= aux_at && aux_at + len <= delta.len, "auxk_delta: rows outside delta");
        let params = AuxDelta {
            len: len as u32,
            pad_from: pad_from as u32,
            aux_at: aux_at as u32,
            _pad: 0,
            scale: scale as f32,
            _pad1: [0; 3],
        };
        let cost = cost(Kernel::AuxkDelta, format!("{len}"), 3 * len, 4 * len + aux_at - pad_from);
        let groups = Self::elementwise_groups(aux_at + len - pad_from);
        self.launch(Kernel::AuxkDelta, params, &[recons, x, xhat, delta], groups, cost)
    }

    /// BatchTopK's running threshold `theta` (one value): the smallest positive activation of
    /// `a` (`[m, n]`, after the batch's selection), averaged in with `decay`, or taken as it is
    /// while `theta < 0` (unset). One workgroup.
    pub fn batch_threshold(&self, a: &View, theta: &View, m: usize, n: usize, decay: f64) -> Launch {
        let params =
            Threshold { rows: m as u32, cols: n as u32, _pad: [0; 2], decay: decay as f32, theta: 0.0, _pad1: [0; 2] };
        let cost = cost(Kernel::BatchThreshold, format!("{m}x{n}"), m * n, m * n + 1);
        self.launch(Kernel::BatchThreshold, params, &[a, theta], [1, 1], cost)
    }

    /// `code = z` where `z > theta`, else 0, over `[m, n]`: BatchTopK's code at inference.
    pub fn threshold_code(&self, z: &View, code: &View, m: usize, n: usize, theta: f32) -> Launch {
        let params = Threshold { rows: m as u32, cols: n as u32, _pad: [0; 2], decay: 0.0, theta, _pad1: [0; 2] };
        let cost = cost(Kernel::ThresholdCode, format!("{m}x{n}"), m * n, 2 * m * n);
        self.launch(Kernel::ThresholdCode, params, &[z, code], Self::elementwise_groups(m * n), cost)
    }

    /// `a = z` where `z > exp(t_j)`, else 0, over `[m, n]`: JumpReLU's code (`t` the log
    /// thresholds).
    pub fn jumprelu_forward(&self, z: &View, t: &View, a: &View, m: usize, n: usize) -> Launch {
        let params = Jump { rows: m as u32, cols: n as u32, _pad: [0; 2], eps: 1.0, l0_over_m: 0.0, _pad1: [0; 2] };
        let cost = cost(Kernel::JumpreluForward, format!("{m}x{n}"), m * n, 2 * m * n + n);
        self.launch(Kernel::JumpreluForward, params, &[z, t, a], Self::elementwise_groups(m * n), cost)
    }

    /// JumpReLU's backward over `[m, n]`: `delta = g [z > theta]` and the log thresholds'
    /// straight-through gradient `dt` (kernel width `eps`, the L0 weight `l0_over_m` times this
    /// step's share). One invocation per unit.
    #[allow(clippy::too_many_arguments)]
    pub fn jumprelu_backward(
        &self,
        (g, z, t): (&View, &View, &View),
        delta: &View,
        dt: &View,
        (m, n): (usize, usize),
        eps: f64,
        l0_over_m: f64,
        state: &View,
        values: &View,
    ) -> Launch {
        let params = Jump {
            rows: m as u32,
            cols: n as u32,
            _pad: [0; 2],
            eps: eps as f32,
            l0_over_m: l0_over_m as f32,
            _pad1: [0; 2],
        };
        let cost = cost(Kernel::JumpreluBackward, format!("{m}x{n}"), 6 * m * n, 3 * m * n + 2 * n);
        let tensors = [z, t, delta, g, dt, state, values];
        self.launch(Kernel::JumpreluBackward, params, &tensors, [n.div_ceil(64), 1], cost)
    }

    /// `norms[j] = ||w_j||` for each column of `w` (`[rows, cols]`).
    pub fn column_norms(&self, w: &View, norms: &View, rows: usize, cols: usize) -> Launch {
        let params = L1 { rows: rows as u32, cols: cols as u32, m: 0, _pad: 0, coef_over_m: 0.0, _pad1: [0; 3] };
        let cost = cost(Kernel::ColumnNorms, format!("{rows}x{cols}"), 2 * rows * cols, rows * cols + cols);
        self.launch(Kernel::ColumnNorms, params, &[w, norms], [cols.div_ceil(64), 1], cost)
    }

    /// `dw_j += coef (sum_i |a_ij|) w_j / ||w_j||` over `a` `[m, cols]` (`w`, `dw` `[rows,
    /// cols]`), coef = C/m times this step's beta share: the L1 term's decoder gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn l1_decoder_grad(
        &self,
        a: &View,
        w: &View,
        dw: &View,
        (m, rows, cols): (usize, usize, usize),
        coef_over_m: f64,
        state: &View,
        values: &View,
    ) -> Launch {
        let params = L1 {
            rows: rows as u32,
            cols: cols as u32,
            m: m as u32,
            _pad: 0,
            coef_over_m: coef_over_m as f32,
            _pad1: [0; 3],
        };
        let cost =
            cost(Kernel::L1DecoderGrad, format!("{m}x{cols}"), m * cols + 4 * rows * cols, m * cols + 3 * rows * cols);
        self.launch(Kernel::L1DecoderGrad, params, &[w, a, dw, state, values], [cols.div_ceil(64), 1], cost)
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
