//! Reading a store: committed shards are memory-mapped read-only and validated at open; rows
//! are gathered in parallel straight into the output, converting dtype on the way. Pages the
//! reader has touched are handed back to the kernel once more than `page_budget` bytes were
//! read, so resident memory stays bounded on stores larger than RAM.

use std::borrow::Cow;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{Mmap, UncheckedAdvice};
use rayon::prelude::*;

use super::files::open_regular;
use super::manifest::{Manifest, ShardEntry, SiteSpec, MANIFEST};
use super::shard::{self, ShardLayout};
use crate::dtype::{convert, Float, Floats, FloatsMut};
use crate::error::{IoContext, Result, StoreError};
use crate::stream::{widen_to_f32_streaming, STREAM_MIN_BYTES};

/// `[dir]` for a single store; else the `part-*` subdirectories holding a manifest, in
/// natural order (part-2 before part-10).
fn discover_parts(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join(MANIFEST).exists() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Err(StoreError::NotFound(dir.to_path_buf()));
    };
    let mut parts: Vec<(String, PathBuf)> = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !name.starts_with("part-") {
            continue;
        }
        // a part is a directory of the store itself: a symlinked part would pull rows in from
        // elsewhere (file_type() does not follow links)
        if e.file_type().map(|t| t.is_symlink()).unwrap_or(false) {
            return Err(StoreError::corrupt(
                e.path(),
                "a symbolic link: a store's parts are directories inside it",
            ));
        }
        if e.path().join(MANIFEST).is_file() {
            parts.push((name, e.path()));
        }
    }
    if parts.is_empty() {
        return Err(StoreError::NotFound(dir.to_path_buf()));
    }
    let key = |name: &str| {
        let suffix = &name["part-".len()..];
        (
            suffix.parse::<u64>().map_err(|_| suffix.to_string()),
            name.to_string(),
        )
    };
    parts.sort_by_key(|a| key(&a.0));
    Ok(parts.into_iter().map(|(_, p)| p).collect())
}

/// Part 0's manifest, checked to share its sites and columns with every other part.
fn merged_schema(root: &Path, parts: &[PathBuf], manifests: &[Manifest]) -> Result<Manifest> {
    let first = &manifests[0];
    for (part, m) in parts.iter().zip(manifests).skip(1) {
        let same_sites =
            m.sites.len() == first.sites.len() && m.sites.iter().all(|s| first.sites.contains(s));
        let mut a: Vec<&str> = m.columns.iter().map(|c| c.name.as_str()).collect();
        let mut b: Vec<&str> = first.columns.iter().map(|c| c.name.as_str()).collect();
        a.sort_unstable();
        b.sort_unstable();
        // A part with no rows yet may not have fixed its columns.
        let same_columns = a == b || m.rows == 0 || first.rows == 0;
        if !same_sites || !same_columns {
            return Err(StoreError::corrupt(
                root,
                format!(
                    "part {} does not have the sites and columns of part {}",
                    part.display(),
                    parts[0].display()
                ),
            ));
        }
    }
    let mut schema = first.clone();
    if first.rows == 0 {
        if let Some(m) = manifests.iter().find(|m| m.rows > 0) {
            schema.columns = m.columns.clone();
        }
    }
    Ok(schema)
}

/// Resident file-backed (and shared) memory of this process, in bytes.
fn resident_file_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let shared_pages: u64 = statm.split_whitespace().nth(2)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(shared_pages * u64::try_from(page).ok().filter(|&p| p > 0)?)
}

/// Linux's default `fault_around_bytes`.
const FAULT_AROUND_BYTES: u64 = 64 << 10;

/// How far ahead scattered gathers prefetch (rows), and how much of each row (bytes).
const PREFETCH_AHEAD: usize = 4;
const PREFETCH_BYTES: usize = 256;

/// Rows per parallel task of a gather.
const TASK_ROWS: usize = 64;

/// Which rows to read.
#[derive(Clone, Debug)]
pub enum Rows<'a> {
    All,
    /// `start..stop`.
    Range(u64, u64),
    /// Arbitrary row numbers; negative ones count from the end, as in numpy.
    Indices(&'a [i64]),
}

