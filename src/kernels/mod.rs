//! The WGSL kernels and their Rust launchers, one host file per shader family:
//! [`matmul`] (`shaders/matmul*.wgsl`), [`elementwise`] (sparsity, reduce, fires, loss and
//! update shaders), [`step`] (minibatch gathering and the fused small-MLP step) and
//! [`dictionary`] (TopK, pre-bias, decoder norm, AuxK, L1 and BatchTopK's threshold). Each launcher
//! has the name of its WGSL entry point and of its f64 twin in `reference.rs`, and returns a
//! [`Launch`]: a pipeline with its bind groups, workgroup counts and napkin-math cost, built once
//! and recorded into as many steps as needed.
//!
//! Pipelines are keyed by enums ([`Kernel`], and [`MatmulVariant`] x [`MatmulOp`] x
//! [`Epilogue`] for the matmuls), so a missing pipeline cannot be asked for. Every kernel
//! declares its bindings ([`Kernel::bindings`], [`matmul::BINDINGS`]) and its pipeline is built
//! with that bind-group layout, so a shader that disagrees fails at creation with a message.
//!
//! Every kernel reads a `Grid` uniform (binding 0) holding the workgroup offset of its dispatch,
//! so a grid larger than the adapter's `max_compute_workgroups_per_dimension` is split into
//! several dispatches that each cover a part, never truncated. Binding 1 is the kernel's own
//! uniform block.
//!
//! Adding a kernel: its entry point in a shader file, a [`Kernel`] variant with its source and
//! bindings, a launcher here, an f64 twin of the same name in `reference.rs`, and a row in
//! `check::CHECKS`.

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::layout::ALIGN_FLOATS;
use bytemuck::{Pod, Zeroable};
use std::collections::HashMap;
use wgpu::util::DeviceExt;

/// A shader's source: `shaders/common.wgsl` (the `Grid` binding, the step state, activation,
/// sigmoid and KL functions), then the named files, joined at compile time since WGSL has no
/// include.
macro_rules! shader {
    ($($file:literal),+) => {
        concat!(include_str!("../../shaders/common.wgsl"), $(include_str!(concat!("../../shaders/", $file))),+)
    };
}

pub mod dictionary;
pub mod elementwise;
pub mod matmul;
pub mod step;

pub use matmul::{Epilogue, MatmulOp, MatmulVariant, PairInput};
pub use step::{FusedBuffers, FusedLayer, FusedNet, FUSED_MAX_WIDTH};

/// Shader sources of the kernels that are not matmuls (those are in [`matmul::source`]).
pub mod source {
    pub const SPARSITY: &str = shader!("sparsity.wgsl");
    pub const REDUCE: &str = shader!("reduce.wgsl");
    pub const FIRES: &str = shader!("fires.wgsl");
    pub const LOSS: &str = shader!("loss.wgsl");
    pub const UPDATE: &str = shader!("update.wgsl");
    pub const DATA: &str = shader!("data.wgsl");
    pub const FUSED: &str = shader!("fused.wgsl");
    pub const TOPK: &str = shader!("topk.wgsl");
    pub const PREBIAS: &str = shader!("prebias.wgsl");
    pub const DECODER: &str = shader!("decoder.wgsl");
    pub const AUXK: &str = shader!("auxk.wgsl");
    pub const L1: &str = shader!("l1.wgsl");
    pub const THRESHOLD: &str = shader!("threshold.wgsl");
    pub const JUMPRELU: &str = shader!("jumprelu.wgsl");
    pub const PANEL: &str = shader!("matmul_rows.wgsl", "panel.wgsl");
}

/// How a kernel uses a storage binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

use Access::{Read as R, ReadWrite as W};

