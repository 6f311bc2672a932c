//! Appending rows to a store. `append` converts rows into the open shard buffer on the calling
//! thread (in parallel); full buffers go through a bounded queue to a background thread that
//! writes, fsyncs and renames the shard and then publishes the manifest. The queue bound is
//! the back-pressure: at most `queue + 2` shard buffers exist at once.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use half::{bf16, f16};

use super::manifest::{check_name, ColumnSpec, Manifest, ShardEntry, SiteSpec, MANIFEST};
use super::shard::{self, TensorBytes};
use crate::dtype::{par_convert, DType, Floats, FloatsMut};
use crate::error::{IoContext, Result, StoreError};

/// The largest shard (rows x bytes per row) and row count a writer accepts.
pub const MAX_SHARD_BYTES: u64 = 1 << 40;
pub const MAX_SHARD_ROWS: u64 = 1 << 40;
/// The most sealed shards that may wait for the disk (each is a whole shard in memory).
pub const MAX_QUEUE: usize = 64;

/// "x": create a new store (the path must not exist, or be an empty directory);
/// "a": append to an existing store (created if absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Create,
    Append,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "x" => Ok(Mode::Create),
            "a" => Ok(Mode::Append),
            _ => Err(StoreError::invalid(format!(
                "mode must be \"x\" (new store) or \"a\" (append/resume), not {s:?}"
            ))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Rows per shard; `None` sizes shards to about `shard_bytes`.
    pub shard_rows: Option<u64>,
    pub shard_bytes: u64,
    /// Sealed shards allowed to wait for the writer thread.
    pub queue: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            shard_rows: None,
            shard_bytes: 256 << 20,
            queue: 1,
        }
    }
}

/// One site's rows to append: `rows * cols` elements, row-major.
pub struct SiteInput<'a> {
    pub name: &'a str,
    pub data: Floats<'a>,
    pub rows: usize,
    pub cols: usize,
}

enum SiteBuf {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl SiteBuf {
    /// A zeroed buffer of `len` floats, or an error (never an abort) when the allocation fails.
    fn zeroed(dtype: DType, len: usize) -> Result<SiteBuf> {
        let fail = |_| {
            StoreError::invalid(format!(
                "cannot allocate a shard buffer of {len} {} values: lower shard_rows or shard_bytes",
                dtype.name()
            ))
        };
        Ok(match dtype {
            DType::Float32 => {
                SiteBuf::F32(bytemuck::allocation::try_zeroed_vec(len).map_err(fail)?)
            }
            DType::Float16 => {
                SiteBuf::F16(bytemuck::allocation::try_zeroed_vec(len).map_err(fail)?)
            }
            _ => SiteBuf::BF16(bytemuck::allocation::try_zeroed_vec(len).map_err(fail)?),
        })
    }
    fn range_mut(&mut self, start: usize, end: usize) -> FloatsMut<'_> {
        match self {
            SiteBuf::F32(v) => FloatsMut::F32(&mut v[start..end]),
            SiteBuf::F16(v) => FloatsMut::F16(&mut v[start..end]),
            SiteBuf::BF16(v) => FloatsMut::BF16(&mut v[start..end]),
        }
    }
    fn bytes(&self, len: usize) -> &[u8] {
        match self {
            SiteBuf::F32(v) => bytemuck::cast_slice(&v[..len]),
            SiteBuf::F16(v) => bytemuck::cast_slice(&v[..len]),
            SiteBuf::BF16(v) => bytemuck::cast_slice(&v[..len]),
        }
    }
}

/// The rows of one shard being filled.
struct ShardBuffer {
    first_row: u64,
    rows: usize,
    capacity: usize,
    sites: Vec<SiteBuf>,
    columns: Vec<Vec<i64>>,
    column_specs: Vec<ColumnSpec>,
}

enum Job {
    Seal(ShardBuffer),
    Metadata(serde_json::Value),
    Sync(SyncSender<std::result::Result<(), String>>),
}

#[derive(Default)]
struct Status {
    committed_rows: u64,
    error: Option<String>,
}

