//! Autoencoder maps trained on the CPU: `Linear(d_s → h) → ReLU → Linear(h → d_t)`, MSE over
//! elements, AdamW (the exact update of `torch.optim.AdamW`), batches from the store's seeded
//! sampler (each row once per epoch), validation after each epoch, the learning rate halved on
//! a validation plateau (`ReduceLROnPlateau` semantics), optional early stop and global-norm
//! gradient clipping. Deterministic for a fixed seed and thread count.
//!
//! Matrices are row-major: `w1` `(h, d_s)`, `w2` `(d_t, h)` (the PyTorch Linear layout).

use std::borrow::Cow;

use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::gemm::gemm_rm;
use super::{FitError, FitResult};
use crate::store::reader::{ActivationStore, RowIds};
use crate::store::sampler::{EpochPlan, Shuffle};

/// `$par.for_each($body)` when the products run on faer (rayon's pool, idle between them), else
/// `$serial.for_each($body)`: an external BLAS keeps its own threads spinning between calls, and
/// rayon's would only compete with them for the cores. Both iterators yield the same items.
macro_rules! for_each {
    ($par:expr, $serial:expr, $body:expr) => {
        if super::gemm::dense_backend() == "faer" {
            $par.for_each($body)
        } else {
            $serial.for_each($body)
        }
    };
}

/// Rows per validation forward pass.
const EVAL_ROWS: usize = 8192;

/// The four tensors of an autoencoder (also used for gradients and optimizer moments).
#[derive(Clone, Debug, PartialEq)]
pub struct AeParams {
    pub d_s: usize,
    pub h: usize,
    pub d_t: usize,
    pub w1: Vec<f32>,
    pub b1: Vec<f32>,
    pub w2: Vec<f32>,
    pub b2: Vec<f32>,
}

impl AeParams {
    pub fn zeros(d_s: usize, h: usize, d_t: usize) -> AeParams {
        AeParams {
            d_s,
            h,
            d_t,
            w1: vec![0.0; h * d_s],
            b1: vec![0.0; h],
            w2: vec![0.0; d_t * h],
            b2: vec![0.0; d_t],
        }
    }

    /// PyTorch's default Linear init: weights and biases ~ U(−1/√fan_in, 1/√fan_in).
    pub fn init(d_s: usize, h: usize, d_t: usize, seed: u64) -> AeParams {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut p = AeParams::zeros(d_s, h, d_t);
        let (a, b) = (1.0 / (d_s as f32).sqrt(), 1.0 / (h as f32).sqrt());
        p.w1.iter_mut()
            .chain(p.b1.iter_mut())
            .for_each(|v| *v = rng.random_range(-a..a));
        p.w2.iter_mut()
            .chain(p.b2.iter_mut())
            .for_each(|v| *v = rng.random_range(-b..b));
        p
    }

    /// Check shapes (for parameters that come from outside).
    pub fn check(&self) -> FitResult<()> {
        let ok = self.w1.len() == self.h * self.d_s
            && self.b1.len() == self.h
            && self.w2.len() == self.d_t * self.h
            && self.b2.len() == self.d_t
            && self.d_s > 0
            && self.h > 0
            && self.d_t > 0;
        if ok {
            Ok(())
        } else {
            Err(FitError::Invalid(format!(
                "autoencoder tensors do not match {} -> {} -> {}",
                self.d_s, self.h, self.d_t
            )))
        }
    }

    fn tensors_mut(&mut self) -> [&mut Vec<f32>; 4] {
        [&mut self.w1, &mut self.b1, &mut self.w2, &mut self.b2]
    }

    fn tensors(&self) -> [&Vec<f32>; 4] {
        [&self.w1, &self.b1, &self.w2, &self.b2]
    }

    /// `hid = relu(x W1ᵀ + b1)` (`(rows, h)`), `out = hid W2ᵀ + b2` (`(rows, d_t)`).
    pub fn forward(&self, x: &[f32], rows: usize, hid: &mut Vec<f32>, out: &mut Vec<f32>) {
        hid.resize(rows * self.h, 0.0);
        out.resize(rows * self.d_t, 0.0);
        gemm_rm(x, false, &self.w1, true, hid, rows, self.h, self.d_s, false);
        bias_relu(hid, &self.b1, true);
        gemm_rm(
            hid, false, &self.w2, true, out, rows, self.d_t, self.h, false,
        );
        bias_relu(out, &self.b2, false);
    }

