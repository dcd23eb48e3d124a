//! The kernels of a whole step that have no twin of their own and are checked as whole
//! training steps: minibatch gathering and the step state (`shaders/data.wgsl`), and the fused
//! small-MLP step (`shaders/fused.wgsl`, whose twins are `reference::forward`, `backward` and
//! `update`).

use super::{Cost, Kernel, Kernels, Launch, View};
use crate::layout::StepState;
use crate::model::ModelSpec;
use bytemuck::{Pod, Zeroable};

/// Widest layer the fused path takes (`MAX_WIDTH` in `shaders/fused.wgsl`).
pub const FUSED_MAX_WIDTH: usize = 128;

/// Where a step's rows come from (`gather` in the `Gather` and `Net` uniforms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rows {
    /// Row `i` of the bound data: a minibatch the host wrote itself.
    Host = 0,
    /// Row `order[cursor + i]` of the resident data: a training step's shuffled minibatch.
    Order = 1,
    /// Row `cursor + i` of the resident data: evaluation in file order.
    Contiguous = 2,
}

/// The `Panel` uniform of `shaders/panel.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Panel {
    rows: u32,
    layers: u32,
    output_delta: u32,
    inv_m: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Gather {
    rows: u32,
    cols: u32,
    gather: u32,
    steps: u32,
    per_row: u32,
    _pad: [u32; 3],
}

/// The `Net` uniform of `shaders/fused.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct FusedNet {
    pub layers: u32,
    pub code: u32,
    pub rows: u32,
    pub n0: u32,
    pub sparsity: u32,
    pub rho: f32,
    pub beta_over_m: f32,
    pub temperature: f32,
    pub inv_m: f32,
    pub lambda: f32,
    pub eps: f32,
    pub total_params: u32,
    pub gather: u32,
    pub grads_only: u32,
    /// kl-freq's target anneal (`annealed_rho` in shaders/common.wgsl; 0: none).
    pub anneal_steps: u32,
    pub _pad: u32,
}

/// One entry of the fused path's layer table (`Layer` in `shaders/fused.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct FusedLayer {
    pub n_out: u32,
    pub n_in: u32,
    pub act: u32,
    pub w_off: u32,
    pub b_off: u32,
    pub in_off: u32,
    pub out_off: u32,
    pub param_start: u32,
}

/// Whole buffers the fused kernels bind.
#[derive(Clone, Debug)]
pub struct FusedBuffers {
    pub table: View,
    pub params: View,
    pub order: View,
    pub state: View,
    pub step_values: View,
    pub grads: View,
    pub z: View,
    pub a: View,
    pub delta: View,
    pub rho_hat: View,
}

impl Kernels {
    /// `x[i, :] = data[r(i), :]` for `rows` rows, `r` as [`Rows`] says (`cursor` is
    /// `state[0]`, see `layout::StepState`).
    #[allow(clippy::too_many_arguments)]
    pub fn gather_rows(
        &self,
        data: &View,
        order: &View,
        state: &View,
        x: &View,
        rows: usize,
        cols: usize,
        from: Rows,
    ) -> Launch {
        let per_row = self.gather_per_row;
        let params = Gather {
            rows: rows as u32,
            cols: cols as u32,
            gather: from as u32,
            steps: 0,
            per_row: per_row.into(),
            _pad: [0; 3],
        };
        let n = rows * cols;
        // Nominally one operation (the index arithmetic) per element copied.
        let cost = Cost {
            label: "gather_rows".into(),
            shape: format!("{rows}x{cols}"),
            flops: n as f64,
            bytes: 4.0 * (2 * n + rows) as f64,
        };
        let groups = if per_row { rows.div_ceil(64) } else { n.div_ceil(64) };
        self.launch(Kernel::GatherRows, params, &[data, order, state, x], [groups, 1], cost)
    }