/// Appends rows to a store; see the module docs for the commit protocol.
pub struct StoreWriter {
    dir: PathBuf,
    sites: Vec<SiteSpec>,
    /// `None` until fixed by the first append (or by the store's existing rows).
    columns: Option<Vec<ColumnSpec>>,
    metadata: serde_json::Value,
    opts: WriterOptions,
    buf: Option<ShardBuffer>,
    rows: u64,
    tx: Option<SyncSender<Job>>,
    /// Shard buffers the writer thread has finished with, for reuse (no first-touch cost).
    recycled: Mutex<Receiver<ShardBuffer>>,
    worker: Option<JoinHandle<()>>,
    status: Arc<Mutex<Status>>,
    /// Held (flock) from open to close, so a second writer on the same store is refused.
    lock: Option<File>,
}

fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(".lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .at(&path)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::invalid(format!(
            "{} is open in another StoreWriter (this or another process); close that writer first",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Io { path, source: e }),
    }
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(fs::read_dir(dir).at(dir)?.next().is_none())
}

/// Remove what an interrupted writer may have left: temp files and shards the manifest does
/// not list (renamed, but killed before the manifest was published).
fn remove_uncommitted(dir: &Path, manifest: &Manifest) -> Result<()> {
    let listed: std::collections::HashSet<&str> =
        manifest.shards.iter().map(|s| s.file.as_str()).collect();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale_tmp = name.starts_with(".tmp-");
        let orphan =
            name.starts_with("shard-") && name.ends_with(".safetensors") && !listed.contains(name);
        if stale_tmp || orphan {
            let p = entry.path();
            fs::remove_file(&p).at(&p)?;
        }
    }
    Ok(())
}

fn merge_metadata(into: &mut serde_json::Value, from: &serde_json::Value) -> Result<()> {
    let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) else {
        return Err(StoreError::invalid(
            "metadata must be a JSON object (a dict of str to JSON values)",
        ));
    };
    for (k, v) in from {
        into.insert(k.clone(), v.clone());
    }
    Ok(())
}