    /// Mean squared error over the `rows * d_t` elements and its gradient (into `grad`).
    pub fn loss_and_grad(
        &self,
        x: &[f32],
        y: &[f32],
        rows: usize,
        grad: &mut AeParams,
        work: &mut Work,
    ) -> f64 {
        let (h, d_s, d_t) = (self.h, self.d_s, self.d_t);
        self.forward(x, rows, &mut work.hid, &mut work.out);
        let scale = 2.0 / (rows * d_t) as f32;
        let mut sse = 0f64;
        for (o, &t) in work.out.iter_mut().zip(y) {
            let diff = *o - t;
            sse += (diff as f64) * (diff as f64);
            *o = diff * scale; // dL/d(out)
        }
        let g = &work.out;
        gemm_rm(g, true, &work.hid, false, &mut grad.w2, d_t, h, rows, false);
        column_sums(g, d_t, &mut grad.b2);
        work.dhid.resize(rows * h, 0.0);
        gemm_rm(
            g,
            false,
            &self.w2,
            false,
            &mut work.dhid,
            rows,
            h,
            d_t,
            false,
        );
        for_each!(
            work.dhid.par_chunks_mut(h).zip(work.hid.par_chunks(h)),
            work.dhid.chunks_mut(h).zip(work.hid.chunks(h)),
            |(dh, hv)| {
                dh.iter_mut().zip(hv).for_each(|(d, &v)| {
                    if v <= 0.0 {
                        *d = 0.0;
                    }
                })
            }
        );
        gemm_rm(
            &work.dhid,
            true,
            x,
            false,
            &mut grad.w1,
            h,
            d_s,
            rows,
            false,
        );
        column_sums(&work.dhid, h, &mut grad.b1);
        sse / (rows * d_t) as f64
    }
}

/// Per-dimension standardisation of inputs and targets: the trainer sees `(x − μx)/σx` and fits
/// `(y − μy)/σy`; [`Standardize::fold`] turns the result into a plain autoencoder on raw units.
#[derive(Clone, Debug)]
pub struct Standardize {
    pub mean_x: Vec<f32>,
    pub std_x: Vec<f32>,
    pub mean_y: Vec<f32>,
    pub std_y: Vec<f32>,
}

impl Standardize {
    pub fn check(&self, p: &AeParams) -> FitResult<()> {
        let ok = self.mean_x.len() == p.d_s
            && self.std_x.len() == p.d_s
            && self.mean_y.len() == p.d_t
            && self.std_y.len() == p.d_t
            && self
                .std_x
                .iter()
                .chain(&self.std_y)
                .all(|s| s.is_finite() && *s > 0.0)
            && self
                .mean_x
                .iter()
                .chain(&self.mean_y)
                .all(|m| m.is_finite());
        if ok {
            Ok(())
        } else {
            Err(FitError::Invalid("standardisation needs finite means and positive standard deviations of the right widths".into()))
        }
    }

    fn apply(v: &mut [f32], mean: &[f32], std: &[f32]) {
        let w = mean.len();
        for_each!(v.par_chunks_mut(w), v.chunks_mut(w), |row| {
            row.iter_mut()
                .zip(mean.iter().zip(std))
                .for_each(|(x, (&m, &s))| *x = (*x - m) / s)
        });
    }

    /// Standardised-space parameters -> raw-unit parameters (W1' = W1 diag(1/σx),
    /// b1' = b1 − W1' μx, W2' = diag(σy) W2, b2' = σy ⊙ b2 + μy).
    pub fn fold(&self, p: &AeParams) -> AeParams {
        let mut q = p.clone();
        for r in 0..p.h {
            let row = &mut q.w1[r * p.d_s..(r + 1) * p.d_s];
            row.iter_mut().zip(&self.std_x).for_each(|(w, &s)| *w /= s);
            q.b1[r] -= row
                .iter()
                .zip(&self.mean_x)
                .map(|(w, m)| w * m)
                .sum::<f32>();
        }
        for o in 0..p.d_t {
            q.w2[o * p.h..(o + 1) * p.h]
                .iter_mut()
                .for_each(|w| *w *= self.std_y[o]);
            q.b2[o] = self.std_y[o] * p.b2[o] + self.mean_y[o];
        }
        q
    }

