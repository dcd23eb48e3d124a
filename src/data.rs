//! Data files: `.npy` (f32/f64, 2-D) and `.csv` (numbers, optional header), one sample per row.
//!
//! Every error is one line naming the file, the 1-based row and column where they apply, and
//! what to do, so a bad file is rejected before anything is trained on it (docs/design.md section 6).

use crate::error::{Error, Result};
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::Path;

/// A matrix of samples, row-major: `values[i * cols + j]` is feature `j` of sample `i`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f32>,
}

/// Text from a file, fit to quote in a one-line message: control characters escaped, at most
/// 40 characters.
fn quoted(text: &str) -> String {
    let escaped: String = text.chars().flat_map(char::escape_debug).collect();
    match escaped.char_indices().nth(40) {
        Some((at, _)) => format!("{}...", &escaped[..at]),
        None => escaped,
    }
}

/// Bad input naming the file.
fn fail<T>(path: &Path, msg: impl fmt::Display) -> Result<T> {
    Err(Error::Input(format!("{}: {msg}", path.display())))
}

impl Dataset {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.cols..(i + 1) * self.cols]
    }

    /// Checks that the samples are as wide as the model's input.
    pub fn check_width(&self, expected: usize, path: &Path) -> Result<()> {
        if self.cols == expected {
            return Ok(());
        }
        fail(
            path,
            format!(
                "the file has {} columns but the model's input is {expected} wide: use data with \
                 {expected} columns, or a model whose input matches the file (pass --layers \
                 starting with {})",
                self.cols, self.cols
            ),
        )
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Npy,
    Csv,
}

fn format_of(path: &Path) -> Result<Format> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "npy" => Ok(Format::Npy),
        "csv" => Ok(Format::Csv),
        _ => fail(path, "unsupported data format: use a .npy (f32/f64, 2-D) or .csv (numbers) file"),
    }
}

/// Loads a `.npy` or `.csv` file, chosen by extension (case-insensitive).
pub fn load(path: &Path) -> Result<Dataset> {
    match format_of(path)? {
        Format::Npy => load_npy(path),
        Format::Csv => load_csv(path),
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).or_else(|e| fail(path, format!("cannot read the file ({e}): check the path")))
}

fn not_finite(path: &Path, row: usize, col: usize, what: &str) -> Result<Dataset> {
    fail(
        path,
        format!(
            "row {row}, column {col}: {what} is not a finite number (NaN, Inf, or beyond the f32 \
             range): remove or impute such values before training"
        ),
    )
}

fn empty<T>(path: &Path) -> Result<T> {
    fail(path, "the file holds no samples: it needs at least one row and one column of numbers")
}

// ---------------------------------------------------------------------------------------------
// CSV
// ---------------------------------------------------------------------------------------------

/// Comma-separated numbers. The first line is a header iff none of its cells parses as a
/// number; cells are trimmed; blank lines at the end and `\r\n` line ends are accepted.
/// Rows in errors are line numbers in the file.
pub fn load_csv(path: &Path) -> Result<Dataset> {
    parse_csv(read(path)?, path)
}

/// The CSV parser behind [`load_csv`], on bytes already read; `path` only names the file in
/// errors (the fuzz tests call it directly).
pub fn parse_csv(bytes: Vec<u8>, path: &Path) -> Result<Dataset> {
    let Ok(text) = String::from_utf8(bytes) else {
        return fail(path, "the file is not UTF-8 text: save it as plain CSV");
    };
    // Excel's "CSV UTF-8" starts with a byte-order mark: not part of the first cell.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    let Some(first) = lines.first() else {
        return empty(path);
    };
    let is_number = |c: &str| c.trim().parse::<f32>().is_ok();
    let header = !first.split(',').any(is_number);
    let width = first.split(',').count();
    let mut values = Vec::new();
    for (idx, line) in lines.iter().enumerate().skip(header as usize) {
        let row = idx + 1;
        if line.trim().is_empty() {
            return fail(path, format!("row {row} is blank: remove blank lines between rows"));
        }
        let got = line.split(',').count();
        if got != width {
            return fail(
                path,
                format!(
                    "row {row} has {got} columns but expected {width} (as in row 1): every row \
                     needs the same number of comma-separated values"
                ),
            );
        }
        for (j, cell) in line.split(',').enumerate() {
            let cell = cell.trim();
            let Ok(v) = cell.parse::<f32>() else {
                return fail(
                    path,
                    format!(
                        "row {row}, column {}: cell \"{}\" is not a number: only the first \
                         row may be a header; fix or remove the cell",
                        j + 1,
                        quoted(cell)
                    ),
                );
            };
            if !v.is_finite() {
                return not_finite(path, row, j + 1, &format!("cell \"{}\"", quoted(cell)));
            }
            values.push(v);
        }
    }
    if values.is_empty() {
        return empty(path);
    }
    Ok(Dataset { rows: values.len() / width, cols: width, values })
}

