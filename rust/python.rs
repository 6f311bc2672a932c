//! The only Python-aware file: converts types, releases the GIL around every heavy call, and
//! maps core errors onto one exception hierarchy (ActbridgeError > StoreError >
//! StoreCorruptError). The documented API is the Python package; this module is private.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

use half::{bf16, f16};
use numpy::ndarray::Array1;
use numpy::{
    IntoPyArray, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::dtype::Floats;
use crate::error::StoreError as CoreError;
use crate::fit::affine::{AffineStats, Method};
use crate::fit::autoencoder::{self, AeParams, TrainConfig, Work};
use crate::fit::FitError;
use crate::store::reader::{default_page_budget, RowIds};
use crate::store::writer::SiteInput;
use crate::store::{self, ColumnSpec, Mode, Rows, Shuffle, SiteSpec, WriterOptions};

pyo3::create_exception!(
    _native,
    ActbridgeError,
    PyException,
    "Base class of every actbridge error."
);
pyo3::create_exception!(
    _native,
    StoreError,
    ActbridgeError,
    "A store operation failed (bad input, I/O, or state)."
);
pyo3::create_exception!(
    _native,
    StoreCorruptError,
    StoreError,
    "A store's bytes do not match its manifest."
);
pyo3::create_exception!(
    _native,
    MapError,
    ActbridgeError,
    "Fitting, solving, saving or loading a map failed."
);

fn fit_err(e: FitError) -> PyErr {
    match e {
        FitError::Store(e) => err(e),
        other => MapError::new_err(other.to_string()),
    }
}

fn err(e: CoreError) -> PyErr {
    if e.is_corrupt() {
        StoreCorruptError::new_err(e.to_string())
    } else {
        StoreError::new_err(e.to_string())
    }
}

/// The most batches a batch thread gathers ahead (each is a whole batch in memory).
const MAX_PREFETCH: usize = 1024;

/// Run `f` without the GIL. A panic inside it (a bug in actbridge) becomes an
/// `ActbridgeError` that names it, never pyo3's `PanicException` (a `BaseException`, which
/// `except Exception` does not catch).
fn guarded<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
        .map_err(|payload| panic_error(payload.as_ref()))
}

/// The message of a caught panic, as an `ActbridgeError`.
fn panic_error(payload: &(dyn std::any::Any + Send)) -> PyErr {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    ActbridgeError::new_err(format!(
        "internal error in actbridge's native code (a bug; please report it with this message): {msg}"
    ))
}

fn invalid(msg: impl Into<String>) -> PyErr {
    StoreError::new_err(msg.into())
}

fn json_value(text: &str) -> PyResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| invalid(format!("metadata is not valid JSON: {e}")))
}

/// Output element types of reads.
#[derive(Clone, Copy)]
enum OutDtype {
    F32,
    F64,
    F16,
    /// bfloat16 as raw uint16 bits (numpy has no bfloat16; the Python layer views them).
    BF16Bits,
}

impl OutDtype {
    fn parse(s: &str) -> PyResult<OutDtype> {
        Ok(match s {
            "float32" => OutDtype::F32,
            "float64" => OutDtype::F64,
            "float16" => OutDtype::F16,
            "bfloat16" => OutDtype::BF16Bits,
            _ => {
                return Err(invalid(format!(
                    "unsupported output dtype {s:?}: use \"float32\", \"float64\" or \"float16\""
                )))
            }
        })
    }
}

/// A numpy array allocated for a gather, with its data pointer so it can be filled while the
/// GIL is released.
struct OutArray {
    array: Py<PyAny>,
    data: usize,
    len: usize,
    field: Field,
    dtype: OutDtype,
}

impl OutArray {
    fn new(
        py: Python<'_>,
        store: &store::ActivationStore,
        field: Field,
        rows: usize,
        dtype: OutDtype,
    ) -> OutArray {
        fn alloc<T: numpy::Element>(py: Python<'_>, shape: &[usize]) -> (Py<PyAny>, usize) {
            // SAFETY: the array is uninitialised; `fill` writes every element before Python
            // can see it (the array is only handed out after `fill`).
            let a = unsafe { numpy::PyArray::<T, numpy::IxDyn>::new(py, shape, false) };
            let data = a.data() as usize;
            (a.into_any().unbind(), data)
        }
        let shape = OutArray::shape(store, field, rows);
        let (array, data) = match (field, dtype) {
            (Field::Column(_), _) => alloc::<i64>(py, &shape),
            (_, OutDtype::F32) => alloc::<f32>(py, &shape),
            (_, OutDtype::F64) => alloc::<f64>(py, &shape),
            (_, OutDtype::F16) => alloc::<f16>(py, &shape),
            (_, OutDtype::BF16Bits) => alloc::<u16>(py, &shape),
        };
        OutArray {
            array,
            data,
            len: shape.iter().product(),
            field,
            dtype,
        }
    }