    /// The inverse of [`fold`](Self::fold): raw-unit parameters -> standardised space.
    pub fn unfold(&self, q: &AeParams) -> AeParams {
        let mut p = q.clone();
        for r in 0..q.h {
            let row = &q.w1[r * q.d_s..(r + 1) * q.d_s];
            p.b1[r] = q.b1[r]
                + row
                    .iter()
                    .zip(&self.mean_x)
                    .map(|(w, m)| w * m)
                    .sum::<f32>();
            p.w1[r * q.d_s..(r + 1) * q.d_s]
                .iter_mut()
                .zip(row.iter().zip(&self.std_x))
                .for_each(|(w, (&v, &s))| *w = v * s);
        }
        for o in 0..q.d_t {
            p.w2[o * q.h..(o + 1) * q.h]
                .iter_mut()
                .for_each(|w| *w /= self.std_y[o]);
            p.b2[o] = (q.b2[o] - self.mean_y[o]) / self.std_y[o];
        }
        p
    }
}

/// Scratch buffers of a step (reused).
#[derive(Default)]
pub struct Work {
    hid: Vec<f32>,
    out: Vec<f32>,
    dhid: Vec<f32>,
}

/// `m += b` per row, then ReLU if asked (one fused pass).
fn bias_relu(m: &mut [f32], bias: &[f32], relu: bool) {
    let w = bias.len();
    for_each!(m.par_chunks_mut(w), m.chunks_mut(w), |row| {
        row.iter_mut().zip(bias).for_each(|(v, &b)| {
            let s = *v + b;
            *v = if relu { s.max(0.0) } else { s };
        })
    });
}

fn column_sums(m: &[f32], width: usize, out: &mut [f32]) {
    out.iter_mut().for_each(|v| *v = 0.0);
    for row in m.chunks_exact(width) {
        out.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
    }
}