// ---------------------------------------------------------------------------------------------
// NPY
// ---------------------------------------------------------------------------------------------

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// The text after `'key':` in an npy header dict (keys may use either quote).
fn header_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{key}'")).or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[at + key.len() + 2..].trim_start();
    Some(rest.strip_prefix(':')?.trim_start())
}

/// A 2-D `.npy` array of f32 or f64 (little-endian). Fortran-order arrays are transposed to
/// row-major rather than refused, so `np.asfortranarray` output loads as the same matrix.
/// Rows in errors are 1-based sample indices.
pub fn load_npy(path: &Path) -> Result<Dataset> {
    parse_npy(&read(path)?, path)
}

/// An npy file's header: what [`parse_npy`] and a streamed reader (`stream`) need to find
/// and decode the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    /// Bytes a value: 4 (f32) or 8 (f64), little-endian.
    pub item: usize,
    pub fortran: bool,
    pub rows: usize,
    pub cols: usize,
    /// Where the values start.
    pub data_at: usize,
}

/// The header of an npy file from its first bytes (at least the whole header); an empty array
/// is bad input, as a file is.
pub fn parse_npy_header(bytes: &[u8], path: &Path) -> Result<NpyHeader> {
    let bad = |what: &str| fail::<NpyHeader>(path, format!("{what}: save the array with numpy.save (a .npy file)"));
    if bytes.is_empty() {
        return empty(path);
    }
    if bytes.len() < 10 || &bytes[..6] != NPY_MAGIC {
        return bad("not an npy file (bad magic bytes)");
    }
    // v1 has a u16 header length; v2/v3 a u32. numpy knows no other version.
    let len_bytes = match bytes[6] {
        1 => 2,
        2 | 3 => 4,
        v => return bad(&format!("npy format version {v}.{} (numpy writes 1.0, 2.0 and 3.0)", bytes[7])),
    };
    let start = 8;
    if bytes.len() < start + len_bytes {
        return bad("truncated npy header");
    }
    let header_len = bytes[start..start + len_bytes].iter().rev().fold(0usize, |acc, &b| acc << 8 | b as usize);
    let data_at = start + len_bytes + header_len;
    let Some(header) = bytes.get(start + len_bytes..data_at) else {
        return bad("truncated npy header");
    };
    let Ok(header) = std::str::from_utf8(header) else {
        return bad("unreadable npy header");
    };

    // numpy's header is a Python dict literal ending in '}' (then padding and a newline).
    let trimmed = header.trim_end();
    if !trimmed.starts_with('{') || !trimmed.ends_with('}') {
        return bad("the npy header is not a complete {...} dictionary");
    }
    let descr = header_field(header, "descr").unwrap_or("");
    let descr = descr
        .strip_prefix('\'')
        .or_else(|| descr.strip_prefix('"'))
        .and_then(|d| d.split(['\'', '"']).next())
        .unwrap_or(descr);
    // `|` and `=` mean "no/native byte order": unambiguous only when this host is little-endian.
    let native_le = cfg!(target_endian = "little");
    let item = match descr {
        "<f4" => 4,
        "<f8" => 8,
        "=f4" | "|f4" if native_le => 4,
        "=f8" | "|f8" if native_le => 8,
        _ => {
            return fail(
                path,
                format!(
                    "dtype '{}' is not supported: f32 or f64 (little-endian) are; convert \
                     with arr.astype('<f4')",
                    quoted(descr)
                ),
            )
        }
    };
    // numpy accepts only the literals True and False.
    let fortran = match header_field(header, "fortran_order") {
        Some(v) if v.starts_with("True") => true,
        Some(v) if v.starts_with("False") => false,
        Some(v) => {
            return bad(&format!("fortran_order is {}, not True or False", quoted(v.split(',').next().unwrap_or(v))))
        }
        None => return bad("the npy header has no fortran_order"),
    };
    let shape_text = header_field(header, "shape").and_then(|s| s.strip_prefix('(')).and_then(|s| s.split(')').next());
    let Some(shape) = shape_text.and_then(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(|d| d.trim_end_matches('L').parse::<usize>().ok())
            .collect::<Option<Vec<usize>>>()
    }) else {
        return bad("unreadable shape in the npy header");
    };
    let [rows, cols] = shape[..] else {
        return fail(
            path,
            format!(
                "the array has shape {shape:?} ({}-D) but a 2-D [samples, features] array is \
                 needed: reshape it, e.g. arr.reshape(len(arr), -1)",
                shape.len()
            ),
        );
    };
    if rows == 0 || cols == 0 {
        return empty(path);
    }
    Ok(NpyHeader { item, fortran, rows, cols, data_at })
}

