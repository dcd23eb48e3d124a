#![no_main]
// The .csv loader: never a panic; an error is one line naming the file.
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    if let Err(e) = sae_wgpu::data::parse_csv(bytes.to_vec(), std::path::Path::new("fuzz.csv")) {
        assert!(!e.to_string().contains('\n'));
    }
});