/// Validated global row numbers.
#[derive(Clone, Debug)]
pub enum RowIds<'a> {
    Range(u64, u64),
    List(Cow<'a, [u64]>),
}

impl RowIds<'_> {
    pub fn len(&self) -> usize {
        match self {
            RowIds::Range(a, b) => (b - a) as usize,
            RowIds::List(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    #[inline]
    pub fn get(&self, i: usize) -> u64 {
        match self {
            RowIds::Range(a, _) => a + i as u64,
            RowIds::List(v) => v[i],
        }
    }
    /// The sub-selection `[start, end)`.
    pub fn sub(&self, start: usize, end: usize) -> RowIds<'_> {
        match self {
            RowIds::Range(a, _) => RowIds::Range(a + start as u64, a + end as u64),
            RowIds::List(v) => RowIds::List(Cow::Borrowed(&v[start..end])),
        }
    }
}

/// One committed shard, mapped.
pub struct MappedShard {
    pub entry: ShardEntry,
    /// The shard file (inside its part's directory).
    pub path: PathBuf,
    first_row: u64,
    map: Mmap,
    layout: ShardLayout,
    /// The open file behind `map` (an `fstat` of it tells whether it shrank since it was mapped).
    file: File,
}

impl MappedShard {
    /// Map and validate `entry` of the part in `dir`, whose first row (within the part) is
    /// `first_row`, against the store-wide schema `schema` (tensors are found by name, so
    /// parts that list sites or columns in another order still line up).
    fn open(
        dir: &Path,
        entry: &ShardEntry,
        first_row: u64,
        schema: &Manifest,
    ) -> Result<MappedShard> {
        let path = dir.join(&entry.file);
        let Some(file) = open_regular(&path)? else {
            return Err(StoreError::corrupt(
                &path,
                "listed in the manifest but missing",
            ));
        };
        let len = file.metadata().at(&path)?.len();
        if len != entry.bytes {
            return Err(StoreError::corrupt(
                &path,
                format!(
                    "file has {len} bytes, the manifest says {} (truncated or overwritten)",
                    entry.bytes
                ),
            ));
        }
        // SAFETY: shards are immutable once committed (written under a temp name, then renamed);
        // the length was checked above and every range below is validated against it.
        let map = unsafe { Mmap::map(&file) }.at(&path)?;
        let layout = shard::parse(&map, first_row, entry.rows, &schema.sites, &schema.columns)
            .map_err(|d| StoreError::corrupt(&path, d))?;
        for (s, r) in schema.sites.iter().zip(&layout.sites) {
            if Floats::from_bytes(s.dtype, &map[r.clone()]).is_none() {
                return Err(StoreError::corrupt(
                    &path,
                    format!("site {:?} is misaligned", s.name),
                ));
            }
        }
        Ok(MappedShard {
            entry: entry.clone(),
            path,
            first_row,
            map,
            layout,
            file,
        })
    }

    /// An error when the file behind the mapping is no longer as long as when it was mapped
    /// (reading a truncated mapping would end the process with SIGBUS).
    fn check_unchanged(&self) -> Result<()> {
        let len = self.file.metadata().at(&self.path)?.len();
        if len < self.map.len() as u64 {
            return Err(StoreError::corrupt(
                &self.path,
                format!(
                    "shrank to {len} bytes since the store was opened (it had {}): shards must not \
                     be modified; reopen the store after restoring it",
                    self.map.len()
                ),
            ));
        }
        Ok(())
    }

    fn site_rows(
        &self,
        spec: &SiteSpec,
        site: usize,
        local: u64,
        len: usize,
    ) -> Option<Floats<'_>> {
        let row_bytes = spec.dim as usize * spec.dtype.size();
        let start = self.layout.sites[site].start + local as usize * row_bytes;
        let bytes = self.map.get(start..start + len * row_bytes)?;
        Floats::from_bytes(spec.dtype, bytes)
    }

    /// Hint the CPU to load the first bytes of a row (a hint: it cannot fault).
    #[inline]
    fn prefetch_site_row(&self, spec: &SiteSpec, site: usize, local: u64) {
        let row_bytes = spec.dim as usize * spec.dtype.size();
        let start = self.layout.sites[site].start + local as usize * row_bytes;
        let end = (start + row_bytes.min(PREFETCH_BYTES)).min(self.map.len());
        #[cfg(target_arch = "x86_64")]
        for at in (start..end).step_by(64) {
            // SAFETY: prefetch is a hint; it never faults, and `at` is inside the mapping.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    self.map.as_ptr().add(at) as *const i8,
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (start, end);
    }

    fn column_rows(&self, col: usize, local: u64, len: usize) -> Option<&[i64]> {
        let start = self.layout.columns[col].start + local as usize * 8;
        bytemuck::try_cast_slice(self.map.get(start..start + len * 8)?).ok()
    }

    fn release(&self) {
        // SAFETY: a read-only shared file mapping: dropping its pages only means they are read
        // again from the page cache or the file on next touch; no data can be lost.
        let _ = unsafe { self.map.unchecked_advise(UncheckedAdvice::DontNeed) };
    }
}

/// A read-only view of the rows committed when it was opened (or last refreshed).
pub struct ActivationStore {
    dir: PathBuf,
    parts: Vec<PathBuf>,
    /// Opened from an explicit list of parts (refresh re-reads the same list).
    listed: bool,
    /// The store-wide view: part 0's schema and metadata, every part's shards (named by their
    /// path relative to `dir`) and the total row count.
    manifest: Manifest,
    shards: Vec<Arc<MappedShard>>,
    /// `ends[i]` = rows in shards `0..=i`.
    ends: Vec<u64>,
    touched: AtomicU64,
    /// Resident file bytes right after the last release.
    baseline: AtomicU64,
    page_budget: u64,
}

/// The default page budget: a quarter of physical memory, at least 1 GiB. Stores that fit
/// stay fully mapped (no re-faulting); larger ones keep resident memory near this bound.
pub fn default_page_budget() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let ram = u64::try_from(pages)
        .unwrap_or(0)
        .saturating_mul(u64::try_from(size).unwrap_or(0));
    (ram / 4).max(1 << 30)
}