/// What every kernel needs of an adapter, checked before any pipeline is made so that an adapter
/// with smaller limits (WebGPU's downlevel defaults allow 4 storage buffers per stage) is refused
/// with one line naming the limit, not a validation error per pipeline.
fn check_limits(gpu: &Gpu) -> Result<()> {
    let l = &gpu.limits;
    let storage = Kernel::ALL.iter().map(|k| k.bindings().len()).chain([matmul::BINDINGS.len()]).max().unwrap_or(0);
    let fail = |what: String| {
        Err(Error::runtime(format!(
            "{}: {what}; use another adapter (`sae adapters` lists them and their limits)",
            gpu.describe()
        )))
    };
    if (l.max_storage_buffers_per_shader_stage as usize) < storage {
        return fail(format!(
            "allows {} storage buffers per shader stage, sae's kernels bind up to {storage} (WebGPU's default is 8)",
            l.max_storage_buffers_per_shader_stage
        ));
    }
    if l.max_compute_invocations_per_workgroup < 256 || l.max_compute_workgroup_size_x < 256 {
        return fail(format!(
            "allows {} invocations per workgroup ({} along x), sae's reductions use 256 (WebGPU's default)",
            l.max_compute_invocations_per_workgroup, l.max_compute_workgroup_size_x
        ));
    }
    Ok(())
}

/// Every entry point that is not a matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    KlBackward,
    ColumnSum,
    FireCount,
    FireCountRho,
    OutputDelta,
    LossValue,
    SgdUpdate,
    MomentumUpdate,
    AdamUpdate,
    GradNorm,
    GatherRows,
    AdvanceCursor,
    FusedForward,
    FusedBackward,
    FusedUpdate,
    TopK,
    TopKRank,
    CenterRows,
    PreBiasBackward,
    DecoderProject,
    DecoderNormalize,
    AuxkDelta,
    ColumnNorms,
    L1DecoderGrad,
    BatchThreshold,
    ThresholdCode,
    JumpreluForward,
    JumpreluBackward,
    PanelForward,
}

impl Kernel {
    pub const ALL: [Kernel; 29] = [
        Kernel::KlBackward,
        Kernel::ColumnSum,
        Kernel::FireCount,
        Kernel::FireCountRho,
        Kernel::OutputDelta,
        Kernel::LossValue,
        Kernel::SgdUpdate,
        Kernel::MomentumUpdate,
        Kernel::AdamUpdate,
        Kernel::GradNorm,
        Kernel::GatherRows,
        Kernel::AdvanceCursor,
        Kernel::FusedForward,
        Kernel::FusedBackward,
        Kernel::FusedUpdate,
        Kernel::TopK,
        Kernel::TopKRank,
        Kernel::CenterRows,
        Kernel::PreBiasBackward,
        Kernel::DecoderProject,
        Kernel::DecoderNormalize,
        Kernel::AuxkDelta,
        Kernel::ColumnNorms,
        Kernel::L1DecoderGrad,
        Kernel::BatchThreshold,
        Kernel::ThresholdCode,
        Kernel::JumpreluForward,
        Kernel::JumpreluBackward,
        Kernel::PanelForward,
    ];

