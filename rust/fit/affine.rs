//! Affine maps `y ≈ W x + b` from sufficient statistics.
//!
//! One streaming pass accumulates, over rows shifted by a pilot mean (`x' = x - p_x`,
//! `y' = y - p_y`, which keeps large offsets from cancelling; a site whose means are already
//! small against its spread, 0.1σ for sources and 1σ for targets, keeps a zero pilot and is
//! read in place): `n`, `Σx'`, `Σy'`, `Σy'²` per dimension, `Σx'x'ᵀ` (one triangle: a symmetric
//! rank-k update) and `Σx'y'ᵀ`. Chunk products are f32 GEMMs (a registered BLAS, or faer;
//! multi-threaded) added into f64 accumulators. The statistics are additive,
//! so parts fitted elsewhere merge exactly; the solve (Cholesky with ridge, or the SVD for
//! Procrustes) and the training metrics come from them without a second pass.

// Matrix arithmetic reads best with explicit (i, j) indices.
#![allow(clippy::needless_range_loop)]

use faer::linalg::matmul::matmul;
use faer::linalg::solvers::Solve;
use faer::{Accum, Mat, Par, Side};
use rayon::prelude::*;

use super::{gemm, FitError, FitResult};
use crate::store::reader::{ActivationStore, RowIds};

/// Rows per chunk product. Small enough for a chunk of both sites to stay in a large L3 cache
/// between the sums pass and the products (32768 rows measured slower at d = 1024).
pub const CHUNK_ROWS: usize = 8192;

/// How the weight is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Ridge least squares: `(XᵀX + λI) Wᵀ = XᵀY`, centred when fitting a bias.
    Lstsq,
    /// Orthogonal Procrustes: `W = U Vᵀ` from the SVD of the (centred) cross-covariance;
    /// semi-orthogonal when the widths differ.
    Procrustes,
}

/// Training-set quality, from the statistics alone.
#[derive(Clone, Debug, PartialEq)]
pub struct FitMetrics {
    pub rows: u64,
    /// Mean squared error per element.
    pub mse: f64,
    /// Σ‖ŷ−y‖² / Σ‖y−ȳ‖².
    pub fvu: f64,
    /// Mean over target dimensions of 1 − SSE_j / SST_j.
    pub r2: f64,
    /// The ridge actually used (larger than asked if the system had to be regularised).
    pub ridge: f64,
}

/// A fitted affine map, `weight` row-major `(d_t, d_s)` (the PyTorch Linear layout).
#[derive(Clone, Debug)]
pub struct AffineFit {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub metrics: FitMetrics,
}

/// Additive sufficient statistics of paired rows.
#[derive(Clone, Debug)]
pub struct AffineStats {
    pub d_s: usize,
    pub d_t: usize,
    pub n: u64,
    pilot_x: Vec<f64>,
    pilot_y: Vec<f64>,
    sx: Vec<f64>,
    sy: Vec<f64>,
    syy: Vec<f64>,
    /// Σx'x'ᵀ, lower triangle valid.
    sxx: Mat<f64>,
    /// Σx'y'ᵀ, `(d_s, d_t)`.
    sxy: Mat<f64>,
    /// Reused per-chunk buffers (not part of the statistics).
    work: Workspace,
}

/// Shifted chunk copies, kept between chunks so each chunk does not first-touch fresh memory.
#[derive(Default)]
struct Workspace {
    x: Vec<f32>,
    y: Vec<f32>,
    /// Column-major chunk products XᵀX (lower) and XᵀY.
    xx: Vec<f32>,
    xy: Vec<f32>,
    /// Column sums from the BLAS, and its vector of ones.
    sums: Vec<f32>,
    ones: Vec<f32>,
}

impl Clone for Workspace {
    fn clone(&self) -> Self {
        Workspace::default()
    }
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Workspace")
    }
}

fn invalid(msg: impl Into<String>) -> FitError {
    FitError::Invalid(msg.into())
}

impl AffineStats {
    pub fn new(d_s: usize, d_t: usize) -> FitResult<Self> {
        if d_s == 0 || d_t == 0 {
            return Err(invalid("source and target widths must be positive"));
        }
        Ok(AffineStats {
            d_s,
            d_t,
            n: 0,
            pilot_x: vec![],
            pilot_y: vec![],
            sx: vec![0.0; d_s],
            sy: vec![0.0; d_t],
            syy: vec![0.0; d_t],
            sxx: Mat::zeros(d_s, d_s),
            sxy: Mat::zeros(d_s, d_t),
            work: Workspace::default(),
        })
    }

    /// Add `rows` paired rows (`x`: `(rows, d_s)`, `y`: `(rows, d_t)`, row-major f32).
    /// On NaN/inf, nothing is added and the error names the offending row (within `x`/`y`).
    pub fn update(&mut self, x: &[f32], y: &[f32], rows: usize) -> FitResult<()> {
        if x.len() != rows * self.d_s || y.len() != rows * self.d_t {
            return Err(invalid(format!(
                "expected x of shape ({rows}, {}) and y of shape ({rows}, {}); got {} and {} values",
                self.d_s,
                self.d_t,
                x.len(),
                y.len()
            )));
        }
        // NaN/inf are found during each chunk's shift pass, before that chunk is added; a
        // snapshot undoes earlier chunks of this call, so a rejected update adds nothing.
        let snapshot = (rows > CHUNK_ROWS).then(|| self.clone());
        for start in (0..rows).step_by(CHUNK_ROWS) {
            let m = CHUNK_ROWS.min(rows - start);
            let chunk = self.update_chunk(
                &x[start * self.d_s..(start + m) * self.d_s],
                &y[start * self.d_t..(start + m) * self.d_t],
                m,
            );
            if let Err(e) = chunk {
                if let Some(before) = snapshot {
                    *self = before;
                }
                return Err(match e {
                    FitError::NonFinite { which, row } => FitError::NonFinite {
                        which,
                        row: start as u64 + row,
                    },
                    other => other,
                });
            }
        }
        Ok(())
    }

