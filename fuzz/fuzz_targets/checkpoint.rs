#![no_main]
// The safetensors checkpoint loader: never a panic; what loads has the spec's shapes.
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    if let Ok((spec, params)) = sae_wgpu::checkpoint::from_bytes(bytes, "fuzz.safetensors") {
        params.check_shapes(&spec).expect("shapes of a loaded checkpoint");
    }
});
