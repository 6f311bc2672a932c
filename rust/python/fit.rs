//! `AffineStats` and the autoencoder trainer entry points over `crate::fit`.

use numpy::ndarray::Array1;
use numpy::{IntoPyArray, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::*;
use crate::fit::affine::{AffineStats, Method};
use crate::fit::autoencoder::{self, AeParams, TrainConfig, Work};
use crate::store::reader::RowIds;
use crate::store::Rows;

/// Call a progress callback (taking the GIL). An exception it raises is kept in `failed`, to
/// be raised once the core has returned, and `false` tells the core to stop.
fn report_progress<A>(cb: &Py<PyAny>, args: A, failed: &mut Option<PyErr>) -> bool
where
    A: for<'py> pyo3::call::PyCallArgs<'py>,
{
    Python::attach(|py| match cb.call1(py, args) {
        Ok(_) => true,
        Err(e) => {
            *failed = Some(e);
            false
        }
    })
}

#[pyclass(module = "actbridge._native", name = "AffineStats")]
pub(super) struct PyAffineStats {
    inner: AffineStats,
}

pub(super) fn f64_array(py: Python<'_>, v: Vec<f64>) -> Py<PyAny> {
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
            .map_err(|_| map_invalid("x must be C-contiguous"))?;
        let ys = y
            .as_slice()
            .map_err(|_| map_invalid("y must be C-contiguous"))?;
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
                    Some(cb) => report_progress(cb, (done,), &mut callback_error),
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
    #[pyo3(signature = (*, ridge=0.0, bias=true, method=FitMethod::Lstsq))]
    #[pyo3(text_signature = "(self, /, *, ridge=0.0, bias=True, method='lstsq')")]
    fn solve<'py>(
        &self,
        py: Python<'py>,
        ridge: f64,
        bias: bool,
        method: FitMethod,
    ) -> PyResult<(Py<PyAny>, Py<PyAny>, Bound<'py, PyDict>)> {
        let method = Method::from(method);
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

    /// These statistics around other pilot means (for an element-wise all-reduce).
    fn recentred(&self, pilot_x: Vec<f64>, pilot_y: Vec<f64>) -> PyResult<Self> {
        let inner = self.inner.recentred(&pilot_x, &pilot_y).map_err(fit_err)?;
        Ok(PyAffineStats { inner })
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
                .map_err(|_| map_invalid("sxx must be contiguous"))?,
            sxy.as_slice()
                .map_err(|_| map_invalid("sxy must be contiguous"))?,
        );
        let inner = AffineStats::from_parts(
            d_source, d_target, n, pilot_x, pilot_y, sx, sy, syy, sxx, sxy,
        )
        .map_err(fit_err)?;
        Ok(PyAffineStats { inner })
    }
}