    /// Add one chunk; on NaN/inf (row numbers within the chunk) or products too large for f32,
    /// nothing of the chunk is added.
    fn update_chunk(&mut self, x: &[f32], y: &[f32], m: usize) -> FitResult<()> {
        if m == 0 {
            return Ok(());
        }
        let (d_s, d_t) = (self.d_s, self.d_t);
        // The first chunk's means become the pilot (kept only if the chunk is accepted),
        // rounded to f32 so the shift subtracts exactly this value; 0 where a mean is not finite.
        // A site whose means are all within `below` standard deviations of zero keeps a zero
        // pilot and needs no shifted copy. Only XᵀX multiplies two offsets, and its f32
        // accumulation errors add up coherently when every column carries one: sources are read
        // in place only when they are centred already (see SHIFT_SOURCE_BELOW). Unshifted
        // targets cost XᵀY (of centred sources) about a factor 1 + SHIFT_TARGET_BELOW.
        let pilot = |v: &[f32], d: usize, below: f64| -> Vec<f64> {
            let (mean, var) = column_moments(v, m, d);
            if mean
                .iter()
                .zip(&var)
                .all(|(&u, &s2)| u * u <= below * below * s2)
            {
                return vec![0.0; d];
            }
            mean.iter()
                .map(|&c| if c.is_finite() { c as f32 as f64 } else { 0.0 })
                .collect()
        };
        let first = self.pilot_x.is_empty();
        let (px, py) = if first {
            (
                pilot(x, d_s, SHIFT_SOURCE_BELOW),
                pilot(y, d_t, SHIFT_TARGET_BELOW),
            )
        } else {
            (self.pilot_x.clone(), self.pilot_y.clone())
        };
        let mut work = std::mem::take(&mut self.work);
        // With an external BLAS running its own threads, a parallel pass here only competes
        // with them for the cores.
        let parallel = gemm::backend() == "faer";
        // Read in place, the sources' sums come from the BLAS (threaded), which leaves one
        // single-threaded read-only pass, over the target rows.
        let shifted_x = match px.iter().all(|&v| v == 0.0) {
            true => blas_column_sums(x, m, d_s, &mut work),
            false => None,
        }
        .unwrap_or_else(|| shift_and_sum(x, d_s, &px, false, parallel, &mut work.x));
        let shifted_y = shift_and_sum(y, d_t, &py, true, parallel, &mut work.y);
        let ((sx, _, x_shifted), (sy, syy, y_shifted)) = match (shifted_x, shifted_y) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(i), _) => {
                self.work = work;
                return Err(non_finite("source", i / d_s));
            }
            (_, Err(i)) => {
                self.work = work;
                return Err(non_finite("target", i / d_t));
            }
        };
        let xc: &[f32] = if x_shifted { &work.x } else { x };
        let yc: &[f32] = if y_shifted { &work.y } else { y };
        work.xx.resize(d_s * d_s, 0.0);
        work.xy.resize(d_s * d_t, 0.0);
        gemm::syrk_lower(xc, m, d_s, &mut work.xx);
        gemm::gemm_tn(xc, yc, m, d_s, d_t, &mut work.xy);
        // Finite rows whose products overflow f32 (|v| ≳ 1.8e19) leave infinities.
        let overflow = (0..d_s).any(|j| !work.xx[j * d_s + j].is_finite())
            || work.xy.iter().any(|v| !v.is_finite());
        if overflow {
            self.work = work;
            return Err(invalid(
                "the rows' products overflow float32 (values of magnitude ~1e19 or more); \
                 rescale the activations before fitting",
            ));
        }
        // Nothing of the chunk is kept until here.
        if first {
            self.pilot_x = px;
            self.pilot_y = py;
        }
        add(&mut self.sx, &sx);
        add(&mut self.sy, &sy);
        add(&mut self.syy, &syy);
        for j in 0..d_s {
            let src = &work.xx[j * d_s + j..(j + 1) * d_s];
            let dst = self.sxx.as_mut().col_mut(j).subrows_mut(j, d_s - j);
            dst.iter_mut().zip(src).for_each(|(a, &b)| *a += b as f64);
        }
        for j in 0..d_t {
            let src = &work.xy[j * d_s..(j + 1) * d_s];
            self.sxy
                .as_mut()
                .col_mut(j)
                .iter_mut()
                .zip(src)
                .for_each(|(a, &b)| *a += b as f64);
        }
        self.n += m as u64;
        self.work = work;
        Ok(())
    }

    /// Gather `ids` of two sites from a store in chunks and add them; `on_chunk(rows_done)`
    /// runs after each chunk (progress) and stops the pass by returning false.
    pub fn update_from_store(
        &mut self,
        store: &ActivationStore,
        source: usize,
        target: usize,
        ids: &RowIds<'_>,
        mut on_chunk: impl FnMut(u64) -> bool,
    ) -> FitResult<()> {
        let sites = &store.manifest().sites;
        if sites[source].dim as usize != self.d_s || sites[target].dim as usize != self.d_t {
            return Err(invalid(format!(
                "the store's sites are {} and {} wide, these statistics are for {} -> {}",
                sites[source].dim, sites[target].dim, self.d_s, self.d_t
            )));
        }
        let n = ids.len();
        // One pair of chunk buffers for the whole pass (fresh ones would fault in every chunk).
        let (mut x, mut y) = (Vec::<f32>::new(), Vec::<f32>::new());
        for start in (0..n).step_by(CHUNK_ROWS) {
            let end = (start + CHUNK_ROWS).min(n);
            let sub = ids.sub(start, end);
            x.resize((end - start) * self.d_s, 0.0);
            y.resize((end - start) * self.d_t, 0.0);
            store.gather_site_into(source, &sub, &mut x);
            store.gather_site_into(target, &sub, &mut y);
            self.update(&x, &y, end - start).map_err(|e| match e {
                FitError::NonFinite { which, row } => FitError::NonFinite {
                    which,
                    row: sub.get(row as usize),
                },
                other => other,
            })?;
            if !on_chunk(end as u64) {
                return Err(FitError::Interrupted);
            }
        }
        Ok(())
    }

    /// These statistics re-expressed around other pilot means (exact).
    fn shifted_to(&self, px: &[f64], py: &[f64]) -> AffineStats {
        let mut s = self.clone();
        if self.pilot_x.is_empty() {
            s.pilot_x = px.to_vec();
            s.pilot_y = py.to_vec();
            return s;
        }
        let n = self.n as f64;
        let dx: Vec<f64> = self.pilot_x.iter().zip(px).map(|(a, b)| a - b).collect();
        let dy: Vec<f64> = self.pilot_y.iter().zip(py).map(|(a, b)| a - b).collect();
        // x'' = x' + dx:  Σx''x''ᵀ = Σx'x'ᵀ + sx dxᵀ + dx sxᵀ + n dx dxᵀ, and so on.
        for j in 0..self.d_s {
            for i in j..self.d_s {
                s.sxx[(i, j)] += self.sx[i] * dx[j] + dx[i] * self.sx[j] + n * dx[i] * dx[j];
            }
        }
        for j in 0..self.d_t {
            for i in 0..self.d_s {
                s.sxy[(i, j)] += self.sx[i] * dy[j] + dx[i] * self.sy[j] + n * dx[i] * dy[j];
            }
            s.syy[j] += 2.0 * dy[j] * self.sy[j] + n * dy[j] * dy[j];
            s.sy[j] += n * dy[j];
        }
        for i in 0..self.d_s {
            s.sx[i] += n * dx[i];
        }
        s.pilot_x = px.to_vec();
        s.pilot_y = py.to_vec();
        s
    }

    /// These statistics around the pilot means `pilot_x` (`d_s`) and `pilot_y` (`d_t`), exact:
    /// after re-centring every part of a data set on one shared pilot, their accumulators add
    /// element by element (an all-reduce across processes), which is [`merge`](Self::merge)
    /// without the pairwise shifts.
    pub fn recentred(&self, pilot_x: &[f64], pilot_y: &[f64]) -> FitResult<AffineStats> {
        if pilot_x.len() != self.d_s || pilot_y.len() != self.d_t {
            return Err(invalid(format!(
                "pilot means of widths {} and {} for statistics of {} -> {}",
                pilot_x.len(),
                pilot_y.len(),
                self.d_s,
                self.d_t
            )));
        }
        if !pilot_x.iter().chain(pilot_y).all(|v| v.is_finite()) {
            return Err(invalid("pilot means must be finite"));
        }
        let mut s = self.shifted_to(pilot_x, pilot_y);
        if self.n == 0 {
            // no rows: zero sums around any pilot
            s.sx = vec![0.0; self.d_s];
            s.sy = vec![0.0; self.d_t];
            s.syy = vec![0.0; self.d_t];
        }
        Ok(s)
    }

    /// Add another set of statistics (from another part of the data) into this one.
    pub fn merge(&mut self, other: &AffineStats) -> FitResult<()> {
        if (self.d_s, self.d_t) != (other.d_s, other.d_t) {
            return Err(invalid(format!(
                "cannot merge statistics of {} -> {} into {} -> {}",
                other.d_s, other.d_t, self.d_s, self.d_t
            )));
        }
        if other.n == 0 {
            return Ok(());
        }
        if self.n == 0 {
            *self = other.clone();
            return Ok(());
        }
        let o = other.shifted_to(&self.pilot_x, &self.pilot_y);
        for j in 0..self.d_s {
            for i in j..self.d_s {
                self.sxx[(i, j)] += o.sxx[(i, j)];
            }
        }
        for j in 0..self.d_t {
            for i in 0..self.d_s {
                self.sxy[(i, j)] += o.sxy[(i, j)];
            }
        }
        add(&mut self.sx, &o.sx);
        add(&mut self.sy, &o.sy);
        add(&mut self.syy, &o.syy);
        self.n += o.n;
        Ok(())
    }

    pub fn mean_x(&self) -> Vec<f64> {
        let n = self.n.max(1) as f64;
        self.pilot_x
            .iter()
            .zip(&self.sx)
            .map(|(p, s)| p + s / n)
            .collect()
    }
    pub fn mean_y(&self) -> Vec<f64> {
        let n = self.n.max(1) as f64;
        self.pilot_y
            .iter()
            .zip(&self.sy)
            .map(|(p, s)| p + s / n)
            .collect()
    }

    /// (A, B, YY): the Gram matrix (full), the cross matrix and per-dimension Σy² of the
    /// problem actually solved: centred when fitting a bias, raw otherwise.
    fn normal_equations(&self, bias: bool) -> (Mat<f64>, Mat<f64>, Vec<f64>) {
        let (d_s, d_t) = (self.d_s, self.d_t);
        // Around the means (bias) or around zero (no bias).
        let (cx, cy): (Vec<f64>, Vec<f64>) = if bias {
            (self.mean_x(), self.mean_y())
        } else {
            (vec![0.0; d_s], vec![0.0; d_t])
        };
        let s = self.shifted_to(&cx, &cy);
        let a = Mat::from_fn(
            d_s,
            d_s,
            |i, j| if i >= j { s.sxx[(i, j)] } else { s.sxx[(j, i)] },
        );
        (a, s.sxy, s.syy)
    }

    /// Solve for the map. `ridge` (λ ≥ 0) is added to the diagonal of XᵀX (centred XᵀX with a
    /// bias). A singular system with λ = 0 and fewer rows than unknowns is an error; any other
    /// failure of the Cholesky factorisation is retried with a tiny ridge, reported in
    /// `metrics.ridge`.
    pub fn solve(&self, ridge: f64, bias: bool, method: Method) -> FitResult<AffineFit> {
        if !(ridge >= 0.0 && ridge.is_finite()) {
            return Err(invalid(format!(
                "ridge must be a finite number >= 0, got {ridge}"
            )));
        }
        if self.n == 0 {
            return Err(invalid("no rows to fit: the statistics are empty"));
        }
        let (d_s, d_t) = (self.d_s, self.d_t);
        let unknowns = d_s + bias as usize;
        if method == Method::Lstsq && ridge == 0.0 && (self.n as usize) < unknowns {
            return Err(FitError::UnderDetermined(format!(
                "under-determined: {} rows for {unknowns} unknowns per output (d_source = {d_s}{}); \
                 use more rows or pass ridge > 0",
                self.n,
                if bias { " + bias" } else { "" }
            )));
        }
        let (a, b, yy) = self.normal_equations(bias);
        let (w_t, ridge_used) = match method {
            Method::Lstsq => cholesky_solve(&a, &b, ridge)?,
            Method::Procrustes => (procrustes(&b)?, 0.0),
        };
        // weight = w_tᵀ, (d_t, d_s): row j of the weight is column j of w_t.
        let weight: Vec<f32> = (0..d_t)
            .flat_map(|j| w_t.col(j).iter().map(|&v| v as f32))
            .collect();
        // The bias that goes with the weight actually returned (rounded to f32): ȳ − W x̄ in
        // f64. With large source means the bias is a small difference of large terms, and
        // W's f32 rounding times x̄ would otherwise land in every prediction.
        let bias_vec: Vec<f64> = if bias {
            let (mx, my) = (self.mean_x(), self.mean_y());
            (0..d_t)
                .map(|j| {
                    let row = &weight[j * d_s..(j + 1) * d_s];
                    my[j] - row.iter().zip(&mx).map(|(&w, m)| w as f64 * m).sum::<f64>()
                })
                .collect()
        } else {
            vec![0.0; d_t]
        };
        let waw = match method {
            // (W A Wᵀ)_jj = (W B)_jj − λ‖w_j‖² for the solution of (A + λI) Wᵀ = B.
            Method::Lstsq => None,
            Method::Procrustes => {
                let mut aw = Mat::<f64>::zeros(d_s, d_t);
                matmul(
                    aw.as_mut(),
                    Accum::Replace,
                    a.as_ref(),
                    w_t.as_ref(),
                    1.0,
                    Par::rayon(0),
                );
                Some(aw)
            }
        };
        let metrics = self.metrics(&w_t, waw.as_ref(), &b, &yy, ridge_used);
        Ok(AffineFit {
            weight,
            bias: bias_vec.iter().map(|&v| v as f32).collect(),
            metrics,
        })
    }

    /// SSE_j = YY_j − 2 (W B)_jj + (W A Wᵀ)_jj, with `aw` = A Wᵀ, or for a ridge solution
    /// (`aw` None) SSE_j = YY_j − (W B)_jj − λ‖w_j‖²; SST_j from the centred target statistics.
    /// `w_t` is Wᵀ `(d_s, d_t)`.
    fn metrics(
        &self,
        w_t: &Mat<f64>,
        aw: Option<&Mat<f64>>,
        b: &Mat<f64>,
        yy: &[f64],
        ridge: f64,
    ) -> FitMetrics {
        let d_t = self.d_t;
        let n = self.n as f64;
        let dot = |u: faer::ColRef<'_, f64>, v: faer::ColRef<'_, f64>| -> f64 {
            u.iter().zip(v.iter()).map(|(a, b)| a * b).sum()
        };
        let (mut sse_total, mut sst_total, mut r2_sum, mut r2_dims) = (0.0, 0.0, 0.0, 0usize);
        for j in 0..d_t {
            let wb = dot(w_t.col(j), b.col(j));
            let sse = match aw {
                Some(aw) => yy[j] - 2.0 * wb + dot(w_t.col(j), aw.col(j)),
                None => yy[j] - wb - ridge * dot(w_t.col(j), w_t.col(j)),
            }
            .max(0.0);
            let sst = (self.syy[j] - self.sy[j] * self.sy[j] / n).max(0.0);
            sse_total += sse;
            sst_total += sst;
            if sst > 0.0 {
                r2_sum += 1.0 - sse / sst;
                r2_dims += 1;
            }
        }
        FitMetrics {
            rows: self.n,
            mse: sse_total / (n * d_t as f64),
            fvu: if sst_total > 0.0 {
                sse_total / sst_total
            } else {
                f64::NAN
            },
            r2: if r2_dims > 0 {
                r2_sum / r2_dims as f64
            } else {
                f64::NAN
            },
            ridge,
        }
    }

    /// The raw accumulators, for saving: (n, pilot_x, pilot_y, sx, sy, syy, sxx lower as full
    /// row-major, sxy row-major).
    #[allow(clippy::type_complexity)]
    pub fn to_parts(
        &self,
    ) -> (
        u64,
        Vec<f64>,
        Vec<f64>,
        Vec<f64>,
        Vec<f64>,
        Vec<f64>,
        Vec<f64>,
        Vec<f64>,
    ) {
        let (d_s, d_t) = (self.d_s, self.d_t);
        let sxx = (0..d_s)
            .flat_map(|i| (0..d_s).map(move |j| (i, j)))
            .map(|(i, j)| if i >= j { self.sxx[(i, j)] } else { 0.0 })
            .collect();
        let sxy = (0..d_s)
            .flat_map(|i| (0..d_t).map(move |j| (i, j)))
            .map(|(i, j)| self.sxy[(i, j)])
            .collect();
        (
            self.n,
            self.pilot_x.clone(),
            self.pilot_y.clone(),
            self.sx.clone(),
            self.sy.clone(),
            self.syy.clone(),
            sxx,
            sxy,
        )
    }

    /// Rebuild from [`to_parts`](Self::to_parts), checking every length.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        d_s: usize,
        d_t: usize,
        n: u64,
        pilot_x: Vec<f64>,
        pilot_y: Vec<f64>,
        sx: Vec<f64>,
        sy: Vec<f64>,
        syy: Vec<f64>,
        sxx: &[f64],
        sxy: &[f64],
    ) -> FitResult<AffineStats> {
        let mut s = AffineStats::new(d_s, d_t)?;
        let pilots_ok = (n == 0 && pilot_x.is_empty() && pilot_y.is_empty())
            || (pilot_x.len() == d_s && pilot_y.len() == d_t);
        if !pilots_ok
            || sx.len() != d_s
            || sy.len() != d_t
            || syy.len() != d_t
            || sxx.len() != d_s * d_s
            || sxy.len() != d_s * d_t
        {
            return Err(invalid(format!(
                "statistics arrays do not match widths {d_s} -> {d_t}"
            )));
        }
        s.n = n;
        s.pilot_x = pilot_x;
        s.pilot_y = pilot_y;
        s.sx = sx;
        s.sy = sy;
        s.syy = syy;
        s.sxx = Mat::from_fn(d_s, d_s, |i, j| if i >= j { sxx[i * d_s + j] } else { 0.0 });
        s.sxy = Mat::from_fn(d_s, d_t, |i, j| sxy[i * d_t + j]);
        Ok(s)
    }
}