    /// The WGSL entry point and its launcher have this name, and so does its f64 twin in
    /// `reference.rs` (`loss_value`'s is `reference::loss`, which also gives the terms apart;
    /// the step kernels are checked as whole steps, see [`Kernel::checked_alone`]).
    pub fn name(self) -> &'static str {
        match self {
            Kernel::KlBackward => "kl_backward",
            Kernel::ColumnSum => "column_sum",
            Kernel::FireCount => "fire_count",
            Kernel::FireCountRho => "fire_count_rho",
            Kernel::OutputDelta => "output_delta",
            Kernel::LossValue => "loss_value",
            Kernel::SgdUpdate => "sgd_update",
            Kernel::MomentumUpdate => "momentum_update",
            Kernel::AdamUpdate => "adam_update",
            Kernel::GradNorm => "grad_norm",
            Kernel::GatherRows => "gather_rows",
            Kernel::AdvanceCursor => "advance_cursor",
            Kernel::FusedForward => "fused_forward",
            Kernel::FusedBackward => "fused_backward",
            Kernel::FusedUpdate => "fused_update",
            Kernel::TopK => "topk",
            Kernel::TopKRank => "topk_rank",
            Kernel::CenterRows => "center_rows",
            Kernel::PreBiasBackward => "pre_bias_backward",
            Kernel::DecoderProject => "decoder_project",
            Kernel::DecoderNormalize => "decoder_normalize",
            Kernel::AuxkDelta => "auxk_delta",
            Kernel::ColumnNorms => "column_norms",
            Kernel::L1DecoderGrad => "l1_decoder_grad",
            Kernel::BatchThreshold => "batch_threshold",
            Kernel::ThresholdCode => "threshold_code",
            Kernel::JumpreluForward => "jumprelu_forward",
            Kernel::JumpreluBackward => "jumprelu_backward",
            Kernel::PanelForward => "panel_forward",
        }
    }

    fn source(self) -> &'static str {
        match self {
            Kernel::KlBackward => source::SPARSITY,
            Kernel::ColumnSum => source::REDUCE,
            Kernel::FireCount | Kernel::FireCountRho => source::FIRES,
            Kernel::OutputDelta | Kernel::LossValue => source::LOSS,
            Kernel::SgdUpdate | Kernel::MomentumUpdate | Kernel::AdamUpdate | Kernel::GradNorm => source::UPDATE,
            Kernel::GatherRows | Kernel::AdvanceCursor => source::DATA,
            Kernel::FusedForward | Kernel::FusedBackward | Kernel::FusedUpdate => source::FUSED,
            Kernel::TopK | Kernel::TopKRank => source::TOPK,
            Kernel::CenterRows | Kernel::PreBiasBackward => source::PREBIAS,
            Kernel::DecoderProject | Kernel::DecoderNormalize => source::DECODER,
            Kernel::AuxkDelta => source::AUXK,
            Kernel::ColumnNorms | Kernel::L1DecoderGrad => source::L1,
            Kernel::BatchThreshold | Kernel::ThresholdCode => source::THRESHOLD,
            Kernel::JumpreluForward | Kernel::JumpreluBackward => source::JUMPRELU,
            Kernel::PanelForward => source::PANEL,
        }
    }

    /// The storage bindings (number, access) the entry point declares after the two uniforms,
    /// in the order its launcher passes the tensors.
    pub fn bindings(self) -> &'static [(u32, Access)] {
        match self {
            Kernel::KlBackward => &[(2, R), (3, R), (4, R), (5, R), (6, W), (7, R), (8, R)],
            Kernel::ColumnSum => &[(2, R), (3, W)],
            Kernel::FireCount => &[(2, R), (3, W), (4, W), (5, W), (6, R), (7, R)],
            Kernel::FireCountRho => &[(2, R), (3, W), (4, W), (5, W), (6, R), (7, R), (8, R), (9, W)],
            Kernel::OutputDelta => &[(2, R), (3, R), (4, R), (5, W)],
            Kernel::LossValue => &[(2, R), (3, R), (6, R), (7, R), (8, W), (9, R), (10, R)],
            Kernel::SgdUpdate => &[(2, R), (3, W), (4, W), (7, R), (8, R)],
            Kernel::MomentumUpdate => &[(2, R), (3, W), (4, W), (7, R), (8, R), (5, W)],
            Kernel::AdamUpdate => &[(2, R), (3, W), (4, W), (7, R), (8, R), (5, W), (6, W)],
            Kernel::GradNorm => &[(2, R), (9, W)],
            Kernel::GatherRows => &[(2, R), (3, R), (6, W), (5, W)],
            Kernel::AdvanceCursor => &[(6, W)],
            Kernel::FusedForward => &[(2, R), (3, R), (4, R), (5, R), (6, R), (7, W), (8, W), (9, W)],
            Kernel::FusedBackward => &[(2, R), (3, R), (10, R), (11, R), (12, R), (13, W), (6, R), (19, R)],
            Kernel::FusedUpdate => &[(2, R), (14, R), (15, R), (16, W), (17, R), (18, W), (19, R)],
            Kernel::TopK | Kernel::TopKRank => &[(2, R), (3, W), (4, R)],
            Kernel::CenterRows => &[(2, R), (3, R), (4, W)],
            Kernel::PreBiasBackward => &[(3, R), (4, W)],
            Kernel::DecoderProject | Kernel::DecoderNormalize => &[(2, W), (3, W)],
            Kernel::AuxkDelta => &[(2, R), (3, R), (4, R), (5, W)],
            Kernel::ColumnNorms => &[(2, R), (3, W)],
            Kernel::L1DecoderGrad => &[(2, R), (4, R), (5, W), (6, R), (7, R)],
            Kernel::BatchThreshold => &[(2, R), (3, W)],
            Kernel::ThresholdCode => &[(4, R), (5, W)],
            Kernel::JumpreluForward => &[(2, R), (3, R), (4, W)],
            Kernel::JumpreluBackward => &[(2, R), (3, R), (4, W), (5, R), (6, W), (7, R), (8, R)],
            Kernel::PanelForward => &[(2, R), (3, R), (4, W), (5, W), (6, W)],
        }
    }

    /// Whether a device with `features` can run the kernel (the panel forward uses subgroups).
    pub fn available(self, features: wgpu::Features) -> bool {
        self != Kernel::PanelForward || features.contains(wgpu::Features::SUBGROUP)
    }

    /// Whether the kernel is checked on its own against its twin (`check::CHECKS`); the step
    /// kernels are checked as whole training steps instead (`check::training_steps`).
    pub fn checked_alone(self) -> bool {
        !matches!(
            self,
            Kernel::GatherRows
                | Kernel::AdvanceCursor
                | Kernel::FusedForward
                | Kernel::FusedBackward
                | Kernel::FusedUpdate
        )
    }
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
    /// The first `len` elements.
    pub fn head(&self, len: usize) -> View {
        self.slice(0, len)
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

/// Napkin math of one launch, for the benchmark: what it is, its shape, the FLOPs it does and
/// the bytes it moves (inputs read once, outputs written once).
#[derive(Clone, Debug, PartialEq)]
pub struct Cost {
    /// The entry point, with what its epilogue adds and the layer (e.g. `matmul_forward+bias_act L2`).
    pub label: String,
    pub shape: String,
    pub flops: f64,
    pub bytes: f64,
}

/// One kernel launch: a pipeline and, per dispatch, a bind group and its workgroup counts.
#[derive(Clone, Debug)]
pub struct Launch {
    pub name: &'static str,
    pub cost: Cost,
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
    /// The same launch, labelled with the layer it serves.
    pub fn at_layer(mut self, l: usize) -> Launch {
        self.cost.label = format!("{} L{l}", self.cost.label);
        self
    }
    /// The same launch, with a note on what it computes (e.g. `rho_hat`).
    pub fn noting(mut self, what: &str) -> Launch {
        self.cost.shape = format!("{} ({what})", self.cost.shape);
        self
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

/// `Grid` in `shaders/common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Grid {
    offset: [u32; 4],
}

/// A pipeline with the bind-group layout it was declared with.
#[derive(Clone, Debug)]
struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    bindings: &'static [(u32, Access)],
}

/// Which pipeline: a kernel, or a matmul's variant, operation and epilogue (a
/// pipeline-overridable constant, so each pipeline compiles only its own epilogue).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PipelineKey {
    Kernel(Kernel),
    Matmul(MatmulVariant, MatmulOp, Epilogue),
}

