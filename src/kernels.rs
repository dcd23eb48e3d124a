//! The WGSL kernels and their Rust launchers. Each launcher has the name of its WGSL entry point
//! and of its f64 twin in `reference.rs`, and returns a [`Launch`]: a pipeline with its bind
//! groups and workgroup counts, built once and recorded into as many steps as needed.
//!
//! Every kernel reads a `Grid` uniform (binding 0) holding the workgroup offset of its dispatch,
//! so a grid larger than the adapter's `max_compute_workgroups_per_dimension` is split into
//! several dispatches that each cover a part, never truncated.

use crate::device::Gpu;
use crate::model::{Activation, Sparsity, RHO_HAT_EPS};
use crate::reference::ColumnTransform;
use bytemuck::{Pod, Zeroable};
use std::collections::HashMap;
use wgpu::util::DeviceExt;

/// A shader's source: `shaders/common.wgsl` (the `Grid` binding and the activation functions),
/// then the named files, joined at compile time since WGSL has no include.
macro_rules! shader {
    ($($file:literal),+) => {
        concat!(include_str!("../shaders/common.wgsl"), $(include_str!(concat!("../shaders/", $file))),+)
    };
}

/// Shader sources, compiled into the binary.
pub mod source {
    pub const MATMUL: &str = shader!("matmul_epilogue.wgsl", "matmul.wgsl");
    pub const MATMUL_BLOCKED: &str = shader!("matmul_epilogue.wgsl", "matmul_blocked.wgsl");
    pub const MATMUL_SUBGROUP: &str = shader!("matmul_epilogue.wgsl", "matmul_subgroup.wgsl");
    pub const ACTIVATION: &str = shader!("activation.wgsl");
    pub const SPARSITY: &str = shader!("sparsity.wgsl");
    pub const REDUCE: &str = shader!("reduce.wgsl");
    pub const LOSS: &str = shader!("loss.wgsl");
    pub const UPDATE: &str = shader!("update.wgsl");
    pub const DATA: &str = shader!("data.wgsl");
    pub const FUSED: &str = shader!("fused.wgsl");
}

/// The matmul entry points; each [`MatmulVariant`] implements all three.
pub const MATMUL_ENTRY_POINTS: [&str; 3] = ["matmul_forward", "matmul_backward_weight", "matmul_backward_input"];

/// The epilogues (`EPILOGUE` in `shaders/matmul_epilogue.wgsl`) each matmul entry point is
/// built with: 0 plain, 1 bias + activation, 2 activation derivative.
fn epilogues(entry: &str) -> &'static [u32] {
    match entry {
        "matmul_forward" => &[0, 1],
        "matmul_backward_input" => &[0, 2],
        "matmul_backward_weight" => &[0, 3],
        _ => &[0],
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
}

impl MatmulVariant {
    /// Every variant; not all run everywhere (see [`Self::available`] and
    /// [`Kernels::matmul_variants`]).
    pub const ALL: [MatmulVariant; 3] = [MatmulVariant::Tiled, MatmulVariant::Blocked, MatmulVariant::Subgroup];
    fn source(self) -> &'static str {
        match self {
            MatmulVariant::Tiled => source::MATMUL,
            MatmulVariant::Blocked => source::MATMUL_BLOCKED,
            MatmulVariant::Subgroup => source::MATMUL_SUBGROUP,
        }
    }
    /// Output rows/columns one workgroup covers (square for every variant).
    fn tile(self) -> usize {
        match self {
            MatmulVariant::Tiled => 16,
            MatmulVariant::Blocked => 32,
            MatmulVariant::Subgroup => 32,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            MatmulVariant::Tiled => "tiled16",
            MatmulVariant::Blocked => "blocked4x4",
            MatmulVariant::Subgroup => "subgroup",
        }
    }
    /// Whether a device with `features` can run this variant.
    pub fn available(self, features: wgpu::Features) -> bool {
        match self {
            MatmulVariant::Tiled | MatmulVariant::Blocked => true,
            MatmulVariant::Subgroup => features.contains(wgpu::Features::SUBGROUP),
        }
    }
    /// The default for an adapter whose device has `features`: on CPU adapters the subgroup
    /// kernel where subgroups are enabled (lavapipe), else register blocks, each measured
    /// several times faster than the one after it there; shared-memory tiles elsewhere.
    pub fn for_adapter(info: &wgpu::AdapterInfo, features: wgpu::Features) -> Self {
        if info.device_type != wgpu::DeviceType::Cpu {
            MatmulVariant::Tiled
        } else if MatmulVariant::Subgroup.available(features) {
            MatmulVariant::Subgroup
        } else {
            MatmulVariant::Blocked
        }
    }
}