fn non_finite(which: &'static str, row: usize) -> FitError {
    FitError::NonFinite {
        which,
        row: row as u64,
    }
}

/// [`shift_and_sum`] for rows read in place, with the sums accumulated in f32 by the registered
/// BLAS; `None` when there is none, or when finite values overflowed the f32 sums (the caller
/// then takes the exact f64 pass).
fn blas_column_sums(x: &[f32], m: usize, d: usize, work: &mut Workspace) -> Option<ChunkSums> {
    work.sums.resize(d, 0.0);
    if !gemm::column_sums(x, m, d, &mut work.ones, &mut work.sums) {
        return None;
    }
    if work.sums.iter().all(|v| v.is_finite()) {
        let sums = work.sums.iter().map(|&v| v as f64).collect();
        return Some(Ok((sums, Vec::new(), false)));
    }
    x.iter().position(|v| !v.is_finite()).map(Err)
}

fn add(a: &mut [f64], b: &[f64]) {
    a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
}

/// Per-column mean and (population) variance of row-major `x` `(m, d)`, in f64.
fn column_moments(x: &[f32], m: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut s = vec![0f64; d];
    let mut q = vec![0f64; d];
    for row in x.chunks_exact(d) {
        for k in 0..d {
            let v = row[k] as f64;
            s[k] += v;
            q[k] += v * v;
        }
    }
    let n = m as f64;
    let mean: Vec<f64> = s.iter().map(|a| a / n).collect();
    let var = q
        .iter()
        .zip(&mean)
        .map(|(b, u)| (b / n - u * u).max(0.0))
        .collect();
    (mean, var)
}