/// AdamW state, updating exactly like `torch.optim.AdamW` (decoupled weight decay first).
pub struct AdamW {
    m: AeParams,
    v: AeParams,
    t: i32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

impl AdamW {
    pub fn new(p: &AeParams) -> AdamW {
        let z = AeParams::zeros(p.d_s, p.h, p.d_t);
        AdamW {
            m: z.clone(),
            v: z,
            t: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    pub fn step(&mut self, params: &mut AeParams, grad: &AeParams, lr: f32, weight_decay: f32) {
        self.t += 1;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        let bc1 = 1.0 - b1.powi(self.t);
        let bc2_sqrt = (1.0 - b2.powi(self.t)).sqrt();
        let step = lr / bc1;
        let decay = 1.0 - lr * weight_decay;
        let ms = self.m.tensors_mut();
        let vs = self.v.tensors_mut();
        for (((p, g), m), v) in params
            .tensors_mut()
            .into_iter()
            .zip(grad.tensors())
            .zip(ms)
            .zip(vs)
        {
            for_each!(
                p.par_iter_mut()
                    .zip(g.par_iter())
                    .zip(m.par_iter_mut())
                    .zip(v.par_iter_mut()),
                p.iter_mut()
                    .zip(g.iter())
                    .zip(m.iter_mut())
                    .zip(v.iter_mut()),
                |(((p, &g), m), v)| {
                    *p *= decay;
                    *m += (1.0 - b1) * (g - *m);
                    *v = b2 * *v + (1.0 - b2) * g * g;
                    *p -= step * *m / (v.sqrt() / bc2_sqrt + eps);
                }
            );
        }
    }
}

/// Scale gradients so their global L2 norm is at most `max_norm` (torch's `clip_grad_norm_`).
pub fn clip_grad_norm(grad: &mut AeParams, max_norm: f32) -> f32 {
    let total = grad
        .tensors()
        .iter()
        .map(|t| t.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>())
        .sum::<f64>()
        .sqrt() as f32;
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        grad.tensors_mut()
            .into_iter()
            .for_each(|t| t.iter_mut().for_each(|g| *g *= coef));
    }
    total
}

/// Relative improvement of the monitored score that counts as progress
/// (`ReduceLROnPlateau`'s default `threshold`, mode "rel").
pub const IMPROVEMENT: f64 = 1e-4;

/// The learning-rate schedule and early stop of both trainers (this one, and the torch loop
/// of the Python package, which calls it through the binding): `ReduceLROnPlateau(mode="min",
/// threshold=1e-4 relative, patience, factor, eps=1e-8)`, plus an optional stop after `early_stop`
/// epochs without improvement.
#[derive(Clone, Debug, PartialEq)]
pub struct Plateau {
    lr: f64,
    factor: f64,
    patience: usize,
    early_stop: Option<usize>,
    best: f64,
    bad_epochs: usize,
    since_best: usize,
}

impl Plateau {
    pub fn new(
        lr: f64,
        factor: f64,
        patience: usize,
        early_stop: Option<usize>,
    ) -> FitResult<Plateau> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(FitError::Invalid(format!(
                "lr must be a positive number, got {lr}"
            )));
        }
        if !(factor > 0.0 && factor < 1.0) {
            return Err(FitError::Invalid(format!(
                "lr_factor must be in (0, 1) (the learning rate is multiplied by it on a plateau), got {factor}"
            )));
        }
        if early_stop == Some(0) {
            return Err(FitError::Invalid(
                "early_stop must be at least 1 epoch (or None: off)".into(),
            ));
        }
        Ok(Plateau {
            lr,
            factor,
            patience,
            early_stop,
            best: f64::INFINITY,
            bad_epochs: 0,
            since_best: 0,
        })
    }

    /// The learning rate for the next epoch.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// The best score so far (infinite before the first epoch).
    pub fn best(&self) -> f64 {
        self.best
    }

    /// Record an epoch's score (validation MSE, or training MSE without validation rows);
    /// returns whether training should stop.
    pub fn step(&mut self, score: f64) -> bool {
        if score < self.best * (1.0 - IMPROVEMENT) {
            self.best = score;
            self.bad_epochs = 0;
            self.since_best = 0;
            return false;
        }
        self.bad_epochs += 1;
        self.since_best += 1;
        if self.bad_epochs > self.patience {
            // As torch: a reduction smaller than `eps` = 1e-8 is not applied.
            let reduced = self.lr * self.factor;
            if self.lr - reduced > 1e-8 {
                self.lr = reduced;
            }
            self.bad_epochs = 0;
        }
        self.early_stop.is_some_and(|k| self.since_best >= k)
    }
}

/// Training settings (see the module docs).
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub weight_decay: f32,
    pub seed: u64,
    pub plateau_patience: usize,
    pub lr_factor: f32,
    pub early_stop: Option<usize>,
    pub grad_clip: Option<f32>,
}

/// Validation scores: MSE per element, FVU, mean per-row cosine similarity.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    pub mse: f64,
    pub fvu: f64,
    pub cosine: f64,
}

/// One epoch of training.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_mse: f64,
    pub lr: f32,
    pub val: Option<Scores>,
}

