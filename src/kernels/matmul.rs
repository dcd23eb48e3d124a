//! The matmul family (`shaders/matmul*.wgsl`): the three layouts a step needs, so nothing is
//! ever transposed, each in four interchangeable variants, each with an epilogue chosen by the
//! pipeline-overridable constant `EPILOGUE` (`shaders/matmul_epilogue.wgsl`).

use super::{Access, Cost, Kernels, Launch, View};
use crate::model::Activation;
use bytemuck::{Pod, Zeroable};

/// Shader sources, one per variant.
pub mod source {
    pub const TILED: &str =
        shader!("matmul_params.wgsl", "matmul_epilogue.wgsl", "matmul.wgsl", "matmul_entries_tiles.wgsl");
    pub const BLOCKED: &str = shader!("matmul_params.wgsl", "matmul_epilogue.wgsl", "matmul_blocked.wgsl");
    pub const SUBGROUP: &str = shader!(
        "matmul_params.wgsl",
        "matmul_epilogue.wgsl",
        "matmul_rows.wgsl",
        "matmul_subgroup.wgsl",
        "matmul_entries_subgroup.wgsl"
    );
    pub const SUBGROUP_VEC4: &str = shader!(
        "matmul_params.wgsl",
        "matmul_epilogue_vec4.wgsl",
        "matmul_rows.wgsl",
        "matmul_subgroup_vec4.wgsl",
        "matmul_subgroup_wide.wgsl",
        "matmul_entries_subgroup.wgsl"
    );
    pub const TILED64: &str =
        shader!("matmul_params.wgsl", "matmul_epilogue.wgsl", "matmul_tiled64.wgsl", "matmul_entries_tiles.wgsl");
}

/// The storage bindings of every matmul entry point: lhs, rhs, out, then the epilogue's bias,
/// a_out, z_in, a_in and delta_out (placeholders where the epilogue does not use them).
pub const BINDINGS: [(u32, Access); 8] = [
    (2, Access::Read),
    (3, Access::Read),
    (4, Access::ReadWrite),
    (5, Access::Read),
    (6, Access::ReadWrite),
    (7, Access::Read),
    (8, Access::Read),
    (9, Access::ReadWrite),
];

/// The largest product (multiply-adds, `m n k`) whose layer's two backward products the
/// trainer puts in one `matmul_backward_pair` dispatch: where a launch's fixed cost matters
/// (the seed model's are below 2^20 at batch 256). Above it they run as two launches: the
/// pair's pipeline reads its product and epilogue mode from private copies (PAIR in
/// `shaders/matmul_params.wgsl`), which llvmpipe compiles into slower loops (1.1-2.4x the two
/// launches at 64·2048·768, where each launch's fixed cost is a small share).
pub const PAIR_MAX_MACS: usize = 1 << 22;

/// The three layouts: `Z = A Wᵀ`, `dW = δᵀ A`, `G = δ W`; and a layer's two backward products
/// in one dispatch (`BackwardPair`: `dW` with the bias gradient, and `G` through the epilogue).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulOp {
    Forward,
    BackwardWeight,
    BackwardInput,
    BackwardPair,
}

impl MatmulOp {
    pub const ALL: [MatmulOp; 4] =
        [MatmulOp::Forward, MatmulOp::BackwardWeight, MatmulOp::BackwardInput, MatmulOp::BackwardPair];

    pub fn name(self) -> &'static str {
        match self {
            MatmulOp::Forward => "matmul_forward",
            MatmulOp::BackwardWeight => "matmul_backward_weight",
            MatmulOp::BackwardInput => "matmul_backward_input",
            MatmulOp::BackwardPair => "matmul_backward_pair",
        }
    }

    /// The epilogues this operation is built with.
    pub fn epilogues(self) -> &'static [Epilogue] {
        match self {
            MatmulOp::Forward => &[Epilogue::Plain, Epilogue::BiasActivation, Epilogue::OutputDelta],
            MatmulOp::BackwardWeight => &[Epilogue::Plain, Epilogue::BiasGradient],
            // The pair's weight job always has the bias gradient; these are its input job's.
            MatmulOp::BackwardInput => &[Epilogue::Plain, Epilogue::ActivationDerivative],
            MatmulOp::BackwardPair => &[Epilogue::Plain, Epilogue::ActivationDerivative, Epilogue::Penalty],
        }
    }
}