/// Source means within this many standard deviations of zero need no pilot shift. Measured on
/// 20,000 x 96 -> 72 rows with the same offset on every column, read in place: weight error
/// (relative, against a float64 fit) 1.8e-7 at 0.1σ, 1.1e-6 at 0.5σ, 1.4e-5 at 2σ, against
/// 1e-7 centred; the bias error grows faster still (5e-4 at 2σ). Hence only sources that are
/// centred already skip the shifted copy.
const SHIFT_SOURCE_BELOW: f64 = 0.1;
/// Target means within this many standard deviations of zero need no pilot shift: with centred
/// sources an offset of kσ costs XᵀY about a factor 1 + k in relative accuracy (measured on the
/// same rows, sources centred: weight error 1e-7 centred, 3e-7 at 10σ, bias error 8e-6 at 10σ
/// when the sources are 10σ off zero too). The targets' shift pass runs anyway (for their sums
/// and sums of squares), so the shifted copy costs one more write of the chunk.
const SHIFT_TARGET_BELOW: f64 = 1.0;

/// A chunk's column sums, sums of squares (when asked) and whether the chunk was copied
/// shifted; or the index of its first non-finite value.
type ChunkSums = Result<(Vec<f64>, Vec<f64>, bool), usize>;

/// Column sums and sums of squares of a block, or the index of its first non-finite value.
type BlockSums = Result<(Vec<f64>, Vec<f64>), usize>;