pub(super) fn flat_f32(a: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<f32>> {
    let arr: PyReadonlyArray1<'_, f32> = a
        .extract()
        .map_err(|_| map_invalid(format!("{name} must be a flat float32 array")))?;
    let slice = arr
        .as_slice()
        .map_err(|_| map_invalid(format!("{name} must be contiguous")))?;
    Ok(slice.to_vec())
}

pub(super) fn ae_params(
    d_s: usize,
    h: usize,
    d_t: usize,
    tensors: &[Bound<'_, PyAny>],
) -> PyResult<AeParams> {
    if tensors.len() != 4 {
        return Err(map_invalid("pass (w1, b1, w2, b2)"));
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

pub(super) fn ae_tuple(
    py: Python<'_>,
    p: AeParams,
) -> (Py<PyAny>, Py<PyAny>, Py<PyAny>, Py<PyAny>) {
    let f = |v: Vec<f32>| Array1::from_vec(v).into_pyarray(py).into_any().unbind();
    (f(p.w1), f(p.b1), f(p.w2), f(p.b2))
}

/// Loss and gradients of an autoencoder on one batch (for checking against autograd).
/// Tensors are flat float32 arrays; returns (loss, dw1, db1, dw2, db2).
#[pyfunction]
#[allow(clippy::type_complexity)]
pub(super) fn autoencoder_loss_and_grad(
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
        return Err(map_invalid("x must be (n, d_s) and y (n, d_t)"));
    }
    let (xs, ys) = (
        x.as_slice()
            .map_err(|_| map_invalid("x must be contiguous"))?,
        y.as_slice()
            .map_err(|_| map_invalid("y must be contiguous"))?,
    );
    let mut grad = AeParams::zeros(d_s, h, d_t);
    let loss = guarded(py, || {
        p.loss_and_grad(xs, ys, rows, &mut grad, &mut Work::default())
    })?;
    let (a, b, c, d) = ae_tuple(py, grad);
    Ok((loss, a, b, c, d))
}

/// The training settings of `actbridge.AutoencoderConfig`, read from its attributes by name
/// (so no two settings can be swapped by position).
#[derive(FromPyObject)]
pub(super) struct ConfigArg {
    #[pyo3(attribute)]
    epochs: usize,
    #[pyo3(attribute)]
    batch_size: usize,
    #[pyo3(attribute)]
    lr: f32,
    #[pyo3(attribute)]
    weight_decay: f32,
    #[pyo3(attribute)]
    seed: u64,
    #[pyo3(attribute)]
    plateau_patience: usize,
    #[pyo3(attribute)]
    lr_factor: f32,
    #[pyo3(attribute)]
    early_stop: Option<usize>,
    #[pyo3(attribute)]
    grad_clip: Option<f32>,
}

impl From<&ConfigArg> for TrainConfig {
    fn from(c: &ConfigArg) -> TrainConfig {
        TrainConfig {
            epochs: c.epochs,
            batch_size: c.batch_size,
            lr: c.lr,
            weight_decay: c.weight_decay,
            seed: c.seed,
            plateau_patience: c.plateau_patience,
            lr_factor: c.lr_factor,
            early_stop: c.early_stop,
            grad_clip: c.grad_clip,
        }
    }
}

/// Per-dimension means and standard deviations: (mean_x, std_x, mean_y, std_y).
type StandardizeArg = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

fn standardize(z: StandardizeArg) -> autoencoder::Standardize {
    let (mean_x, std_x, mean_y, std_y) = z;
    autoencoder::Standardize {
        mean_x,
        std_x,
        mean_y,
        std_y,
    }
}

/// Resolve int64 row indices of a store to row ids (checked against its length).
fn row_ids(
    st: &crate::store::ActivationStore,
    a: &PyReadonlyArray1<'_, i64>,
) -> PyResult<Vec<u64>> {
    let slice = a
        .as_slice()
        .map_err(|_| map_invalid("rows must be contiguous int64"))?;
    match st.resolve(&Rows::Indices(slice)).map_err(err)? {
        RowIds::List(v) => Ok(v.into_owned()),
        RowIds::Range(a, b) => Ok((a..b).collect()),
    }
}

/// Train an autoencoder on the CPU. `config`: an `AutoencoderConfig` (its attributes are
/// read); `init`: (w1, b1, w2, b2) flat float32 arrays in raw units, or None for
/// PyTorch-default init from the config's seed. Returns ((w1, b1, w2, b2), history).
#[pyfunction]
#[pyo3(signature = (*, store, source, target, rows, val_rows, hidden, config, init, progress, standardize=None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub(super) fn train_autoencoder<'py>(
    py: Python<'py>,
    store: &PyStore,
    source: &str,
    target: &str,
    rows: PyReadonlyArray1<'_, i64>,
    val_rows: Option<PyReadonlyArray1<'_, i64>>,
    hidden: usize,
    config: ConfigArg,
    init: Option<Vec<Bound<'_, PyAny>>>,
    progress: Option<Py<PyAny>>,
    standardize: Option<StandardizeArg>,
) -> PyResult<(
    (Py<PyAny>, Py<PyAny>, Py<PyAny>, Py<PyAny>),
    Vec<Bound<'py, PyDict>>,
)> {
    let standardize = standardize.map(self::standardize);
    let cfg = TrainConfig::from(&config);
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
        (None, _) => AeParams::init(d_s, hidden, d_t, cfg.seed),
    };
    let train_ids = row_ids(st, &rows)?;
    let val_ids = val_rows.as_ref().map(|v| row_ids(st, v)).transpose()?;
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
                report_progress(cb, (done, total), &mut callback_error)
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

/// The trainers' learning-rate schedule and early stop (`crate::fit::autoencoder::Plateau`),
/// for the torch loop: `step(score)` after each epoch returns whether to stop; `lr` is the
/// rate for the next epoch.
#[pyclass(module = "actbridge._native", name = "PlateauSchedule")]
pub(super) struct PyPlateau {
    inner: autoencoder::Plateau,
}

#[pymethods]
impl PyPlateau {
    #[new]
    #[pyo3(signature = (*, lr, lr_factor, plateau_patience, early_stop))]
    fn new(
        lr: f64,
        lr_factor: f64,
        plateau_patience: usize,
        early_stop: Option<usize>,
    ) -> PyResult<Self> {
        Ok(PyPlateau {
            inner: autoencoder::Plateau::new(lr, lr_factor, plateau_patience, early_stop)
                .map_err(fit_err)?,
        })
    }

    fn step(&mut self, score: f64) -> bool {
        self.inner.step(score)
    }

    #[getter]
    fn lr(&self) -> f64 {
        self.inner.lr()
    }
}

/// Fold standardisation into autoencoder tensors (standardised space -> raw units), or with
/// `inverse` unfold them; (w1, b1, w2, b2) flat float32 arrays in and out.
#[pyfunction]
#[pyo3(signature = (*, dims, tensors, standardize, inverse=false))]
#[allow(clippy::type_complexity)]
pub(super) fn fold_standardization(
    py: Python<'_>,
    dims: (usize, usize, usize),
    tensors: Vec<Bound<'_, PyAny>>,
    standardize: StandardizeArg,
    inverse: bool,
) -> PyResult<(Py<PyAny>, Py<PyAny>, Py<PyAny>, Py<PyAny>)> {
    let p = ae_params(dims.0, dims.1, dims.2, &tensors)?;
    let z = self::standardize(standardize);
    z.check(&p).map_err(fit_err)?;
    Ok(ae_tuple(
        py,
        if inverse { z.unfold(&p) } else { z.fold(&p) },
    ))
}

/// Validation scores of autoencoder tensors (raw units) on rows of two sites, as the Rust
/// trainer computes them after each epoch: {"mse", "fvu", "cosine"}.
#[pyfunction]
#[pyo3(signature = (*, store, source, target, rows, dims, tensors))]
pub(super) fn evaluate_autoencoder<'py>(
    py: Python<'py>,
    store: &PyStore,
    source: &str,
    target: &str,
    rows: PyReadonlyArray1<'_, i64>,
    dims: (usize, usize, usize),
    tensors: Vec<Bound<'_, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let st = &store.inner;
    let (s, t) = (
        st.site_index(source).map_err(err)?,
        st.site_index(target).map_err(err)?,
    );
    let p = ae_params(dims.0, dims.1, dims.2, &tensors)?;
    if st.manifest().sites[s].dim as usize != p.d_s || st.manifest().sites[t].dim as usize != p.d_t
    {
        return Err(map_invalid(format!(
            "the sites are {} and {} wide; the autoencoder maps {} -> {}",
            st.manifest().sites[s].dim,
            st.manifest().sites[t].dim,
            p.d_s,
            p.d_t
        )));
    }
    let ids = row_ids(st, &rows)?;
    if ids.is_empty() {
        return Err(map_invalid(
            "scores of zero rows are undefined; pass at least one row",
        ));
    }
    let scores = guarded(py, || autoencoder::evaluate(&p, st, s, t, &ids))?;
    let d = PyDict::new(py);
    d.set_item("mse", scores.mse)?;
    d.set_item("fvu", scores.fvu)?;
    d.set_item("cosine", scores.cosine)?;
    Ok(d)
}
