//! Type conversion between Python objects and the core: output dtypes, gather targets, row
//! selections and site arrays.

use half::{bf16, f16};
use numpy::{PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::*;
use crate::dtype::Floats;
use crate::store::reader::RowIds;
use crate::store::{self, Rows};

pub(super) fn json_value(text: &str) -> PyResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| invalid(format!("metadata is not valid JSON: {e}")))
}

/// Output element types of reads.
#[derive(Clone, Copy)]
pub(super) enum OutDtype {
    F32,
    F64,
    F16,
    /// bfloat16 as raw uint16 bits (numpy has no bfloat16; the Python layer views them).
    BF16Bits,
}

impl OutDtype {
    pub(super) fn parse(s: &str) -> PyResult<OutDtype> {
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
pub(super) struct OutArray {
    pub(super) array: Py<PyAny>,
    pub(super) data: usize,
    pub(super) len: usize,
    pub(super) field: Field,
    pub(super) dtype: OutDtype,
}

impl OutArray {
    pub(super) fn new(
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
    pub(super) fn shape(store: &store::ActivationStore, field: Field, rows: usize) -> Vec<usize> {
        match field {
            Field::Site(i) => vec![rows, store.manifest().sites[i].dim as usize],
            Field::Column(_) => vec![rows],
        }
    }

    /// Gather into the array; safe to call without the GIL (numpy never moves array data).
    pub(super) fn fill(&self, store: &store::ActivationStore, ids: &RowIds<'_>) {
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
pub(super) enum Field {
    Site(usize),
    Column(usize),
}

pub(super) fn field(store: &store::ActivationStore, name: &str) -> PyResult<Field> {
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
pub(super) enum RowsArg<'py> {
    Range((u64, u64)),
    Indices(PyReadonlyArray1<'py, i64>),
}

pub(super) fn with_rows<T>(
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
pub(super) enum SiteArray<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F64(PyReadonlyArray2<'py, f64>),
    F16(PyReadonlyArray2<'py, f16>),
    BF16(PyReadonlyArray2<'py, u16>),
}

impl<'py> SiteArray<'py> {
    pub(super) fn extract(obj: &Bound<'py, PyAny>, kind: &str) -> PyResult<Self> {
        let bad = |_| invalid(format!("expected a 2-D {kind} array"));
        Ok(match kind {
            "float32" => SiteArray::F32(obj.extract().map_err(bad)?),
            "float64" => SiteArray::F64(obj.extract().map_err(bad)?),
            "float16" => SiteArray::F16(obj.extract().map_err(bad)?),
            "bfloat16" => SiteArray::BF16(obj.extract().map_err(bad)?),
            _ => return Err(invalid(format!("unsupported input dtype {kind:?}"))),
        })
    }
    pub(super) fn view(&self) -> PyResult<(Floats<'_>, usize, usize)> {
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