impl StoreWriter {
    /// Open a writer. `columns` may be given up front; otherwise the first append fixes them.
    /// `metadata` is merged into the store's metadata (shallow, by key).
    pub fn open(
        dir: &Path,
        sites: Vec<SiteSpec>,
        columns: Option<Vec<ColumnSpec>>,
        metadata: serde_json::Value,
        mode: Mode,
        opts: WriterOptions,
    ) -> Result<StoreWriter> {
        if opts.shard_rows == Some(0) || opts.shard_bytes == 0 {
            return Err(StoreError::invalid(
                "shard_rows and shard_bytes must be positive",
            ));
        }
        if opts.shard_rows.unwrap_or(1) > MAX_SHARD_ROWS || opts.shard_bytes > MAX_SHARD_BYTES {
            return Err(StoreError::invalid(format!(
                "shard_rows must be in [1, {MAX_SHARD_ROWS}] and shard_bytes in [1, {MAX_SHARD_BYTES}]"
            )));
        }
        let site_bytes = sites.iter().try_fold(0u64, |acc, s| {
            s.dim
                .checked_mul(s.dtype.size() as u64)
                .and_then(|b| acc.checked_add(b))
        });
        let shard_fits = site_bytes.is_some_and(|row| {
            row.checked_mul(opts.shard_rows.unwrap_or(1))
                .is_some_and(|b| b <= MAX_SHARD_BYTES)
        });
        if !shard_fits {
            return Err(StoreError::invalid(format!(
                "a shard of {} rows of these sites would exceed {MAX_SHARD_BYTES} bytes: lower \
                 shard_rows (or leave it unset to size shards by shard_bytes) or the site widths",
                opts.shard_rows.unwrap_or(1)
            )));
        }
        if !(1..=MAX_QUEUE).contains(&opts.queue) {
            return Err(StoreError::invalid(format!(
                "queue must be in [1, {MAX_QUEUE}] (sealed shards waiting for the disk), got {}",
                opts.queue
            )));
        }
        let exists = dir.exists();
        let has_manifest = dir.join(MANIFEST).exists();
        let create = match mode {
            Mode::Create => {
                if exists && !(dir.is_dir() && is_empty_dir(dir)?) {
                    return Err(StoreError::Exists(dir.to_path_buf()));
                }
                true
            }
            Mode::Append => {
                if exists && !has_manifest && !(dir.is_dir() && is_empty_dir(dir)?) {
                    return Err(StoreError::invalid(format!(
                        "{} exists but is not a store (no manifest.json); choose another path",
                        dir.display()
                    )));
                }
                !has_manifest
            }
        };
        if create {
            fs::create_dir_all(dir).at(dir)?;
        }
        let lock = lock(dir)?;
        let manifest = if create {
            let mut m = Manifest::new(
                sites.clone(),
                columns.clone().unwrap_or_default(),
                serde_json::json!({}),
            )?;
            merge_metadata(&mut m.metadata, &metadata)?;
            m
        } else {
            let mut m = Manifest::load(dir)?;
            check_same_sites(&m.sites, &sites)?;
            if let Some(cols) = &columns {
                if (m.rows > 0 || !m.columns.is_empty()) && names(&m.columns) != names(cols) {
                    return Err(StoreError::invalid(format!(
                        "columns {:?} do not match the store's columns {:?}",
                        names(cols),
                        names(&m.columns)
                    )));
                }
                if m.rows == 0 {
                    m.columns = cols.clone();
                }
            }
            merge_metadata(&mut m.metadata, &metadata)?;
            remove_uncommitted(dir, &m)?;
            m
        };
        for c in columns.iter().flatten() {
            check_name("column", &c.name)?;
        }
        manifest.publish(dir)?;
        let fixed_columns =
            (manifest.rows > 0 || !manifest.columns.is_empty()).then(|| manifest.columns.clone());
        let status = Arc::new(Mutex::new(Status {
            committed_rows: manifest.rows,
            error: None,
        }));
        let (tx, rx) = sync_channel(opts.queue);
        let (recycle_tx, recycled) = sync_channel(opts.queue + 1);
        let worker = {
            let (wdir, manifest, status) = (dir.to_path_buf(), manifest.clone(), status.clone());
            std::thread::Builder::new()
                .name("actbridge-store-writer".into())
                .spawn(move || run_worker(wdir, manifest, rx, recycle_tx, status))
                .at(dir)?
        };
        Ok(StoreWriter {
            dir: dir.to_path_buf(),
            sites: manifest.sites.clone(),
            columns: fixed_columns,
            metadata: manifest.metadata.clone(),
            opts,
            buf: None,
            rows: manifest.rows,
            tx: Some(tx),
            recycled: Mutex::new(recycled),
            worker: Some(worker),
            status,
            lock: Some(lock),
        })
    }
}

fn names(cols: &[ColumnSpec]) -> Vec<&str> {
    cols.iter().map(|c| c.name.as_str()).collect()
}

