//! sae-wgpu: sparse autoencoders trained entirely in WebGPU compute shaders.
//!
//! * [`model`]: the model spec, loss settings and parameters (SPEC.md sections 2-3).
//! * [`reference`]: the f64 CPU reference, one twin per kernel, and the whole step.
//! * [`device`]: headless adapter selection.
//! * [`kernels`]: the WGSL kernels (`shaders/`) and their launchers.
//! * [`data`]: `.npy` / `.csv` loading and saving, with errors naming file, row and column.
//! * [`checkpoint`]: safetensors checkpoints in PyTorch naming, with the model spec inside.
//! * [`trainer`]: device-resident buffers and the schedule of a training step.

pub mod bench;
pub mod check;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod kernels;
pub mod model;
pub mod reference;
pub mod synthetic;
pub mod train;
pub mod trainer;

pub use device::{AdapterRequest, Gpu};
pub use model::{Activation, LossConfig, ModelSpec, Params, Sparsity};
pub use trainer::Trainer;
