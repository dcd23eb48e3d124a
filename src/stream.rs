//! Training data larger than memory (docs/design.md section 12): one `.npy` of any size, or a
//! directory of `.npy` shards of equal width and dtype, read a chunk of rows at a time with
//! positioned reads (never whole, and never mapped: mapped pages would count in the process's
//! resident memory as they are touched), and visited through a seeded mixing buffer.
//!
//! The mixing buffer ([`MixingOrder`], [`Stream`]): rows enter in file order (shards in name
//! order); each row out is a uniformly chosen slot of the buffer, which the next row then
//! fills. The order depends only on the row count, the buffer size and the seed, so the same
//! rows loaded resident and trained in [`MixingOrder`]'s order give the same parameters bit for
//! bit. Memory is bounded by the buffer (`buffer x width` floats) and a read chunk.

use crate::data::{self, parse_npy_header, Dataset, NpyHeader};
use crate::error::{Error, Result};
use crate::model::Rng;
use crate::trainer::Baseline;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Rows read from disk at once.
pub const CHUNK_ROWS: usize = 4096;

/// The default mixing buffer: as many rows as fit 64 MiB of f32 (at least one).
pub const DEFAULT_BUFFER_BYTES: usize = 64 << 20;

/// One `.npy` file read in place.
#[derive(Debug)]
struct Shard {
    path: PathBuf,
    file: File,
    header: NpyHeader,
}

/// Rows in one or more `.npy` files, read on demand.
#[derive(Debug)]
pub struct RowStore {
    shards: Vec<Shard>,
    /// The first global row of each shard, and the total after the last.
    starts: Vec<usize>,
    pub rows: usize,
    pub cols: usize,
    /// The path given (file or directory).
    pub path: PathBuf,
}

fn bad(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Input(format!("{}: {what}", path.display()))
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, at)
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut at: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        let n = file.seek_read(buf, at)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        at += n as u64;
    }
    Ok(())
}

impl Shard {
    fn open(path: &Path) -> Result<Shard> {
        let file = File::open(path).map_err(|e| bad(path, format!("cannot read it ({e}): check the path")))?;
        let len = file.metadata().map_err(|e| bad(path, format!("cannot read it ({e})")))?.len();
        // The header is at most a few KiB; read up to 64 KiB of the file's start.
        let mut head = vec![0u8; len.min(1 << 16) as usize];
        read_at(&file, &mut head, 0).map_err(|e| bad(path, format!("cannot read it ({e})")))?;
        let header = parse_npy_header(&head, path)?;
        if header.fortran {
            return Err(bad(
                path,
                "a Fortran-order array cannot be streamed row by row: save it with np.ascontiguousarray(arr)",
            ));
        }
        let need = (header.rows as u64).saturating_mul(header.cols as u64).saturating_mul(header.item as u64);
        if len.saturating_sub(header.data_at as u64) != need {
            return Err(bad(
                path,
                format!(
                    "shape [{}, {}] of {}-byte values needs {need} data bytes but the file has {} (truncated or corrupt)",
                    header.rows,
                    header.cols,
                    header.item,
                    len.saturating_sub(header.data_at as u64)
                ),
            ));
        }
        Ok(Shard { path: path.to_path_buf(), file, header })
    }

    /// Rows `start..start + count` of this shard appended to `out` as f32, checked finite.
    fn read(&self, start: usize, count: usize, out: &mut Vec<f32>) -> Result<()> {
        let (cols, item) = (self.header.cols, self.header.item);
        let mut bytes = vec![0u8; count * cols * item];
        let at = self.header.data_at as u64 + (start * cols * item) as u64;
        read_at(&self.file, &mut bytes, at)
            .map_err(|e| Error::Runtime(format!("{}: cannot read rows {start}.. ({e})", self.path.display())))?;
        let before = out.len();
        if item == 4 {
            out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        } else {
            out.extend(bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32));
        }
        if let Some(k) = out[before..].iter().position(|v| !v.is_finite()) {
            return Err(bad(
                &self.path,
                format!(
                    "row {}, column {}: the value is not a finite number (NaN or infinity): clean the data first",
                    start + k / cols + 1,
                    k % cols + 1
                ),
            ));
        }
        Ok(())
    }
}