/// What start-up cost: pipelines created so far and the host time spent creating them (a
/// driver may compile further at the first dispatch; that time falls in the first step).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PipelineStats {
    pub created: usize,
    pub seconds: f64,
}

/// The pipelines made so far, with the shader modules they came from.
#[derive(Default)]
struct PipelineStore {
    pipelines: HashMap<PipelineKey, Pipeline>,
    /// Keyed by the source's address: one module per shader file.
    modules: HashMap<usize, wgpu::ShaderModule>,
    stats: PipelineStats,
}

/// The kernels of one device. A pipeline is created when a launcher first asks for it, so a
/// run pays only for the kernels its path uses (see docs/design.md section 13).
pub struct Kernels {
    pub gpu: Gpu,
    store: std::sync::Mutex<PipelineStore>,
    /// The driver's pipeline cache, where the backend offers one (see [`crate::cache`]).
    cache: Option<wgpu::PipelineCache>,
    /// Which matmul implementation the launchers use (one this device runs).
    matmul_variant: MatmulVariant,
    /// Whether `Subgroup` launches take the vec4 kernel where the widths allow (the default;
    /// off only to compare the two).
    matmul_vec4: bool,
    /// Whether the vec4 forward takes 64x64 tiles where a product is big enough
    /// (`matmul::wide_fits`); tests turn it off to compare the two bit for bit.
    matmul_wide: bool,
    /// Whether `gather_rows` copies a row an invocation (CPU adapters, where a workgroup costs
    /// more than its loads) or an element (GPUs, where neighbouring invocations then read
    /// neighbouring addresses). The same copy either way.
    gather_per_row: bool,
    /// Four-element buffers bound where an entry point's binding is unused (a read-only and a
    /// read-write one: one buffer cannot be both in a dispatch).
    placeholder_ro: View,
    placeholder_rw: View,
    /// A second read-write one: the matmuls have two read-write epilogue bindings.
    placeholder_rw2: View,
    /// Most workgroups one dispatch may have along a dimension. The adapter's limit by
    /// default; tests lower it to exercise splitting without huge inputs.
    pub max_groups: u32,
}

