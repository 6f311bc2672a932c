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

/// A Rust enum for a string option of the Python API: converted from a `str` argument, and any
/// other value is a `ValueError` subclass (`$err`) naming the option and every allowed value.
macro_rules! str_option {
    ($(#[$meta:meta])* $name:ident, $what:literal, $err:ident { $($(#[$vm:meta])* $text:literal => $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(super) enum $name {
            $($(#[$vm])* $variant),+
        }

        impl $name {
            /// The accepted strings, in the order the error message lists them.
            pub(super) const ALLOWED: &'static [&'static str] = &[$($text),+];

            pub(super) fn parse(s: &str) -> PyResult<Self> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err($err(format!(
                        "{} must be one of {}; got {s:?}",
                        $what,
                        Self::ALLOWED.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
                    ))),
                }
            }
        }

        impl<'a, 'py> FromPyObject<'a, 'py> for $name {
            type Error = PyErr;

            fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
                let s: String = obj.extract().map_err(|_| {
                    $err(format!(
                        "{} must be a string, one of {}",
                        $what,
                        Self::ALLOWED.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ")
                    ))
                })?;
                Self::parse(&s)
            }
        }
    };
}

str_option! {
    /// Output element types of reads and batches.
    OutDtype, "dtype", invalid {
        "float32" => F32,
        "float64" => F64,
        "float16" => F16,
        /// bfloat16 as raw uint16 bits (numpy has no bfloat16; the Python layer views them).
        "bfloat16" => BF16Bits,
    }
}

str_option! {
    /// The element type of rows handed to `StoreWriter.append` (bfloat16 as uint16 bits).
    InDtype, "the dtype of appended rows", invalid {
        "float32" => F32,
        "float64" => F64,
        "float16" => F16,
        "bfloat16" => BF16,
    }
}

str_option! {
    /// How a writer opens its path.
    WriteMode, "mode", invalid {
        "x" => Create,
        "a" => Append,
    }
}

impl From<WriteMode> for store::Mode {
    fn from(m: WriteMode) -> store::Mode {
        match m {
            WriteMode::Create => store::Mode::Create,
            WriteMode::Append => store::Mode::Append,
        }
    }
}

str_option! {
    /// How an epoch visits rows (`store::Shuffle` without the block sizes).
    ShuffleMode, "shuffle", invalid {
        "none" => None,
        "global" => Global,
        "block" => Block,
    }
}

impl ShuffleMode {
    pub(super) fn with_blocks(self, block_rows: usize, window_blocks: usize) -> store::Shuffle {
        match self {
            ShuffleMode::None => store::Shuffle::None,
            ShuffleMode::Global => store::Shuffle::Global,
            ShuffleMode::Block => store::Shuffle::Block {
                block_rows,
                window_blocks,
            },
        }
    }
}

str_option! {
    /// How an affine weight is solved for.
    FitMethod, "method", map_invalid {
        "lstsq" => Lstsq,
        "procrustes" => Procrustes,
    }
}

impl From<FitMethod> for crate::fit::affine::Method {
    fn from(m: FitMethod) -> Self {
        match m {
            FitMethod::Lstsq => crate::fit::affine::Method::Lstsq,
            FitMethod::Procrustes => crate::fit::affine::Method::Procrustes,
        }
    }
}

/// A stored site's element type: the core's names and aliases (`DType::parse` lists them).
#[derive(Clone, Copy, Debug)]
pub(super) struct SiteDtype(pub(super) crate::dtype::DType);

impl<'a, 'py> FromPyObject<'a, 'py> for SiteDtype {
    type Error = PyErr;

    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let s: String = obj
            .extract()
            .map_err(|_| invalid("a site's dtype must be a string such as \"float32\""))?;
        crate::dtype::DType::parse(&s).map(SiteDtype).map_err(err)
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
    pub(super) fn extract(obj: &Bound<'py, PyAny>, kind: InDtype) -> PyResult<Self> {
        let bad = |_| {
            invalid(format!(
                "expected a 2-D {} array",
                InDtype::ALLOWED[kind as usize]
            ))
        };
        Ok(match kind {
            InDtype::F32 => SiteArray::F32(obj.extract().map_err(bad)?),
            InDtype::F64 => SiteArray::F64(obj.extract().map_err(bad)?),
            InDtype::F16 => SiteArray::F16(obj.extract().map_err(bad)?),
            InDtype::BF16 => SiteArray::BF16(obj.extract().map_err(bad)?),
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
