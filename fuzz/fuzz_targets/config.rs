#![no_main]
// The --config loader (TOML, and JSON when the first byte is odd), then sae train's
// validation of what parses: never a panic, errors on one line.
use sae_wgpu::cli::train::{parse_config, validate};
use std::path::Path;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let name = if bytes.first().is_some_and(|b| b % 2 == 1) { "fuzz.json" } else { "fuzz.toml" };
    match parse_config(bytes, Path::new(name)) {
        Err(e) => assert!(!e.to_string().contains('\n')),
        Ok(s) => {
            if let Err(e) = validate(s.capped_for_fuzzing(64, Path::new("/nonexistent-sae-fuzz"))) {
                assert!(!e.to_string().contains('\n'));
            }
        }
    }
});