/// Score `params` on `ids` of two sites (streamed in chunks).
pub fn evaluate(
    params: &AeParams,
    store: &ActivationStore,
    source: usize,
    target: usize,
    ids: &[u64],
) -> Scores {
    let (d_t, n) = (params.d_t, ids.len());
    let (mut sse, mut cos) = (vec![0f64; d_t], 0f64);
    let (mut sy, mut syy, mut pilot) = (vec![0f64; d_t], vec![0f64; d_t], Vec::<f64>::new());
    let (mut hid, mut out) = (Vec::new(), Vec::new());
    for chunk in ids.chunks(EVAL_ROWS) {
        let sel = RowIds::List(Cow::Borrowed(chunk));
        let x = store.gather_site::<f32>(source, &sel);
        let y = store.gather_site::<f32>(target, &sel);
        params.forward(&x, chunk.len(), &mut hid, &mut out);
        if pilot.is_empty() {
            pilot = vec![0f64; d_t];
            for row in y.chunks_exact(d_t) {
                pilot.iter_mut().zip(row).for_each(|(p, &v)| *p += v as f64);
            }
            pilot.iter_mut().for_each(|p| *p /= chunk.len() as f64);
        }
        for (yr, or) in y.chunks_exact(d_t).zip(out.chunks_exact(d_t)) {
            let (mut dot, mut ny, mut no) = (0f64, 0f64, 0f64);
            for j in 0..d_t {
                let (t, o) = (yr[j] as f64, or[j] as f64);
                sse[j] += (o - t) * (o - t);
                let c = t - pilot[j];
                sy[j] += c;
                syy[j] += c * c;
                dot += o * t;
                ny += t * t;
                no += o * o;
            }
            cos += dot / (ny.sqrt() * no.sqrt()).max(1e-30);
        }
    }
    let nf = n.max(1) as f64;
    let sst: f64 = sy
        .iter()
        .zip(&syy)
        .map(|(s, q)| (q - s * s / nf).max(0.0))
        .sum();
    let total: f64 = sse.iter().sum();
    Scores {
        mse: total / (nf * d_t as f64),
        fvu: if sst > 0.0 { total / sst } else { f64::NAN },
        cosine: cos / nf,
    }
}

