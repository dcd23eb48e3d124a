//! What the `sae` command shares with programs built on the library (the examples): `sae train`
//! as a function of its settings, and the helpers every subcommand uses.

pub mod train;

use crate::device::{self, AdapterRequest, Gpu};
use crate::{Error, Result};

/// The adapter request of `--backend` and `--adapter`; an unknown backend is bad input.
pub fn adapter_request(backend: Option<String>, adapter: Option<String>) -> Result<AdapterRequest> {
    if let Some(b) = &backend {
        device::parse_backends(b).map_err(|e| e.context("--backend"))?;
    }
    Ok(AdapterRequest { backend, adapter_name: adapter })
}

/// The device `req` asks for (no adapter is a runtime failure saying what to install).
pub fn open_gpu(req: &AdapterRequest) -> Result<Gpu> {
    Gpu::new(req)
}

/// Bad input from a message.
pub fn bad(msg: impl Into<String>) -> Error {
    Error::Input(msg.into())
}
