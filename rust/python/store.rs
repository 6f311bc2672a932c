//! `StoreWriter`, `ActivationStore` and the batch iterator: thin classes over `crate::store`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use numpy::ndarray::Array1;
use numpy::{IntoPyArray, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::*;
use crate::store::prefetch::{Gather, Next, Prefetch};
use crate::store::reader::{default_page_budget, RowIds};
use crate::store::writer::SiteInput;
use crate::store::{self, ColumnSpec, SiteSpec, WriterOptions};

#[pyclass(module = "actbridge._native", name = "StoreWriter")]
pub(super) struct PyStoreWriter {
    inner: store::StoreWriter,
}

#[pymethods]
impl PyStoreWriter {
    #[new]
    #[pyo3(signature = (*, path, sites, columns, metadata_json, mode, shard_rows, shard_bytes, queue))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        sites: Vec<(String, u64, SiteDtype)>,
        columns: Option<Vec<String>>,
        metadata_json: &str,
        mode: WriteMode,
        shard_rows: Option<u64>,
        shard_bytes: u64,
        queue: usize,
    ) -> PyResult<Self> {
        let sites = sites
            .into_iter()
            .map(|(name, dim, SiteDtype(dtype))| SiteSpec { name, dim, dtype })
            .collect::<Vec<_>>();
        let columns = columns.map(|c| {
            c.into_iter()
                .map(|name| ColumnSpec {
                    name,
                    dtype: crate::dtype::DType::Int64,
                })
                .collect()
        });
        let metadata = json_value(metadata_json)?;
        let mode = store::Mode::from(mode);
        let opts = WriterOptions {
            shard_rows,
            shard_bytes,
            queue,
        };
        let inner = guarded(py, || {
            store::StoreWriter::open(&path, sites, columns, metadata, mode, opts)
        })?
        .map_err(err)?;
        Ok(PyStoreWriter { inner })
    }

    /// sites: [(name, 2-D array, dtype name)]; columns: [(name, 1-D int64 array)].
    #[pyo3(signature = (*, sites, columns, check_finite=false))]
    fn append(
        &mut self,
        py: Python<'_>,
        sites: Vec<(String, Bound<'_, PyAny>, InDtype)>,
        columns: Vec<(String, PyReadonlyArray1<'_, i64>)>,
        check_finite: bool,
    ) -> PyResult<()> {
        let arrays = sites
            .iter()
            .map(|(_, obj, kind)| SiteArray::extract(obj, *kind))
            .collect::<PyResult<Vec<_>>>()?;
        let views = arrays
            .iter()
            .map(|a| a.view())
            .collect::<PyResult<Vec<_>>>()?;
        let inputs: Vec<SiteInput<'_>> = sites
            .iter()
            .zip(&views)
            .map(|((name, ..), (data, rows, cols))| SiteInput {
                name,
                data: *data,
                rows: *rows,
                cols: *cols,
            })
            .collect();
        let cols = columns
            .iter()
            .map(|(name, a)| {
                Ok((
                    name.as_str(),
                    a.as_slice()
                        .map_err(|_| invalid("columns must be contiguous int64 arrays"))?,
                ))
            })
            .collect::<PyResult<Vec<_>>>()?;
        if inputs.is_empty() {
            return Err(invalid("append needs at least one site array"));
        }
        let inner = &mut self.inner;
        guarded(py, || inner.append(&inputs, &cols, check_finite))?.map_err(err)
    }

    fn flush(&mut self, py: Python<'_>) -> PyResult<u64> {
        let inner = &mut self.inner;
        guarded(py, || inner.flush())?.map_err(err)
    }

    fn close(&mut self, py: Python<'_>) -> PyResult<u64> {
        let inner = &mut self.inner;
        guarded(py, || inner.close())?.map_err(err)
    }

    fn update_metadata(&mut self, metadata_json: &str) -> PyResult<()> {
        let v = json_value(metadata_json)?;
        self.inner.update_metadata(&v).map_err(err)
    }

    #[getter]
    fn rows(&self) -> u64 {
        self.inner.rows()
    }
    #[getter]
    fn committed_rows(&self) -> u64 {
        self.inner.committed_rows()
    }
    #[getter]
    fn columns(&self) -> Option<Vec<String>> {
        self.inner
            .columns()
            .map(|c| c.iter().map(|c| c.name.clone()).collect())
    }
    #[getter]
    fn metadata_json(&self) -> String {
        self.inner.metadata().to_string()
    }
}

#[pyclass(module = "actbridge._native", name = "ActivationStore", frozen)]
pub(super) struct PyStore {
    pub(super) inner: Arc<store::ActivationStore>,
}

pub(super) fn stats_dict<'py>(
    py: Python<'py>,
    s: store::stats::SiteStats,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let std: Vec<f64> = s.var.iter().map(|v| v.sqrt()).collect();
    d.set_item("count", s.count)?;
    d.set_item("mean", Array1::from_vec(s.mean).into_pyarray(py))?;
    d.set_item("var", Array1::from_vec(s.var).into_pyarray(py))?;
    d.set_item("std", Array1::from_vec(std).into_pyarray(py))?;
    d.set_item("min", Array1::from_vec(s.min).into_pyarray(py))?;
    d.set_item("max", Array1::from_vec(s.max).into_pyarray(py))?;
    d.set_item("norm_mean", s.norm_mean)?;
    d.set_item("norm_std", s.norm_std)?;
    d.set_item("norm_min", s.norm_min)?;
    d.set_item("norm_max", s.norm_max)?;
    Ok(d)
}

#[pymethods]
impl PyStore {
    #[new]
    #[pyo3(signature = (paths, page_budget=None))]
    fn new(py: Python<'_>, paths: Vec<PathBuf>, page_budget: Option<u64>) -> PyResult<Self> {
        let page_budget = page_budget.unwrap_or_else(default_page_budget);
        let inner = guarded(py, || match paths.as_slice() {
            [one] => store::ActivationStore::open(one, page_budget),
            many => store::ActivationStore::open_list(many, page_budget),
        })?
        .map_err(err)?;
        Ok(PyStore {
            inner: Arc::new(inner),
        })
    }

    /// A new handle that also sees rows committed since this one was opened.
    fn refreshed(&self, py: Python<'_>) -> PyResult<Self> {
        let inner = guarded(py, || self.inner.refreshed())?.map_err(err)?;
        Ok(PyStore {
            inner: Arc::new(inner),
        })
    }

    fn __len__(&self) -> usize {
        self.inner.len() as usize
    }
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.dir().to_path_buf()
    }
    /// [(name, dim, dtype)] in store order.
    #[getter]
    fn sites(&self) -> Vec<(String, u64, String)> {
        self.inner
            .manifest()
            .sites
            .iter()
            .map(|s| (s.name.clone(), s.dim, s.dtype.name().to_string()))
            .collect()
    }
    #[getter]
    fn columns(&self) -> Vec<String> {
        self.inner
            .manifest()
            .columns
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }
    #[getter]
    fn metadata_json(&self) -> String {
        self.inner.manifest().metadata.to_string()
    }
    /// Directories of the store's parts (one entry for a single store).
    #[getter]
    fn parts(&self) -> Vec<PathBuf> {
        self.inner.parts().to_vec()
    }
    #[getter]
    fn shards(&self) -> Vec<(String, u64, u64, String)> {
        self.inner
            .manifest()
            .shards
            .iter()
            .map(|s| (s.file.clone(), s.rows, s.bytes, s.xxh3.clone()))
            .collect()
    }

    #[pyo3(signature = (name, rows=None, *, dtype=OutDtype::F32))]
    #[pyo3(text_signature = "(self, /, name, rows=None, *, dtype='float32')")]
    fn read(
        &self,
        py: Python<'_>,
        name: &str,
        rows: Option<RowsArg<'_>>,
        dtype: OutDtype,
    ) -> PyResult<Py<PyAny>> {
        let f = field(&self.inner, name)?;
        let store = &self.inner;
        with_rows(&rows, |r| {
            let ids = store.resolve(&r).map_err(err)?;
            let out = OutArray::new(py, store, f, ids.len(), dtype);
            guarded(py, || out.fill(store, &ids))?;
            Ok(out.array)
        })
    }

    #[pyo3(signature = (name, rows=None))]
    fn stats<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        rows: Option<RowsArg<'_>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let site = self.inner.site_index(name).map_err(err)?;
        let store = &self.inner;
        let s = with_rows(&rows, |r| {
            let ids = store.resolve(&r).map_err(err)?;
            guarded(py, || store::stats::site_stats(store, site, &ids))
        })?;
        let s =
            s.ok_or_else(|| invalid("stats of zero rows are undefined; select at least one row"))?;
        stats_dict(py, s)
    }

    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        guarded(py, || self.inner.verify())?.map_err(err)
    }

    fn release_pages(&self, py: Python<'_>) {
        py.detach(|| self.inner.release_pages())
    }

    /// An iterator of dicts name -> array over one epoch (`crate::store::EpochPlan` gathered
    /// ahead by `crate::store::prefetch`).
    #[pyo3(signature = (*, names, batch_size, shuffle, seed, epoch, rows, drop_last, dtype, block_rows, window_blocks, prefetch, rank = 0, world = 1))]
    #[allow(clippy::too_many_arguments)]
    fn batches(
        &self,
        py: Python<'_>,
        names: Vec<String>,
        batch_size: usize,
        shuffle: ShuffleMode,
        seed: u64,
        epoch: u64,
        rows: Option<RowsArg<'_>>,
        drop_last: bool,
        dtype: OutDtype,
        block_rows: usize,
        window_blocks: usize,
        prefetch: usize,
        rank: usize,
        world: usize,
    ) -> PyResult<BatchIter> {
        // a shard truncated since the store was opened would end the process with SIGBUS
        self.inner.check_unchanged().map_err(err)?;
        if names.is_empty() {
            return Err(invalid("name at least one site or column to batch"));
        }
        let fields: Vec<(String, Field)> = names
            .into_iter()
            .map(|n| field(&self.inner, &n).map(|f| (n, f)))
            .collect::<PyResult<_>>()?;
        let shuffle = shuffle.with_blocks(block_rows, window_blocks);
        let store = self.inner.clone();
        let plan = with_rows(&rows, |r| {
            let ids = store.resolve(&r).map_err(err)?;
            guarded(py, || {
                let base: Vec<u64> = match ids {
                    RowIds::Range(a, b) => (a..b).collect(),
                    RowIds::List(v) => v.into_owned(),
                };
                store::EpochPlan::new(base, shuffle, seed, epoch, batch_size, drop_last)
                    .and_then(|plan| plan.shared(rank, world))
            })?
            .map_err(err)
        })?;
        let out_names: Vec<String> = fields.iter().map(|(n, _)| n.clone()).collect();
        let gather = GatherArrays {
            pool: BatchPool::new(fields.len(), prefetch.max(1) + 2),
            fields,
            store,
            dtype,
        };
        let inner = Prefetch::spawn(plan, prefetch, gather).map_err(err)?;
        Ok(BatchIter {
            inner: Mutex::new(inner),
            names: out_names,
        })
    }
}