/// Entry points of whole-step paths, checked by the whole-model tests rather than one by one:
/// minibatch gathering (`shaders/data.wgsl`) and the fused small-MLP step (`shaders/fused.wgsl`).
pub const STEP_ENTRY_POINTS: [(&str, &str); 5] = [
    ("gather_rows", source::DATA),
    ("advance_cursor", source::DATA),
    ("fused_forward", source::FUSED),
    ("fused_backward", source::FUSED),
    ("fused_update", source::FUSED),
];

/// Widest layer the fused path takes (`MAX_WIDTH` in `shaders/fused.wgsl`).
pub const FUSED_MAX_WIDTH: usize = 128;

/// Every other entry point, with the shader file it lives in.
pub const ENTRY_POINTS: [(&str, &str); 7] = [
    ("bias_activation", source::ACTIVATION),
    ("activation_backward", source::ACTIVATION),
    ("kl_backward", source::SPARSITY),
    ("column_sum", source::REDUCE),
    ("output_delta", source::LOSS),
    ("loss_value", source::LOSS),
    ("sgd_update", source::UPDATE),
];

/// Storage-buffer bindings at an offset must be aligned to `min_storage_buffer_offset_alignment`,
/// which WebGPU caps at 256 bytes; aligning every tensor to 256 bytes is valid on any adapter.
pub const ALIGN_FLOATS: usize = 64;

pub fn align(n: usize) -> usize {
    n.div_ceil(ALIGN_FLOATS) * ALIGN_FLOATS
}

/// A run of f32 elements inside a buffer: one tensor.
#[derive(Clone, Debug)]
pub struct View {
    pub buffer: wgpu::Buffer,
    /// Offset in f32 elements (a multiple of [`ALIGN_FLOATS`]).
    pub offset: usize,
    /// Length in f32 elements.
    pub len: usize,
}

impl View {
    pub fn whole(buffer: &wgpu::Buffer) -> View {
        View { buffer: buffer.clone(), offset: 0, len: (buffer.size() / 4) as usize }
    }
    pub fn slice(&self, offset: usize, len: usize) -> View {
        assert!(offset.is_multiple_of(ALIGN_FLOATS) && offset + len <= self.len);
        View { buffer: self.buffer.clone(), offset: self.offset + offset, len }
    }
    pub fn byte_offset(&self) -> u64 {
        (self.offset * 4) as u64
    }
    pub fn byte_len(&self) -> u64 {
        (self.len * 4) as u64
    }
    fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: self.byte_offset(),
            size: wgpu::BufferSize::new(self.byte_len().max(4)),
        })
    }
}

/// One kernel launch: a pipeline and, per dispatch, a bind group and its workgroup counts.
#[derive(Clone, Debug)]
pub struct Launch {
    pub name: &'static str,
    pipeline: wgpu::ComputePipeline,
    dispatches: Vec<(wgpu::BindGroup, [u32; 2])>,
}

impl Launch {
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        for (bind_group, [x, y]) in &self.dispatches {
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(*x, *y, 1);
        }
    }
    pub fn dispatch_count(&self) -> usize {
        self.dispatches.len()
    }
}

/// Records launches into one compute pass of `encoder`.
pub fn record(encoder: &mut wgpu::CommandEncoder, launches: &[Launch]) {
    let mut pass =
        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("sae step"), timestamp_writes: None });
    for launch in launches {
        launch.record(&mut pass);
    }
}

