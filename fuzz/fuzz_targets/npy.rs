#![no_main]
// The .npy loader: never a panic; an error is one line naming the file.
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    if let Err(e) = sae_wgpu::data::parse_npy(bytes, std::path::Path::new("fuzz.npy")) {
        assert!(!e.to_string().contains('\n'));
    }
});