/// Train `params` in place on `rows` of two sites; `on_batch(done, total)` after every batch
/// stops training by returning false. Returns one record per epoch run. With `standardize`,
/// `params` come in standardised space (use [`Standardize::unfold`] on raw-unit weights) and
/// leave folded into raw units.
#[allow(clippy::too_many_arguments)]
pub fn train(
    params: &mut AeParams,
    store: &ActivationStore,
    source: usize,
    target: usize,
    rows: &[u64],
    val_rows: Option<&[u64]>,
    cfg: &TrainConfig,
    standardize: Option<&Standardize>,
    mut on_batch: impl FnMut(usize, usize) -> bool,
) -> FitResult<Vec<EpochRecord>> {
    params.check()?;
    if let Some(z) = standardize {
        z.check(params)?;
    }
    let result = train_inner(
        params,
        store,
        source,
        target,
        rows,
        val_rows,
        cfg,
        standardize,
        &mut on_batch,
    );
    if let Some(z) = standardize {
        *params = z.fold(params);
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn train_inner(
    params: &mut AeParams,
    store: &ActivationStore,
    source: usize,
    target: usize,
    rows: &[u64],
    val_rows: Option<&[u64]>,
    cfg: &TrainConfig,
    standardize: Option<&Standardize>,
    on_batch: &mut impl FnMut(usize, usize) -> bool,
) -> FitResult<Vec<EpochRecord>> {
    let sites = &store.manifest().sites;
    if sites[source].dim as usize != params.d_s || sites[target].dim as usize != params.d_t {
        return Err(FitError::Invalid(format!(
            "the store's sites are {} and {} wide; the autoencoder maps {} -> {}",
            sites[source].dim, sites[target].dim, params.d_s, params.d_t
        )));
    }
    if rows.is_empty() || cfg.batch_size == 0 || cfg.epochs == 0 {
        return Err(FitError::Invalid(
            "need rows to train on, epochs >= 1 and batch_size >= 1".into(),
        ));
    }
    if !(cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0)
        || cfg.grad_clip.is_some_and(|c| !(c.is_finite() && c > 0.0))
    {
        return Err(FitError::Invalid(
            "weight_decay must be finite and >= 0, and grad_clip positive (or None)".into(),
        ));
    }
    let mut schedule = Plateau::new(
        cfg.lr as f64,
        cfg.lr_factor as f64,
        cfg.plateau_patience,
        cfg.early_stop,
    )?;
    let (d_s, d_t) = (params.d_s, params.d_t);
    let mut adam = AdamW::new(params);
    let mut grad = AeParams::zeros(params.d_s, params.h, params.d_t);
    let mut work = Work::default();
    let (mut x, mut y) = (Vec::<f32>::new(), Vec::<f32>::new());
    let mut history = Vec::new();
    let per_epoch = rows.len().div_ceil(cfg.batch_size);
    for epoch in 0..cfg.epochs {
        let lr = schedule.lr() as f32;
        let plan = EpochPlan::new(
            rows.to_vec(),
            Shuffle::Global,
            cfg.seed,
            epoch as u64,
            cfg.batch_size,
            false,
        )
        .map_err(|e| FitError::Invalid(e.to_string()))?;
        let (mut sse, mut seen) = (0f64, 0usize);
        for (b, chunk) in plan.iter().enumerate() {
            let sel = RowIds::List(Cow::Borrowed(chunk));
            let m = chunk.len();
            x.resize(m * d_s, 0.0);
            y.resize(m * d_t, 0.0);
            store.gather_site_into(source, &sel, &mut x);
            store.gather_site_into(target, &sel, &mut y);
            if let Some(z) = standardize {
                Standardize::apply(&mut x, &z.mean_x, &z.std_x);
                Standardize::apply(&mut y, &z.mean_y, &z.std_y);
            }
            let loss = params.loss_and_grad(&x, &y, m, &mut grad, &mut work);
            if !loss.is_finite() {
                return Err(FitError::Invalid(format!(
                    "the loss became {loss} in epoch {} (batch {b}): lower lr, clip gradients, or check the data for NaN/inf",
                    epoch + 1
                )));
            }
            if let Some(max) = cfg.grad_clip {
                clip_grad_norm(&mut grad, max);
            }
            adam.step(params, &grad, lr, cfg.weight_decay);
            sse += loss * m as f64;
            seen += m;
            if !on_batch(epoch * per_epoch + b + 1, cfg.epochs * per_epoch) {
                return Err(FitError::Interrupted);
            }
        }
        let train_mse = sse / seen as f64;
        // Validation in raw units: score the folded map (with standardisation, `train_mse` is
        // the loss in standardised units, which is what is minimised).
        let val = val_rows
            .filter(|v| !v.is_empty())
            .map(|v| match standardize {
                Some(z) => evaluate(&z.fold(params), store, source, target, v),
                None => evaluate(params, store, source, target, v),
            });
        history.push(EpochRecord {
            epoch: epoch + 1,
            train_mse,
            lr,
            val,
        });
        if schedule.step(val.map(|s| s.mse).unwrap_or(train_mse)) {
            break;
        }
    }
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central finite differences of the loss agree with the analytic gradient.
    #[test]
    fn gradients_match_finite_differences() {
        let (d_s, h, d_t, rows) = (5, 4, 3, 7);
        let p = AeParams::init(d_s, h, d_t, 1);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let x: Vec<f32> = (0..rows * d_s)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let y: Vec<f32> = (0..rows * d_t)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let mut grad = AeParams::zeros(d_s, h, d_t);
        let mut work = Work::default();
        p.loss_and_grad(&x, &y, rows, &mut grad, &mut work);
        let loss_at = |q: &AeParams| {
            let mut g = AeParams::zeros(d_s, h, d_t);
            q.loss_and_grad(&x, &y, rows, &mut g, &mut Work::default())
        };
        for t in 0..4 {
            for i in 0..p.tensors()[t].len() {
                let eps = 1e-3f32;
                let (mut up, mut down) = (p.clone(), p.clone());
                up.tensors_mut()[t][i] += eps;
                down.tensors_mut()[t][i] -= eps;
                let numeric = (loss_at(&up) - loss_at(&down)) / (2.0 * eps as f64);
                let analytic = grad.tensors()[t][i] as f64;
                assert!(
                    (numeric - analytic).abs() < 2e-3 * (1.0 + analytic.abs()),
                    "tensor {t}[{i}]: {numeric} vs {analytic}"
                );
            }
        }
    }

    #[test]
    fn adamw_matches_the_reference_update() {
        let mut p = AeParams::zeros(1, 1, 1);
        p.w1[0] = 1.0;
        let mut g = AeParams::zeros(1, 1, 1);
        g.w1[0] = 0.5;
        let mut opt = AdamW::new(&p);
        opt.step(&mut p, &g, 0.1, 0.01);
        // Step 1: p = 1*(1 - 0.001) = 0.999; m̂ = 0.5, v̂ = 0.25 -> p -= 0.1 * 0.5 / (0.5 + 1e-8).
        assert!(
            (p.w1[0] - (0.999 - 0.1 * 0.5 / (0.5 + 1e-8))).abs() < 1e-6,
            "{}",
            p.w1[0]
        );
    }

    #[test]
    fn folding_standardisation_is_exact_and_invertible() {
        let (d_s, h, d_t) = (4, 3, 2);
        let p = AeParams::init(d_s, h, d_t, 5);
        let z = Standardize {
            mean_x: vec![1.0, -2.0, 3.0, 0.5],
            std_x: vec![2.0, 0.5, 4.0, 1.0],
            mean_y: vec![10.0, -1.0],
            std_y: vec![3.0, 0.25],
        };
        let raw: Vec<f32> = (0..3 * d_s).map(|i| i as f32 * 0.7 - 2.0).collect();
        let mut std_in = raw.clone();
        Standardize::apply(&mut std_in, &z.mean_x, &z.std_x);
        let (mut h1, mut o1, mut h2, mut o2) = (vec![], vec![], vec![], vec![]);
        p.forward(&std_in, 3, &mut h1, &mut o1);
        z.fold(&p).forward(&raw, 3, &mut h2, &mut o2);
        for (k, (a, b)) in o1.iter().zip(&o2).enumerate() {
            let j = k % d_t;
            assert!((a * z.std_y[j] + z.mean_y[j] - b).abs() < 1e-4, "{a} {b}");
        }
        let back = z.unfold(&z.fold(&p));
        for (a, b) in back
            .w1
            .iter()
            .chain(&back.b1)
            .chain(&back.w2)
            .chain(&back.b2)
            .zip(p.w1.iter().chain(&p.b1).chain(&p.w2).chain(&p.b2))
        {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let mut g = AeParams::zeros(2, 2, 2);
        g.w1 = vec![3.0, 0.0, 0.0, 4.0];
        let total = clip_grad_norm(&mut g, 1.0);
        assert!((total - 5.0).abs() < 1e-6);
        let norm: f32 = g.w1.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }

    /// The schedule against `torch.optim.lr_scheduler.ReduceLROnPlateau(mode="min",
    /// factor=0.5, patience=1, threshold=1e-4)` on the same scores (its lrs worked by hand:
    /// two epochs without improvement halve the rate, and the count restarts).
    #[test]
    fn the_plateau_schedule_follows_reduce_lr_on_plateau() {
        let mut p = Plateau::new(1.0, 0.5, 1, None).unwrap();
        let scores = [1.0, 0.9, 0.9, 0.95, 0.89995, 0.91, 0.92, 0.5];
        let expect = [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25];
        let lrs: Vec<f64> = scores
            .iter()
            .map(|&s| {
                assert!(!p.step(s));
                p.lr()
            })
            .collect();
        assert_eq!(lrs, expect);
        assert_eq!(p.best(), 0.5);
        // 0.89995 is not 1e-4 (relative) below 0.9: no improvement.
        let mut q = Plateau::new(1.0, 0.5, 0, Some(2)).unwrap();
        assert!(!q.step(0.9));
        assert!(!q.step(0.89995));
        assert_eq!(q.lr(), 0.5);
        assert!(
            q.step(0.89995),
            "two epochs without improvement stop with early_stop=2"
        );
    }

    #[test]
    fn a_plateau_schedule_refuses_bad_settings() {
        for (lr, factor, stop) in [
            (0.0, 0.5, None),
            (f64::NAN, 0.5, None),
            (1.0, 1.0, None),
            (1.0, 0.0, None),
            (1.0, 0.5, Some(0)),
        ] {
            assert!(
                matches!(Plateau::new(lr, factor, 0, stop), Err(FitError::Invalid(_))),
                "{lr} {factor} {stop:?}"
            );
        }
    }
}