/// The batch thread's work: numpy arrays (recycled through a [`BatchPool`]) allocated under the
/// GIL and filled without it.
struct GatherArrays {
    pool: BatchPool,
    fields: Vec<(String, Field)>,
    store: Arc<store::ActivationStore>,
    dtype: OutDtype,
}

impl Gather for GatherArrays {
    type Batch = Vec<Py<PyAny>>;

    fn gather(&mut self, rows: &[u64]) -> Vec<Py<PyAny>> {
        let ids = RowIds::List(std::borrow::Cow::Borrowed(rows));
        // Hold the GIL only to allocate; gather without it.
        let outs: Vec<OutArray> = Python::attach(|py| {
            self.fields
                .iter()
                .enumerate()
                .map(|(k, (_, f))| {
                    self.pool
                        .take(py, k, &self.store, *f, rows.len(), self.dtype)
                })
                .collect()
        });
        outs.iter().for_each(|o| o.fill(&self.store, &ids));
        outs.into_iter().map(|o| o.array).collect()
    }

    fn finish(self) {
        let pool = self.pool;
        Python::attach(|_| drop(pool));
    }
}

/// The arrays a batch thread has handed out, per field, for reuse. An array is free again when
/// the pool holds its only reference: the batch dict, every view and every tensor made from it
/// (`torch.from_numpy` keeps a reference) are gone, so no Python code can see it being
/// overwritten. Arrays still referenced are never touched; users see only fresh-looking arrays.
pub(super) struct BatchPool {
    /// Per field, the arrays made so far.
    arrays: Vec<Vec<Pooled>>,
    cap: usize,
}

