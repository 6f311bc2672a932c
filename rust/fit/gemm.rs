//! The chunk products of the affine fit, `XᵀX` (one triangle) and `XᵀY`, in f32, and the
//! column sums `Xᵀ1` when a BLAS is registered.
//!
//! By default they run on faer's GEMM. A process can register a Fortran BLAS (`ssyrk`,
//! `sgemm`, `sgemv`, with 32- or 64-bit integers; the Python package registers numpy's bundled
//! OpenBLAS, else scipy's), which is about twice as fast on AVX-512 machines and computes only
//! the triangle of `XᵀX`. Inputs are row-major `(m, d)` chunks, i.e. column-major `(d, m)`
//! matrices with leading dimension `d`; outputs are column-major with leading dimension equal
//! to their row count.

use std::ffi::{c_char, c_void};
use std::sync::RwLock;

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{matmul as tri_matmul, BlockStructure};
use faer::{Accum, MatMut, MatRef, Par};

/// Fortran `ssyrk(uplo, trans, n, k, alpha, a, lda, beta, c, ldc)` with integers `I`.
type Ssyrk<I> = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    *const I,
    *const I,
    *const f32,
    *const f32,
    *const I,
    *const f32,
    *mut f32,
    *const I,
);
/// Fortran `sgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type Sgemm<I> = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    *const I,
    *const I,
    *const I,
    *const f32,
    *const f32,
    *const I,
    *const f32,
    *const I,
    *const f32,
    *mut f32,
    *const I,
);
/// Fortran `sgemv(trans, m, n, alpha, a, lda, x, incx, beta, y, incy)`.
type Sgemv<I> = unsafe extern "C" fn(
    *const c_char,
    *const I,
    *const I,
    *const f32,
    *const f32,
    *const I,
    *const f32,
    *const I,
    *const f32,
    *mut f32,
    *const I,
);

/// The registered routines, typed by their integer width.
#[derive(Clone, Copy)]
enum Blas {
    Lp64(Ssyrk<i32>, Sgemm<i32>, Sgemv<i32>),
    Ilp64(Ssyrk<i64>, Sgemm<i64>, Sgemv<i64>),
}

static BLAS: RwLock<Option<Blas>> = RwLock::new(None);

/// Use these BLAS routines (addresses of `ssyrk`, `sgemm`, `sgemv`) from now on; `ilp64`: they
/// take 64-bit integers (OpenBLAS built with `INTERFACE64`, symbol suffix `64_`).
///
/// # Safety
/// All three must be valid Fortran-ABI BLAS routines with the stated integer width that stay
/// loaded for the life of the process, and safe to call from any thread.
pub unsafe fn register_blas(
    ssyrk: *const c_void,
    sgemm: *const c_void,
    sgemv: *const c_void,
    ilp64: bool,
) {
    // SAFETY: the caller guarantees the routines and their integer width.
    let blas = unsafe {
        use std::mem::transmute as t;
        if ilp64 {
            Blas::Ilp64(
                t::<*const c_void, Ssyrk<i64>>(ssyrk),
                t::<*const c_void, Sgemm<i64>>(sgemm),
                t::<*const c_void, Sgemv<i64>>(sgemv),
            )
        } else {
            Blas::Lp64(
                t::<*const c_void, Ssyrk<i32>>(ssyrk),
                t::<*const c_void, Sgemm<i32>>(sgemm),
                t::<*const c_void, Sgemv<i32>>(sgemv),
            )
        }
    };
    if let Ok(mut b) = BLAS.write() {
        *b = Some(blas);
    }
}

/// Go back to faer for the chunk products.
pub fn unregister_blas() {
    if let Ok(mut b) = BLAS.write() {
        *b = None;
    }
}

/// "blas" when registered routines are in use, else "faer".
pub fn backend() -> &'static str {
    match blas() {
        Some(_) => "blas",
        None => "faer",
    }
}

fn blas() -> Option<Blas> {
    BLAS.read().ok().and_then(|b| *b)
}

/// A BLAS integer (32 or 64 bits) from a dimension.
fn int<I: TryFrom<usize>>(v: usize) -> I {
    I::try_from(v)
        .ok()
        .expect("chunk dimensions fit in the BLAS integer")
}

/// A Fortran `ssyrk` call, `c = a aᵀ` (lower, no transpose) for either integer width.
///
/// # Safety
/// The pointers must cover the matrices the dimensions describe.
unsafe fn ssyrk<I: TryFrom<usize>>(
    f: Ssyrk<I>,
    (n, k): (usize, usize),
    a: *const f32,
    lda: usize,
    c: *mut f32,
    ldc: usize,
) {
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: per this function's contract.
    unsafe {
        f(
            c"L".as_ptr(),
            c"N".as_ptr(),
            &int(n),
            &int(k),
            &alpha,
            a,
            &int(lda),
            &beta,
            c,
            &int(ldc),
        )
    }
}