impl Kernels {
    /// The kernels of `gpu`, no pipeline created yet. An adapter whose limits are too small is
    /// a runtime failure naming the limit.
    pub fn new(gpu: &Gpu) -> Result<Kernels> {
        check_limits(gpu)?;
        Ok(Kernels {
            // Four floats: one element of the vec4 kernels' bindings.
            placeholder_ro: View::whole(&gpu.storage("placeholder (read)", 4)),
            placeholder_rw: View::whole(&gpu.storage("placeholder (read-write)", 4)),
            placeholder_rw2: View::whole(&gpu.storage("placeholder (read-write, 2)", 4)),
            gpu: gpu.clone(),
            store: Default::default(),
            cache: crate::cache::open(gpu),
            matmul_variant: MatmulVariant::for_adapter(&gpu.info, gpu.features),
            matmul_vec4: true,
            matmul_wide: true,
            gather_per_row: gpu.info.device_type == wgpu::DeviceType::Cpu,
            max_groups: gpu.limits.max_compute_workgroups_per_dimension,
        })
    }

    /// Creates every pipeline this device runs now (`sae check` and the tests: a shader an
    /// adapter rejects is then a runtime failure naming the adapter).
    pub fn create_all(&self) -> Result<()> {
        for k in Kernel::ALL.into_iter().filter(|k| k.available(self.gpu.features)) {
            self.pipeline(PipelineKey::Kernel(k));
        }
        let every = MatmulVariant::ALL.into_iter().chain([MatmulVariant::SubgroupVec4, MatmulVariant::SubgroupWide]);
        for variant in every.filter(|v| v.available(self.gpu.features)) {
            for &op in variant.ops() {
                for &epilogue in op.epilogues() {
                    self.pipeline(PipelineKey::Matmul(variant, op, epilogue));
                }
            }
        }
        self.gpu.check()
    }

    /// Pipelines created so far and the time spent creating them.
    pub fn pipeline_stats(&self) -> PipelineStats {
        self.store.lock().map(|s| s.stats).unwrap_or_default()
    }

    /// Writes the driver's pipeline cache back (temporary name, then rename); nothing where the
    /// backend has none. A failure to write is not an error: the next run compiles again.
    pub fn save_cache(&self) {
        if let Some(cache) = &self.cache {
            crate::cache::save(&self.gpu, cache);
        }
    }

