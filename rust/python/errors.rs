//! The one conversion from core errors to Python exceptions, and the exception types the
//! native module defines (the Python package re-exports them from `actbridge.errors`).

use pyo3::exceptions::{PyException, PyFileExistsError, PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::error::StoreError as CoreError;
use crate::fit::FitError;

pyo3::create_exception!(
    actbridge.errors,
    ActbridgeError,
    PyException,
    "Base class of every actbridge error."
);
pyo3::create_exception!(
    actbridge.errors,
    StoreError,
    ActbridgeError,
    "A store operation failed (bad input, I/O, or state)."
);
pyo3::create_exception!(
    actbridge.errors,
    StoreCorruptError,
    StoreError,
    "A store's bytes do not match its manifest."
);
pyo3::create_exception!(
    actbridge.errors,
    MapError,
    ActbridgeError,
    "Fitting, solving, saving or loading a map failed."
);

/// The exception classes with two bases, one of ours and one builtin, so that they can be
/// caught by kind (`except FileNotFoundError`) as well as by origin (`except ab.StoreError`).
/// `create_exception!` makes single-base classes only; these are made once per interpreter by
/// calling `type(name, bases, namespace)`, as a `class` statement would.
#[derive(Clone, Copy)]
pub(super) enum Dual {
    /// `StoreArgumentError(StoreError, ValueError)`: an argument out of its allowed range.
    StoreArgument,
    /// `StoreNotFoundError(StoreError, FileNotFoundError)`: no store at the path.
    StoreNotFound,
    /// `StoreExistsError(StoreError, FileExistsError)`: `mode="x"` on an existing path.
    StoreExists,
    /// `MapArgumentError(MapError, ValueError)`: a fit or map argument that cannot work.
    MapArgument,
}

static DUALS: [PyOnceLock<Py<PyType>>; 4] = [
    PyOnceLock::new(),
    PyOnceLock::new(),
    PyOnceLock::new(),
    PyOnceLock::new(),
];

impl Dual {
    pub(super) const ALL: [Dual; 4] = [
        Dual::StoreArgument,
        Dual::StoreNotFound,
        Dual::StoreExists,
        Dual::MapArgument,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Dual::StoreArgument => "StoreArgumentError",
            Dual::StoreNotFound => "StoreNotFoundError",
            Dual::StoreExists => "StoreExistsError",
            Dual::MapArgument => "MapArgumentError",
        }
    }

    fn doc(self) -> &'static str {
        match self {
            Dual::StoreArgument => {
                "A store argument out of its allowed range (the message names the range)."
            }
            Dual::StoreNotFound => "No store at the path (its manifest.json does not exist).",
            Dual::StoreExists => "mode=\"x\" on a path that already exists.",
            Dual::MapArgument => "A fit or map argument that cannot work (shapes, sizes, rows).",
        }
    }

    fn bases(self, py: Python<'_>) -> (Bound<'_, PyType>, Bound<'_, PyType>) {
        match self {
            Dual::StoreArgument => (py.get_type::<StoreError>(), py.get_type::<PyValueError>()),
            Dual::StoreNotFound => (
                py.get_type::<StoreError>(),
                py.get_type::<PyFileNotFoundError>(),
            ),
            Dual::StoreExists => (
                py.get_type::<StoreError>(),
                py.get_type::<PyFileExistsError>(),
            ),
            Dual::MapArgument => (py.get_type::<MapError>(), py.get_type::<PyValueError>()),
        }
    }

    /// The class, made on first use.
    pub(super) fn get(self, py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
        DUALS[self as usize]
            .get_or_try_init(py, || {
                let namespace = PyDict::new(py);
                namespace.set_item("__module__", "actbridge.errors")?;
                namespace.set_item("__doc__", self.doc())?;
                let (ours, builtin) = self.bases(py);
                let bases = PyTuple::new(py, [ours, builtin])?;
                let class = py
                    .get_type::<PyType>()
                    .call1((self.name(), bases, namespace))?;
                Ok::<_, PyErr>(class.cast_into::<PyType>()?.unbind())
            })
            .map(|class| class.bind(py))
    }

    /// An error of this class with this message.
    pub(super) fn err(self, msg: impl Into<String>) -> PyErr {
        let msg = msg.into();
        Python::attach(|py| match self.get(py) {
            Ok(class) => PyErr::from_type(class.clone(), msg),
            Err(e) => e,
        })
    }
}

pub(super) fn fit_err(e: FitError) -> PyErr {
    match e {
        FitError::Store(e) => err(e),
        FitError::Invalid(msg) => Dual::MapArgument.err(msg),
        other => MapError::new_err(other.to_string()),
    }
}

/// The one mapping from the core's store errors to Python classes.
pub(super) fn err(e: CoreError) -> PyErr {
    let msg = e.to_string();
    match e {
        CoreError::Corrupt { .. } => StoreCorruptError::new_err(msg),
        CoreError::Invalid(_) => Dual::StoreArgument.err(msg),
        CoreError::NotFound(_) => Dual::StoreNotFound.err(msg),
        CoreError::Exists(_) => Dual::StoreExists.err(msg),
        CoreError::Io { .. } | CoreError::WriterFailed(_) => StoreError::new_err(msg),
    }
}

/// The message of a caught panic, as an `ActbridgeError`.
pub(super) fn panic_error(payload: &(dyn std::any::Any + Send)) -> PyErr {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    ActbridgeError::new_err(format!(
        "internal error in actbridge's native code (a bug; please report it with this message): {msg}"
    ))
}

/// A bad store argument caught in the binding.
pub(super) fn invalid(msg: impl Into<String>) -> PyErr {
    Dual::StoreArgument.err(msg)
}

/// A bad fit argument caught in the binding.
pub(super) fn map_invalid(msg: impl Into<String>) -> PyErr {
    Dual::MapArgument.err(msg)
}