/// What a matmul does with each output (`EPILOGUE` in `shaders/matmul_epilogue.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// Stores it.
    Plain,
    /// Adds the bias, stores Z, and stores A = f(Z) too.
    BiasActivation,
    /// Multiplies by the activation derivative of the layer below, from its Z and A.
    ActivationDerivative,
    /// Computes one more output column over `[A | 1]`: the bias gradient, stored apart.
    BiasGradient,
    /// `BiasActivation`, and the output delta `(A - X) f'(Z, A) / m` against the target X.
    OutputDelta,
    /// `ActivationDerivative` with the KL gradient's column term (kl_backward's, for kl and
    /// kl-soft-freq): the code layer's delta in the backward pair.
    Penalty,
}

impl Epilogue {
    pub fn code(self) -> u32 {
        match self {
            Epilogue::Plain => 0,
            Epilogue::BiasActivation => 1,
            Epilogue::ActivationDerivative => 2,
            Epilogue::BiasGradient => 3,
            Epilogue::OutputDelta => 4,
            Epilogue::Penalty => 5,
        }
    }

    /// The suffix the launch's label gets.
    fn suffix(self) -> &'static str {
        match self {
            Epilogue::Plain => "",
            Epilogue::BiasActivation => "+bias_act",
            Epilogue::ActivationDerivative => "+act'",
            Epilogue::BiasGradient => "+db",
            Epilogue::OutputDelta => "+bias_act+delta",
            Epilogue::Penalty => "+act'+kl",
        }
    }
}

/// Interchangeable implementations of the matmul family, same entry points and results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// 16x16 output tiles staged through workgroup memory (`shaders/matmul.wgsl`): the
    /// textbook GPU kernel.
    Tiled,
    /// 4x4 outputs per invocation from registers, no workgroup memory
    /// (`shaders/matmul_blocked.wgsl`): much faster on CPU-emulated adapters.
    Blocked,
    /// 32x4 outputs per invocation, workgroups of one 8-lane subgroup sharing rows of L with
    /// `subgroupBroadcast` (`shaders/matmul_subgroup.wgsl`): many FMAs per load, for
    /// CPU-emulated adapters. Needs [`wgpu::Features::SUBGROUP`]; see [`Self::available`].
    Subgroup,
    /// 64x64 output tiles through workgroup memory with a 4x4 register block per invocation
    /// and vec4 reads of the staged tiles (`shaders/matmul_tiled64.wgsl`): the GPU-grade kernel,
    /// the default on adapters that are not CPUs.
    Tiled64,
    /// `Subgroup` with vec4 loads and stores (`shaders/matmul_subgroup_vec4.wgsl`), same sums
    /// and results: not a variant of its own (not in [`Self::ALL`]) but what the `Subgroup`
    /// launchers run where a product's widths allow ([`vec4_fits`]).
    SubgroupVec4,
    /// `SubgroupVec4`'s forward and input-gradient products with 64x64 tiles
    /// (`shaders/matmul_subgroup_wide.wgsl`), same sums in the same order: what its launchers run
    /// for products big enough to give every CPU thread several workgroups ([`wide_fits`]). Not
    /// in [`Self::ALL`] either.
    SubgroupWide,
}

/// The fewest workgroups a wide tile's grid has where the vec4 kernel takes it: below that
/// the 32x32 tiles' four times as many workgroups keep more CPU threads busy.
pub const WIDE_MIN_GROUPS: usize = 16;

/// Whether a vec4 product of `(rows, cols, inner)` takes the wide tile: the forward and
/// input-gradient products (the weight gradient keeps 32x32, as does the pair, which runs only
/// small products), with at least [`WIDE_MIN_GROUPS`] 64x64 tiles.
pub fn wide_fits(op: MatmulOp, (rows, cols, _inner): (usize, usize, usize)) -> bool {
    matches!(op, MatmulOp::Forward | MatmulOp::BackwardInput)
        && rows.div_ceil(64) * cols.div_ceil(64) >= WIDE_MIN_GROUPS
}

