//! sae-wgpu: sparse autoencoders trained entirely in WebGPU compute shaders. The design (model,
//! loss, gradients, the step schedule, memory layout and file contracts) is in docs/design.md.
//!
//! * [`model`]: the model spec, loss settings and parameters (design sections 2-3).
//! * [`reference`]: the f64 CPU reference, one twin per kernel, and the whole step.
//! * [`layout`]: every size and offset: parameters, activations, metrics, the step state.
//! * [`device`]: headless adapter selection, buffers and read-backs.
//! * [`kernels`]: the WGSL kernels (`shaders/`) and their launchers, created on first use.
//! * [`cache`]: the driver's pipeline cache on disk.
//! * [`trainer`]: device-resident buffers, the schedule of a training step, metrics.
//! * [`train`]: the training loop over epochs.
//! * [`encoder`]: the forward pass alone, for inference.
//! * [`data`], [`checkpoint`], [`synthetic`]: data files, safetensors checkpoints, built-in data.
//! * [`saelens`]: SAELens's directory format, written and read.
//! * [`stream`]: training data larger than memory, read in chunks through a mixing buffer.
//! * [`check`], [`bench`]: kernels against their twins, and timings with napkin math.
//! * [`error`]: the error type, with its kind (bad input or runtime failure).

pub mod bench;
pub mod cache;
pub mod check;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod device;
pub mod encoder;
pub mod error;
pub mod kernels;
pub mod layout;
pub mod lbfgs;
pub mod model;
pub mod optim;
pub mod patches;
pub mod reference;
pub mod report;
pub mod saelens;
pub mod stream;
pub mod synthetic;
pub mod train;
pub mod trainer;

pub use device::{AdapterRequest, Gpu};
pub use error::{Error, Result};
pub use model::{Activation, LossConfig, ModelSpec, Params, Sparsity};
pub use trainer::Trainer;