// Uniform blocks, laid out as the WGSL structs of the same name.

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Grid {
    offset: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Matmul {
    rows: u32,
    cols: u32,
    inner: u32,
    act: u32,
    _pad: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Elementwise {
    rows: u32,
    cols: u32,
    act: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Kl {
    rows: u32,
    cols: u32,
    act: u32,
    mode: u32,
    rho: f32,
    beta_over_m: f32,
    temperature: f32,
    eps: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Reduce {
    rows: u32,
    cols: u32,
    transform: u32,
    _pad: u32,
    scale: f32,
    temperature: f32,
    _pad1: u32,
    _pad2: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Loss {
    rows: u32,
    cols: u32,
    act: u32,
    weights_len: u32,
    inv_m: f32,
    half_lambda: f32,
    rho: f32,
    beta: f32,
    code_width: u32,
    sparsity: u32,
    eps: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Sgd {
    len: u32,
    weights_len: u32,
    lr: f32,
    lambda: f32,
}

/// Values of `loss_value`'s output, in order.
pub const LOSS_SLOTS: usize = 5;

/// The compiled pipelines of every kernel, created once per device.
pub struct Kernels {
    pub gpu: Gpu,
    pipelines: HashMap<&'static str, wgpu::ComputePipeline>,
    /// Per variant, entry point and epilogue (a pipeline-overridable constant, so each
    /// pipeline compiles only its own epilogue).
    matmul_pipelines: HashMap<(MatmulVariant, &'static str, u32), wgpu::ComputePipeline>,
    /// Which matmul implementation the launchers use.
    pub matmul_variant: MatmulVariant,
    /// One-element buffers bound where an entry point's binding is unused (a read-only and a
    /// read-write one: one buffer cannot be both in a dispatch).
    placeholder_ro: View,
    placeholder_rw: View,
    /// Most workgroups one dispatch may have along a dimension. The adapter's limit by
    /// default; tests lower it to exercise splitting without huge inputs.
    pub max_groups: u32,
}

impl Kernels {
    pub fn new(gpu: &Gpu) -> Result<Kernels, String> {
        let device = &gpu.device;
        // Capture validation errors (a shader an adapter rejects) instead of panicking.
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut modules: HashMap<*const u8, wgpu::ShaderModule> = HashMap::new();
        let mut pipeline = |entry: &'static str, src: &'static str, constants: &[(&str, f64)]| {
            let module = modules.entry(src.as_ptr()).or_insert_with(|| {
                device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(entry),
                    source: wgpu::ShaderSource::Wgsl(src.into()),
                })
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                // Layout derived from what the entry point uses: each entry point in a file
                // uses its own bindings.
                layout: None,
                module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
                cache: None,
            })
        };
        let pipelines: HashMap<_, _> = ENTRY_POINTS
            .iter()
            .chain(&STEP_ENTRY_POINTS)
            .map(|&(entry, src)| (entry, pipeline(entry, src, &[])))
            .collect();
        let mut matmul_pipelines = HashMap::new();
        // Variants the device cannot run (no SUBGROUP, e.g. the GL backend) are left out.
        for variant in MatmulVariant::ALL.into_iter().filter(|v| v.available(gpu.features)) {
            for entry in MATMUL_ENTRY_POINTS {
                for &epilogue in epilogues(entry) {
                    let constants = [("EPILOGUE", epilogue as f64)];
                    matmul_pipelines.insert((variant, entry, epilogue), pipeline(entry, variant.source(), &constants));
                }
            }
        }
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(format!("shader compilation failed on {}: {err}", gpu.describe()));
        }
        Ok(Kernels {
            placeholder_ro: View::whole(&gpu.storage("placeholder (read)", 1)),
            placeholder_rw: View::whole(&gpu.storage("placeholder (read-write)", 1)),
            gpu: gpu.clone(),
            pipelines,
            matmul_pipelines,
            matmul_variant: MatmulVariant::for_adapter(&gpu.info, gpu.features),
            max_groups: gpu.limits.max_compute_workgroups_per_dimension,
        })
    }

    /// The matmul variants this device runs, in [`MatmulVariant::ALL`] order.
    pub fn matmul_variants(&self) -> Vec<MatmulVariant> {
        MatmulVariant::ALL
            .into_iter()
            .filter(|v| self.matmul_pipelines.contains_key(&(*v, MATMUL_ENTRY_POINTS[0], 0)))
            .collect()
    }

    /// Builds a launch of `name` over a `groups` grid of workgroups, split into dispatches of
    /// at most `max_groups` per dimension; `bindings` are (binding number, tensor) pairs.
    fn launch<P: Pod>(&self, name: &'static str, params: P, bindings: &[(u32, &View)], groups: [usize; 2]) -> Launch {
        let pipeline = self.pipelines[name].clone();
        self.launch_with(name, pipeline, params, bindings, groups)
    }

    fn launch_with<P: Pod>(
        &self,
        name: &'static str,
        pipeline: wgpu::ComputePipeline,
        params: P,
        bindings: &[(u32, &View)],
        groups: [usize; 2],
    ) -> Launch {
        let device = &self.gpu.device;
        let layout = pipeline.get_bind_group_layout(0);
        let params = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(name),
            contents: bytemuck::bytes_of(&params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let max = self.max_groups as usize;
        let mut dispatches = Vec::new();
        for y0 in (0..groups[1].max(1)).step_by(max) {
            for x0 in (0..groups[0].max(1)).step_by(max) {
                let gx = (groups[0] - x0).min(max);
                let gy = (groups[1] - y0).min(max);
                if gx == 0 || gy == 0 {
                    continue;
                }
                let grid = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("grid"),
                    contents: bytemuck::bytes_of(&Grid { offset: [x0 as u32, y0 as u32, 0, 0] }),
                    usage: wgpu::BufferUsages::UNIFORM,
                });
                let mut entries = vec![
                    wgpu::BindGroupEntry { binding: 0, resource: grid.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 1, resource: params.as_entire_binding() },
                ];
                for (binding, view) in bindings {
                    entries.push(wgpu::BindGroupEntry { binding: *binding, resource: view.binding() });
                }
                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(name),
                    layout: &layout,
                    entries: &entries,
                });
                dispatches.push((bind_group, [gx as u32, gy as u32]));
            }
        }
        Launch { name, pipeline, dispatches }
    }

    fn elementwise_groups(len: usize) -> [usize; 2] {
        [len.div_ceil(256), 1]
    }

    /// A matmul launch; `epilogue` is 0 (plain), 1 (bias + activation) or 2 (activation
    /// derivative), see `shaders/matmul_epilogue.wgsl`; `extra` are its bindings 5-8
    /// (bias, a_out, z_in, a_in), placeholders where the epilogue does not use them.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        name: &'static str,
        lhs: &View,
        rhs: &View,
        out: &View,
        (rows, cols, inner): (usize, usize, usize),
        epilogue: u32,
        act: Activation,
        extra: [&View; 4],
    ) -> Launch {
        // With epilogue 3 the last of the `cols` columns goes to a_out (the bias gradient).
        let stored_cols = if epilogue == 3 { cols - 1 } else { cols };
        assert!(out.len >= rows * stored_cols, "{name}: output too small");
        let params =
            Matmul { rows: rows as u32, cols: cols as u32, inner: inner as u32, act: act.code(), _pad: [0; 4] };
        let variant = self.matmul_variant;
        let pipeline = self.matmul_pipelines[&(variant, name, epilogue)].clone();
        let tile = variant.tile();
        let [bias, a_out, z_in, a_in] = extra;
        self.launch_with(
            name,
            pipeline,
            params,
            &[(2, lhs), (3, rhs), (4, out), (5, bias), (6, a_out), (7, z_in), (8, a_in)],
            [cols.div_ceil(tile), rows.div_ceil(tile)],
        )
    }

    /// Placeholders for the epilogue bindings a plain matmul does not use.
    fn plain(&self) -> [&View; 4] {
        [&self.placeholder_ro, &self.placeholder_rw, &self.placeholder_ro, &self.placeholder_ro]
    }

    /// `Z[m,n] = A[m,k] W[n,k]^T`
    pub fn matmul_forward(&self, a: &View, w: &View, z: &View, m: usize, k: usize, n: usize) -> Launch {
        self.matmul("matmul_forward", a, w, z, (m, n, k), 0, Activation::Identity, self.plain())
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
        let extra = [b, a_out, &self.placeholder_ro, &self.placeholder_ro];
        self.matmul("matmul_forward", a, w, z, (m, n, k), 1, act, extra)
    }

    /// `dW[n,k] = delta[m,n]^T A[m,k]`
    pub fn matmul_backward_weight(&self, delta: &View, a: &View, dw: &View, m: usize, n: usize, k: usize) -> Launch {
        self.matmul("matmul_backward_weight", delta, a, dw, (n, k, m), 0, Activation::Identity, self.plain())
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
        let extra = [&self.placeholder_ro, db, &self.placeholder_ro, &self.placeholder_ro];
        self.matmul("matmul_backward_weight", delta, a, dw, (n, k + 1, m), 3, Activation::Identity, extra)
    }

    /// `G[m,k] = delta[m,n] W[n,k]`
    pub fn matmul_backward_input(&self, delta: &View, w: &View, g: &View, m: usize, n: usize, k: usize) -> Launch {
        self.matmul("matmul_backward_input", delta, w, g, (m, k, n), 0, Activation::Identity, self.plain())
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
        let extra = [&self.placeholder_ro, &self.placeholder_rw, z, a];
        self.matmul("matmul_backward_input", delta, w, delta_out, (m, k, n), 2, act, extra)
    }

    /// `Z += 1 b^T` (in place), `A = f(Z)`, over `[m, n]`.
    pub fn bias_activation(&self, b: &View, z: &View, a: &View, m: usize, n: usize, act: Activation) -> Launch {
        let params = Elementwise { rows: m as u32, cols: n as u32, act: act.code(), _pad: 0 };
        self.launch("bias_activation", params, &[(2, b), (3, z), (4, a)], Self::elementwise_groups(m * n))
    }

    /// `delta = G ⊙ f'(Z)`, over `[m, n]`.
    #[allow(clippy::too_many_arguments)]
    pub fn activation_backward(
        &self,
        g: &View,
        z: &View,
        a: &View,
        delta: &View,
        m: usize,
        n: usize,
        act: Activation,
    ) -> Launch {
        let params = Elementwise { rows: m as u32, cols: n as u32, act: act.code(), _pad: 0 };
        self.launch(
            "activation_backward",
            params,
            &[(5, g), (6, z), (7, a), (8, delta)],
            Self::elementwise_groups(m * n),
        )
    }

    /// The code layer's delta with the KL sparsity gradient (SPEC.md section 4).
    #[allow(clippy::too_many_arguments)]
    pub fn kl_backward(
        &self,
        g: &View,
        z: &View,
        a: &View,
        rho_hat: &View,
        delta: &View,
        m: usize,
        n: usize,
        act: Activation,
        sparsity: Sparsity,
    ) -> Launch {
        let (mode, rho, beta, temperature) = match sparsity {
            Sparsity::None => {
                panic!("kl_backward without a sparsity penalty: use activation_backward")
            }
            Sparsity::Kl { rho, beta } => (1, rho, beta, 1.0),
            Sparsity::KlFreq { rho, beta, temperature } => (2, rho, beta, temperature),
        };
        let params = Kl {
            rows: m as u32,
            cols: n as u32,
            act: act.code(),
            mode,
            rho: rho as f32,
            beta_over_m: (beta / m as f64) as f32,
            temperature: temperature as f32,
            eps: RHO_HAT_EPS as f32,
        };
        self.launch(
            "kl_backward",
            params,
            &[(2, g), (3, z), (4, a), (5, rho_hat), (6, delta)],
            Self::elementwise_groups(m * n),
        )
    }

    /// `out[j] = scale * sum_i t(x[i,j])` over `[m, n]`.
    pub fn column_sum(&self, x: &View, out: &View, m: usize, n: usize, t: ColumnTransform, scale: f64) -> Launch {
        let (transform, temperature) = match t {
            ColumnTransform::Value => (0, 1.0),
            ColumnTransform::Fires => (1, 1.0),
            ColumnTransform::SoftFires { temperature } => (2, temperature),
        };
        let params = Reduce {
            rows: m as u32,
            cols: n as u32,
            transform,
            _pad: 0,
            scale: scale as f32,
            temperature: temperature as f32,
            _pad1: 0,
            _pad2: 0,
        };
        self.launch("column_sum", params, &[(2, x), (3, out)], [n.div_ceil(64), 1])
    }

    /// `delta_L = (1/m) (Xhat - X) ⊙ f_L'(Z_L)` over `[m, n]`.
    #[allow(clippy::too_many_arguments)]
    pub fn output_delta(
        &self,
        xhat: &View,
        x: &View,
        z: &View,
        delta: &View,
        m: usize,
        n: usize,
        act: Activation,
    ) -> Launch {
        let params = self.loss_params(m, n, act, 0, 0.0, Sparsity::None, 0);
        self.launch("output_delta", params, &[(2, xhat), (3, x), (4, z), (5, delta)], Self::elementwise_groups(m * n))
    }

    /// `out = [J, reconstruction, weight_decay, sparsity, sum of squared errors]`.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_value(
        &self,
        xhat: &View,
        x: &View,
        weights: &View,
        rho_hat: &View,
        out: &View,
        m: usize,
        n: usize,
        weight_decay: f64,
        sparsity: Sparsity,
    ) -> Launch {
        let params = self.loss_params(m, n, Activation::Identity, weights.len, weight_decay, sparsity, rho_hat.len);
        self.launch("loss_value", params, &[(2, xhat), (3, x), (6, weights), (7, rho_hat), (8, out)], [1, 1])
    }

    #[allow(clippy::too_many_arguments)]
    fn loss_params(
        &self,
        m: usize,
        n: usize,
        act: Activation,
        weights_len: usize,
        weight_decay: f64,
        sparsity: Sparsity,
        code_width: usize,
    ) -> Loss {
        let (rho, beta) = sparsity.rho_beta();
        Loss {
            rows: m as u32,
            cols: n as u32,
            act: act.code(),
            weights_len: weights_len as u32,
            inv_m: (1.0 / m as f64) as f32,
            half_lambda: (0.5 * weight_decay) as f32,
            rho: rho as f32,
            beta: beta as f32,
            code_width: code_width as u32,
            sparsity: u32::from(sparsity != Sparsity::None),
            eps: RHO_HAT_EPS as f32,
            _pad: 0,
        }
    }

    /// `p <- p - lr (g + lambda p)` on the first `weights_len` elements, `p <- p - lr g` after.
    pub fn sgd_update(&self, grads: &View, params: &View, weights_len: usize, lr: f64, weight_decay: f64) -> Launch {
        let uniform =
            Sgd { len: params.len as u32, weights_len: weights_len as u32, lr: lr as f32, lambda: weight_decay as f32 };
        self.launch("sgd_update", uniform, &[(2, grads), (3, params)], Self::elementwise_groups(params.len))
    }
}