/// Whether a product of `(rows, cols, inner)` takes the vec4 kernel: the widths it reads and
/// writes along are multiples of 4 (`shaders/matmul_subgroup_vec4.wgsl`).
pub fn vec4_fits(op: MatmulOp, epilogue: Epilogue, (rows, cols, inner): (usize, usize, usize)) -> bool {
    let stored = if epilogue == Epilogue::BiasGradient { cols - 1 } else { cols };
    let m4 = |x: usize| x > 0 && x.is_multiple_of(4);
    match op {
        MatmulOp::Forward | MatmulOp::BackwardInput => m4(inner) && m4(cols),
        MatmulOp::BackwardWeight => m4(rows) && m4(stored),
        // The input job's (rows m, cols k, inner n) and the weight job's (rows n, stored k).
        MatmulOp::BackwardPair => m4(inner) && m4(cols),
    }
}

impl MatmulVariant {
    /// Every variant; not all run everywhere (see [`Self::available`] and
    /// [`Kernels::matmul_variants`]).
    pub const ALL: [MatmulVariant; 4] =
        [MatmulVariant::Tiled, MatmulVariant::Blocked, MatmulVariant::Subgroup, MatmulVariant::Tiled64];

    pub(super) fn source(self) -> &'static str {
        match self {
            MatmulVariant::Tiled => source::TILED,
            MatmulVariant::Blocked => source::BLOCKED,
            MatmulVariant::Subgroup => source::SUBGROUP,
            MatmulVariant::SubgroupVec4 | MatmulVariant::SubgroupWide => source::SUBGROUP_VEC4,
            MatmulVariant::Tiled64 => source::TILED64,
        }
    }

    /// Output rows/columns one workgroup covers (square for every variant).
    fn tile(self) -> usize {
        match self {
            MatmulVariant::Tiled => 16,
            MatmulVariant::Blocked | MatmulVariant::Subgroup | MatmulVariant::SubgroupVec4 => 32,
            MatmulVariant::Tiled64 | MatmulVariant::SubgroupWide => 64,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MatmulVariant::Tiled => "tiled16",
            MatmulVariant::Blocked => "blocked4x4",
            MatmulVariant::Subgroup => "subgroup",
            MatmulVariant::SubgroupVec4 => "subgroup_vec4",
            MatmulVariant::SubgroupWide => "subgroup_wide",
            MatmulVariant::Tiled64 => "tiled64",
        }
    }

    /// The operations this variant has entry points for (every variant has all of them; the
    /// wide tiles the forward and input-gradient products).
    pub fn ops(self) -> &'static [MatmulOp] {
        match self {
            MatmulVariant::SubgroupWide => &[MatmulOp::Forward, MatmulOp::BackwardInput],
            _ => &MatmulOp::ALL,
        }
    }

    /// The entry point of `op` in this variant's shader.
    pub(super) fn entry(self, op: MatmulOp) -> &'static str {
        match (self, op) {
            (MatmulVariant::SubgroupWide, MatmulOp::Forward) => "matmul_forward_wide",
            (MatmulVariant::SubgroupWide, _) => "matmul_backward_input_wide",
            _ => op.name(),
        }
    }

    /// Whether a device with `features` can run this variant.
    pub fn available(self, features: wgpu::Features) -> bool {
        match self {
            MatmulVariant::Tiled | MatmulVariant::Blocked | MatmulVariant::Tiled64 => true,
            MatmulVariant::Subgroup | MatmulVariant::SubgroupVec4 | MatmulVariant::SubgroupWide => {
                features.contains(wgpu::Features::SUBGROUP)
            }
        }
    }

    /// Why `for_adapter` picks this variant for an adapter (`sae adapters` says it).
    pub fn why(self, info: &wgpu::AdapterInfo, features: wgpu::Features) -> String {
        match self {
            MatmulVariant::Tiled => "shared-memory tiles of 16x16, one output per invocation".into(),
            MatmulVariant::Tiled64 => "a GPU: 64x64 shared-memory tiles, 4x4 outputs per invocation".into(),
            MatmulVariant::Blocked if features.contains(wgpu::Features::SUBGROUP) => {
                "a CPU adapter: register blocks".into()
            }
            MatmulVariant::Blocked => "a CPU adapter without subgroups: register blocks".into(),
            MatmulVariant::Subgroup | MatmulVariant::SubgroupVec4 | MatmulVariant::SubgroupWide => {
                let lanes = (info.subgroup_min_size, info.subgroup_max_size);
                // The kernel checks at run time that a workgroup's 8 invocations are one
                // subgroup (active lanes 0..7), which needs subgroups of at least 8 lanes.
                let path = if lanes.0 >= 8 {
                    "a workgroup's 8 invocations share rows through subgroupBroadcast"
                } else if lanes.1 >= 8 {
                    "rows shared by subgroupBroadcast where a workgroup's 8 invocations form one subgroup, else loaded per lane (same results)"
                } else {
                    "subgroups narrower than 8 lanes: every lane loads its own rows (same results)"
                };
                format!("a CPU adapter with subgroups of {} to {} lanes: {path}", lanes.0, lanes.1)
            }
        }
    }

    /// The default for an adapter whose device has `features`: on CPU adapters the subgroup
    /// kernel where subgroups are enabled (lavapipe), else register blocks, each measured
    /// several times faster than the one after it there; 64x64 shared-memory tiles with register
    /// blocks elsewhere (the usual shape of a fast GPU kernel; `tiled16` stays as the baseline).
    pub fn for_adapter(info: &wgpu::AdapterInfo, features: wgpu::Features) -> Self {
        if info.device_type != wgpu::DeviceType::Cpu {
            MatmulVariant::Tiled64
        } else if MatmulVariant::Subgroup.available(features) {
            MatmulVariant::Subgroup
        } else {
            MatmulVariant::Blocked
        }
    }
}