/// An array the batch thread made: its data pointer and shape when made.
pub(super) struct Pooled {
    array: Py<PyAny>,
    data: usize,
    shape: Vec<usize>,
}

/// Whether a pooled array can be written again: the pool's reference is its only one, no weak
/// reference can revive it, and it still owns the same writable memory of the same shape (an
/// unreferenced array may have been resized or reshaped in place while the user held it).
pub(super) fn free_to_reuse(py: Python<'_>, p: &Pooled) -> bool {
    let _ = py; // the GIL is held: reference counts and array fields are stable
    let ptr = p.array.as_ptr();
    // SAFETY: `ptr` is a live numpy array (made by `OutArray::new`) and the GIL is held.
    unsafe {
        if pyo3::ffi::Py_REFCNT(ptr) != 1 {
            return false;
        }
        let f = &(*(ptr as *const numpy::npyffi::PyArrayObject)).fields;
        let dims = std::slice::from_raw_parts(f.dimensions, f.nd.max(0) as usize);
        let owned = numpy::npyffi::NPY_ARRAY_OWNDATA | numpy::npyffi::NPY_ARRAY_WRITEABLE;
        f.weakreflist.is_null()
            && f.data as usize == p.data
            && f.flags & owned == owned
            && dims.iter().map(|&d| d as usize).eq(p.shape.iter().copied())
    }
}