    /// `cursor += rows`, `step += steps`: the next minibatch starts after this one (`steps` is
    /// 1 after a training step, 0 after an evaluation batch).
    pub fn advance_cursor(&self, state: &View, rows: usize, steps: u32) -> Launch {
        let params = Gather { rows: rows as u32, cols: 0, gather: 0, steps, per_row: 0, _pad: [0; 3] };
        let words = StepState::WORDS;
        let cost = Cost { label: "advance_cursor".into(), shape: "1".into(), flops: 2.0, bytes: 8.0 * words as f64 };
        self.launch(Kernel::AdvanceCursor, params, &[state], [1, 1], cost)
    }

    /// The layered forward pass of `spec` in one dispatch (`shaders/panel.wgsl`): every layer's
    /// `Z_l = A_{l-1} W_l^T + 1 b_l^T` and `A_l = f_l(Z_l)` into `z` and `a` (one buffer each,
    /// layer l at the layer table's offsets), and with `delta` the output delta
    /// `(A_L - X) f_L'(Z_L, A_L) / m` (X = A_0): what the per-layer subgroup matmuls with
    /// epilogues 1 and 4 compute, bit for bit. A workgroup takes 32 rows through every layer.
    pub fn panel_forward(
        &self,
        table: &View,
        params: &View,
        (z, a): (&View, &View),
        delta: Option<&View>,
        m: usize,
        spec: &ModelSpec,
    ) -> Launch {
        let layers = spec.layers();
        // As the last forward matmul's launcher computes it, so that the two agree bit for bit.
        let inv_m = (1.0 / m as f64) as f32;
        let uniform = Panel { rows: m as u32, layers: layers as u32, output_delta: u32::from(delta.is_some()), inv_m };
        let macs: usize = (1..=layers).map(|l| spec.shape(l).0 * spec.shape(l).1).sum();
        let units: usize = spec.sizes[1..].iter().sum();
        let n_out = spec.sizes[layers];
        let (extra_read, extra_written) = if delta.is_some() { (m * n_out, m * n_out) } else { (0, 0) };
        let floats = macs + units + m * spec.sizes[0] + 2 * m * units + extra_read + extra_written;
        let label = if delta.is_some() { "panel_forward+delta" } else { "panel_forward" };
        let cost = Cost {
            label: label.into(),
            shape: format!("{m} rows, {layers} layers"),
            flops: 2.0 * (m * macs) as f64,
            bytes: 4.0 * floats as f64,
        };
        let tensors = [table, params, z, a, delta.unwrap_or(&self.placeholder_rw)];
        self.launch(Kernel::PanelForward, uniform, &tensors, [m.div_ceil(32), 1], cost)
    }

    /// The fused path's forward pass (see `shaders/fused.wgsl`): one invocation per row.
    pub fn fused_forward(&self, net: &FusedNet, b: &FusedBuffers, data: &View, cost: Cost) -> Launch {
        let tensors = [&b.table, &b.params, data, &b.order, &b.state, &b.z, &b.a, &b.delta];
        self.launch(Kernel::FusedForward, *net, &tensors, [(net.rows as usize).div_ceil(64), 1], cost)
    }

    /// The fused path's backward pass: one invocation per row.
    pub fn fused_backward(&self, net: &FusedNet, b: &FusedBuffers, cost: Cost) -> Launch {
        let tensors = [&b.table, &b.params, &b.z, &b.a, &b.rho_hat, &b.delta, &b.state, &b.step_values];
        self.launch(Kernel::FusedBackward, *net, &tensors, [(net.rows as usize).div_ceil(64), 1], cost)
    }

    /// The fused path's gradient and SGD update, `lr` from the step-values table (or, with
    /// `net.grads_only`, the gradient alone): one invocation per parameter.
    pub fn fused_update(&self, net: &FusedNet, b: &FusedBuffers, cost: Cost) -> Launch {
        let tensors = [&b.table, &b.delta, &b.a, &b.params, &b.state, &b.grads, &b.step_values];
        self.launch(Kernel::FusedUpdate, *net, &tensors, [(net.total_params as usize).div_ceil(64), 1], cost)
    }
}