impl ActivationStore {
    /// Open the store at `dir`: a single store (`dir/manifest.json`), or a store written in
    /// parts (`dir/part-*/manifest.json`, e.g. one per GPU rank), opened as one store whose rows
    /// are part 0's, then part 1's, and so on.
    pub fn open(dir: &Path, page_budget: u64) -> Result<ActivationStore> {
        Self::open_parts(dir, discover_parts(dir)?, &[], page_budget)
    }

    /// Open the stores (or parts) at `paths` as one store, rows in the order given. Each path
    /// must hold a `manifest.json`; all must share sites and columns.
    pub fn open_list(paths: &[PathBuf], page_budget: u64) -> Result<ActivationStore> {
        let Some(first) = paths.first() else {
            return Err(StoreError::Invalid(
                "an empty list of parts: pass at least one store directory".into(),
            ));
        };
        for p in paths {
            if !p.join(MANIFEST).is_file() {
                return Err(StoreError::NotFound(p.clone()));
            }
        }
        let root = first.parent().unwrap_or(first).to_path_buf();
        let mut store = Self::open_parts(&root, paths.to_vec(), &[], page_budget)?;
        store.listed = true;
        Ok(store)
    }

    fn open_parts(
        root: &Path,
        parts: Vec<PathBuf>,
        reuse: &[Arc<MappedShard>],
        page_budget: u64,
    ) -> Result<Self> {
        let manifests = parts
            .iter()
            .map(|p| Manifest::load(p))
            .collect::<Result<Vec<_>>>()?;
        let schema = merged_schema(root, &parts, &manifests)?;
        let mut shards = Vec::new();
        let mut entries = Vec::new();
        for (part, m) in parts.iter().zip(&manifests) {
            let mut first_row = 0;
            for e in &m.shards {
                let path = part.join(&e.file);
                let shard = match reuse
                    .iter()
                    .find(|s| s.path == path && s.entry == *e && s.first_row == first_row)
                {
                    Some(s) => s.clone(),
                    None => Arc::new(MappedShard::open(part, e, first_row, &schema)?),
                };
                let shown = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                entries.push(ShardEntry {
                    file: shown,
                    ..e.clone()
                });
                shards.push(shard);
                first_row += e.rows;
            }
        }
        let ends = shards
            .iter()
            .scan(0u64, |acc, s| {
                *acc += s.entry.rows;
                Some(*acc)
            })
            .collect();
        let manifest = Manifest {
            rows: entries.iter().map(|e| e.rows).sum(),
            shards: entries,
            ..schema
        };
        Ok(ActivationStore {
            dir: root.to_path_buf(),
            parts,
            listed: false,
            manifest,
            shards,
            ends,
            touched: AtomicU64::new(0),
            baseline: AtomicU64::new(resident_file_bytes().unwrap_or(0)),
            page_budget,
        })
    }