impl RowStore {
    /// A `.npy` file, or a directory of `.npy` shards (read in name order) of one width and
    /// dtype. Only headers are read here.
    pub fn open(path: &Path) -> Result<RowStore> {
        let files: Vec<PathBuf> = if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| bad(path, format!("cannot list it ({e})")))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("npy")) && p.is_file())
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(bad(
                    path,
                    "the directory holds no .npy shards: give a directory of .npy files or one file",
                ));
            }
            files
        } else {
            if !path.extension().is_some_and(|x| x.eq_ignore_ascii_case("npy")) {
                return Err(bad(
                    path,
                    "streamed data is a .npy file or a directory of them (convert CSV with numpy.save)",
                ));
            }
            vec![path.to_path_buf()]
        };
        let shards = files.iter().map(|f| Shard::open(f)).collect::<Result<Vec<_>>>()?;
        let first = shards[0].header;
        for s in &shards[1..] {
            if s.header.cols != first.cols {
                return Err(bad(
                    &s.path,
                    format!(
                        "{} columns, but {} has {}: every shard must have the same width",
                        s.header.cols,
                        shards[0].path.display(),
                        first.cols
                    ),
                ));
            }
            if s.header.item != first.item {
                let name = |item: usize| if item == 4 { "f32" } else { "f64" };
                return Err(bad(
                    &s.path,
                    format!(
                        "dtype {}, but {} is {}: every shard must have the same dtype",
                        name(s.header.item),
                        shards[0].path.display(),
                        name(first.item)
                    ),
                ));
            }
        }
        let mut starts = vec![0];
        for s in &shards {
            starts.push(starts.last().unwrap() + s.header.rows);
        }
        Ok(RowStore { rows: *starts.last().unwrap(), cols: first.cols, shards, starts, path: path.to_path_buf() })
    }

    /// Bytes of values on disk.
    pub fn data_bytes(&self) -> u64 {
        self.shards.iter().map(|s| (s.header.rows * s.header.cols * s.header.item) as u64).sum()
    }

    /// Rows `start..start + count` (global, across shards) appended to `out`.
    pub fn read(&self, mut start: usize, mut count: usize, out: &mut Vec<f32>) -> Result<()> {
        while count > 0 {
            let s = self.starts.partition_point(|&b| b <= start) - 1;
            let local = start - self.starts[s];
            let take = count.min(self.shards[s].header.rows - local);
            self.shards[s].read(local, take, out)?;
            start += take;
            count -= take;
        }
        Ok(())
    }

    /// Every row in memory (for a small set, or a test).
    pub fn load_all(&self) -> Result<Dataset> {
        let mut values = Vec::with_capacity(self.rows * self.cols);
        self.read(0, self.rows, &mut values)?;
        Ok(Dataset { rows: self.rows, cols: self.cols, values })
    }

    /// The FVU denominator of the first `rows` rows, in one pass of chunks: the squared deviation
    /// from each feature's mean, `sum x^2 - n mean^2` accumulated in f64 per feature.
    pub fn baseline(&self, rows: usize) -> Result<Baseline> {
        let rows = rows.min(self.rows);
        let (mut sum, mut sum2) = (vec![0.0f64; self.cols], vec![0.0f64; self.cols]);
        let mut chunk = Vec::new();
        for start in (0..rows).step_by(CHUNK_ROWS) {
            chunk.clear();
            self.read(start, CHUNK_ROWS.min(rows - start), &mut chunk)?;
            for row in chunk.chunks_exact(self.cols) {
                for (f, &v) in row.iter().enumerate() {
                    sum[f] += v as f64;
                    sum2[f] += v as f64 * v as f64;
                }
            }
        }
        let n = rows.max(1) as f64;
        let dev = sum.iter().zip(&sum2).map(|(s, s2)| (s2 - s * s / n).max(0.0)).sum();
        Ok(Baseline { squared_deviation: dev })
    }

    /// Each feature's mean over every row (the pre-bias's init), in one pass.
    pub fn column_means(&self) -> Result<Vec<f32>> {
        let mut sum = vec![0.0f64; self.cols];
        let mut chunk = Vec::new();
        for start in (0..self.rows).step_by(CHUNK_ROWS) {
            chunk.clear();
            self.read(start, CHUNK_ROWS.min(self.rows - start), &mut chunk)?;
            for row in chunk.chunks_exact(self.cols) {
                for (s, &v) in sum.iter_mut().zip(row) {
                    *s += v as f64;
                }
            }
        }
        Ok(sum.iter().map(|s| (s / self.rows.max(1) as f64) as f32).collect())
    }
}

/// The default mixing buffer for rows `cols` wide: 64 MiB of them, at least one.
pub fn default_buffer(cols: usize) -> usize {
    (DEFAULT_BUFFER_BYTES / (4 * cols.max(1))).max(1)
}

/// The order a mixing buffer of `buffer` slots visits `rows` rows in, drawing from `rng`.
pub struct MixingOrder<'a> {
    slots: Vec<usize>,
    next: usize,
    rows: usize,
    rng: &'a mut Rng,
}

impl<'a> MixingOrder<'a> {
    pub fn new(rows: usize, buffer: usize, rng: &'a mut Rng) -> Self {
        let fill = buffer.max(1).min(rows);
        MixingOrder { slots: (0..fill).collect(), next: fill, rows, rng }
    }