/// A Fortran `sgemm` call, `c = op(a) op(b)` (+ `c` when `accumulate`), for either width.
///
/// # Safety
/// The pointers must cover the matrices the dimensions describe.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm<I: TryFrom<usize>>(
    f: Sgemm<I>,
    (ta, tb): (&std::ffi::CStr, &std::ffi::CStr),
    (m, n, k): (usize, usize, usize),
    (a, lda): (*const f32, usize),
    (b, ldb): (*const f32, usize),
    (c, ldc): (*mut f32, usize),
    accumulate: bool,
) {
    let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
    // SAFETY: per this function's contract.
    unsafe {
        f(
            ta.as_ptr(),
            tb.as_ptr(),
            &int(m),
            &int(n),
            &int(k),
            &alpha,
            a,
            &int(lda),
            b,
            &int(ldb),
            &beta,
            c,
            &int(ldc),
        )
    }
}

/// `out` (column-major `(d, d)`, lower triangle written) = Xᵀ X for row-major `x` `(m, d)`.
pub fn syrk_lower(x: &[f32], m: usize, d: usize, out: &mut [f32]) {
    debug_assert!(x.len() == m * d && out.len() == d * d);
    let (a, c) = (x.as_ptr(), out.as_mut_ptr());
    // SAFETY: registered routines are valid BLAS (see `register_blas`); the pointers cover
    // x (d x m, lda = d) and out (d x d, ldc = d) exactly.
    match blas() {
        Some(Blas::Lp64(f, _, _)) => return unsafe { ssyrk(f, (d, m), a, d, c, d) },
        Some(Blas::Ilp64(f, _, _)) => return unsafe { ssyrk(f, (d, m), a, d, c, d) },
        None => {}
    }
    let xr = MatRef::from_row_major_slice(x, m, d);
    tri_matmul(
        MatMut::from_column_major_slice_mut(out, d, d),
        BlockStructure::TriangularLower,
        Accum::Replace,
        xr.transpose(),
        BlockStructure::Rectangular,
        xr,
        BlockStructure::Rectangular,
        1.0f32,
        Par::rayon(0),
    );
}

/// `out` (column-major `(d_s, d_t)`) = Xᵀ Y for row-major `x` `(m, d_s)`, `y` `(m, d_t)`.
pub fn gemm_tn(x: &[f32], y: &[f32], m: usize, d_s: usize, d_t: usize, out: &mut [f32]) {
    debug_assert!(x.len() == m * d_s && y.len() == m * d_t && out.len() == d_s * d_t);
    let (nt, a, b, c) = (
        (c"N", c"T"),
        (x.as_ptr(), d_s),
        (y.as_ptr(), d_t),
        (out.as_mut_ptr(), d_s),
    );
    // SAFETY: as above; x is (d_s x m, lda = d_s), y is (d_t x m, ldb = d_t), out (d_s x d_t).
    match blas() {
        Some(Blas::Lp64(_, f, _)) => return unsafe { sgemm(f, nt, (d_s, d_t, m), a, b, c, false) },
        Some(Blas::Ilp64(_, f, _)) => {
            return unsafe { sgemm(f, nt, (d_s, d_t, m), a, b, c, false) }
        }
        None => {}
    }
    let xr = MatRef::from_row_major_slice(x, m, d_s);
    let yr = MatRef::from_row_major_slice(y, m, d_t);
    matmul(
        MatMut::from_column_major_slice_mut(out, d_s, d_t),
        Accum::Replace,
        xr.transpose(),
        yr,
        1.0f32,
        Par::rayon(0),
    );
}

/// `out` (length `d`) = the column sums of row-major `x` `(m, d)`, accumulated in f32 by the
/// registered BLAS (threaded, one read of `x`); `ones` is scratch. False, with nothing written,
/// when no BLAS is registered.
pub fn column_sums(x: &[f32], m: usize, d: usize, ones: &mut Vec<f32>, out: &mut [f32]) -> bool {
    debug_assert!(x.len() == m * d && out.len() == d);
    let Some(b) = blas() else {
        return false;
    };
    ones.resize(m, 1.0);
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (a, v, o, t) = (x.as_ptr(), ones.as_ptr(), out.as_mut_ptr(), c"N".as_ptr());
    // SAFETY: as above; x is (d x m, lda = d), ones has m entries, out has d.
    match b {
        Blas::Lp64(_, _, f) => unsafe {
            f(t, &int(d), &int(m), &alpha, a, &int(d), v, &1, &beta, o, &1)
        },
        Blas::Ilp64(_, _, f) => unsafe {
            f(t, &int(d), &int(m), &alpha, a, &int(d), v, &1, &beta, o, &1)
        },
    }
    true
}

/// The `sgemm` for the autoencoder's products (None: faer), held apart from the affine fit's
/// BLAS: the fastest one here is often another library's (torch's MKL), and two BLAS thread
/// pools interleaved within one fit slow each other down.
static DENSE_SGEMM: RwLock<Option<Sgemm<i64>>> = RwLock::new(None);