    /// The pipeline for `key`, created on first use. A shader or layout the adapter rejects
    /// is recorded on the device and reported as a runtime failure naming the adapter at the
    /// next wait ([`Gpu::check`]); launchers stay infallible.
    fn pipeline(&self, key: PipelineKey) -> Pipeline {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = store.pipelines.get(&key) {
            return p.clone();
        }
        let start = std::time::Instant::now();
        let (entry, src, bindings, constants) = match key {
            PipelineKey::Kernel(k) => (k.name(), k.source(), k.bindings(), vec![]),
            PipelineKey::Matmul(variant, op, epilogue) => {
                // PAIR: the pair's jobs read their product and mode from private copies; every
                // other matmul pipeline folds them to its uniform and EPILOGUE.
                let pair = if op == MatmulOp::BackwardPair { 1.0 } else { 0.0 };
                let constants = vec![("EPILOGUE", epilogue.code() as f64), ("PAIR", pair)];
                (variant.entry(op), variant.source(), &matmul::BINDINGS[..], constants)
            }
        };
        let device = &self.gpu.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = store
            .modules
            .entry(src.as_ptr() as usize)
            .or_insert_with(|| {
                device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(entry),
                    source: wgpu::ShaderSource::Wgsl(src.into()),
                })
            })
            .clone();
        let layout = bind_group_layout(device, entry, bindings);
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants: &constants, ..Default::default() },
            cache: self.cache.as_ref(),
        });
        if let Some(err) = pollster::block_on(scope.pop()) {
            self.gpu.note_error(format!("shader compilation of {entry} failed: {err}"));
        }
        let p = Pipeline { pipeline, layout, bindings };
        store.pipelines.insert(key, p.clone());
        store.stats.created += 1;
        store.stats.seconds += start.elapsed().as_secs_f64();
        p
    }

    /// The matmul variant the launchers use.
    pub fn matmul_variant(&self) -> MatmulVariant {
        self.matmul_variant
    }

    /// Chooses the matmul variant the launchers use; one this device cannot run (see
    /// [`Self::matmul_variants`]) is bad input.
    pub fn set_matmul_variant(&mut self, variant: MatmulVariant) -> Result<()> {
        if !self.matmul_variants().contains(&variant) {
            return Err(Error::input(format!(
                "the {} matmul variant does not run on {}",
                variant.name(),
                self.gpu.describe()
            )));
        }
        self.matmul_variant = variant;
        Ok(())
    }

    /// Whether `Subgroup` launches take the vec4 kernel where a product's widths allow
    /// (default on; the results are the same bit for bit, see `matmul::vec4_fits`).
    pub fn set_matmul_vec4(&mut self, on: bool) {
        self.matmul_vec4 = on;
    }

    /// Whether `Subgroup` launches take the vec4 kernel where the widths allow.
    pub fn matmul_vec4(&self) -> bool {
        self.matmul_vec4
    }

    /// Whether the vec4 forward takes 64x64 tiles for big products (default on; the results
    /// are the same bit for bit, see `matmul::wide_fits`).
    pub fn set_matmul_wide(&mut self, on: bool) {
        self.matmul_wide = on;
    }

    /// Chooses how `gather_rows` spreads its copy (see the field; tests compare the two).
    pub fn set_gather_per_row(&mut self, on: bool) {
        self.gather_per_row = on;
    }

    /// The matmul variants this device runs, in [`MatmulVariant::ALL`] order.
    pub fn matmul_variants(&self) -> Vec<MatmulVariant> {
        MatmulVariant::ALL.into_iter().filter(|v| v.available(self.gpu.features)).collect()
    }

    /// Builds a launch of `kernel` over a `groups` grid of workgroups; `tensors` are its
    /// storage bindings in the order of [`Kernel::bindings`].
    fn launch<P: Pod>(&self, kernel: Kernel, params: P, tensors: &[&View], groups: [usize; 2], cost: Cost) -> Launch {
        let pipeline = self.pipeline(PipelineKey::Kernel(kernel));
        self.launch_with(kernel.name(), &pipeline, params, tensors, groups, cost)
    }

    /// A launch of `pipeline`, its grid split into dispatches of at most `max_groups` per
    /// dimension.
    fn launch_with<P: Pod>(
        &self,
        name: &'static str,
        pipeline: &Pipeline,
        params: P,
        tensors: &[&View],
        groups: [usize; 2],
        cost: Cost,
    ) -> Launch {
        assert_eq!(tensors.len(), pipeline.bindings.len(), "{name}: the launcher passes a tensor per declared binding");
        let device = &self.gpu.device;
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
                for (&(binding, _), view) in pipeline.bindings.iter().zip(tensors) {
                    entries.push(wgpu::BindGroupEntry { binding, resource: view.binding() });
                }
                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some(name),
                    layout: &pipeline.layout,
                    entries: &entries,
                });
                dispatches.push((bind_group, [gx as u32, gy as u32]));
            }
        }
        Launch { name, cost, pipeline: pipeline.pipeline.clone(), dispatches }
    }

    fn elementwise_groups(len: usize) -> [usize; 2] {
        [len.div_ceil(256), 1]
    }
}

impl Drop for Kernels {
    /// Keeps what the driver compiled for the next run ([`crate::cache`]).
    fn drop(&mut self) {
        if self.pipeline_stats().created > 0 {
            self.save_cache();
        }
    }
}

/// The bind-group layout a kernel declares: the grid and its uniform block, then its storage
/// bindings.
fn bind_group_layout(device: &wgpu::Device, label: &str, bindings: &[(u32, Access)]) -> wgpu::BindGroupLayout {
    let entry = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
        count: None,
    };
    let mut entries = vec![entry(0, wgpu::BufferBindingType::Uniform), entry(1, wgpu::BufferBindingType::Uniform)];
    for &(binding, access) in bindings {
        entries.push(entry(binding, wgpu::BufferBindingType::Storage { read_only: access == Access::Read }));
    }
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(label), entries: &entries })
}