/// `Matmul` in `shaders/matmul_epilogue.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Matmul {
    rows: u32,
    cols: u32,
    inner: u32,
    act: u32,
    inv_m: f32,
    /// `matmul_backward_pair`: the weight job's workgroup rows, before the input job's.
    pair_rows: u32,
    /// Epilogue 5: 1 for kl-soft-freq's form, with its temperature.
    soft: u32,
    temperature: f32,
}

/// A matmul's tensors: the two operands, the output and the epilogue's extra bindings.
struct Operands<'a> {
    lhs: &'a View,
    rhs: &'a View,
    out: &'a View,
    bias: Option<&'a View>,
    a_out: Option<&'a View>,
    z_in: Option<&'a View>,
    a_in: Option<&'a View>,
    delta_out: Option<&'a View>,
    /// Epilogue 5: kl-soft-freq's temperature (its form of the KL term), else kl's form.
    soft: Option<f64>,
}

/// What the input job of [`Kernels::matmul_backward_pair`] does with `G = delta_l W_l`.
#[derive(Clone, Copy)]
pub enum PairInput<'a> {
    /// Stores G (a kernel of its own takes it from there).
    Plain,
    /// `G ⊙ f'(Z, A)` of the layer below, Z given (A is the pair's `a`).
    Derivative { z: &'a View },
    /// The code layer's delta with the KL gradient, `term` its column term (fire_count_rho's):
    /// `(G + t_j) ⊙ f'` under kl, `G ⊙ f' + t_j s (1 - s) / T` with `s = sigmoid(Z / T)` under
    /// kl-soft-freq (`temperature` given), as kl_backward computes them.
    Penalty { z: &'a View, term: &'a View, temperature: Option<f64> },
}

impl<'a> Operands<'a> {
    /// The two operands and the output, no epilogue tensors.
    fn plain(lhs: &'a View, rhs: &'a View, out: &'a View) -> Self {
        Operands { lhs, rhs, out, bias: None, a_out: None, z_in: None, a_in: None, delta_out: None, soft: None }
    }
}