    /// The slot the next row out comes from; the caller reads `slots[slot]` before `advance`.
    fn pick(&mut self) -> Option<usize> {
        (!self.slots.is_empty()).then(|| self.rng.below(self.slots.len()))
    }

    /// Refills (or, at the end of the rows, removes) the slot just emptied; returns the row that
    /// entered it.
    fn advance(&mut self, slot: usize) -> Option<usize> {
        if self.next < self.rows {
            self.slots[slot] = self.next;
            self.next += 1;
            Some(self.next - 1)
        } else {
            self.slots.swap_remove(slot);
            None
        }
    }
}

impl Iterator for MixingOrder<'_> {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        let slot = self.pick()?;
        let row = self.slots[slot];
        self.advance(slot);
        Some(row)
    }
}

/// One epoch's rows streamed from a store: in file order, or through a mixing buffer of rows
/// held in memory (the same order as [`MixingOrder`] with the same generator).
pub struct Stream<'a> {
    store: &'a RowStore,
    order: Option<MixingOrder<'a>>,
    /// The buffer's rows (slot `s` at `s * cols`), for a mixed stream.
    held: Vec<f32>,
    /// Rows read ahead in file order, from global row `ahead_at`.
    ahead: Vec<f32>,
    ahead_at: usize,
    /// The next row in file order (an unmixed stream's position).
    cursor: usize,
}

impl<'a> Stream<'a> {
    /// `shuffle` with a buffer of `buffer` rows and `rng`, or file order.
    pub fn new(store: &'a RowStore, shuffle: Option<(usize, &'a mut Rng)>) -> Result<Stream<'a>> {
        let mut s = Stream { store, order: None, held: Vec::new(), ahead: Vec::new(), ahead_at: 0, cursor: 0 };
        if let Some((buffer, rng)) = shuffle {
            let order = MixingOrder::new(store.rows, buffer, rng);
            let fill = order.slots.len();
            store.read(0, fill, &mut s.held)?;
            s.ahead_at = fill;
            s.order = Some(order);
        }
        Ok(s)
    }

    /// Rows of the store in this stream's order, up to `count` of them, appended to `out`;
    /// returns how many (0 at the end of the epoch).
    pub fn next_rows(&mut self, count: usize, out: &mut Vec<f32>) -> Result<usize> {
        let cols = self.store.cols;
        let Some(order) = self.order.as_mut() else {
            let take = count.min(self.store.rows - self.cursor);
            self.store.read(self.cursor, take, out)?;
            self.cursor += take;
            return Ok(take);
        };
        let mut taken = 0;
        while taken < count {
            let Some(slot) = order.pick() else { break };
            out.extend_from_slice(&self.held[slot * cols..(slot + 1) * cols]);
            match order.advance(slot) {
                Some(row) => {
                    // The row that enters: from the read-ahead, refilled a chunk at a time.
                    let have = self.ahead.len() / cols;
                    if row >= self.ahead_at + have || have == 0 {
                        self.ahead.clear();
                        self.ahead_at = row;
                        self.store.read(row, CHUNK_ROWS.min(self.store.rows - row), &mut self.ahead)?;
                    }
                    let at = (row - self.ahead_at) * cols;
                    self.held[slot * cols..(slot + 1) * cols].copy_from_slice(&self.ahead[at..at + cols]);
                }
                None => {
                    // The last slot moved into the emptied one (swap_remove).
                    let last = order.slots.len();
                    self.held.copy_within(last * cols..(last + 1) * cols, slot * cols);
                    self.held.truncate(last * cols);
                }
            }
            taken += 1;
        }
        Ok(taken)
    }

    /// Drops the first `rows` rows of the epoch (a resumed run's minibatches already taken).
    pub fn skip(&mut self, rows: usize) -> Result<()> {
        let mut sink = Vec::new();
        let mut left = rows;
        while left > 0 {
            sink.clear();
            let n = self.next_rows(left.min(CHUNK_ROWS), &mut sink)?;
            if n == 0 {
                break;
            }
            left -= n;
        }
        Ok(())
    }
}

/// Whether `path` is read as a stream: a directory, or a `.npy` whose values exceed `above`
/// bytes.
pub fn streams(path: &Path, above: u64) -> bool {
    if path.is_dir() {
        return true;
    }
    let npy = path.extension().is_some_and(|x| x.eq_ignore_ascii_case("npy"));
    npy && std::fs::metadata(path).is_ok_and(|m| m.len() > above)
}

/// The resident copy of a store's rows, as `data::load` would give them.
pub fn load(path: &Path) -> Result<Dataset> {
    if path.is_dir() {
        RowStore::open(path)?.load_all()
    } else {
        data::load(path)
    }
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`); None elsewhere.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