/// `out = x - pilot` (in f32, row-major `(rows, d)`) with its column sums (and sums of squares)
/// in f64, in one pass (parallel if asked); partial sums are added in block order, so the result
/// does not depend on the thread count. An all-zero pilot writes nothing: the sums are of `x`
/// itself, and the returned flag (whether `out` holds the shifted rows) is false.
/// `Err(i)`: element `i` of `x` is NaN or infinite.
fn shift_and_sum(
    x: &[f32],
    d: usize,
    pilot: &[f64],
    squares: bool,
    parallel: bool,
    out: &mut Vec<f32>,
) -> ChunkSums {
    const BLOCK: usize = 256; // rows
    let p: Vec<f32> = pilot.iter().map(|&v| v as f32).collect();
    let shift = p.iter().any(|&v| v != 0.0);
    // One block of rows: sums of (src - p), written to dst when there is one. The block's sums
    // run in f32 (16 lanes) and are then added in f64: over 256 rows an f32 sum keeps ~1e-6 of
    // relative accuracy, which the sums (the pilot's correction) and the sums of squares (only
    // the training metrics' SST) can spare. A NaN or inf leaves a non-finite sum, so the check
    // runs once per block; finite values whose f32 sums overflow take the block again in f64
    // (f64 sums of finite f32 values cannot overflow).
    let block = |b: usize, src: &[f32], mut dst: Option<&mut [f32]>| -> BlockSums {
        let mut sum = vec![0f32; d];
        let mut sq = if squares { vec![0f32; d] } else { Vec::new() };
        for (r, srow) in src.chunks_exact(d).enumerate() {
            let drow = dst
                .as_mut()
                .map_or(&mut [][..], |o| &mut o[r * d..(r + 1) * d]);
            shift_row(srow, &p, drow, &mut sum, &mut sq);
        }
        if sum.iter().chain(&sq).all(|v| v.is_finite()) {
            let wide = |v: Vec<f32>| v.into_iter().map(f64::from).collect();
            return Ok((wide(sum), wide(sq)));
        }
        if let Some(at) = src.iter().position(|v| !v.is_finite()) {
            return Err(b * BLOCK * d + at);
        }
        let mut sum = vec![0f64; d];
        let mut sq = if squares { vec![0f64; d] } else { Vec::new() };
        for srow in src.chunks_exact(d) {
            for k in 0..d {
                let v = (srow[k] - p[k]) as f64;
                sum[k] += v;
                if squares {
                    sq[k] += v * v;
                }
            }
        }
        Ok((sum, sq))
    };
    let partials: Vec<BlockSums> = match (shift, parallel) {
        (true, true) => {
            out.resize(x.len(), 0.0); // every element is overwritten
            out.par_chunks_mut(BLOCK * d)
                .zip(x.par_chunks(BLOCK * d))
                .enumerate()
                .map(|(b, (o, s))| block(b, s, Some(o)))
                .collect()
        }
        (true, false) => {
            out.resize(x.len(), 0.0);
            out.chunks_mut(BLOCK * d)
                .zip(x.chunks(BLOCK * d))
                .enumerate()
                .map(|(b, (o, s))| block(b, s, Some(o)))
                .collect()
        }
        (false, true) => x
            .par_chunks(BLOCK * d)
            .enumerate()
            .map(|(b, s)| block(b, s, None))
            .collect(),
        (false, false) => x
            .chunks(BLOCK * d)
            .enumerate()
            .map(|(b, s)| block(b, s, None))
            .collect(),
    };
    let mut sum = vec![0f64; d];
    let mut sq = vec![0f64; if squares { d } else { 0 }];
    for part in partials {
        let (s, q) = part?; // blocks in order: the first error is the first bad element
        add(&mut sum, &s);
        add(&mut sq, &q);
    }
    Ok((sum, sq, shift))
}