impl Kernels {
    /// `x[i, :] = data[order[cursor + i], :]` for `rows` rows (`gather = false`: `data[i, :]`).
    #[allow(clippy::too_many_arguments)]
    pub fn gather_rows(
        &self,
        data: &View,
        order: &View,
        cursor: &View,
        x: &View,
        rows: usize,
        cols: usize,
        gather: bool,
    ) -> Launch {
        let params = Gather { rows: rows as u32, cols: cols as u32, gather: u32::from(gather), _pad: 0 };
        self.launch(
            "gather_rows",
            params,
            &[(2, data), (3, order), (4, cursor), (5, x)],
            Self::elementwise_groups(rows * cols),
        )
    }

    /// `cursor += rows`: the next step's minibatch starts after this one.
    pub fn advance_cursor(&self, cursor: &View, rows: usize) -> Launch {
        let params = Gather { rows: rows as u32, cols: 0, gather: 0, _pad: 0 };
        self.launch("advance_cursor", params, &[(6, cursor)], [1, 1])
    }

    /// The fused path's forward pass (see `shaders/fused.wgsl`): one invocation per row.
    pub fn fused_forward(&self, net: &FusedNet, b: &FusedBuffers, data: &View) -> Launch {
        self.launch(
            "fused_forward",
            *net,
            &[
                (2, &b.table),
                (3, &b.params),
                (4, data),
                (5, &b.order),
                (6, &b.cursor),
                (7, &b.z),
                (8, &b.a),
                (9, &b.delta),
            ],
            [(net.rows as usize).div_ceil(64), 1],
        )
    }

