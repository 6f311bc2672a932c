//! Element types of a store and the vectorised conversions between them.
//!
//! Stored site dtypes are float32, float16 and bfloat16; columns are int64. Reads convert to
//! float32, float64, float16 or bfloat16. float32 -> bfloat16 rounds to nearest, ties to even,
//! and keeps NaN a (quiet) NaN, exactly like `torch.Tensor.to(torch.bfloat16)`. The bfloat16
//! loops are compiled for AVX-512 and AVX2 and chosen at run time by [`crate::simd`] (the wheel
//! runs on any x86-64); float16 uses `half`'s F16C paths, which `half` detects by itself.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// The element type of a stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Float32,
    Float16,
    Bfloat16,
    Int64,
}

impl DType {
    /// Parse a user-facing name ("float32", "f32", "float16", "half", "bfloat16", "bf16", "int64").
    pub fn parse(name: &str) -> Result<DType> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "float32" | "f32" | "float" => DType::Float32,
            "float16" | "f16" | "half" => DType::Float16,
            "bfloat16" | "bf16" => DType::Bfloat16,
            "int64" | "i64" => DType::Int64,
            other => {
                return Err(StoreError::invalid(format!(
                    "unsupported dtype {other:?}: use \"float32\", \"float16\" or \"bfloat16\" for sites \
                     (integer columns are stored as int64)"
                )))
            }
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::Float32 => "float32",
            DType::Float16 => "float16",
            DType::Bfloat16 => "bfloat16",
            DType::Int64 => "int64",
        }
    }
    /// The dtype string of the safetensors format.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::Float32 => "F32",
            DType::Float16 => "F16",
            DType::Bfloat16 => "BF16",
            DType::Int64 => "I64",
        }
    }
    pub fn size(self) -> usize {
        match self {
            DType::Float32 => 4,
            DType::Float16 | DType::Bfloat16 => 2,
            DType::Int64 => 8,
        }
    }
    pub fn is_float(self) -> bool {
        !matches!(self, DType::Int64)
    }
}

/// A borrowed run of floating-point elements of any supported type.
#[derive(Clone, Copy, Debug)]
pub enum Floats<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

