//! `sae adapters`: every adapter wgpu sees, with the limits that matter here.

use crate::adapter_request;
use clap::Args;
use sae_wgpu::device::{self, Gpu};
use sae_wgpu::kernels::MatmulVariant;
use sae_wgpu::{Error, Result};

#[derive(Args)]
pub struct AdapterArgs {
    /// vulkan, gl, metal or dx12 [default: $WGPU_BACKEND, else all].
    #[arg(long)]
    backend: Option<String>,
}

pub fn run(a: AdapterArgs) -> Result<()> {
    let req = adapter_request(a.backend, None)?;
    let found = device::adapters(&req)?;
    if found.is_empty() {
        return Err(Gpu::new(&req).err().unwrap_or_else(|| Error::runtime("no adapter found")));
    }
    for (i, adapter) in found.iter().enumerate() {
        let info = adapter.get_info();
        let l = adapter.limits();
        let f = adapter.features();
        println!("{}{}", device::describe(&info), if i == 0 { "   <- selected by default" } else { "" });
        println!("    max workgroups per dimension   {}", l.max_compute_workgroups_per_dimension);
        println!("    max invocations per workgroup  {}", l.max_compute_invocations_per_workgroup);
        println!("    max workgroup storage          {} bytes", l.max_compute_workgroup_storage_size);
        println!("    max storage binding            {} bytes", l.max_storage_buffer_binding_size);
        println!("    max buffer size                {} bytes", l.max_buffer_size);
        println!(
            "    subgroups {}  timestamp queries {}",
            if f.contains(wgpu::Features::SUBGROUP) {
                format!("yes, {} to {} lanes", info.subgroup_min_size, info.subgroup_max_size)
            } else {
                "no".into()
            },
            if f.contains(wgpu::Features::TIMESTAMP_QUERY) { "yes" } else { "no" }
        );
        let variant = MatmulVariant::for_adapter(&info, f & wgpu::Features::SUBGROUP);
        println!("    matmul variant                 {} ({})", variant.name(), variant.why(&info, f));
    }
    Ok(())
}
