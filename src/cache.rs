//! The driver's pipeline cache on disk, one file per adapter and driver, so that a second run
//! skips the driver's shader compilation where the backend offers a cache (Vulkan: wgpu's
//! `PIPELINE_CACHE` feature). See docs/design.md section 13.
//!
//! Where: `$SAE_CACHE_DIR` if set (empty turns the cache off), else `$XDG_CACHE_HOME/sae-wgpu`,
//! else `~/.cache/sae-wgpu` (`%LOCALAPPDATA%\sae-wgpu` on Windows, `~/Library/Caches/sae-wgpu`
//! on macOS). The file name is wgpu's key for the adapter plus a hash of the driver's name and
//! version, so a driver update starts a new file.
//!
//! A file is our header (magic, length, FNV-1a 64 checksum of the payload) and wgpu's data
//! (which carries its own header: adapter, driver validation key, wgpu's format version). A
//! file that is short, corrupt, from another adapter or outdated is ignored: the cache starts
//! empty and the run compiles as without one. Writes go to a temporary name, then rename.

use crate::device::Gpu;
use std::path::PathBuf;

const MAGIC: &[u8; 8] = b"SAEPC001";
const HEADER: usize = 8 + 8 + 8;

/// FNV-1a, 64 bits: cheap, and enough to tell a damaged file from a whole one.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The cache directory, or `None` when there is none (no home, or `SAE_CACHE_DIR` empty).
pub fn dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("SAE_CACHE_DIR") {
        return (!d.is_empty()).then(|| PathBuf::from(d));
    }
    let base = if cfg!(windows) {
        std::env::var_os("LOCALAPPDATA").map(PathBuf::from)
    } else if cfg!(target_os = "macos") {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join("Library/Caches"))
    } else {
        std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
    };
    base.map(|b| b.join("sae-wgpu"))
}

/// The cache file of `gpu`'s adapter and driver, where its backend has a pipeline cache.
pub fn path(gpu: &Gpu) -> Option<PathBuf> {
    if !gpu.features.contains(wgpu::Features::PIPELINE_CACHE) {
        return None;
    }
    let key = wgpu::util::pipeline_cache_key(&gpu.info)?;
    let driver = format!("{} {} {}", gpu.info.name, gpu.info.driver, gpu.info.driver_info);
    Some(dir()?.join(format!("{key}_{:016x}.bin", checksum(driver.as_bytes()))))
}

/// wgpu's data from a file of ours, if it is whole.
pub fn unwrap(file: &[u8]) -> Option<&[u8]> {
    if file.len() < HEADER || &file[..8] != MAGIC {
        return None;
    }
    let len = u64::from_le_bytes(file[8..16].try_into().ok()?) as usize;
    let sum = u64::from_le_bytes(file[16..24].try_into().ok()?);
    let data = &file[HEADER..];
    (data.len() == len && checksum(data) == sum).then_some(data)
}

/// A file of ours around wgpu's `data`.
pub fn wrap(data: &[u8]) -> Vec<u8> {
    let mut file = Vec::with_capacity(HEADER + data.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&(data.len() as u64).to_le_bytes());
    file.extend_from_slice(&checksum(data).to_le_bytes());
    file.extend_from_slice(data);
    file
}

/// The pipeline cache of `gpu`, filled from its file when that is whole; `None` where the
/// backend has none or there is no cache directory.
pub fn open(gpu: &Gpu) -> Option<wgpu::PipelineCache> {
    let path = path(gpu)?;
    let file = std::fs::read(&path).ok();
    let data = file.as_deref().and_then(unwrap);
    // SAFETY: `data` is only ever bytes that `PipelineCache::get_data` returned for an adapter
    // with this cache key (the file name), checked whole by our checksum; wgpu validates its
    // own header (adapter, driver, format version) and `fallback` makes anything it rejects
    // an empty cache instead of an error.
    let cache = unsafe {
        gpu.device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
            label: Some("sae pipeline cache"),
            data,
            fallback: true,
        })
    };
    Some(cache)
}

/// Writes `cache`'s data to its file (temporary name, then rename). Failures are ignored:
/// a cache that could not be written only means the next run compiles again.
pub fn save(gpu: &Gpu, cache: &wgpu::PipelineCache) {
    let (Some(path), Some(data)) = (path(gpu), cache.get_data()) else {
        return;
    };
    if std::fs::read(&path).ok().as_deref().and_then(unwrap) == Some(&data[..]) {
        return;
    }
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    // Unique per process and per save: several devices of one process may save at once.
    static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
    if std::fs::write(&tmp, wrap(&data)).is_ok() && std::fs::rename(&tmp, &path).is_ok() {
        return;
    }
    let _ = std::fs::remove_file(&tmp);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_round_trips_and_damage_is_refused() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = wrap(&data);
        assert_eq!(unwrap(&file), Some(&data[..]));
        // Truncated, extended, a flipped byte, another magic: each is ignored.
        assert_eq!(unwrap(&file[..file.len() - 1]), None);
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(unwrap(&longer), None);
        let mut flipped = file.clone();
        flipped[HEADER + 500] ^= 1;
        assert_eq!(unwrap(&flipped), None);
        let mut other = file.clone();
        other[0] = b'X';
        assert_eq!(unwrap(&other), None);
        assert_eq!(unwrap(&file[..3]), None);
        assert_eq!(unwrap(&wrap(&[])), Some(&[][..]));
    }
}