/// A mutable run of floating-point elements of any supported type.
pub enum FloatsMut<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
    F16(&'a mut [f16]),
    BF16(&'a mut [bf16]),
}

impl<'a> Floats<'a> {
    pub fn len(&self) -> usize {
        match self {
            Floats::F32(s) => s.len(),
            Floats::F64(s) => s.len(),
            Floats::F16(s) => s.len(),
            Floats::BF16(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The sub-run `[start, end)`.
    pub fn slice(&self, start: usize, end: usize) -> Floats<'a> {
        match *self {
            Floats::F32(s) => Floats::F32(&s[start..end]),
            Floats::F64(s) => Floats::F64(&s[start..end]),
            Floats::F16(s) => Floats::F16(&s[start..end]),
            Floats::BF16(s) => Floats::BF16(&s[start..end]),
        }
    }
    /// View stored bytes of a float dtype; `None` if misaligned or not a float dtype.
    pub fn from_bytes(dtype: DType, bytes: &'a [u8]) -> Option<Floats<'a>> {
        match dtype {
            DType::Float32 => bytemuck::try_cast_slice(bytes).ok().map(Floats::F32),
            DType::Float16 => bytemuck::try_cast_slice(bytes).ok().map(Floats::F16),
            DType::Bfloat16 => bytemuck::try_cast_slice(bytes).ok().map(Floats::BF16),
            DType::Int64 => None,
        }
    }
    /// Index of the first element that is NaN or infinite.
    pub fn first_non_finite(&self) -> Option<usize> {
        match self {
            Floats::F32(s) => s.iter().position(|x| !x.is_finite()),
            Floats::F64(s) => s.iter().position(|x| !x.is_finite()),
            Floats::F16(s) => s.iter().position(|x| !x.is_finite()),
            Floats::BF16(s) => s.iter().position(|x| !x.is_finite()),
        }
    }
}

/// An element type that reads can produce.
pub trait Float: Copy + Send + Sync + Default + bytemuck::Pod + 'static {
    fn wrap_mut(s: &mut [Self]) -> FloatsMut<'_>;
    fn wrap(s: &[Self]) -> Floats<'_>;
    fn to_f64(self) -> f64;
}

macro_rules! impl_float {
    ($t:ty, $v:ident, $to:expr) => {
        impl Float for $t {
            fn wrap_mut(s: &mut [Self]) -> FloatsMut<'_> {
                FloatsMut::$v(s)
            }
            fn wrap(s: &[Self]) -> Floats<'_> {
                Floats::$v(s)
            }
            fn to_f64(self) -> f64 {
                $to(self)
            }
        }
    };
}
impl_float!(f32, F32, |x: f32| x as f64);
impl_float!(f64, F64, |x: f64| x);
impl_float!(f16, F16, |x: f16| x.to_f64());
impl_float!(bf16, BF16, |x: bf16| x.to_f64());

/// Convert `src` into `dst` elementwise. Panics only if lengths differ (a caller bug, checked
/// by every caller before it gets here).
pub fn convert(src: Floats<'_>, dst: FloatsMut<'_>) {
    debug_assert_eq!(src.len(), dst_len(&dst));
    match (src, dst) {
        (Floats::F32(s), FloatsMut::F32(d)) => d.copy_from_slice(s),
        (Floats::F16(s), FloatsMut::F16(d)) => d.copy_from_slice(s),
        (Floats::BF16(s), FloatsMut::BF16(d)) => d.copy_from_slice(s),
        (Floats::F64(s), FloatsMut::F64(d)) => d.copy_from_slice(s),
        (Floats::BF16(s), FloatsMut::F32(d)) => bf16_to_f32(bytemuck::cast_slice(s), d),
        (Floats::F32(s), FloatsMut::BF16(d)) => f32_to_bf16(s, bytemuck::cast_slice_mut(d)),
        (Floats::F16(s), FloatsMut::F32(d)) => s.convert_to_f32_slice(d),
        (Floats::F32(s), FloatsMut::F16(d)) => d.convert_from_f32_slice(s),
        (Floats::F16(s), FloatsMut::F64(d)) => s.convert_to_f64_slice(d),
        // float64 -> 16-bit: stage through float32 rounded *to odd*, which keeps a sticky bit so
        // the second rounding (to nearest even) gives the correctly rounded result.
        (Floats::F64(s), mut dst @ (FloatsMut::F16(_) | FloatsMut::BF16(_))) => {
            const STEP: usize = 1024;
            let mut tmp = [0f32; STEP];
            let mut i = 0;
            while i < s.len() {
                let m = STEP.min(s.len() - i);
                tmp[..m]
                    .iter_mut()
                    .zip(&s[i..i + m])
                    .for_each(|(o, &x)| *o = f64_to_f32_round_odd(x));
                convert(Floats::F32(&tmp[..m]), reslice_mut(&mut dst, i, i + m));
                i += m;
            }
        }
        (Floats::BF16(s), FloatsMut::F64(d)) => s.convert_to_f64_slice(d),
        (Floats::F32(s), FloatsMut::F64(d)) => {
            d.iter_mut().zip(s).for_each(|(o, &i)| *o = i as f64)
        }
        (Floats::F64(s), FloatsMut::F32(d)) => {
            d.iter_mut().zip(s).for_each(|(o, &i)| *o = i as f32)
        }
        // Rarer pairs go through a small float32 staging buffer.
        (src, mut dst) => {
            const STEP: usize = 1024;
            let mut tmp = [0f32; STEP];
            let n = src.len();
            let mut i = 0;
            while i < n {
                let m = STEP.min(n - i);
                convert(src.slice(i, i + m), FloatsMut::F32(&mut tmp[..m]));
                convert(Floats::F32(&tmp[..m]), reslice_mut(&mut dst, i, i + m));
                i += m;
            }
        }
    }
}

fn dst_len(d: &FloatsMut<'_>) -> usize {
    match d {
        FloatsMut::F32(s) => s.len(),
        FloatsMut::F64(s) => s.len(),
        FloatsMut::F16(s) => s.len(),
        FloatsMut::BF16(s) => s.len(),
    }
}

fn reslice_mut<'b>(d: &'b mut FloatsMut<'_>, start: usize, end: usize) -> FloatsMut<'b> {
    match d {
        FloatsMut::F32(s) => FloatsMut::F32(&mut s[start..end]),
        FloatsMut::F64(s) => FloatsMut::F64(&mut s[start..end]),
        FloatsMut::F16(s) => FloatsMut::F16(&mut s[start..end]),
        FloatsMut::BF16(s) => FloatsMut::BF16(&mut s[start..end]),
    }
}

/// float64 -> float32 rounded to odd: truncate toward zero, then set the last bit if inexact.
#[inline]
pub fn f64_to_f32_round_odd(x: f64) -> f32 {
    let t = x as f32;
    if x.is_nan() || t as f64 == x {
        return t;
    }
    let mut bits = t.to_bits();
    if (t as f64).abs() > x.abs() {
        bits -= 1; // one step toward zero (also turns an overflow to inf into f32::MAX)
    }
    f32::from_bits(bits | 1)
}

crate::simd::dispatch! {
/// bfloat16 bits -> float32: the 16 bits become the high half.
pub fn bf16_to_f32(src: &[u16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits((s as u32) << 16);
    }
}
}

crate::simd::dispatch! {
/// float32 -> bfloat16 bits, round to nearest even; NaN stays a quiet NaN with its sign.
pub fn f32_to_bf16(src: &[f32], dst: &mut [u16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        let b = s.to_bits();
        let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
        let is_nan = (b & 0x7FFF_FFFF) > 0x7F80_0000;
        *d = if is_nan {
            ((b >> 16) | 0x0040) as u16
        } else {
            rounded as u16
        };
    }
}
}

/// `convert` split across rayon threads in runs of 64 Ki elements.
pub fn par_convert(src: Floats<'_>, dst: FloatsMut<'_>) {
    fn go<D: Float>(src: Floats<'_>, dst: &mut [D]) {
        use rayon::prelude::*;
        const STEP: usize = 1 << 16;
        if dst.len() <= STEP {
            return convert(src, D::wrap_mut(dst));
        }
        dst.par_chunks_mut(STEP).enumerate().for_each(|(i, chunk)| {
            let start = i * STEP;
            convert(src.slice(start, start + chunk.len()), D::wrap_mut(chunk));
        });
    }
    match dst {
        FloatsMut::F32(d) => go(src, d),
        FloatsMut::F64(d) => go(src, d),
        FloatsMut::F16(d) => go(src, d),
        FloatsMut::BF16(d) => go(src, d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn f32_to_bf16_matches_half_on_random_bits_and_edges() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut xs: Vec<f32> = (0..200_000).map(|_| f32::from_bits(rng.random())).collect();
        xs.extend([
            0.0,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x3F80_8000), // exact tie, even below
            f32::from_bits(0x3F81_8000), // exact tie, odd below -> up
            f32::from_bits(0x7F7F_FFFF), // rounds to inf
            f32::from_bits(0x0000_0001), // smallest subnormal
        ]);
        let mut got = vec![0u16; xs.len()];
        f32_to_bf16(&xs, &mut got);
        for (x, g) in xs.iter().zip(&got) {
            let want = bf16::from_f32(*x);
            if x.is_nan() {
                assert!(bf16::from_bits(*g).is_nan(), "{x:?}");
                assert_eq!(g >> 15, want.to_bits() >> 15, "sign of NaN {x:?}");
            } else {
                assert_eq!(*g, want.to_bits(), "x={x:e} bits={:#010x}", x.to_bits());
            }
        }
        assert_eq!(got[xs.len() - 4], 0x3F80);
        assert_eq!(got[xs.len() - 3], 0x3F82);
    }

    #[test]
    fn bf16_round_trip_is_exact_for_bf16_values() {
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        let mut f = vec![0f32; bits.len()];
        bf16_to_f32(&bits, &mut f);
        let mut back = vec![0u16; bits.len()];
        f32_to_bf16(&f, &mut back);
        for (a, b) in bits.iter().zip(&back) {
            if bf16::from_bits(*a).is_nan() {
                assert!(bf16::from_bits(*b).is_nan());
            } else {
                assert_eq!(a, b);
            }
        }
    }

    /// The 16-bit pattern nearest to `x` (ties to even), searched around a guess.
    fn nearest(x: f64, value: impl Fn(u16) -> f64, guess: u16) -> u16 {
        let mut best = guess;
        for cand in [guess.wrapping_sub(1), guess, guess.wrapping_add(1)] {
            let (dc, db) = ((value(cand) - x).abs(), (value(best) - x).abs());
            if dc < db || (dc == db && cand & 1 == 0) {
                best = cand;
            }
        }
        best
    }

    #[test]
    fn every_conversion_pair_agrees_with_scalar_reference() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut xs: Vec<f64> = (0..3000)
            .map(|_| rng.random_range(-60000.0..60000.0))
            .collect();
        // Just above and below 16-bit ties, where a double rounding goes wrong.
        for k in 0..500 {
            let mid = |lo: f64, hi: f64| (lo + hi) / 2.0;
            let t16 = mid(
                f16::from_bits(0x4000 + 2 * k).to_f64(),
                f16::from_bits(0x4001 + 2 * k).to_f64(),
            );
            let tb = mid(
                bf16::from_bits(0x4000 + 2 * k).to_f64(),
                bf16::from_bits(0x4001 + 2 * k).to_f64(),
            );
            xs.extend([
                t16 + 1e-9,
                t16 - 1e-9,
                t16,
                tb * (1.0 + 1e-12),
                tb * (1.0 - 1e-12),
                tb,
            ]);
        }
        let f32s: Vec<f32> = xs.iter().map(|&x| x as f32).collect();
        let f16s: Vec<f16> = xs.iter().map(|&x| f16::from_f64(x)).collect();
        let bf16s: Vec<bf16> = xs.iter().map(|&x| bf16::from_f64(x)).collect();
        let srcs = [
            Floats::F64(&xs),
            Floats::F32(&f32s),
            Floats::F16(&f16s),
            Floats::BF16(&bf16s),
        ];
        for src in srcs {
            let reference: Vec<f64> = match src {
                Floats::F64(s) => s.to_vec(),
                Floats::F32(s) => s.iter().map(|&v| v as f64).collect(),
                Floats::F16(s) => s.iter().map(|v| v.to_f64()).collect(),
                Floats::BF16(s) => s.iter().map(|v| v.to_f64()).collect(),
            };
            let mut o64 = vec![0f64; xs.len()];
            convert(src, FloatsMut::F64(&mut o64));
            assert_eq!(o64, reference);
            let mut o32 = vec![0f32; xs.len()];
            convert(src, FloatsMut::F32(&mut o32));
            assert!(o32.iter().zip(&reference).all(|(a, b)| *a == *b as f32));
            let mut o16 = vec![f16::ZERO; xs.len()];
            convert(src, FloatsMut::F16(&mut o16));
            let mut ob = vec![bf16::ZERO; xs.len()];
            convert(src, FloatsMut::BF16(&mut ob));
            for (k, &x) in reference.iter().enumerate() {
                assert_eq!(
                    o16[k].to_bits(),
                    nearest(
                        x,
                        |b| f16::from_bits(b).to_f64(),
                        f16::from_f64_const(x).to_bits()
                    ),
                    "f16 of {x}"
                );
                assert_eq!(
                    ob[k].to_bits(),
                    nearest(
                        x,
                        |b| bf16::from_bits(b).to_f64(),
                        bf16::from_f64_const(x).to_bits()
                    ),
                    "bf16 of {x}"
                );
            }
        }
    }
}