fn check_same_sites(have: &[SiteSpec], want: &[SiteSpec]) -> Result<()> {
    let describe = |s: &[SiteSpec]| {
        s.iter()
            .map(|x| format!("{}: {} x {}", x.name, x.dim, x.dtype.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same = have.len() == want.len() && want.iter().all(|w| have.iter().any(|h| h == w));
    if same {
        Ok(())
    } else {
        Err(StoreError::invalid(format!(
            "sites {{{}}} do not match the existing store's sites {{{}}}; resume with the same sites and dtypes",
            describe(want),
            describe(have)
        )))
    }
}

impl StoreWriter {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn sites(&self) -> &[SiteSpec] {
        &self.sites
    }
    /// Columns, once fixed.
    pub fn columns(&self) -> Option<&[ColumnSpec]> {
        self.columns.as_deref()
    }
    /// Rows appended so far, committed or not (including rows of earlier sessions).
    pub fn rows(&self) -> u64 {
        self.rows
    }
    /// Rows durably committed (listed in the published manifest).
    pub fn committed_rows(&self) -> u64 {
        self.status.lock().map(|s| s.committed_rows).unwrap_or(0)
    }
    pub fn metadata(&self) -> &serde_json::Value {
        &self.metadata
    }

    fn check_worker(&self) -> Result<()> {
        if self.tx.is_none() {
            return Err(StoreError::invalid(
                "this StoreWriter is closed; open a new one with mode=\"a\"",
            ));
        }
        match self.status.lock() {
            Ok(s) => match &s.error {
                Some(e) => Err(StoreError::WriterFailed(e.clone())),
                None => Ok(()),
            },
            Err(_) => Err(StoreError::WriterFailed("writer state poisoned".into())),
        }
    }

    fn send(&self, job: Job) -> Result<()> {
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| StoreError::invalid("this StoreWriter is closed"))?;
        tx.send(job)
            .map_err(|_| StoreError::WriterFailed("the writer thread has stopped".into()))
    }

    /// Append `n` rows: every site exactly once, each `(n, dim)`, and the same columns each time
    /// (each of length `n`). Validates everything before copying anything, so a rejected call
    /// appends nothing. With `check_finite`, NaN or infinity is rejected.
    pub fn append(
        &mut self,
        sites: &[SiteInput<'_>],
        columns: &[(&str, &[i64])],
        check_finite: bool,
    ) -> Result<()> {
        self.check_worker()?;
        let n = self.validate(sites, columns, check_finite)?;
        if self.columns.is_none() {
            let specs: Vec<ColumnSpec> = columns
                .iter()
                .map(|(name, _)| ColumnSpec {
                    name: name.to_string(),
                    dtype: DType::Int64,
                })
                .collect();
            for c in &specs {
                check_name("column", &c.name)?;
                if self.sites.iter().any(|s| s.name == c.name) {
                    return Err(StoreError::invalid(format!(
                        "column {:?} has the name of a site",
                        c.name
                    )));
                }
            }
            self.columns = Some(specs);
        }
        // Inputs in the store's site and column order.
        let site_inputs: Vec<&SiteInput<'_>> = self
            .sites
            .iter()
            .map(|s| sites.iter().find(|i| i.name == s.name).expect("validated"))
            .collect();
        let column_inputs: Vec<&[i64]> = self
            .columns
            .as_ref()
            .expect("fixed above")
            .iter()
            .map(|c| {
                columns
                    .iter()
                    .find(|(name, _)| *name == c.name)
                    .expect("validated")
                    .1
            })
            .collect();
        let mut done = 0usize;
        while done < n {
            let buf = match self.buf.as_mut() {
                Some(b) => b,
                None => {
                    let b = self.new_buffer()?;
                    self.buf.insert(b)
                }
            };
            let k = (n - done).min(buf.capacity - buf.rows);
            for ((spec, input), sbuf) in self.sites.iter().zip(&site_inputs).zip(&mut buf.sites) {
                let d = spec.dim as usize;
                par_convert(
                    input.data.slice(done * d, (done + k) * d),
                    sbuf.range_mut(buf.rows * d, (buf.rows + k) * d),
                );
            }
            for (col, cbuf) in column_inputs.iter().zip(&mut buf.columns) {
                cbuf.extend_from_slice(&col[done..done + k]);
            }
            buf.rows += k;
            done += k;
            self.rows += k as u64;
            if buf.rows == buf.capacity {
                self.seal()?;
            }
        }
        Ok(())
    }

    fn validate(
        &self,
        sites: &[SiteInput<'_>],
        columns: &[(&str, &[i64])],
        check_finite: bool,
    ) -> Result<usize> {
        let expected: Vec<&str> = self.sites.iter().map(|s| s.name.as_str()).collect();
        for (i, input) in sites.iter().enumerate() {
            if sites[..i].iter().any(|o| o.name == input.name) {
                return Err(StoreError::invalid(format!(
                    "site {:?} given twice",
                    input.name
                )));
            }
            if !expected.contains(&input.name) {
                return Err(StoreError::invalid(format!(
                    "unknown site {:?}; this store's sites are {expected:?}",
                    input.name
                )));
            }
        }
        if let Some(missing) = expected
            .iter()
            .find(|s| !sites.iter().any(|i| i.name == **s))
        {
            return Err(StoreError::invalid(format!(
                "site {missing:?} is missing: every append must give all sites {expected:?}"
            )));
        }
        let n = sites[0].rows;
        for input in sites {
            let spec = self
                .sites
                .iter()
                .find(|s| s.name == input.name)
                .expect("checked");
            if input.cols as u64 != spec.dim {
                return Err(StoreError::invalid(format!(
                    "site {:?} has width {}, the store expects {} (a {}-row batch of shape (n, {}))",
                    input.name, input.cols, spec.dim, input.rows, spec.dim
                )));
            }
            if input.rows != n {
                return Err(StoreError::invalid(format!(
                    "sites have different row counts ({:?}: {}, {:?}: {}); every array of one append must have the same number of rows",
                    sites[0].name, n, input.name, input.rows
                )));
            }
            if input.data.len() != input.rows * input.cols {
                return Err(StoreError::invalid(format!(
                    "site {:?}: data length does not match its shape",
                    input.name
                )));
            }
        }
        for (i, (name, values)) in columns.iter().enumerate() {
            if columns[..i].iter().any(|(o, _)| o == name) {
                return Err(StoreError::invalid(format!("column {name:?} given twice")));
            }
            if values.len() != n {
                return Err(StoreError::invalid(format!(
                    "column {name:?} has {} values for {n} rows; give one value per row",
                    values.len()
                )));
            }
        }
        if let Some(fixed) = &self.columns {
            let want = names(fixed);
            let mut got: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
            got.sort_unstable();
            let mut want_sorted = want.clone();
            want_sorted.sort_unstable();
            if got != want_sorted {
                return Err(StoreError::invalid(format!(
                    "columns {got:?} do not match this store's columns {want:?}; give the same columns on every append"
                )));
            }
        }
        if check_finite {
            for input in sites {
                if let Some(at) = input.data.first_non_finite() {
                    return Err(StoreError::invalid(format!(
                        "site {:?} has a NaN or infinite value at row {}, column {} (check_finite=True)",
                        input.name,
                        at / input.cols.max(1),
                        at % input.cols.max(1)
                    )));
                }
            }
        }
        Ok(n)
    }

    fn new_buffer(&self) -> Result<ShardBuffer> {
        let column_specs = self.columns.clone().unwrap_or_default();
        if let Some(mut b) = self.recycled.lock().ok().and_then(|r| r.try_recv().ok()) {
            if b.column_specs == column_specs {
                b.first_row = self.rows;
                b.rows = 0;
                b.columns.iter_mut().for_each(Vec::clear);
                return Ok(b);
            }
        }
        let too_big = || {
            StoreError::invalid(format!(
                "a shard of {:?} rows of this store's sites would exceed {MAX_SHARD_BYTES} bytes: \
                 lower shard_rows (or leave it unset to size shards by shard_bytes)",
                self.opts.shard_rows
            ))
        };
        let row_bytes: u64 = self
            .sites
            .iter()
            .try_fold(8 * column_specs.len() as u64, |acc, s| {
                s.dim
                    .checked_mul(s.dtype.size() as u64)
                    .and_then(|b| acc.checked_add(b))
            })
            .ok_or_else(too_big)?;
        let capacity = self
            .opts
            .shard_rows
            .unwrap_or((self.opts.shard_bytes / row_bytes.max(1)).max(1));
        if capacity
            .checked_mul(row_bytes)
            .is_none_or(|b| b > MAX_SHARD_BYTES)
        {
            return Err(too_big());
        }
        let capacity = usize::try_from(capacity).map_err(|_| too_big())?;
        let mut sites = Vec::with_capacity(self.sites.len());
        for s in &self.sites {
            sites.push(SiteBuf::zeroed(s.dtype, capacity * s.dim as usize)?);
        }
        let mut columns = Vec::with_capacity(column_specs.len());
        for _ in &column_specs {
            let mut v: Vec<i64> = Vec::new();
            v.try_reserve_exact(capacity).map_err(|_| too_big())?;
            columns.push(v);
        }
        Ok(ShardBuffer {
            first_row: self.rows,
            rows: 0,
            capacity,
            sites,
            columns,
            column_specs,
        })
    }

    fn seal(&mut self) -> Result<()> {
        match self.buf.take() {
            Some(b) if b.rows > 0 => self.send(Job::Seal(b)),
            _ => Ok(()),
        }
    }

    /// Merge `metadata` (a JSON object) into the store's metadata; published at the next commit.
    pub fn update_metadata(&mut self, metadata: &serde_json::Value) -> Result<()> {
        self.check_worker()?;
        merge_metadata(&mut self.metadata, metadata)?;
        self.send(Job::Metadata(self.metadata.clone()))
    }

    /// Commit every row appended so far (and the metadata); returns the committed row count.
    pub fn flush(&mut self) -> Result<u64> {
        self.check_worker()?;
        self.seal()?;
        let (reply_tx, reply_rx) = sync_channel(1);
        self.send(Job::Sync(reply_tx))?;
        match reply_rx.recv() {
            Ok(Ok(())) => Ok(self.committed_rows()),
            Ok(Err(e)) => Err(StoreError::WriterFailed(e)),
            Err(_) => Err(StoreError::WriterFailed(
                "the writer thread has stopped".into(),
            )),
        }
    }

    /// Flush and stop the writer thread. Further calls fail; closing twice is fine.
    pub fn close(&mut self) -> Result<u64> {
        if self.tx.is_none() {
            return Ok(self.committed_rows());
        }
        let flushed = self.flush();
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        self.lock = None;
        flushed
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn run_worker(
    dir: PathBuf,
    mut manifest: Manifest,
    rx: Receiver<Job>,
    recycle: SyncSender<ShardBuffer>,
    status: Arc<Mutex<Status>>,
) {
    let fail = |e: String| {
        if let Ok(mut s) = status.lock() {
            s.error.get_or_insert(e);
        }
    };
    let failed = || status.lock().map(|s| s.error.is_some()).unwrap_or(true);
    let mut dirty = false;
    for job in rx {
        match job {
            Job::Seal(buf) if !failed() => match commit(&dir, &mut manifest, &buf) {
                Ok(()) => {
                    dirty = false;
                    if let Ok(mut s) = status.lock() {
                        s.committed_rows = manifest.rows;
                    }
                    if buf.rows == buf.capacity {
                        let _ = recycle.try_send(buf); // full-size buffers only; drop if not wanted
                    }
                }
                Err(e) => fail(e.to_string()),
            },
            Job::Seal(_) => {}
            Job::Metadata(m) => {
                manifest.metadata = m;
                dirty = true;
            }
            Job::Sync(reply) => {
                let result = if let Some(e) = status.lock().ok().and_then(|s| s.error.clone()) {
                    Err(e)
                } else if dirty {
                    manifest.publish(&dir).map(|()| dirty = false).map_err(|e| {
                        fail(e.to_string());
                        e.to_string()
                    })
                } else {
                    Ok(())
                };
                let _ = reply.send(result);
            }
        }
    }
}

/// Write one shard (temp name, fsync, rename) and publish the manifest that lists it.
fn commit(dir: &Path, manifest: &mut Manifest, buf: &ShardBuffer) -> Result<()> {
    let file = format!("shard-{:06}.safetensors", manifest.shards.len());
    let tmp = dir.join(format!(".tmp-{file}"));
    let rows = buf.rows as u64;
    let mut tensors: Vec<TensorBytes<'_>> = manifest
        .sites
        .iter()
        .zip(&buf.sites)
        .map(|(s, b)| TensorBytes {
            name: &s.name,
            dtype: s.dtype,
            shape: vec![rows, s.dim],
            data: b.bytes(buf.rows * s.dim as usize),
        })
        .collect();
    for (c, values) in buf.column_specs.iter().zip(&buf.columns) {
        tensors.push(TensorBytes {
            name: &c.name,
            dtype: DType::Int64,
            shape: vec![rows],
            data: bytemuck::cast_slice(values),
        });
    }
    let (bytes, xxh3) = shard::write(&tmp, tensors, buf.first_row)?;
    let dst = dir.join(&file);
    fs::rename(&tmp, &dst).at(&dst)?;
    if manifest.rows == 0 {
        manifest.columns = buf.column_specs.clone();
    }
    manifest.shards.push(ShardEntry {
        file,
        rows,
        bytes,
        xxh3,
    });
    manifest.rows += rows;
    manifest.publish(dir)
}