impl Kernels {
    /// A matmul launch over `(rows, cols, inner)` (the output's shape and the summed length).
    /// The cost is stated in the caller's `(m, k, n)` of the layer.
    fn matmul(
        &self,
        op: MatmulOp,
        epilogue: Epilogue,
        t: Operands<'_>,
        (rows, cols, inner): (usize, usize, usize),
        act: Activation,
        (m, k, n): (usize, usize, usize),
    ) -> Launch {
        // With the bias-gradient epilogue the last of the `cols` columns goes to a_out.
        let stored_cols = if epilogue == Epilogue::BiasGradient { cols - 1 } else { cols };
        assert!(t.out.len >= rows * stored_cols, "{}: output too small", op.name());
        // As output_delta's launcher computes it, so that the two agree bit for bit.
        let inv_m = if epilogue == Epilogue::OutputDelta { (1.0 / rows as f64) as f32 } else { 0.0 };
        let mut variant = self.matmul_variant;
        if variant == MatmulVariant::Subgroup && self.matmul_vec4 && vec4_fits(op, epilogue, (rows, cols, inner)) {
            variant = MatmulVariant::SubgroupVec4;
            if self.matmul_wide && wide_fits(op, (rows, cols, inner)) {
                variant = MatmulVariant::SubgroupWide;
            }
        }
        let tile = variant.tile();
        let mut groups = [cols.div_ceil(tile), rows.div_ceil(tile)];
        let mut pair_rows = 0;
        if op == MatmulOp::BackwardPair {
            // The weight job's grid (rows n = inner, cols k + 1) first in y, then the input job's.
            assert!(t.delta_out.is_some_and(|dw| dw.len >= inner * cols), "{}: dW too small", op.name());
            pair_rows = inner.div_ceil(tile);
            groups = [groups[0].max((cols + 1).div_ceil(tile)), groups[1] + pair_rows];
        }
        let params = Matmul {
            rows: rows as u32,
            cols: cols as u32,
            inner: inner as u32,
            act: act.code(),
            inv_m,
            pair_rows: pair_rows as u32,
            soft: u32::from(t.soft.is_some()),
            temperature: t.soft.unwrap_or(1.0) as f32,
        };
        let pipeline = self.pipeline(super::PipelineKey::Matmul(variant, op, epilogue));
        let (ro, rw) = (&self.placeholder_ro, &self.placeholder_rw);
        let tensors = [
            t.lhs,
            t.rhs,
            t.out,
            t.bias.unwrap_or(ro),
            t.a_out.unwrap_or(rw),
            t.z_in.unwrap_or(ro),
            t.a_in.unwrap_or(ro),
            t.delta_out.unwrap_or(&self.placeholder_rw2),
        ];
        let mut cost = matmul_cost(op, epilogue, m, k, n);
        if variant == MatmulVariant::SubgroupVec4 {
            cost.label += " vec4";
        } else if variant == MatmulVariant::SubgroupWide {
            cost.label += " vec4 wide";
        }
        self.launch_with(op.name(), &pipeline, params, &tensors, groups, cost)
    }

    /// `Z[m,n] = A[m,k] W[n,k]^T`
    pub fn matmul_forward(&self, a: &View, w: &View, z: &View, m: usize, k: usize, n: usize) -> Launch {
        let t = Operands::plain(a, w, z);
        self.matmul(MatmulOp::Forward, Epilogue::Plain, t, (m, n, k), Activation::Identity, (m, k, n))
    }

