//! Headless adapter selection and device creation.
//!
//! Order of preference: what the caller forces (backend, adapter name), then the environment
//! (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`), then a hardware GPU over a software one
//! (Vulkan lavapipe, or GL llvmpipe through EGL).

use std::fmt;

/// What the caller asks for; `None` fields fall back to the environment, then to "any".
#[derive(Clone, Debug, Default)]
pub struct AdapterRequest {
    /// A backend name: vulkan, gl, metal, dx12 (as `WGPU_BACKEND` takes it).
    pub backend: Option<String>,
    /// A case-insensitive substring of the adapter's name.
    pub adapter_name: Option<String>,
}

#[derive(Debug)]
pub struct DeviceError(pub String);

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for DeviceError {}

const HOW_TO_GET_ONE: &str = "no WebGPU adapter found. On Debian/Ubuntu, \
    `apt-get install mesa-vulkan-drivers` provides the Vulkan software adapter (lavapipe); \
    Mesa's EGL (libegl1 + libgl1-mesa-dri) provides the GL one (llvmpipe). \
    `sae adapters` lists what wgpu sees";

/// A device ready for compute, with what we learnt about its adapter.
#[derive(Clone)]
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpu({})", describe(&self.info))
    }
}

/// "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Cpu, driver: llvmpipe Mesa 22.3.6)"
pub fn describe(info: &wgpu::AdapterInfo) -> String {
    let driver = [info.driver.as_str(), info.driver_info.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    format!("{} ({:?}, {:?}, driver: {})", info.name, info.backend, info.device_type, driver)
}

pub fn parse_backends(name: &str) -> Result<wgpu::Backends, DeviceError> {
    match name.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
        "gl" | "gles" | "opengl" => Ok(wgpu::Backends::GL),
        "metal" | "mtl" => Ok(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
        "all" | "any" => Ok(wgpu::Backends::all()),
        other => Err(DeviceError(format!("unknown backend '{other}': use vulkan, gl, metal, dx12 or all"))),
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

fn resolve(req: &AdapterRequest) -> Result<(wgpu::Backends, Option<String>), DeviceError> {
    let backend = req.backend.clone().or_else(|| std::env::var("WGPU_BACKEND").ok());
    let backends = match backend.as_deref() {
        Some(b) if !b.is_empty() => {
            // WGPU_BACKEND may be a comma-separated list.
            let mut all = wgpu::Backends::empty();
            for part in b.split(',') {
                all |= parse_backends(part.trim())?;
            }
            all
        }
        _ => wgpu::Backends::all(),
    };
    let name = req.adapter_name.clone().or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok()).filter(|s| !s.is_empty());
    Ok((backends, name))
}

fn preference(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// Every adapter wgpu sees on the requested backends, best first.
pub fn adapters(req: &AdapterRequest) -> Result<Vec<wgpu::Adapter>, DeviceError> {
    let (backends, name) = resolve(req)?;
    let inst = instance(backends);
    let mut found = pollster::block_on(inst.enumerate_adapters(backends));
    if let Some(name) = &name {
        let needle = name.to_ascii_lowercase();
        found.retain(|a| a.get_info().name.to_ascii_lowercase().contains(&needle));
    }
    // Stable sort: hardware first; among equals keep wgpu's (backend) order.
    found.sort_by_key(|a| preference(a.get_info().device_type));
    Ok(found)
}

impl Gpu {
    /// The best adapter matching `req`.
    pub fn new(req: &AdapterRequest) -> Result<Gpu, DeviceError> {
        let found = adapters(req)?;
        let Some(adapter) = found.into_iter().next() else {
            let (backends, name) = resolve(req)?;
            let mut msg = format!("{HOW_TO_GET_ONE} (searched backends {backends:?}");
            if let Some(n) = name {
                msg.push_str(&format!(", adapter name containing '{n}'"));
            }
            msg.push(')');
            return Err(DeviceError(msg));
        };
        Gpu::from_adapter(adapter)
    }

    /// One device per adapter present (for tests that run every kernel on every adapter).
    pub fn all(req: &AdapterRequest) -> Result<Vec<Gpu>, DeviceError> {
        let found = adapters(req)?;
        if found.is_empty() {
            return Err(DeviceError(HOW_TO_GET_ONE.to_string()));
        }
        found.into_iter().map(Gpu::from_adapter).collect()
    }

    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Gpu, DeviceError> {
        let info = adapter.get_info();
        // Ask for the adapter's own limits: large storage buffers and workgroup memory are
        // what a bigger model needs, and the defaults are lower than most adapters offer.
        let limits = adapter.limits();
        let optional = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP;
        let features = adapter.features() & optional;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("sae"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| DeviceError(format!("could not open {}: {e}", describe(&info))))?;
        Ok(Gpu { device, queue, info, limits, features })
    }

    pub fn describe(&self) -> String {
        describe(&self.info)
    }

    /// Blocks until all submitted work has finished.
    pub fn wait(&self) {
        self.device.poll(wgpu::PollType::wait_indefinitely()).expect("device lost while waiting");
    }
}
