//! Inference: the forward pass alone, for `sae encode`. It shares the training step's layered
//! forward launches (`trainer::schedule::layered_forward`) but none of its gradients,
//! optimizer state or metrics.

use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::kernels::step::Rows;
use crate::kernels::{Kernels, Launch, View};
use crate::layout::{ActivationLayout, ParamLayout, StepState};
use crate::model::{ModelSpec, Params};
use crate::trainer::schedule::{layered_forward, Activations};
use crate::trainer::StepPath;
use std::collections::HashMap;

/// A model's forward pass on one device, for minibatches of up to `batch` rows.
pub struct Encoder {
    kernels: Kernels,
    spec: ModelSpec,
    layout: ParamLayout,
    params: View,
    acts: Activations,
    x_staging: View,
    /// Bound by `gather_rows` but unused for host-written rows.
    order: View,
    state: View,
    batch: usize,
    /// Forward launches per row count, built once.
    forwards: HashMap<usize, Vec<Launch>>,
}

impl Encoder {
    pub fn new(gpu: &Gpu, spec: &ModelSpec, params: &Params, batch: usize) -> Result<Encoder> {
        spec.validate().map_err(Error::Input)?;
        params.check_shapes(spec).map_err(Error::Input)?;
        if batch == 0 {
            return Err(Error::input("batch size must be at least 1"));
        }
        ActivationLayout::check_layers(spec, batch, &gpu.limits)?;
        let layout = ParamLayout::new(spec);
        layout.check(spec, &gpu.limits)?;
        Ok(Encoder {
            kernels: Kernels::new(gpu)?,
            params: gpu.upload("params", &layout.flatten(params)),
            acts: Activations::new(gpu, spec, batch, StepPath::Layered, None),
            x_staging: View::whole(&gpu.storage("x staging", batch * spec.input_width())),
            order: View::whole(&gpu.storage("order", 1)),
            state: View::whole(&gpu.storage("step state", StepState::WORDS)),
            spec: spec.clone(),
            layout,
            batch,
            forwards: HashMap::new(),
        })
    }

    /// Activations of layer `l` (e.g. the code layer, or the output) for the rows of `x`
    /// (row-major, `n x n_0`), a minibatch at a time.
    pub fn activations(&mut self, x: &[f32], l: usize) -> Result<Vec<f32>> {
        let n0 = self.spec.input_width();
        if x.is_empty() || !x.len().is_multiple_of(n0) || l > self.spec.layers() {
            return Err(Error::input(format!(
                "encode takes whole rows of {n0} values and a layer up to {}",
                self.spec.layers()
            )));
        }
        let nl = self.spec.sizes[l];
        let gpu = self.kernels.gpu.clone();
        let mut out = Vec::with_capacity(x.len() / n0 * nl);
        for rows in x.chunks(self.batch * n0) {
            let m = rows.len() / n0;
            if !self.forwards.contains_key(&m) {
                let sources = (&self.x_staging, &self.order, &self.state);
                let launches = layered_forward(
                    &self.kernels,
                    &self.spec,
                    &self.params,
                    &self.layout,
                    &self.acts,
                    sources,
                    Rows::Host,
                    m,
                    false,
                    None,
                );
                self.forwards.insert(m, launches);
            }
            gpu.queue.write_buffer(&self.x_staging.buffer, 0, bytemuck::cast_slice(rows));
            gpu.run(&self.forwards[&m]);
            out.extend(gpu.download(&self.acts.a[l].head(m * nl))?);
        }
        Ok(out)
    }
}
