//! `data::load` on files as a user would hand them over: a CSV with a header, and an npy.

use sae_wgpu::data;
use std::path::PathBuf;

fn temp_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sae-data-it-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn csv_with_header_loads() {
    let dir = temp_dir("csv");
    let path = dir.join("features.CSV");
    std::fs::write(&path, "f1,f2,f3\r\n0.5,1,-2\r\n3, 4.25 ,5e-3\r\n\r\n").unwrap();
    let ds = data::load(&path).unwrap();
    assert_eq!((ds.rows, ds.cols), (2, 3));
    assert_eq!(ds.row(1), &[3.0, 4.25, 0.005]);
    ds.check_width(3, &path).unwrap();
    assert!(ds.check_width(20, &path).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn npy_loads() {
    let dir = temp_dir("npy");
    let path = dir.join("x.npy");
    // What numpy.save(np.arange(6, dtype='<f4').reshape(2, 3)) writes.
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    let unpadded = 10 + dict.len() + 1; // magic, version, length, dict, newline
    let header = format!("{dict}{}\n", " ".repeat(unpadded.next_multiple_of(64) - unpadded));
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend((0..6).flat_map(|i| (i as f32).to_le_bytes()));
    std::fs::write(&path, bytes).unwrap();
    let ds = data::load(&path).unwrap();
    assert_eq!((ds.rows, ds.cols), (2, 3));
    assert_eq!(ds.values, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    std::fs::remove_dir_all(&dir).unwrap();
}