/// The npy parser behind [`load_npy`], on bytes already read; `path` only names the file in
/// errors (the fuzz tests call it directly).
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<Dataset> {
    let bad = |what: &str| fail::<Dataset>(path, format!("{what}: save the array with numpy.save (a .npy file)"));
    let NpyHeader { item, fortran, rows, cols, data_at } = parse_npy_header(bytes, path)?;
    // Checked: a hostile header's shape can overflow the product.
    let data = &bytes[data_at..];
    let need = rows.checked_mul(cols).and_then(|n| n.checked_mul(item));
    if need != Some(data.len()) {
        let need = need.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string());
        return bad(&format!(
            "shape [{rows}, {cols}] of {item}-byte values needs {need} data bytes but the file \
             has {} (truncated or corrupt)",
            data.len()
        ));
    }
    let raw: Vec<f32> = if item == 4 {
        data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    } else {
        data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect()
    };
    let values: Vec<f32> = if fortran {
        // Column-major on disk: element (i, j) is at j * rows + i.
        (0..rows * cols).map(|k| raw[(k % cols) * rows + k / cols]).collect()
    } else {
        raw
    };
    if let Some(k) = values.iter().position(|v| !v.is_finite()) {
        return not_finite(path, k / cols + 1, k % cols + 1, "the value");
    }
    Ok(Dataset { rows, cols, values })
}

// ---------------------------------------------------------------------------------------------
// Saving
// ---------------------------------------------------------------------------------------------

/// The memory the system can still give this process, in bytes (Linux: `MemAvailable` of
/// `/proc/meminfo`); None where it cannot be told.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Writes `bytes` to `path` via a temporary file in the same directory and a rename, so a
/// crash or error never leaves a half-written file under the real name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// NPY v1.0, `<f4`, C order; the header is padded with spaces so the data starts on a
/// 64-byte boundary (magic + version + length + header, ending in a newline).
fn npy_bytes(data: &Dataset) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", data.rows, data.cols);
    let values: Vec<u8> = data.values.iter().flat_map(|v| v.to_le_bytes()).collect();
    npy_file(&dict, &values)
}