    /// A new view including rows (and parts) committed since this one was opened; shards
    /// already mapped are shared.
    /// An error ([`StoreError::Corrupt`]) when any mapped shard file shrank since it was
    /// mapped: reading it would end the process with SIGBUS. One `fstat` per shard; batches
    /// check before each epoch and `refreshed` before reusing a mapping.
    pub fn check_unchanged(&self) -> Result<()> {
        self.shards.iter().try_for_each(|s| s.check_unchanged())
    }

    pub fn refreshed(&self) -> Result<ActivationStore> {
        self.check_unchanged()?;
        let parts = if self.listed {
            self.parts.clone()
        } else {
            discover_parts(&self.dir)?
        };
        let mut fresh = Self::open_parts(&self.dir, parts, &self.shards, self.page_budget)?;
        fresh.listed = self.listed;
        if fresh.manifest.sites != self.manifest.sites {
            return Err(StoreError::corrupt(
                self.dir.join("manifest.json"),
                "the store's sites changed while it was open",
            ));
        }
        Ok(fresh)
    }

    /// The directories of the store's parts (just the store's own for a single store).
    pub fn parts(&self) -> &[PathBuf] {
        &self.parts
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    pub fn len(&self) -> u64 {
        self.manifest.rows
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn site_index(&self, name: &str) -> Result<usize> {
        self.manifest
            .sites
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .manifest
                    .sites
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect();
                StoreError::invalid(format!(
                    "unknown site {name:?}; this store's sites are {names:?}"
                ))
            })
    }