    /// The shape of the array `new` makes for `rows` rows of `field`.
    fn shape(store: &store::ActivationStore, field: Field, rows: usize) -> Vec<usize> {
        match field {
            Field::Site(i) => vec![rows, store.manifest().sites[i].dim as usize],
            Field::Column(_) => vec![rows],
        }
    }

    /// Gather into the array; safe to call without the GIL (numpy never moves array data).
    fn fill(&self, store: &store::ActivationStore, ids: &RowIds<'_>) {
        // SAFETY: `data` points to `len` elements of the array's element type, owned by
        // `self.array`, which is alive and not yet visible to any other code.
        unsafe fn out<'a, T>(data: usize, len: usize) -> &'a mut [T] {
            std::slice::from_raw_parts_mut(data as *mut T, len)
        }
        unsafe {
            match (self.field, self.dtype) {
                (Field::Column(c), _) => {
                    store.gather_column_into(c, ids, out::<i64>(self.data, self.len))
                }
                (Field::Site(i), OutDtype::F32) => {
                    store.gather_site_into(i, ids, out::<f32>(self.data, self.len))
                }
                (Field::Site(i), OutDtype::F64) => {
                    store.gather_site_into(i, ids, out::<f64>(self.data, self.len))
                }
                (Field::Site(i), OutDtype::F16) => {
                    store.gather_site_into(i, ids, out::<f16>(self.data, self.len))
                }
                (Field::Site(i), OutDtype::BF16Bits) => {
                    store.gather_site_into(i, ids, out::<bf16>(self.data, self.len))
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Field {
    Site(usize),
    Column(usize),
}

fn field(store: &store::ActivationStore, name: &str) -> PyResult<Field> {
    if let Ok(i) = store.site_index(name) {
        return Ok(Field::Site(i));
    }
    store.column_index(name).map(Field::Column).map_err(|_| {
        let m = store.manifest();
        let names: Vec<&str> = m
            .sites
            .iter()
            .map(|s| s.name.as_str())
            .chain(m.columns.iter().map(|c| c.name.as_str()))
            .collect();
        invalid(format!(
            "unknown site or column {name:?}; this store has {names:?}"
        ))
    })
}

/// A row selection from Python: `(start, stop)` or an int64 array.
#[derive(FromPyObject)]
enum RowsArg<'py> {
    Range((u64, u64)),
    Indices(PyReadonlyArray1<'py, i64>),
}

fn with_rows<T>(
    rows: &Option<RowsArg<'_>>,
    f: impl FnOnce(Rows<'_>) -> PyResult<T>,
) -> PyResult<T> {
    match rows {
        None => f(Rows::All),
        Some(RowsArg::Range((a, b))) => f(Rows::Range(*a, *b)),
        Some(RowsArg::Indices(arr)) => {
            f(Rows::Indices(arr.as_slice().map_err(|_| {
                invalid("row indices must be a contiguous int64 array")
            })?))
        }
    }
}

/// Site rows from Python, already C-contiguous; bfloat16 arrives as its uint16 bits.
enum SiteArray<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F64(PyReadonlyArray2<'py, f64>),
    F16(PyReadonlyArray2<'py, f16>),
    BF16(PyReadonlyArray2<'py, u16>),
}

impl<'py> SiteArray<'py> {
    fn extract(obj: &Bound<'py, PyAny>, kind: &str) -> PyResult<Self> {
        let bad = |_| invalid(format!("expected a 2-D {kind} array"));
        Ok(match kind {
            "float32" => SiteArray::F32(obj.extract().map_err(bad)?),
            "float64" => SiteArray::F64(obj.extract().map_err(bad)?),
            "float16" => SiteArray::F16(obj.extract().map_err(bad)?),
            "bfloat16" => SiteArray::BF16(obj.extract().map_err(bad)?),
            _ => return Err(invalid(format!("unsupported input dtype {kind:?}"))),
        })
    }
    fn view(&self) -> PyResult<(Floats<'_>, usize, usize)> {
        let contiguous = |_| invalid("site arrays must be C-contiguous");
        let (data, shape) = match self {
            SiteArray::F32(a) => (Floats::F32(a.as_slice().map_err(contiguous)?), a.shape()),
            SiteArray::F64(a) => (Floats::F64(a.as_slice().map_err(contiguous)?), a.shape()),
            SiteArray::F16(a) => (Floats::F16(a.as_slice().map_err(contiguous)?), a.shape()),
            SiteArray::BF16(a) => (
                Floats::BF16(bytemuck::cast_slice(a.as_slice().map_err(contiguous)?)),
                a.shape(),
            ),
        };
        Ok((data, shape[0], shape[1]))
    }
}

#[pyclass(module = "actbridge._native", name = "StoreWriter")]
struct PyStoreWriter {
    inner: store::StoreWriter,
}

#[pymethods]
impl PyStoreWriter {
    #[new]
    #[pyo3(signature = (path, sites, columns, metadata_json, mode, shard_rows, shard_bytes, queue))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        sites: Vec<(String, u64, String)>,
        columns: Option<Vec<String>>,
        metadata_json: &str,
        mode: &str,
        shard_rows: Option<u64>,
        shard_bytes: u64,
        queue: usize,
    ) -> PyResult<Self> {
        let sites = sites
            .into_iter()
            .map(|(name, dim, dtype)| {
                Ok(SiteSpec {
                    name,
                    dim,
                    dtype: crate::dtype::DType::parse(&dtype).map_err(err)?,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let columns = columns.map(|c| {
            c.into_iter()
                .map(|name| ColumnSpec {
                    name,
                    dtype: crate::dtype::DType::Int64,
                })
                .collect()
        });
        let metadata = json_value(metadata_json)?;
        let mode = Mode::parse(mode).map_err(err)?;
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
    #[pyo3(signature = (sites, columns, check_finite=false))]
    fn append(
        &mut self,
        py: Python<'_>,
        sites: Vec<(String, Bound<'_, PyAny>, String)>,
        columns: Vec<(String, PyReadonlyArray1<'_, i64>)>,
        check_finite: bool,
    ) -> PyResult<()> {
        let arrays = sites
            .iter()
            .map(|(_, obj, kind)| SiteArray::extract(obj, kind))
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
struct PyStore {
    inner: Arc<store::ActivationStore>,
}

fn stats_dict<'py>(py: Python<'py>, s: store::stats::SiteStats) -> PyResult<Bound<'py, PyDict>> {
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

    #[pyo3(signature = (name, rows=None, dtype="float32"))]
    fn read(
        &self,
        py: Python<'_>,
        name: &str,
        rows: Option<RowsArg<'_>>,
        dtype: &str,
    ) -> PyResult<Py<PyAny>> {
        let dtype = OutDtype::parse(dtype)?;
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

    /// An iterator of dicts name -> array over one epoch. `shuffle`: "none", "global" or "block".
    #[pyo3(signature = (names, batch_size, shuffle, seed, epoch, rows, drop_last, dtype, block_rows, window_blocks, prefetch))]
    #[allow(clippy::too_many_arguments)]
    fn batches(
        &self,
        py: Python<'_>,
        names: Vec<String>,
        batch_size: usize,
        shuffle: &str,
        seed: u64,
        epoch: u64,
        rows: Option<RowsArg<'_>>,
        drop_last: bool,
        dtype: &str,
        block_rows: usize,
        window_blocks: usize,
        prefetch: usize,
    ) -> PyResult<BatchIter> {
        if batch_size == 0 {
            return Err(invalid("batch_size must be positive"));
        }
        if prefetch > MAX_PREFETCH {
            return Err(invalid(format!(
                "prefetch must be in [0, {MAX_PREFETCH}] (batches gathered ahead), got {prefetch}"
            )));
        }
        if block_rows == 0 || window_blocks == 0 {
            return Err(invalid("block_rows and window_blocks must be positive"));
        }
        // a shard truncated since the store was opened would end the process with SIGBUS
        self.inner.check_unchanged().map_err(err)?;
        if names.is_empty() {
            return Err(invalid("name at least one site or column to batch"));
        }
        let dtype = OutDtype::parse(dtype)?;
        let fields: Vec<(String, Field)> = names
            .into_iter()
            .map(|n| field(&self.inner, &n).map(|f| (n, f)))
            .collect::<PyResult<_>>()?;
        let shuffle = match shuffle {
            "none" => Shuffle::None,
            "global" => Shuffle::Global,
            "block" => Shuffle::Block {
                block_rows,
                window_blocks,
            },
            _ => {
                return Err(invalid(format!(
                    "shuffle must be True, False or \"block\", not {shuffle:?}"
                )))
            }
        };
        let store = self.inner.clone();
        let order = with_rows(&rows, |r| {
            let ids = store.resolve(&r).map_err(err)?;
            guarded(py, || {
                let base: Vec<u64> = match ids {
                    RowIds::Range(a, b) => (a..b).collect(),
                    RowIds::List(v) => v.into_owned(),
                };
                store::sampler::epoch_order(base, shuffle, seed, epoch)
            })
        })?;
        let n_batches = if drop_last {
            order.len() / batch_size
        } else {
            order.len().div_ceil(batch_size)
        };
        let out_names: Vec<String> = fields.iter().map(|(n, _)| n.clone()).collect();
        let (tx, rx) = sync_channel::<Vec<Py<PyAny>>>(prefetch.max(1));
        let cancelled = Arc::new(AtomicBool::new(false));
        let stop = cancelled.clone();
        let pool_size = prefetch.max(1) + 2;
        let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let failed = failure.clone();
        let producer = move || {
            // Arrays this thread made, per field, recycled once Python has let go of them all,
            // so batches are written into memory that is already mapped (a fresh 16 MiB array
            // costs 4096 page faults and the kernel zeroing each page, ~15% of a gather).
            let mut pool = BatchPool::new(fields.len(), pool_size);
            for b in 0..n_batches {
                if stop.load(Ordering::Relaxed) {
                    break; // the iterator was dropped: stop gathering
                }
                let chunk = &order[b * batch_size..((b + 1) * batch_size).min(order.len())];
                let ids = RowIds::List(std::borrow::Cow::Borrowed(chunk));
                // Hold the GIL only to allocate; gather without it.
                let outs: Vec<OutArray> = Python::attach(|py| {
                    fields
                        .iter()
                        .enumerate()
                        .map(|(k, (_, f))| pool.take(py, k, &store, *f, chunk.len(), dtype))
                        .collect()
                });
                outs.iter().for_each(|o| o.fill(&store, &ids));
                if tx
                    .send(outs.into_iter().map(|o| o.array).collect())
                    .is_err()
                {
                    break; // the iterator was dropped
                }
            }
            Python::attach(|_| drop(pool));
        };
        let producer = move || {
            if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(producer)) {
                let msg = Python::attach(|py| panic_error(payload.as_ref()).value(py).to_string());
                if let Ok(mut f) = failed.lock() {
                    *f = Some(msg);
                }
            }
        };
        std::thread::Builder::new()
            .name("actbridge-batches".into())
            .spawn(producer)
            .map_err(|e| invalid(format!("could not start the batch thread: {e}")))?;
        Ok(BatchIter {
            rx: Mutex::new(Some(rx)),
            names: out_names,
            remaining: n_batches,
            cancelled,
            failure,
        })
    }
}

/// The arrays a batch thread has handed out, per field, for reuse. An array is free again when
/// the pool holds its only reference: the batch dict, every view and every tensor made from it
/// (`torch.from_numpy` keeps a reference) are gone, so no Python code can see it being
/// overwritten. Arrays still referenced are never touched; users see only fresh-looking arrays.
struct BatchPool {
    /// Per field, the arrays made so far.
    arrays: Vec<Vec<Pooled>>,
    cap: usize,
}

/// An array the batch thread made: its data pointer and shape when made.
struct Pooled {
    array: Py<PyAny>,
    data: usize,
    shape: Vec<usize>,
}

/// Whether a pooled array can be written again: the pool's reference is its only one, no weak
/// reference can revive it, and it still owns the same writable memory of the same shape (an
/// unreferenced array may have been resized or reshaped in place while the user held it).
fn free_to_reuse(py: Python<'_>, p: &Pooled) -> bool {
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
struct BatchIter {
    rx: Mutex<Option<Receiver<Vec<Py<PyAny>>>>>,
    names: Vec<String>,
    remaining: usize,
    /// Set when the iterator is dropped, so the producer stops before it next takes the GIL.
    cancelled: Arc<AtomicBool>,
    /// Why the producer stopped early (a panic), reported by `__next__` instead of an early end.
    failure: Arc<Mutex<Option<String>>>,
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

#[pymethods]
impl BatchIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __len__(&self) -> usize {
        self.remaining
    }

    fn __next__<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let rx = &self.rx;
        let got = py.detach(|| rx.lock().ok().and_then(|r| r.as_ref().map(|r| r.recv())));
        match got {
            None => Ok(None),
            Some(Ok(blocks)) => {
                self.remaining = self.remaining.saturating_sub(1);
                let d = PyDict::new(py);
                for (name, array) in self.names.iter().zip(blocks) {
                    d.set_item(name, array)?;
                }
                Ok(Some(d))
            }
            Some(Err(_)) => {
                if let Ok(mut r) = self.rx.lock() {
                    *r = None;
                }
                let left = std::mem::take(&mut self.remaining);
                let why = self.failure.lock().ok().and_then(|mut f| f.take());
                match (left, why) {
                    (_, Some(msg)) => Err(ActbridgeError::new_err(msg)),
                    (0, None) => Ok(None),
                    (k, None) => Err(ActbridgeError::new_err(format!(
                        "the batch thread stopped with {k} batches of the epoch left"
                    ))),
                }
            }
        }
    }
}

#[pyclass(module = "actbridge._native", name = "AffineStats")]
struct PyAffineStats {
    inner: AffineStats,
}

fn f64_array(py: Python<'_>, v: Vec<f64>) -> Py<PyAny> {
    Array1::from_vec(v).into_pyarray(py).into_any().unbind()
}

#[pymethods]
impl PyAffineStats {
    #[new]
    fn new(d_source: usize, d_target: usize) -> PyResult<Self> {
        Ok(PyAffineStats {
            inner: AffineStats::new(d_source, d_target).map_err(fit_err)?,
        })
    }

    /// x: (n, d_source) float32, y: (n, d_target) float32, C-contiguous.
    fn update(
        &mut self,
        py: Python<'_>,
        x: PyReadonlyArray2<'_, f32>,
        y: PyReadonlyArray2<'_, f32>,
    ) -> PyResult<()> {
        let (n, ny) = (x.shape()[0], y.shape()[0]);
        if n != ny {
            return Err(MapError::new_err(format!(
                "x has {n} rows but y has {ny}; pass paired rows"
            )));
        }
        if x.shape()[1] != self.inner.d_s || y.shape()[1] != self.inner.d_t {
            return Err(MapError::new_err(format!(
                "x is {} wide and y {} wide; these statistics are for {} -> {}",
                x.shape()[1],
                y.shape()[1],
                self.inner.d_s,
                self.inner.d_t
            )));
        }
        let xs = x
            .as_slice()
            .map_err(|_| invalid("x must be C-contiguous"))?;
        let ys = y
            .as_slice()
            .map_err(|_| invalid("y must be C-contiguous"))?;
        let inner = &mut self.inner;
        guarded(py, || inner.update(xs, ys, n))?.map_err(fit_err)
    }

    /// Stream `rows` of two sites of a store; `progress(rows_done)` after each chunk.
    #[pyo3(signature = (store, source, target, rows=None, progress=None))]
    fn update_from_store(
        &mut self,
        py: Python<'_>,
        store: &PyStore,
        source: &str,
        target: &str,
        rows: Option<RowsArg<'_>>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let st = &store.inner;
        let (s, t) = (
            st.site_index(source).map_err(err)?,
            st.site_index(target).map_err(err)?,
        );
        let inner = &mut self.inner;
        let mut callback_error: Option<PyErr> = None;
        let result = with_rows(&rows, |r| {
            let ids = st.resolve(&r).map_err(err)?;
            guarded(py, || {
                inner.update_from_store(st, s, t, &ids, |done| match &progress {
                    None => true,
                    Some(cb) => Python::attach(|py| match cb.call1(py, (done,)) {
                        Ok(_) => true,
                        Err(e) => {
                            callback_error = Some(e);
                            false
                        }
                    }),
                })
            })
        })?;
        if let Some(e) = callback_error {
            return Err(e);
        }
        result.map_err(fit_err)
    }

    fn merge(&mut self, other: PyRef<'_, PyAffineStats>) -> PyResult<()> {
        let o = other.inner.clone();
        self.inner.merge(&o).map_err(fit_err)
    }

    /// -> (weight (d_t, d_s) float32, bias (d_t,) float32, metrics dict)
    #[pyo3(signature = (ridge=0.0, bias=true, method="lstsq"))]
    fn solve<'py>(
        &self,
        py: Python<'py>,
        ridge: f64,
        bias: bool,
        method: &str,
    ) -> PyResult<(Py<PyAny>, Py<PyAny>, Bound<'py, PyDict>)> {
        let method = match method {
            "lstsq" => Method::Lstsq,
            "procrustes" => Method::Procrustes,
            _ => {
                return Err(MapError::new_err(format!(
                    "method must be \"lstsq\" or \"procrustes\", not {method:?}"
                )))
            }
        };
        let inner = &self.inner;
        let fit = py
            .detach(|| inner.solve(ridge, bias, method))
            .map_err(fit_err)?;
        let (d_t, d_s) = (self.inner.d_t, self.inner.d_s);
        let weight = numpy::ndarray::Array2::from_shape_vec((d_t, d_s), fit.weight)
            .expect("d_t * d_s weights")
            .into_pyarray(py)
            .into_any()
            .unbind();
        let bias = Array1::from_vec(fit.bias)
            .into_pyarray(py)
            .into_any()
            .unbind();
        let m = PyDict::new(py);
        m.set_item("rows", fit.metrics.rows)?;
        m.set_item("mse", fit.metrics.mse)?;
        m.set_item("fvu", fit.metrics.fvu)?;
        m.set_item("r2", fit.metrics.r2)?;
        m.set_item("ridge", fit.metrics.ridge)?;
        Ok((weight, bias, m))
    }

    #[getter]
    fn n(&self) -> u64 {
        self.inner.n
    }
    #[getter]
    fn d_source(&self) -> usize {
        self.inner.d_s
    }
    #[getter]
    fn d_target(&self) -> usize {
        self.inner.d_t
    }
    #[getter]
    fn mean_source(&self, py: Python<'_>) -> Py<PyAny> {
        f64_array(py, self.inner.mean_x())
    }
    #[getter]
    fn mean_target(&self, py: Python<'_>) -> Py<PyAny> {
        f64_array(py, self.inner.mean_y())
    }

    /// The accumulators as float64 arrays (for saving and merging elsewhere).
    fn to_arrays<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (n, px, py_, sx, sy, syy, sxx, sxy) = self.inner.to_parts();
        let d = PyDict::new(py);
        d.set_item("n", n)?;
        for (k, v) in [
            ("pilot_x", px),
            ("pilot_y", py_),
            ("sx", sx),
            ("sy", sy),
            ("syy", syy),
            ("sxx", sxx),
            ("sxy", sxy),
        ] {
            d.set_item(k, f64_array(py, v))?;
        }
        Ok(d)
    }

    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    fn from_arrays(
        d_source: usize,
        d_target: usize,
        n: u64,
        pilot_x: Vec<f64>,
        pilot_y: Vec<f64>,
        sx: Vec<f64>,
        sy: Vec<f64>,
        syy: Vec<f64>,
        sxx: PyReadonlyArray1<'_, f64>,
        sxy: PyReadonlyArray1<'_, f64>,
    ) -> PyResult<Self> {
        let (sxx, sxy) = (
            sxx.as_slice()
                .map_err(|_| invalid("sxx must be contiguous"))?,
            sxy.as_slice()
                .map_err(|_| invalid("sxy must be contiguous"))?,
        );
        let inner = AffineStats::from_parts(
            d_source, d_target, n, pilot_x, pilot_y, sx, sy, syy, sxx, sxy,
        )
        .map_err(fit_err)?;
        Ok(PyAffineStats { inner })
    }
}

fn flat_f32(a: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<f32>> {
    let arr: PyReadonlyArray1<'_, f32> = a
        .extract()
        .map_err(|_| invalid(format!("{name} must be a flat float32 array")))?;
    let slice = arr
        .as_slice()
        .map_err(|_| invalid(format!("{name} must be contiguous")))?;
    Ok(slice.to_vec())
}

fn ae_params(d_s: usize, h: usize, d_t: usize, tensors: &[Bound<'_, PyAny>]) -> PyResult<AeParams> {
    if tensors.len() != 4 {
        return Err(invalid("pass (w1, b1, w2, b2)"));
    }
    let p = AeParams {
        d_s,
        h,
        d_t,
        w1: flat_f32(&tensors[0], "w1")?,
        b1: flat_f32(&tensors[1], "b1")?,
        w2: flat_f32(&tensors[2], "w2")?,
        b2: flat_f32(&tensors[3], "b2")?,
    };
    p.check().map_err(fit_err)?;
    Ok(p)
}

fn ae_tuple(py: Python<'_>, p: AeParams) -> (Py<PyAny>, Py<PyAny>, Py<PyAny>, Py<PyAny>) {
    let f = |v: Vec<f32>| Array1::from_vec(v).into_pyarray(py).into_any().unbind();
    (f(p.w1), f(p.b1), f(p.w2), f(p.b2))
}

/// Loss and gradients of an autoencoder on one batch (for checking against autograd).
/// Tensors are flat float32 arrays; returns (loss, dw1, db1, dw2, db2).
#[pyfunction]
#[allow(clippy::type_complexity)]
fn autoencoder_loss_and_grad(
    py: Python<'_>,
    dims: (usize, usize, usize),
    params: Vec<Bound<'_, PyAny>>,
    x: PyReadonlyArray2<'_, f32>,
    y: PyReadonlyArray2<'_, f32>,
) -> PyResult<(f64, Py<PyAny>, Py<PyAny>, Py<PyAny>, Py<PyAny>)> {
    let (d_s, h, d_t) = dims;
    let p = ae_params(d_s, h, d_t, &params)?;
    let rows = x.shape()[0];
    if x.shape()[1] != d_s || y.shape() != [rows, d_t] {
        return Err(invalid("x must be (n, d_s) and y (n, d_t)"));
    }
    let (xs, ys) = (
        x.as_slice().map_err(|_| invalid("x must be contiguous"))?,
        y.as_slice().map_err(|_| invalid("y must be contiguous"))?,
    );
    let mut grad = AeParams::zeros(d_s, h, d_t);
    let loss = guarded(py, || {
        p.loss_and_grad(xs, ys, rows, &mut grad, &mut Work::default())
    })?;
    let (a, b, c, d) = ae_tuple(py, grad);
    Ok((loss, a, b, c, d))
}

/// Train an autoencoder on the CPU. `init`: (w1, b1, w2, b2) flat float32 arrays, or None for
/// PyTorch-default init from `seed`. Returns ((w1, b1, w2, b2), history).
#[pyfunction]
#[pyo3(signature = (store, source, target, rows, val_rows, hidden, init, epochs, batch_size, lr, weight_decay, seed, plateau_patience, early_stop, grad_clip, progress, standardize=None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn train_autoencoder<'py>(
    py: Python<'py>,
    store: &PyStore,
    source: &str,
    target: &str,
    rows: PyReadonlyArray1<'_, i64>,
    val_rows: Option<PyReadonlyArray1<'_, i64>>,
    hidden: usize,
    init: Option<Vec<Bound<'_, PyAny>>>,
    epochs: usize,
    batch_size: usize,
    lr: f32,
    weight_decay: f32,
    seed: u64,
    plateau_patience: usize,
    early_stop: Option<usize>,
    grad_clip: Option<f32>,
    progress: Option<Py<PyAny>>,
    standardize: Option<(Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>)>,
) -> PyResult<(
    (Py<PyAny>, Py<PyAny>, Py<PyAny>, Py<PyAny>),
    Vec<Bound<'py, PyDict>>,
)> {
    let standardize = standardize.map(|(mean_x, std_x, mean_y, std_y)| autoencoder::Standardize {
        mean_x,
        std_x,
        mean_y,
        std_y,
    });
    let st = &store.inner;
    let (s, t) = (
        st.site_index(source).map_err(err)?,
        st.site_index(target).map_err(err)?,
    );
    let (d_s, d_t) = (
        st.manifest().sites[s].dim as usize,
        st.manifest().sites[t].dim as usize,
    );
    // A given init is in raw units; the default init is drawn directly in training space.
    let mut params = match (init, &standardize) {
        (Some(tensors), Some(z)) => z.unfold(&ae_params(d_s, hidden, d_t, &tensors)?),
        (Some(tensors), None) => ae_params(d_s, hidden, d_t, &tensors)?,
        (None, _) => AeParams::init(d_s, hidden, d_t, seed),
    };
    let ids = |a: &PyReadonlyArray1<'_, i64>| -> PyResult<Vec<u64>> {
        let slice = a
            .as_slice()
            .map_err(|_| invalid("rows must be contiguous int64"))?;
        match st.resolve(&Rows::Indices(slice)).map_err(err)? {
            RowIds::List(v) => Ok(v.into_owned()),
            RowIds::Range(a, b) => Ok((a..b).collect()),
        }
    };
    let train_ids = ids(&rows)?;
    let val_ids = val_rows.as_ref().map(ids).transpose()?;
    let cfg = TrainConfig {
        epochs,
        batch_size,
        lr,
        weight_decay,
        seed,
        plateau_patience,
        lr_factor: 0.5,
        early_stop,
        grad_clip,
    };
    let mut callback_error: Option<PyErr> = None;
    let mut last_report = std::time::Instant::now();
    let history = guarded(py, || {
        autoencoder::train(
            &mut params,
            st,
            s,
            t,
            &train_ids,
            val_ids.as_deref(),
            &cfg,
            standardize.as_ref(),
            |done, total| {
                let Some(cb) = &progress else { return true };
                if done < total && last_report.elapsed().as_millis() < 100 {
                    return true; // report at most ten times a second
                }
                last_report = std::time::Instant::now();
                Python::attach(|py| match cb.call1(py, (done, total)) {
                    Ok(_) => true,
                    Err(e) => {
                        callback_error = Some(e);
                        false
                    }
                })
            },
        )
    })?;
    if let Some(e) = callback_error {
        return Err(e);
    }
    let history = history.map_err(fit_err)?;
    let records = history
        .into_iter()
        .map(|r| {
            let d = PyDict::new(py);
            d.set_item("epoch", r.epoch)?;
            d.set_item("train_mse", r.train_mse)?;
            d.set_item("lr", r.lr)?;
            if let Some(v) = r.val {
                d.set_item("val_mse", v.mse)?;
                d.set_item("val_fvu", v.fvu)?;
                d.set_item("val_cosine", v.cosine)?;
            }
            Ok(d)
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok((ae_tuple(py, params), records))
}

/// Use the Fortran BLAS routines at these addresses (`ssyrk`, `sgemm`, `sgemv`; 64-bit integers
/// when `ilp64`) for the affine fit's chunk products and column sums. Private: the Python
/// package passes routines it found in a BLAS library already loaded by numpy or scipy.
#[pyfunction]
fn register_blas(ssyrk: usize, sgemm: usize, sgemv: usize, ilp64: bool) -> PyResult<()> {
    if ssyrk == 0 || sgemm == 0 || sgemv == 0 {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "a BLAS routine's address is null",
        ));
    }
    // SAFETY: the package passes routines of a loaded BLAS library (never unloaded: extension
    // modules stay loaded), thread-safe, with the integer width of their symbol names.
    unsafe {
        crate::fit::gemm::register_blas(
            ssyrk as *const std::ffi::c_void,
            sgemm as *const std::ffi::c_void,
            sgemv as *const std::ffi::c_void,
            ilp64,
        )
    };
    Ok(())
}

/// Run the autoencoder trainer's products on the Fortran `sgemm` at this address (32- or 64-bit
/// integers), or on faer (None). Private, like `register_blas`.
#[pyfunction]
#[pyo3(signature = (sgemm=None))]
fn register_dense_sgemm(sgemm: Option<usize>) -> PyResult<()> {
    if sgemm == Some(0) {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "the sgemm address is null",
        ));
    }
    // SAFETY: the package passes the sgemm of a loaded, never-unloaded BLAS, after checking a
    // small product against numpy (see actbridge._blas).
    unsafe { crate::fit::gemm::register_dense_sgemm(sgemm.map(|a| a as *const std::ffi::c_void)) };
    Ok(())
}

/// "blas" or "faer": what the autoencoder trainer's products run on.
#[pyfunction]
fn dense_gemm_backend() -> &'static str {
    crate::fit::gemm::dense_backend()
}

/// Go back to faer's GEMM for the affine fit.
#[pyfunction]
fn unregister_blas() {
    crate::fit::gemm::unregister_blas()
}

/// "blas" or "faer": what the affine fit's chunk products run on.
#[pyfunction]
fn gemm_backend() -> &'static str {
    crate::fit::gemm::backend()
}

/// `(detected, active, requested)`: the highest vector level this CPU has, the one the kernels
/// run at, and the raw `ACTBRIDGE_SIMD` value (None when unset).
#[pyfunction]
fn simd_levels() -> (&'static str, &'static str, Option<String>) {
    let requested = crate::simd::requested().map(|r| match r {
        Ok(level) => level.name().to_string(),
        Err(raw) => raw,
    });
    (
        crate::simd::detected().name(),
        crate::simd::active().name(),
        requested,
    )
}

#[pymodule]
#[pyo3(name = "_native")]
fn native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ActbridgeError", py.get_type::<ActbridgeError>())?;
    m.add("StoreError", py.get_type::<StoreError>())?;
    m.add("StoreCorruptError", py.get_type::<StoreCorruptError>())?;
    m.add("MapError", py.get_type::<MapError>())?;
    m.add_class::<PyAffineStats>()?;
    m.add_function(pyo3::wrap_pyfunction!(register_blas, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(unregister_blas, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(gemm_backend, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(register_dense_sgemm, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(dense_gemm_backend, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(autoencoder_loss_and_grad, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(train_autoencoder, m)?)?;
    m.add_function(pyo3::wrap_pyfunction!(simd_levels, m)?)?;
    m.add_class::<PyStoreWriter>()?;
    m.add_class::<PyStore>()?;
    m.add_class::<BatchIter>()?;
    m.add("DEFAULT_PAGE_BUDGET", default_page_budget())?;
    Ok(())
}