    /// The fused path's backward pass: one invocation per row.
    pub fn fused_backward(&self, net: &FusedNet, b: &FusedBuffers) -> Launch {
        self.launch(
            "fused_backward",
            *net,
            &[(2, &b.table), (3, &b.params), (10, &b.z), (11, &b.a), (12, &b.rho_hat), (13, &b.delta)],
            [(net.rows as usize).div_ceil(64), 1],
        )
    }

    /// The fused path's gradient and SGD update: one invocation per parameter.
    pub fn fused_update(&self, net: &FusedNet, b: &FusedBuffers) -> Launch {
        self.launch(
            "fused_update",
            *net,
            &[(2, &b.table), (14, &b.delta), (15, &b.a), (16, &b.params), (17, &b.cursor)],
            [(net.total_params as usize).div_ceil(64), 1],
        )
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Gather {
    rows: u32,
    cols: u32,
    gather: u32,
    _pad: u32,
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
    pub lr: f32,
    pub lambda: f32,
    pub eps: f32,
    pub total_params: u32,
    pub gather: u32,
    pub x_off: u32,
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
    pub cursor: View,
    pub z: View,
    pub a: View,
    pub delta: View,
    pub rho_hat: View,
}

// ---------------------------------------------------------------------------------------------
// Buffer helpers
// ---------------------------------------------------------------------------------------------

impl Gpu {
    /// A storage buffer of `len` f32, zeroed, that kernels read and write and that can be
    /// copied in and out.
    pub fn storage(&self, label: &str, len: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (len.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    pub fn upload(&self, label: &str, data: &[f32]) -> View {
        let buffer = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(if data.is_empty() { &[0.0f32] } else { data }),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        });
        View { buffer, offset: 0, len: data.len() }
    }

    /// Runs `launches` in one submit and waits for them.
    pub fn run(&self, launches: &[Launch]) {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        record(&mut encoder, launches);
        self.queue.submit([encoder.finish()]);
    }

    /// Copies `views` to one staging buffer in one submit, maps it, and returns their contents.
    /// This is the only place the host waits for the device.
    pub fn download_many(&self, views: &[&View]) -> Vec<Vec<f32>> {
        let total: u64 = views.iter().map(|v| v.byte_len()).sum();
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("download"),
            size: total.max(4),
            // MAP_READ buffers may only be COPY_DST: the device writes here, the host reads.
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        let mut at = 0;
        for v in views {
            encoder.copy_buffer_to_buffer(&v.buffer, v.byte_offset(), &staging, at, v.byte_len());
            at += v.byte_len();
        }
        self.queue.submit([encoder.finish()]);
        let bytes = self.map_read(&staging);
        let floats: &[f32] = bytemuck::cast_slice(&bytes);
        let mut out = Vec::new();
        let mut at = 0;
        for v in views {
            out.push(floats[at..at + v.len].to_vec());
            at += v.len;
        }
        out
    }

    /// A storage buffer holding `bytes` (u32 tables and the like), as a view of 4-byte words.
    pub fn upload_bytes(&self, label: &str, bytes: &[u8]) -> View {
        let buffer = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: if bytes.is_empty() { &[0; 4] } else { bytes },
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        });
        View { buffer, offset: 0, len: bytes.len() / 4 }
    }

    pub fn download(&self, view: &View) -> Vec<f32> {
        self.download_many(&[view]).pop().unwrap()
    }

    /// Maps a MAP_READ buffer after the submits that fill it, and returns a copy of its bytes.
    /// The futures-intrusive oneshot carries the map callback's result to this thread.
    pub fn map_read(&self, buffer: &wgpu::Buffer) -> Vec<u8> {
        let slice = buffer.slice(..);
        let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).expect("device lost while waiting for a read-back");
        pollster::block_on(rx.receive()).expect("map callback dropped").expect("mapping a read-back buffer failed");
        let bytes = slice.get_mapped_range().expect("mapped range").to_vec();
        buffer.unmap();
        bytes
    }
}