    /// `Z[m,n] = A[m,k] W[n,k]^T + 1 b^T`, `A_out = f(Z)`: matmul_forward with the bias and
    /// activation in its epilogue (one dispatch instead of two).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward_bias_activation(
        &self,
        a: &View,
        w: &View,
        b: &View,
        z: &View,
        a_out: &View,
        m: usize,
        k: usize,
        n: usize,
        act: Activation,
    ) -> Launch {
        let t = Operands { bias: Some(b), a_out: Some(a_out), ..Operands::plain(a, w, z) };
        self.matmul(MatmulOp::Forward, Epilogue::BiasActivation, t, (m, n, k), act, (m, k, n))
    }

    /// The last forward layer with the output delta in its epilogue: `Z = A W^T + 1 b^T`,
    /// `A_out = f(Z)` and `delta = (A_out - X) f'(Z, A_out) / m` against the target `x`
    /// (output_delta's arithmetic; one dispatch instead of two).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_forward_output_delta(
        &self,
        a: &View,
        w: &View,
        b: &View,
        (z, a_out): (&View, &View),
        (x, delta): (&View, &View),
        (m, k, n): (usize, usize, usize),
        act: Activation,
    ) -> Launch {
        let t = Operands {
            bias: Some(b),
            a_out: Some(a_out),
            z_in: Some(x),
            delta_out: Some(delta),
            ..Operands::plain(a, w, z)
        };
        self.matmul(MatmulOp::Forward, Epilogue::OutputDelta, t, (m, n, k), act, (m, k, n))
    }

    /// `dW[n,k] = delta[m,n]^T A[m,k]`
    pub fn matmul_backward_weight(&self, delta: &View, a: &View, dw: &View, m: usize, n: usize, k: usize) -> Launch {
        let t = Operands::plain(delta, a, dw);
        self.matmul(MatmulOp::BackwardWeight, Epilogue::Plain, t, (n, k, m), Activation::Identity, (m, k, n))
    }

    /// `dW[n,k] = delta[m,n]^T A[m,k]` and `db[n] = sum_i delta[i,:]`: matmul_backward_weight over
    /// `[A | 1]`, whose last column of outputs is the bias gradient (one dispatch instead of two).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward_weight_bias(
        &self,
        delta: &View,
        a: &View,
        dw: &View,
        db: &View,
        m: usize,
        n: usize,
        k: usize,
    ) -> Launch {
        let t = Operands { a_out: Some(db), ..Operands::plain(delta, a, dw) };
        self.matmul(MatmulOp::BackwardWeight, Epilogue::BiasGradient, t, (n, k + 1, m), Activation::Identity, (m, k, n))
    }

    /// `G[m,k] = delta[m,n] W[n,k]`
    pub fn matmul_backward_input(&self, delta: &View, w: &View, g: &View, m: usize, n: usize, k: usize) -> Launch {
        let t = Operands::plain(delta, w, g);
        self.matmul(MatmulOp::BackwardInput, Epilogue::Plain, t, (m, k, n), Activation::Identity, (m, k, n))
    }

    /// `delta_out[m,k] = (delta[m,n] W[n,k]) ⊙ f'(Z, A)`: matmul_backward_input with the
    /// activation derivative of the layer below in its epilogue.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward_input_activation(
        &self,
        delta: &View,
        w: &View,
        z: &View,
        a: &View,
        delta_out: &View,
        m: usize,
        n: usize,
        k: usize,
        act: Activation,
    ) -> Launch {
        let t = Operands { z_in: Some(z), a_in: Some(a), ..Operands::plain(delta, w, delta_out) };
        self.matmul(MatmulOp::BackwardInput, Epilogue::ActivationDerivative, t, (m, k, n), act, (m, k, n))
    }

    /// A layer's two backward products in one dispatch (docs/design.md section 5):
    /// `dW[n,k] = delta[m,n]^T A[m,k]` and `db[n] = sum_i delta[i,:]` (as
    /// [`Self::matmul_backward_weight_bias`]), and `G[m,k] = delta[m,n] W[n,k]` into `out`, times
    /// what `input` says ([`PairInput`]: as [`Self::matmul_backward_input`],
    /// [`Self::matmul_backward_input_activation`], or that and kl_backward). The same arithmetic
    /// as the launches it replaces, so the same results bit for bit. `a` is `A_{l-1}`, the weight
    /// gradient's right operand and the derivative's `A` both.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_backward_pair(
        &self,
        (delta, w, a): (&View, &View, &View),
        input: PairInput<'_>,
        (dw, db): (&View, &View),
        out: &View,
        (m, n, k): (usize, usize, usize),
        act: Activation,
    ) -> Launch {
        let (epilogue, z, term, soft) = match input {
            PairInput::Plain => (Epilogue::Plain, None, None, None),
            PairInput::Derivative { z } => (Epilogue::ActivationDerivative, Some(z), None, None),
            PairInput::Penalty { z, term, temperature } => (Epilogue::Penalty, Some(z), Some(term), temperature),
        };
        let t = Operands {
            bias: term,
            a_out: Some(db),
            z_in: z,
            a_in: Some(a),
            delta_out: Some(dw),
            soft,
            ..Operands::plain(delta, w, out)
        };
        self.matmul(MatmulOp::BackwardPair, epilogue, t, (m, k, n), act, (m, k, n))
    }
}