crate::simd::dispatch! {
/// `sum += src - p`, and when given, `sq += (src - p)²` and `dst = src - p` (all length `d`,
/// or empty for "not wanted"), in f32.
fn shift_row(src: &[f32], p: &[f32], dst: &mut [f32], sum: &mut [f32], sq: &mut [f32]) {
    // Equal lengths up front, so the loops carry no bounds checks and vectorise.
    let n = sum.len();
    let (src, p) = (&src[..n], &p[..n]);
    match (dst.is_empty(), sq.is_empty()) {
        (true, true) => {
            for k in 0..n {
                sum[k] += src[k] - p[k];
            }
        }
        (true, false) => {
            let sq = &mut sq[..n];
            for k in 0..n {
                let v = src[k] - p[k];
                sum[k] += v;
                sq[k] += v * v;
            }
        }
        (false, true) => {
            let dst = &mut dst[..n];
            for k in 0..n {
                let v = src[k] - p[k];
                dst[k] = v;
                sum[k] += v;
            }
        }
        (false, false) => {
            let (dst, sq) = (&mut dst[..n], &mut sq[..n]);
            for k in 0..n {
                let v = src[k] - p[k];
                dst[k] = v;
                sum[k] += v;
                sq[k] += v * v;
            }
        }
    }
}
}

/// Relative size below which a Cholesky pivot counts as zero (f32 data carry ~7 digits).
const PIVOT_FLOOR: f64 = 1e-7;

/// Solve (A + λI) X = B by Cholesky; if A + λI is numerically singular, retry with growing
/// tiny ridges (starting at 1e-7 of the mean diagonal).
fn cholesky_solve(a: &Mat<f64>, b: &Mat<f64>, ridge: f64) -> FitResult<(Mat<f64>, f64)> {
    let d = a.nrows();
    let scale = ((0..d).map(|i| a[(i, i)].abs()).sum::<f64>() / d as f64).max(f64::MIN_POSITIVE);
    let mut lambda = ridge;
    for attempt in 0..8 {
        let reg = Mat::from_fn(d, d, |i, j| a[(i, j)] + if i == j { lambda } else { 0.0 });
        if let Ok(llt) = reg.llt(Side::Lower) {
            // The data were f32 (~7 digits): a pivot that lost more than that against its own
            // diagonal means a dimension is a combination of others, up to rounding.
            let l = llt.L();
            let full_rank = (0..d).all(|i| l[(i, i)] * l[(i, i)] >= PIVOT_FLOOR * reg[(i, i)]);
            let mut x = b.clone();
            llt.solve_in_place(x.as_mut());
            if full_rank && x.col_iter().all(|c| c.iter().all(|v| v.is_finite())) {
                return Ok((x, lambda));
            }
        }
        lambda = ridge + scale * PIVOT_FLOOR * 10f64.powi(attempt);
    }
    Err(FitError::UnderDetermined(format!(
        "the normal equations are singular even with ridge {lambda:.3e}: the source rows are degenerate \
         (constant or linearly dependent dimensions); pass a larger ridge"
    )))
}