impl BatchPool {
    fn new(fields: usize, cap: usize) -> BatchPool {
        BatchPool {
            arrays: (0..fields).map(|_| Vec::new()).collect(),
            cap,
        }
    }

    /// A free pooled array of `rows` rows for field `k`, or a new one (pooled while there is
    /// room).
    fn take(
        &mut self,
        py: Python<'_>,
        k: usize,
        store: &store::ActivationStore,
        field: Field,
        rows: usize,
        dtype: OutDtype,
    ) -> OutArray {
        let arrays = &mut self.arrays[k];
        let shape = OutArray::shape(store, field, rows);
        if let Some(p) = arrays
            .iter()
            .find(|p| p.shape == shape && free_to_reuse(py, p))
        {
            return OutArray {
                array: p.array.clone_ref(py),
                data: p.data,
                len: p.shape.iter().product(),
                field,
                dtype,
            };
        }
        let out = OutArray::new(py, store, field, rows, dtype);
        if arrays.len() >= self.cap {
            // Drop one the user still holds (theirs to keep), else a free one of another size.
            let at = arrays
                .iter()
                .position(|entry| !free_to_reuse(py, entry))
                .unwrap_or(0);
            arrays.swap_remove(at);
        }
        arrays.push(Pooled {
            array: out.array.clone_ref(py),
            data: out.data,
            shape,
        });
        out
    }
}

/// One epoch of batches, gathered ahead on a background thread (bounded by `prefetch`).
#[pyclass(module = "actbridge._native")]
pub(super) struct BatchIter {
    inner: Mutex<Prefetch<Vec<Py<PyAny>>>>,
    names: Vec<String>,
}

#[pymethods]
impl BatchIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __len__(&self) -> usize {
        self.inner.lock().map(|p| p.remaining()).unwrap_or(0)
    }

    /// Rows in global batch `i` of this epoch: all ranks' slices together under `share`, the
    /// batch itself otherwise (a data-parallel loss divides by it).
    fn global_batch_rows(&self, i: usize) -> PyResult<usize> {
        let got = self.inner.lock().ok().and_then(|p| p.global_batch_len(i));
        got.ok_or_else(|| {
            pyo3::exceptions::PyIndexError::new_err(format!("no batch {i} in this epoch"))
        })
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let inner = &self.inner;
        let got = py.detach(|| inner.lock().map(|mut p| p.recv()).map_err(|_| ()));
        match got {
            Err(_) => Ok(None), // a panic while another call held the lock: the epoch is over
            Ok(Next::Done) => Ok(None),
            Ok(Next::Failed(msg)) => Err(ActbridgeError::new_err(msg)),
            Ok(Next::Batch(arrays)) => {
                let d = PyDict::new(py);
                for (name, array) in self.names.iter().zip(arrays) {
                    d.set_item(name, array)?;
                }
                Ok(Some(d))
            }
        }
    }
}