/// `2 m k n` FLOPs; the operands read once and the outputs written once, plus what the
/// epilogue reads or writes.
fn matmul_cost(op: MatmulOp, epilogue: Epilogue, m: usize, k: usize, n: usize) -> Cost {
    let (mut read, mut written) = match op {
        MatmulOp::Forward => (m * k + n * k, m * n),
        MatmulOp::BackwardWeight => (m * n + m * k, n * k),
        MatmulOp::BackwardInput => (m * n + n * k, m * k),
        // Both products: delta read once for each (a cache may serve the second).
        MatmulOp::BackwardPair => (2 * m * n + m * k + n * k, n * k + n + m * k),
    };
    match epilogue {
        Epilogue::BiasActivation => {
            read += n;
            written += m * n;
        }
        Epilogue::ActivationDerivative => read += 2 * m * k,
        Epilogue::Penalty => read += 2 * m * k + k,
        Epilogue::BiasGradient => written += n,
        Epilogue::OutputDelta => {
            read += n + m * n;
            written += 2 * m * n;
        }
        Epilogue::Plain => {}
    }
    let products = if op == MatmulOp::BackwardPair { 2 } else { 1 };
    Cost {
        label: format!("{}{}", op.name(), epilogue.suffix()),
        shape: format!("{m}·{k}→{n}"),
        flops: 2.0 * (products * m * k * n) as f64,
        bytes: 4.0 * (read + written) as f64,
    }
}

#[cfg(test)]
mod chooser_tests {
    use super::*;

    /// The chooser, over every adapter kind and every subgroup size an adapter may report (1 to
    /// 128): it never picks a variant the device cannot run, and picks the subgroup kernel only
    /// on CPU adapters with subgroups, where it is correct at any size: the broadcast path runs
    /// only when a workgroup's 8 invocations are one subgroup's active lanes 0..7 (checked at
    /// run time; subgroups of 8 or more lanes), every other case takes the per-lane path, with
    /// the same sums in the same order. `.ci/run`'s kernel checks run 4 lanes (per-lane path),
    /// 8 and 16 (broadcast with 8 of 16 lanes active); the tests run 8.
    #[test]
    fn chooser_covers_every_adapter_and_subgroup_size() {
        let kinds = [
            wgpu::DeviceType::DiscreteGpu,
            wgpu::DeviceType::IntegratedGpu,
            wgpu::DeviceType::VirtualGpu,
            wgpu::DeviceType::Other,
            wgpu::DeviceType::Cpu,
        ];
        for kind in kinds {
            for subgroups in [false, true] {
                for (min, max) in
                    [(1, 1), (4, 4), (8, 8), (16, 16), (32, 32), (64, 64), (4, 128), (32, 128), (128, 128)]
                {
                    let mut info = wgpu::AdapterInfo::new(kind, wgpu::Backend::Vulkan);
                    (info.subgroup_min_size, info.subgroup_max_size) = (min, max);
                    let features = if subgroups { wgpu::Features::SUBGROUP } else { wgpu::Features::empty() };
                    let v = MatmulVariant::for_adapter(&info, features);
                    assert!(v.available(features), "{kind:?} {min}-{max}: {v:?} cannot run there");
                    let want = match (kind, subgroups) {
                        (wgpu::DeviceType::Cpu, true) => MatmulVariant::Subgroup,
                        (wgpu::DeviceType::Cpu, false) => MatmulVariant::Blocked,
                        _ => MatmulVariant::Tiled64,
                    };
                    assert_eq!(v, want, "{kind:?}, subgroups {subgroups}, {min}-{max} lanes");
                    assert!(!v.why(&info, features).is_empty());
                }
            }
        }
    }
}