    pub fn column_index(&self, name: &str) -> Result<usize> {
        self.manifest
            .columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self
                    .manifest
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect();
                StoreError::invalid(format!(
                    "unknown column {name:?}; this store's columns are {names:?}"
                ))
            })
    }

    /// Check and normalise a row selection.
    pub fn resolve<'a>(&self, rows: &Rows<'a>) -> Result<RowIds<'a>> {
        let n = self.len();
        match *rows {
            Rows::All => Ok(RowIds::Range(0, n)),
            Rows::Range(a, b) => {
                if a > b || b > n {
                    return Err(StoreError::invalid(format!(
                        "row range {a}..{b} is outside the store's {n} rows"
                    )));
                }
                Ok(RowIds::Range(a, b))
            }
            Rows::Indices(idx) => {
                let ni = n as i64;
                let bad = idx.par_iter().position_any(|&r| r < -ni || r >= ni);
                if let Some(p) = bad {
                    return Err(StoreError::invalid(format!(
                        "row index {} (at position {p}) is out of range for a store of {n} rows",
                        idx[p]
                    )));
                }
                let ids: Vec<u64> = idx
                    .par_iter()
                    .map(|&r| if r < 0 { (r + ni) as u64 } else { r as u64 })
                    .collect();
                Ok(RowIds::List(Cow::Owned(ids)))
            }
        }
    }

    /// The shard holding global row `r` and the row's index inside it.
    #[inline]
    fn locate(&self, r: u64) -> (&MappedShard, u64) {
        let s = self.ends.partition_point(|&e| e <= r);
        let shard = &self.shards[s];
        (shard, r - (self.ends[s] - shard.entry.rows))
    }

    /// Visit `ids` in parallel as runs of consecutive rows inside one shard. `out` holds
    /// `width` elements per row; `f(shard, first_local_row, run_len, out_run)`. While a run is
    /// copied, `prefetch(shard, local_row)` is called for the row `PREFETCH_AHEAD` positions
    /// later, so scattered reads overlap their memory latency. Returns the number of runs.
    fn par_runs<T: Send>(
        &self,
        ids: &RowIds<'_>,
        width: usize,
        out: &mut [T],
        prefetch: impl Fn(&MappedShard, u64) + Sync,
        f: impl Fn(&MappedShard, u64, usize, &mut [T]) + Sync,
    ) -> usize {
        out.par_chunks_mut(width * TASK_ROWS)
            .enumerate()
            .map(|(task, chunk)| {
                let base = task * TASK_ROWS;
                let m = chunk.len() / width;
                for k in 0..PREFETCH_AHEAD.min(m) {
                    let (shard, local) = self.locate(ids.get(base + k));
                    prefetch(shard, local);
                }
                let (mut i, mut runs) = (0, 0);
                while i < m {
                    let r = ids.get(base + i);
                    let (shard, local) = self.locate(r);
                    let max_len = (m - i).min((shard.entry.rows - local) as usize);
                    let mut len = 1;
                    while len < max_len && ids.get(base + i + len) == r + len as u64 {
                        len += 1;
                    }
                    if len == 1 && i + PREFETCH_AHEAD < m {
                        let (ps, pl) = self.locate(ids.get(base + i + PREFETCH_AHEAD));
                        prefetch(ps, pl);
                    }
                    f(shard, local, len, &mut chunk[i * width..(i + len) * width]);
                    i += len;
                    runs += 1;
                }
                runs
            })
            .sum()
    }

    /// Rows of a site as a row-major `(ids.len(), dim)` buffer of `D`.
    pub fn gather_site<D: Float>(&self, site: usize, ids: &RowIds<'_>) -> Vec<D> {
        let mut out: Vec<D> =
            bytemuck::zeroed_vec(ids.len() * self.manifest.sites[site].dim as usize);
        self.gather_site_into(site, ids, &mut out);
        out
    }

    /// Fill `out` (length `ids.len() * dim`, row-major) with the rows of a site, converting.
    /// Every element of `out` is written.
    pub fn gather_site_into<D: Float>(&self, site: usize, ids: &RowIds<'_>, out: &mut [D]) {
        let spec = &self.manifest.sites[site];
        let dim = spec.dim as usize;
        assert_eq!(
            out.len(),
            ids.len() * dim,
            "output length must be rows * dim"
        );
        if out.is_empty() {
            return;
        }
        let prefetch = |shard: &MappedShard, local: u64| shard.prefetch_site_row(spec, site, local);
        // A large float32 output is written with streaming stores (no read-for-ownership of
        // lines about to be overwritten whole); a small one stays in cache for its reader.
        let stream = std::mem::size_of_val(out) >= STREAM_MIN_BYTES;
        let runs = self.par_runs(ids, dim, out, prefetch, |shard, local, len, dst| {
            match (shard.site_rows(spec, site, local, len), D::wrap_mut(dst)) {
                (Some(src), FloatsMut::F32(d)) if stream => widen_to_f32_streaming(src, d),
                (Some(src), d) => convert(src, d),
                (None, _) => dst.fill(D::default()), // unreachable: ranges are validated at open
            }
        });
        self.account(ids.len() as u64 * spec.dim * spec.dtype.size() as u64, runs);
    }

    /// Values of an integer column for `ids`.
    pub fn gather_column(&self, col: usize, ids: &RowIds<'_>) -> Vec<i64> {
        let mut out = vec![0i64; ids.len()];
        self.gather_column_into(col, ids, &mut out);
        out
    }

    /// Fill `out` (length `ids.len()`) with an integer column. Every element is written.
    pub fn gather_column_into(&self, col: usize, ids: &RowIds<'_>, out: &mut [i64]) {
        assert_eq!(out.len(), ids.len(), "output length must be rows");
        if out.is_empty() {
            return;
        }
        let runs = self.par_runs(
            ids,
            1,
            out,
            |_, _| {},
            |shard, local, len, dst| match shard.column_rows(col, local, len) {
                Some(src) => dst.copy_from_slice(src),
                None => dst.fill(0),
            },
        );
        self.account(ids.len() as u64 * 8, runs);
    }

    pub fn read_site<D: Float>(
        &self,
        name: &str,
        rows: &Rows<'_>,
    ) -> Result<(Vec<D>, usize, usize)> {
        let site = self.site_index(name)?;
        let ids = self.resolve(rows)?;
        Ok((
            self.gather_site(site, &ids),
            ids.len(),
            self.manifest.sites[site].dim as usize,
        ))
    }

    pub fn read_column(&self, name: &str, rows: &Rows<'_>) -> Result<Vec<i64>> {
        let col = self.column_index(name)?;
        let ids = self.resolve(rows)?;
        Ok(self.gather_column(col, &ids))
    }

    /// Keep this process's resident file pages within `page_budget` of what they were at the
    /// last release. The kernel maps more than a gather reads (fault-around, large page-cache
    /// folios: up to megabytes per scattered row), so the check uses the real resident count
    /// from /proc/self/statm; where that is unavailable, it falls back to an estimate (bytes
    /// plus 64 KiB per contiguous run).
    fn account(&self, bytes: u64, runs: usize) {
        match resident_file_bytes() {
            Some(now) => {
                if now
                    > self
                        .baseline
                        .load(Ordering::Relaxed)
                        .saturating_add(self.page_budget)
                {
                    self.release_pages();
                    self.baseline
                        .store(resident_file_bytes().unwrap_or(0), Ordering::Relaxed);
                }
            }
            None => {
                let mapped = bytes + runs as u64 * FAULT_AROUND_BYTES;
                let before = self.touched.fetch_add(mapped, Ordering::Relaxed);
                if before + mapped > self.page_budget {
                    self.touched.store(0, Ordering::Relaxed);
                    self.release_pages();
                }
            }
        }
    }

    /// Drop every mapped page from this process's resident set (the page cache keeps them).
    pub fn release_pages(&self) {
        self.shards.iter().for_each(|s| s.release());
    }

    /// Re-hash every shard from disk and re-check its structure; reports every bad shard.
    pub fn verify(&self) -> Result<()> {
        let problems: Vec<String> = self
            .shards
            .par_iter()
            .filter_map(|s| {
                verify_shard(&s.path, &s.entry).err().map(|d| {
                    format!(
                        "{}: {d}",
                        s.path.strip_prefix(&self.dir).unwrap_or(&s.path).display()
                    )
                })
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StoreError::corrupt(
                &self.dir,
                format!(
                    "{} of {} shards failed verification: {}",
                    problems.len(),
                    self.shards.len(),
                    problems.join("; ")
                ),
            ))
        }
    }
}

/// Hash a shard by reading the file (not the mapping, so a file shortened on disk is reported
/// rather than faulting). A matching checksum means the bytes are the ones written and parsed.
fn verify_shard(path: &Path, entry: &ShardEntry) -> std::result::Result<(), String> {
    let mut f = match open_regular(path) {
        Ok(Some(f)) => f,
        Ok(None) => return Err("missing".into()),
        Err(e) => return Err(e.to_string()),
    };
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len != entry.bytes {
        return Err(format!(
            "file has {len} bytes, the manifest says {}",
            entry.bytes
        ));
    }
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let k = f.read(&mut buf).map_err(|e| e.to_string())?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
    }
    let got = format!("{:016x}", hasher.digest());
    if got != entry.xxh3 {
        return Err(format!(
            "checksum {got} does not match the manifest's {}",
            entry.xxh3
        ));
    }
    Ok(())
}