/// W (as Wᵀ, `(d_s, d_t)`) = V Uᵀ for Bᵀ = U S Vᵀ, i.e. the orthogonal map maximising tr(W B).
fn procrustes(b: &Mat<f64>) -> FitResult<Mat<f64>> {
    let bt = b.transpose().to_owned(); // (d_t, d_s)
    let svd = bt
        .thin_svd()
        .map_err(|e| invalid(format!("SVD for Procrustes did not converge: {e:?}")))?;
    let (u, v) = (svd.U(), svd.V()); // (d_t, k), (d_s, k)
    let mut w_t = Mat::<f64>::zeros(b.nrows(), b.ncols());
    matmul(
        w_t.as_mut(),
        Accum::Replace,
        v,
        u.transpose(),
        1.0,
        Par::rayon(0),
    );
    Ok(w_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn data(
        n: usize,
        d_s: usize,
        d_t: usize,
        noise: f32,
        seed: u64,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut g = || rng.random::<f32>() * 2.0 - 1.0;
        let w: Vec<f32> = (0..d_t * d_s).map(|_| g()).collect();
        let b: Vec<f32> = (0..d_t).map(|_| g() * 3.0).collect();
        let x: Vec<f32> = (0..n * d_s)
            .map(|i| g() + 50.0 * ((i % d_s) as f32 / d_s as f32))
            .collect();
        let mut y = vec![0f32; n * d_t];
        for r in 0..n {
            for j in 0..d_t {
                let mut acc = b[j] + noise * g();
                for i in 0..d_s {
                    acc += w[j * d_s + i] * x[r * d_s + i];
                }
                y[r * d_t + j] = acc;
            }
        }
        (x, y, w, b)
    }

    #[test]
    fn recovers_an_exact_affine_map() {
        let (n, d_s, d_t) = (5000, 12, 7);
        let (x, y, w, b) = data(n, d_s, d_t, 0.0, 1);
        let mut st = AffineStats::new(d_s, d_t).unwrap();
        st.update(&x, &y, n).unwrap();
        let fit = st.solve(0.0, true, Method::Lstsq).unwrap();
        for (got, want) in fit.weight.iter().zip(&w) {
            assert!((got - want).abs() < 2e-3, "{got} vs {want}");
        }
        for (got, want) in fit.bias.iter().zip(&b) {
            assert!((got - want).abs() < 5e-2, "{got} vs {want}");
        }
        assert!(fit.metrics.fvu < 1e-6, "{:?}", fit.metrics);
    }

    #[test]
    fn recentred_parts_add_element_by_element() {
        let (n, d_s, d_t) = (2000, 6, 4);
        let (x, y, ..) = data(n, d_s, d_t, 0.5, 4);
        let mut whole = AffineStats::new(d_s, d_t).unwrap();
        whole.update(&x, &y, n).unwrap();
        let cuts = [0, 700, 700, 2000]; // the middle part is empty
        let (px, py) = (vec![3.0; d_s], vec![-1.0; d_t]);
        let mut sum = AffineStats::new(d_s, d_t)
            .unwrap()
            .recentred(&px, &py)
            .unwrap();
        for w in cuts.windows(2) {
            let mut part = AffineStats::new(d_s, d_t).unwrap();
            part.update(
                &x[w[0] * d_s..w[1] * d_s],
                &y[w[0] * d_t..w[1] * d_t],
                w[1] - w[0],
            )
            .unwrap();
            let r = part.recentred(&px, &py).unwrap();
            let (a, b) = (sum.to_parts(), r.to_parts());
            let add = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(u, v)| u + v).collect();
            sum = AffineStats::from_parts(
                d_s,
                d_t,
                a.0 + b.0,
                px.clone(),
                py.clone(),
                add(&a.3, &b.3),
                add(&a.4, &b.4),
                add(&a.5, &b.5),
                &add(&a.6, &b.6),
                &add(&a.7, &b.7),
            )
            .unwrap();
        }
        let (f1, f2) = (
            whole.solve(0.0, true, Method::Lstsq).unwrap(),
            sum.solve(0.0, true, Method::Lstsq).unwrap(),
        );
        for (p, q) in f1.weight.iter().zip(&f2.weight) {
            assert!((p - q).abs() < 1e-4, "{p} vs {q}");
        }
        assert!((f1.metrics.fvu - f2.metrics.fvu).abs() < 1e-6 * f1.metrics.fvu.max(1e-12));
        assert!(whole.recentred(&px[1..], &py).is_err());
        assert!(whole.recentred(&px, &[f64::NAN; 4]).is_err());
    }

    #[test]
    fn merging_parts_equals_one_pass() {
        let (n, d_s, d_t) = (3000, 9, 5);
        let (x, y, ..) = data(n, d_s, d_t, 0.5, 2);
        let mut whole = AffineStats::new(d_s, d_t).unwrap();
        whole.update(&x, &y, n).unwrap();
        let mut a = AffineStats::new(d_s, d_t).unwrap();
        let mut b = AffineStats::new(d_s, d_t).unwrap();
        let cut = 1234;
        a.update(&x[..cut * d_s], &y[..cut * d_t], cut).unwrap();
        b.update(&x[cut * d_s..], &y[cut * d_t..], n - cut).unwrap();
        a.merge(&b).unwrap();
        let (f1, f2) = (
            whole.solve(0.1, true, Method::Lstsq).unwrap(),
            a.solve(0.1, true, Method::Lstsq).unwrap(),
        );
        for (p, q) in f1.weight.iter().zip(&f2.weight) {
            assert!((p - q).abs() < 1e-4);
        }
        assert!(
            (f1.metrics.fvu - f2.metrics.fvu).abs() < 1e-5 * f1.metrics.fvu,
            "{:?} {:?}",
            f1.metrics,
            f2.metrics
        );
        let parts = a.to_parts();
        let back = AffineStats::from_parts(
            d_s, d_t, parts.0, parts.1, parts.2, parts.3, parts.4, parts.5, &parts.6, &parts.7,
        )
        .unwrap();
        assert_eq!(
            back.solve(0.1, true, Method::Lstsq).unwrap().weight,
            f2.weight
        );
    }

    #[test]
    fn centring_is_skipped_only_when_means_are_small() {
        let (n, d_s, d_t) = (3000, 6, 3);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let x0: Vec<f32> = (0..n * d_s)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        let x1: Vec<f32> = x0.iter().map(|v| v + 300.0).collect();
        let w = |j: usize, i: usize| (i + 2 * j) as f32 * 0.25 - 1.0;
        let y: Vec<f32> = (0..n * d_t)
            .map(|k| {
                let (r, j) = (k / d_t, k % d_t);
                0.5 + (0..d_s).map(|i| w(j, i) * x0[r * d_s + i]).sum::<f32>()
            })
            .collect();
        let mut near = AffineStats::new(d_s, d_t).unwrap();
        near.update(&x0, &y, n).unwrap();
        let mut far = AffineStats::new(d_s, d_t).unwrap();
        far.update(&x1, &y, n).unwrap();
        // Targets get a looser threshold (1σ): 0.5σ is read in place, 2000 is shifted.
        let sd_y: Vec<f64> = column_moments(&y, n, d_t)
            .1
            .iter()
            .map(|v| v.sqrt())
            .collect();
        let y_mid: Vec<f32> = (0..n * d_t)
            .map(|k| y[k] - 0.5 + 0.5 * sd_y[k % d_t] as f32)
            .collect();
        let y_far: Vec<f32> = y.iter().map(|v| v + 2000.0).collect();
        let (mut mid, mut high) = (
            AffineStats::new(d_s, d_t).unwrap(),
            AffineStats::new(d_s, d_t).unwrap(),
        );
        mid.update(&x0, &y_mid, n).unwrap();
        high.update(&x0, &y_far, n).unwrap();
        // Sources two standard deviations off zero are shifted too: read in place, their f32
        // products lost two digits of the bias (5e-4 relative on 20,000 x 96 -> 72 rows).
        let x2: Vec<f32> = x0.iter().map(|v| v + 1.2).collect();
        let mut two_sd = AffineStats::new(d_s, d_t).unwrap();
        two_sd.update(&x2, &y, n).unwrap();
        assert!(two_sd.pilot_x.iter().all(|&p| (p - 1.2).abs() < 0.1));
        assert!(near.pilot_x.iter().chain(&near.pilot_y).all(|&p| p == 0.0));
        assert!(far.pilot_x.iter().all(|&p| (p - 300.0).abs() < 1.0));
        assert!(far.pilot_y.iter().chain(&mid.pilot_y).all(|&p| p == 0.0));
        assert!(high.pilot_y.iter().all(|&p| (p - 2000.0).abs() < 1.0));
        let (a, b, c) = (
            near.solve(0.0, true, Method::Lstsq).unwrap(),
            far.solve(0.0, true, Method::Lstsq).unwrap(),
            high.solve(0.0, true, Method::Lstsq).unwrap(),
        );
        let m = mid.solve(0.0, true, Method::Lstsq).unwrap();
        assert!(m.metrics.fvu < 1e-6, "{:?}", m.metrics);
        for j in 0..d_t {
            for i in 0..d_s {
                assert!((a.weight[j * d_s + i] - w(j, i)).abs() < 1e-4);
                assert!((b.weight[j * d_s + i] - w(j, i)).abs() < 1e-4);
                // y_far is quantised to ~1e-4 in f32: the fit cannot be much closer.
                assert!((c.weight[j * d_s + i] - w(j, i)).abs() < 1e-3);
                assert!((m.weight[j * d_s + i] - w(j, i)).abs() < 1e-4);
            }
            assert!((a.bias[j] - 0.5).abs() < 1e-4, "{:?}", a.bias);
            let shifted: f32 = 0.5 - 300.0 * (0..d_s).map(|i| w(j, i)).sum::<f32>();
            assert!((b.bias[j] - shifted).abs() < 1e-2, "{:?} {shifted}", b.bias);
            assert!((c.bias[j] - 2000.5).abs() < 1e-2, "{:?}", c.bias);
        }
        assert!(c.metrics.fvu < 1e-6, "{:?}", c.metrics);
        // Statistics with different pilots still merge exactly.
        let mut merged = near.clone();
        merged.merge(&far).unwrap();
        assert_eq!(merged.n, 2 * n as u64);
    }

    #[test]
    fn procrustes_recovers_a_rotation() {
        // y = R x with R a rotation of the plane embedded in 3-D (semi-orthogonal 3x2).
        let n = 500;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (c, s) = (0.6f32, 0.8f32);
        let r = [[c, -s], [s, c], [0.0, 0.0]];
        let x: Vec<f32> = (0..n * 2).map(|_| rng.random::<f32>() - 0.5).collect();
        let y: Vec<f32> = (0..n)
            .flat_map(|k| (0..3).map(move |j| (j, k)))
            .map(|(j, k)| r[j][0] * x[2 * k] + r[j][1] * x[2 * k + 1])
            .collect();
        let mut st = AffineStats::new(2, 3).unwrap();
        st.update(&x, &y, n).unwrap();
        let fit = st.solve(0.0, false, Method::Procrustes).unwrap();
        for j in 0..3 {
            for i in 0..2 {
                assert!(
                    (fit.weight[j * 2 + i] - r[j][i]).abs() < 1e-5,
                    "{:?}",
                    fit.weight
                );
            }
        }
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let mut st = AffineStats::new(4, 2).unwrap();
        assert!(matches!(
            st.solve(0.0, true, Method::Lstsq),
            Err(FitError::Invalid(_))
        ));
        let mut x = vec![1f32; 3 * 4];
        let y = vec![1f32; 3 * 2];
        x[9] = f32::NAN;
        assert!(matches!(
            st.update(&x, &y, 3),
            Err(FitError::NonFinite {
                which: "source",
                row: 2
            })
        ));
        assert_eq!(st.n, 0);
        x[9] = 0.5;
        st.update(&x, &y, 3).unwrap();
        assert!(matches!(
            st.solve(0.0, true, Method::Lstsq),
            Err(FitError::UnderDetermined(_))
        ));
        assert!(st.solve(1e-3, true, Method::Lstsq).is_ok());
        assert!(matches!(st.update(&x, &y, 2), Err(FitError::Invalid(_))));
        assert!(matches!(
            st.solve(-1.0, true, Method::Lstsq),
            Err(FitError::Invalid(_))
        ));
    }

    #[test]
    fn a_rejected_multi_chunk_update_adds_nothing() {
        let (n, d_s, d_t) = (CHUNK_ROWS * 2 + 10, 3, 2);
        let (mut x, y, ..) = data(n, d_s, d_t, 0.1, 9);
        let mut st = AffineStats::new(d_s, d_t).unwrap();
        st.update(&x[..30 * d_s], &y[..30 * d_t], 30).unwrap();
        let before = st.solve(0.0, true, Method::Lstsq).unwrap();
        let bad_row = CHUNK_ROWS + 5; // in the second chunk: the first was already added
        x[bad_row * d_s + 1] = f32::INFINITY;
        match st.update(&x, &y, n) {
            Err(FitError::NonFinite {
                which: "source",
                row,
            }) => assert_eq!(row, bad_row as u64),
            other => panic!("{other:?}"),
        }
        assert_eq!(st.n, 30);
        assert_eq!(
            st.solve(0.0, true, Method::Lstsq).unwrap().weight,
            before.weight
        );
    }

    #[test]
    fn singular_but_overdetermined_systems_get_a_reported_tiny_ridge() {
        // Enough rows, but the last source dimension is a copy of the first.
        let n = 200;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
        let mut x = vec![0f32; n * 3];
        for r in 0..n {
            x[r * 3] = rng.random();
            x[r * 3 + 1] = rng.random();
            x[r * 3 + 2] = x[r * 3];
        }
        let y: Vec<f32> = (0..n).map(|r| x[r * 3] + x[r * 3 + 1]).collect();
        let mut st = AffineStats::new(3, 1).unwrap();
        st.update(&x, &y, n).unwrap();
        let fit = st.solve(0.0, true, Method::Lstsq).unwrap();
        assert!(fit.metrics.ridge > 0.0);
        assert!(fit.metrics.fvu < 1e-6, "{:?}", fit.metrics);
    }
}