/// Use this Fortran `sgemm` for [`gemm_rm`] from now on (None: faer). It is called with 64-bit
/// integers whose values fit in 31 bits, so on little-endian machines a 32-bit-integer routine
/// reads the same values from their low halves.
///
/// # Safety
/// `sgemm` must be a valid Fortran-ABI `sgemm` (32- or 64-bit integers; little-endian if 32)
/// that stays loaded for the life of the process and is safe to call from any thread.
pub unsafe fn register_dense_sgemm(sgemm: Option<*const c_void>) {
    // SAFETY: the caller guarantees the routine.
    let f = sgemm.map(|p| unsafe { std::mem::transmute::<*const c_void, Sgemm<i64>>(p) });
    if let Ok(mut g) = DENSE_SGEMM.write() {
        *g = f;
    }
}

/// "blas" when [`gemm_rm`] runs on a registered `sgemm`, else "faer".
pub fn dense_backend() -> &'static str {
    match DENSE_SGEMM.read().ok().and_then(|g| *g) {
        Some(_) => "blas",
        None => "faer",
    }
}

/// `c (m, n) = op(a) · op(b)` (+ `c` if `accumulate`) for row-major matrices, where `op(a)` is
/// `(m, k)`: `a` is stored `(m, k)`, or `(k, m)` when `trans_a`; likewise `b` is `(k, n)` or
/// `(n, k)` when `trans_b`. On the `sgemm` registered with [`register_dense_sgemm`] (dimensions
/// below 2^31), else on faer.
#[allow(clippy::too_many_arguments)]
pub fn gemm_rm(
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
) {
    debug_assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n);
    if let Some(f) = DENSE_SGEMM.read().ok().and_then(|g| *g) {
        let too_big = [m, n, k].iter().any(|&v| v > i32::MAX as usize);
        if !too_big {
            // Row-major C (m, n) is column-major Cᵀ (n, m) = op(B)ᵀ op(A)ᵀ: swap the operands.
            let lda = if trans_b { k } else { n };
            let ldb = if trans_a { m } else { k };
            let ta = if trans_b { c"T" } else { c"N" };
            let tb = if trans_a { c"T" } else { c"N" };
            // SAFETY: a registered sgemm is valid (see `register_dense_sgemm`); b is the
            // column-major (n x k) op-matrix with the leading dimension above, a likewise
            // (k x m), c is (n x m) with ldc = n; every integer is below 2^31.
            unsafe {
                sgemm(
                    f,
                    (ta, tb),
                    (n, m, k),
                    (b.as_ptr(), lda),
                    (a.as_ptr(), ldb),
                    (c.as_mut_ptr(), n),
                    accumulate,
                )
            };
            return;
        }
    }
    let ar = if trans_a {
        MatRef::from_row_major_slice(a, k, m).transpose()
    } else {
        MatRef::from_row_major_slice(a, m, k)
    };
    let br = if trans_b {
        MatRef::from_row_major_slice(b, n, k).transpose()
    } else {
        MatRef::from_row_major_slice(b, k, n)
    };
    let accum = if accumulate {
        Accum::Add
    } else {
        Accum::Replace
    };
    matmul(
        MatMut::from_row_major_slice_mut(c, m, n),
        accum,
        ar,
        br,
        1.0f32,
        Par::rayon(0),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_sums_without_a_blas_write_nothing() {
        unregister_blas();
        let mut out = [7.0f32; 2];
        assert!(!column_sums(
            &[1.0, 2.0, 3.0, 4.0],
            2,
            2,
            &mut Vec::new(),
            &mut out
        ));
        assert_eq!(out, [7.0, 7.0]);
    }

    #[test]
    fn gemm_rm_matches_a_naive_product_for_every_transpose() {
        let (m, n, k) = (5, 4, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32).sin()).collect();
        let at = |i: usize, p: usize| a[i * k + p];
        let bt = |p: usize, j: usize| b[p * n + j];
        let want: Vec<f32> = (0..m * n)
            .map(|ij| (0..k).map(|p| at(ij / n, p) * bt(p, ij % n)).sum())
            .collect();
        // Transposed storage of the same matrices.
        let a_t: Vec<f32> = (0..k * m).map(|pi| at(pi % m, pi / m)).collect();
        let b_t: Vec<f32> = (0..n * k).map(|jp| bt(jp % k, jp / k)).collect();
        for (aa, ta) in [(&a, false), (&a_t, true)] {
            for (bb, tb) in [(&b, false), (&b_t, true)] {
                let mut c = vec![1.0f32; m * n];
                gemm_rm(aa, ta, bb, tb, &mut c, m, n, k, false);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-5, "{ta} {tb}: {x} vs {y}");
                }
                gemm_rm(aa, ta, bb, tb, &mut c, m, n, k, true);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - 2.0 * y).abs() < 1e-5);
                }
            }
        }
    }
}
