//! Headless adapter selection and device creation.
//!
//! Order of preference: what the caller forces (backend, adapter name), then the environment
//! (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`), then a hardware GPU over a software one
//! (Vulkan lavapipe, or GL llvmpipe through EGL).

use crate::error::{Error, Result};
use crate::kernels::{record, Launch, View};
use std::fmt;
use wgpu::util::DeviceExt;

/// What the caller asks for; `None` fields fall back to the environment, then to "any".
#[derive(Clone, Debug, Default)]
pub struct AdapterRequest {
    /// A backend name: vulkan, gl, metal, dx12 (as `WGPU_BACKEND` takes it).
    pub backend: Option<String>,
    /// A case-insensitive substring of the adapter's name.
    pub adapter_name: Option<String>,
}

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
    /// Seconds spent finding the adapter and opening the device (start-up's first part).
    pub setup_seconds: f64,
    /// The first error the device reported outside an error scope (wgpu would panic on it
    /// by default): `wait` and `map_read` turn it into a runtime failure.
    uncaptured: std::sync::Arc<std::sync::Mutex<Option<String>>>,
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

/// A backend name as `--backend` and `WGPU_BACKEND` take it; an unknown one is bad input.
pub fn parse_backends(name: &str) -> Result<wgpu::Backends> {
    match name.to_ascii_lowercase().as_str() {
        "vulkan" | "vk" => Ok(wgpu::Backends::VULKAN),
        "gl" | "gles" | "opengl" => Ok(wgpu::Backends::GL),
        "metal" | "mtl" => Ok(wgpu::Backends::METAL),
        "dx12" | "d3d12" => Ok(wgpu::Backends::DX12),
        "all" | "any" => Ok(wgpu::Backends::all()),
        other => Err(Error::input(format!("unknown backend '{other}': use vulkan, gl, metal, dx12 or all"))),
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

fn resolve(req: &AdapterRequest) -> Result<(wgpu::Backends, Option<String>)> {
    let from_env = req.backend.is_none();
    let backend = req.backend.clone().or_else(|| std::env::var("WGPU_BACKEND").ok());
    let backends = match backend.as_deref() {
        Some(b) if !b.is_empty() => {
            // WGPU_BACKEND may be a comma-separated list.
            let mut all = wgpu::Backends::empty();
            for part in b.split(',') {
                all |= parse_backends(part.trim()).map_err(|e| {
                    if from_env {
                        e.context(format!("WGPU_BACKEND={b}"))
                    } else {
                        e
                    }
                })?;
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
pub fn adapters(req: &AdapterRequest) -> Result<Vec<wgpu::Adapter>> {
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

/// Why no adapter matched `req`: none at all is a runtime failure saying what to install;
/// adapters that a backend or name filter left out are bad input listing them and the filter.
fn none_found(req: &AdapterRequest) -> Result<Error> {
    let (backends, name) = resolve(req)?;
    let every = pollster::block_on(instance(wgpu::Backends::all()).enumerate_adapters(wgpu::Backends::all()));
    if every.is_empty() {
        return Ok(Error::runtime(HOW_TO_GET_ONE));
    }
    let list: Vec<String> = every.iter().map(|a| describe(&a.get_info())).collect();
    let mut filters = Vec::new();
    if backends != wgpu::Backends::all() {
        let whence = if req.backend.is_some() { "--backend" } else { "WGPU_BACKEND" };
        filters.push(format!("{whence} (backends {backends:?})"));
    }
    if let Some(n) = name {
        let whence = if req.adapter_name.is_some() { "--adapter" } else { "WGPU_ADAPTER_NAME" };
        filters.push(format!("{whence} '{n}'"));
    }
    Ok(Error::input(format!("no adapter matches {}; found: {}", filters.join(" and "), list.join("; "))))
}

impl Gpu {
    /// The best adapter matching `req`. No adapter is a runtime failure that says what to
    /// install.
    pub fn new(req: &AdapterRequest) -> Result<Gpu> {
        let started = std::time::Instant::now();
        let found = adapters(req)?;
        let Some(adapter) = found.into_iter().next() else {
            return Err(none_found(req)?);
        };
        let mut gpu = Gpu::from_adapter(adapter)?;
        gpu.setup_seconds = started.elapsed().as_secs_f64();
        Ok(gpu)
    }

    /// One device per adapter present (for tests that run every kernel on every adapter).
    pub fn all(req: &AdapterRequest) -> Result<Vec<Gpu>> {
        let found = adapters(req)?;
        if found.is_empty() {
            return Err(none_found(req)?);
        }
        found.into_iter().map(Gpu::from_adapter).collect()
    }

    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Gpu> {
        // Ask for the adapter's own limits: large storage buffers and workgroup memory are
        // what a bigger model needs, and the defaults are lower than most adapters offer.
        let limits = adapter.limits();
        Gpu::with_limits(adapter, limits)
    }

    /// A device with `limits` rather than the adapter's (tests: WebGPU's default limits).
    pub fn with_limits(adapter: wgpu::Adapter, limits: wgpu::Limits) -> Result<Gpu> {
        let started = std::time::Instant::now();
        let info = adapter.get_info();
        let optional = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SUBGROUP | wgpu::Features::PIPELINE_CACHE;
        let features = adapter.features() & optional;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("sae"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::runtime(format!("could not open {}: {e}", describe(&info))))?;
        let uncaptured = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let slot = uncaptured.clone();
        device.on_uncaptured_error(std::sync::Arc::new(move |e: wgpu::Error| {
            if let Ok(mut s) = slot.lock() {
                s.get_or_insert_with(|| e.to_string().replace('\n', " "));
            }
        }));
        let setup_seconds = started.elapsed().as_secs_f64();
        Ok(Gpu { device, queue, info, limits, features, setup_seconds, uncaptured })
    }

    pub fn describe(&self) -> String {
        describe(&self.info)
    }

    /// Blocks until all submitted work has finished; a lost device is a runtime failure.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::runtime(format!("the device stopped responding ({}): {e}", self.describe())))?;
        self.check()
    }

    /// A runtime failure if the device reported an error nobody captured (an allocation that
    /// ran out of memory, a lost device, an invalid command).
    pub fn check(&self) -> Result<()> {
        match self.uncaptured.lock().ok().and_then(|s| s.clone()) {
            None => Ok(()),
            Some(e) => Err(Error::runtime(format!(
                "{} reported an error: {e}; if it ran out of memory, use a smaller --batch-size or model",
                self.describe()
            ))),
        }
    }

    /// Records `error` as if the device had reported it: the next [`Self::wait`] or
    /// [`Self::check`] fails with it (a pipeline the adapter rejected, found when a launcher
    /// first asked for it).
    pub fn note_error(&self, error: String) {
        if let Ok(mut s) = self.uncaptured.lock() {
            s.get_or_insert(error.replace('\n', " "));
        }
    }

    /// Runs `allocate` inside an out-of-memory error scope: an allocation the device cannot
    /// satisfy is a runtime failure naming `what`, not a panic.
    pub fn allocating<T>(&self, what: &str, allocate: impl FnOnce() -> T) -> Result<T> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let value = allocate();
        match pollster::block_on(scope.pop()) {
            None => Ok(value),
            Some(e) => Err(Error::runtime(format!(
                "allocating {what} on {} failed: {e}; use a smaller --batch-size or model",
                self.describe()
            ))),
        }
    }

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

    /// A storage buffer holding `bytes` (f32 tensors, u32 tables and the like), as a view of
    /// 4-byte words.
    pub fn upload_bytes(&self, label: &str, bytes: &[u8]) -> View {
        let buffer = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: if bytes.is_empty() { &[0; 4] } else { bytes },
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        });
        View { buffer, offset: 0, len: bytes.len() / 4 }
    }

    pub fn upload(&self, label: &str, data: &[f32]) -> View {
        self.upload_bytes(label, bytemuck::cast_slice(data))
    }

    /// A buffer the host maps to read what the device copied into it.
    pub fn staging(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4),
            // MAP_READ buffers may only be COPY_DST: the device writes here, the host reads.
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Runs `launches` in one submit (without waiting).
    pub fn run(&self, launches: &[Launch]) {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        record(&mut encoder, launches);
        self.queue.submit([encoder.finish()]);
    }

    /// Copies `views` to one staging buffer in one submit, maps it, and returns their contents.
    pub fn download_many(&self, views: &[&View]) -> Result<Vec<Vec<f32>>> {
        let total: u64 = views.iter().map(|v| v.byte_len()).sum();
        let staging = self.staging("download", total);
        let mut encoder = self.device.create_command_encoder(&Default::default());
        let mut at = 0;
        for v in views {
            encoder.copy_buffer_to_buffer(&v.buffer, v.byte_offset(), &staging, at, v.byte_len());
            at += v.byte_len();
        }
        self.queue.submit([encoder.finish()]);
        let bytes = self.map_read(&staging)?;
        let floats: &[f32] = bytemuck::cast_slice(&bytes);
        let mut out = Vec::new();
        let mut at = 0;
        for v in views {
            out.push(floats[at..at + v.len].to_vec());
            at += v.len;
        }
        Ok(out)
    }

    pub fn download(&self, view: &View) -> Result<Vec<f32>> {
        Ok(self.download_many(&[view])?.swap_remove(0))
    }

    /// Maps a MAP_READ buffer after the submits that fill it, and returns a copy of its bytes.
    /// This and [`Self::wait`] are the only places the host waits for the device. The
    /// futures-intrusive oneshot carries the map callback's result to this thread.
    pub fn map_read(&self, buffer: &wgpu::Buffer) -> Result<Vec<u8>> {
        let slice = buffer.slice(..);
        let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        let lost = |what: &str| Error::runtime(format!("reading results back from {} failed: {what}", self.describe()));
        match pollster::block_on(rx.receive()) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(lost(&e.to_string())),
            None => return Err(lost("the map callback never ran")),
        }
        let bytes = slice.get_mapped_range().map_err(|e| lost(&e.to_string()))?.to_vec();
        buffer.unmap();
        Ok(bytes)
    }
}