/// An npy v1.0 file with the header dict `dict` and the raw `data` after it, the header padded
/// with spaces so the data starts at a multiple of 64 bytes. Public so tests can write files
/// this loader must reject (another dtype, a 3-D shape).
pub fn npy_file(dict: &str, data: &[u8]) -> Vec<u8> {
    let unpadded = NPY_MAGIC.len() + 4 + dict.len() + 1;
    let header = format!("{dict}{}\n", " ".repeat(unpadded.next_multiple_of(64) - unpadded));
    let mut out = Vec::with_capacity(unpadded + 64 + data.len());
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Plain numbers, no header; `{}` prints the shortest text that parses back to the same f32.
fn csv_bytes(data: &Dataset) -> Vec<u8> {
    let mut out = String::new();
    for i in 0..data.rows {
        let cells: Vec<String> = data.row(i).iter().map(|v| format!("{v}")).collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out.into_bytes()
}

/// Saves as `.npy` or `.csv` by extension, atomically (see [`write_atomic`]).
pub fn save(path: &Path, data: &Dataset) -> Result<()> {
    if data.values.len() != data.rows * data.cols {
        return fail(
            path,
            format!("internal error: {} values for a {}x{} dataset", data.values.len(), data.rows, data.cols),
        );
    }
    let bytes = match format_of(path)? {
        Format::Npy => npy_bytes(data),
        Format::Csv => csv_bytes(data),
    };
    write_atomic(path, &bytes).map_err(|e| {
        Error::Runtime(format!(
            "{}: cannot write the file ({e}): check the directory exists and is writable",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh directory per test, so tests can run in parallel.
    fn dir(test: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sae-data-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(d: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = d.join(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    fn load_err(p: &Path) -> String {
        let e = load(p).expect_err("expected an error").to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(e.contains(&p.display().to_string()), "names the file: {e}");
        e
    }

    fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
        npy_file(dict, data)
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn sample() -> Dataset {
        Dataset { rows: 3, cols: 2, values: vec![0.1, -2.5, 1e-7, 3.0e30, 0.333_333_34, 7.0] }
    }

    #[test]
    fn npy_round_trip() {
        let d = dir("npy_round_trip");
        let p = d.join("x.NPY");
        save(&p, &sample()).unwrap();
        let bytes = fs::read(&p).unwrap();
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        assert_eq!(bytes[9 + header_len], b'\n');
        assert_eq!(load(&p).unwrap(), sample());
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1, "no temp file left behind");
    }

    #[test]
    fn csv_round_trip() {
        let d = dir("csv_round_trip");
        let p = d.join("x.csv");
        save(&p, &sample()).unwrap();
        let back = load(&p).unwrap();
        assert_eq!(back, sample());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.values), bits(&sample().values));
    }

    #[test]
    fn f64_npy_loads() {
        let d = dir("f64_npy_loads");
        let data: Vec<u8> = [1.5f64, -2.0, 0.25, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let p = write(&d, "x.npy", &npy("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }", &data));
        let ds = load(&p).unwrap();
        assert_eq!((ds.rows, ds.cols), (2, 2));
        assert_eq!(ds.values, vec![1.5, -2.0, 0.25, 4.0]);
    }

    #[test]
    fn fortran_npy_is_transposed() {
        let d = dir("fortran_npy_is_transposed");
        // [[1, 2, 3], [4, 5, 6]] stored column by column.
        let data = f32_bytes(&[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let p = write(&d, "x.npy", &npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", &data));
        let ds = load(&p).unwrap();
        assert_eq!((ds.rows, ds.cols), (2, 3));
        assert_eq!(ds.row(0), &[1.0, 2.0, 3.0]);
        assert_eq!(ds.row(1), &[4.0, 5.0, 6.0]);
    }

    #[test]
    fn csv_header_whitespace_crlf_and_trailing_blank_lines() {
        let d = dir("csv_header");
        let p = write(&d, "x.csv", b"a, b ,c\r\n 1, 2,3\r\n4 ,5e-1, -6\r\n\r\n  \n");
        let ds = load(&p).unwrap();
        assert_eq!((ds.rows, ds.cols), (2, 3));
        assert_eq!(ds.values, vec![1.0, 2.0, 3.0, 4.0, 0.5, -6.0]);
        // One numeric cell makes the first row data, so its text cell is an error.
        let p = write(&d, "y.csv", b"a,1\n2,3\n");
        let e = load_err(&p);
        assert!(e.contains("row 1, column 1") && e.contains("\"a\""), "{e}");
        // No header.
        let p = write(&d, "z.csv", b"1,2\n3,4");
        assert_eq!(load(&p).unwrap().values, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn unsupported_extension() {
        let d = dir("unsupported_extension");
        let p = write(&d, "x.txt", b"1,2\n");
        let e = load_err(&p);
        assert!(e.contains(".npy") && e.contains(".csv"), "{e}");
    }

    #[test]
    fn missing_file() {
        let d = dir("missing_file");
        let e = load_err(&d.join("nope.csv"));
        assert!(e.contains("cannot read"), "{e}");
        let e = load_err(&d.join("nope.npy"));
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn empty_files() {
        let d = dir("empty_files");
        for (name, bytes) in
            [("empty.csv", &b""[..]), ("blank.csv", b"\n\n"), ("header_only.csv", b"a,b,c\n"), ("empty.npy", b"")]
        {
            let e = load_err(&write(&d, name, bytes));
            assert!(e.contains("no samples"), "{name}: {e}");
        }
        for shape in ["(0, 3)", "(4, 0)"] {
            let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            let e = load_err(&write(&d, "zero.npy", &npy(&dict, &[])));
            assert!(e.contains("no samples"), "{shape}: {e}");
        }
    }

    #[test]
    fn ragged_csv_row() {
        let d = dir("ragged_csv_row");
        let p = write(&d, "x.csv", b"a,b,c\n1,2,3\n4,5\n");
        let e = load_err(&p);
        assert!(e.contains("row 3 has 2 columns but expected 3"), "{e}");
    }

    #[test]
    fn non_numeric_cell() {
        let d = dir("non_numeric_cell");
        let p = write(&d, "x.csv", b"1,2,3\n4,five,6\n");
        let e = load_err(&p);
        assert!(e.contains("row 2, column 2") && e.contains("\"five\""), "{e}");
        let p = write(&d, "y.csv", b"1,2,3\n4,,6\n");
        let e = load_err(&p);
        assert!(e.contains("row 2, column 2") && e.contains("\"\""), "{e}");
    }

    #[test]
    fn csv_nan_and_inf() {
        let d = dir("csv_nan_and_inf");
        for (cell, col) in [("NaN", 1), ("inf", 2), ("-Infinity", 2), ("1e39", 2)] {
            let p = write(
                &d,
                "x.csv",
                format!("x,y\n1,2\n{}\n", if col == 1 { format!("{cell},3") } else { format!("3,{cell}") }).as_bytes(),
            );
            let e = load_err(&p);
            assert!(e.contains(&format!("row 3, column {col}")) && e.contains("not a finite"), "{cell}: {e}");
        }
    }

    #[test]
    fn npy_nan_and_inf() {
        let d = dir("npy_nan_and_inf");
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
        let p = write(&d, "x.npy", &npy(dict, &f32_bytes(&[0.0, 1.0, 2.0, 3.0, f32::NAN, 5.0])));
        let e = load_err(&p);
        assert!(e.contains("row 2, column 2") && e.contains("not a finite"), "{e}");
        let dict = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }";
        let data: Vec<u8> = [1e300f64, 0.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let e = load_err(&write(&d, "y.npy", &npy(dict, &data)));
        assert!(e.contains("row 1, column 1"), "f64 beyond f32 range: {e}");
    }

    #[test]
    fn npy_as_strict_as_numpy() {
        let d = dir("npy_strict");
        let data = f32_bytes(&[1.0, 2.0]);
        let good = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }";
        let mut v9 = npy(good, &data);
        v9[6] = 9;
        let e = load_err(&write(&d, "v9.npy", &v9));
        assert!(e.contains("version 9.0"), "{e}");
        let e =
            load_err(&write(&d, "open.npy", &npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), ", &data)));
        assert!(e.contains("not a complete {...} dictionary"), "{e}");
        let e = load_err(&write(&d, "one.npy", &npy("{'descr': '<f4', 'fortran_order': 1, 'shape': (1, 2), }", &data)));
        assert!(e.contains("fortran_order is 1"), "{e}");
        assert_eq!(load(&write(&d, "ok.npy", &npy(good, &data))).unwrap().values, [1.0, 2.0]);
    }

    #[test]
    fn csv_byte_order_mark_is_not_a_cell() {
        let d = dir("csv_bom");
        let p = write(&d, "bom.csv", "\u{feff}a,b\n1,2\n".as_bytes());
        let set = load(&p).unwrap();
        assert_eq!((set.rows, set.cols, set.values.clone()), (1, 2, vec![1.0, 2.0]));
        let p = write(&d, "bom_data.csv", "\u{feff}3,4\n".as_bytes());
        assert_eq!(load(&p).unwrap().values, [3.0, 4.0]);
    }

    #[test]
    fn npy_wrong_rank() {
        let d = dir("npy_wrong_rank");
        for (shape, n, found) in [("(6,)", 6, "[6] (1-D)"), ("(1, 2, 3)", 6, "[1, 2, 3] (3-D)")] {
            let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            let e = load_err(&write(&d, "x.npy", &npy(&dict, &f32_bytes(&vec![1.0; n]))));
            assert!(e.contains(found) && e.contains("2-D [samples, features]"), "{e}");
        }
    }

    #[test]
    fn npy_unsupported_dtype() {
        let d = dir("npy_unsupported_dtype");
        for descr in ["<i8", ">f4", "<f2"] {
            let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (1, 1), }}");
            let e = load_err(&write(&d, "x.npy", &npy(&dict, &[0; 8])));
            assert!(e.contains(&format!("'{descr}'")) && e.contains("f32 or f64"), "{e}");
        }
    }

    #[test]
    fn npy_native_byte_order_accepted() {
        let d = dir("npy_native_byte_order");
        let dict = "{'descr': '=f4', 'fortran_order': False, 'shape': (1, 2), }";
        let p = write(&d, "x.npy", &npy(dict, &f32_bytes(&[1.0, 2.0])));
        assert_eq!(load(&p).unwrap().values, vec![1.0, 2.0]);
    }

    #[test]
    fn npy_shape_that_overflows_is_refused() {
        let d = dir("npy_overflow");
        for fortran in ["False", "True"] {
            let dict = format!("{{'descr': '<f4', 'fortran_order': {fortran}, 'shape': (4611686018427387904, 4), }}");
            let p = write(&d, "huge.npy", &npy(&dict, &f32_bytes(&[0.5; 8])));
            let e = load_err(&p);
            assert!(e.contains("more than 2^64") && e.contains("huge.npy"), "{e}");
        }
    }

    #[test]
    fn npy_bad_magic_and_truncated() {
        let d = dir("npy_bad_magic_and_truncated");
        let e = load_err(&write(&d, "x.npy", b"1,2,3\n4,5,6\n"));
        assert!(e.contains("not an npy file"), "{e}");
        let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
        let e = load_err(&write(&d, "y.npy", &npy(dict, &f32_bytes(&[1.0, 2.0, 3.0]))));
        assert!(e.contains("needs 16 data bytes but the file has 12"), "{e}");
        let full = npy(dict, &[]);
        let e = load_err(&write(&d, "z.npy", &full[..30]));
        assert!(e.contains("truncated npy header"), "{e}");
    }

    #[test]
    fn check_width_message() {
        let ds = sample();
        assert!(ds.check_width(2, Path::new("x.csv")).is_ok());
        let e = ds.check_width(20, Path::new("x.csv")).unwrap_err().to_string();
        assert!(e.starts_with("x.csv:") && e.contains("2 columns") && e.contains("20 wide"), "{e}");
        assert!(e.contains("--layers starting with 2"), "{e}");
    }

    #[test]
    fn save_error_leaves_no_file() {
        let d = dir("save_error");
        let p = d.join("missing_dir").join("x.csv");
        let e = save(&p, &sample()).unwrap_err().to_string();
        assert!(e.contains("x.csv") && e.contains("cannot write"), "{e}");
        assert_eq!(fs::read_dir(&d).unwrap().count(), 0);
    }
}
