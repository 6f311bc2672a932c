//! Widening copies into float32 with non-temporal ("streaming") stores, for outputs much larger
//! than the caches (a store batch is 16 MiB at 4096 x 1024): the CPU writes whole cache lines
//! straight to memory instead of first reading each destination line in (read-for-ownership),
//! so the memory traffic is the bytes read plus the bytes written and nothing more, like a large
//! `memcpy`. Sources: bfloat16, float16 and float32. AVX-512 and AVX2 + F16C versions are chosen
//! by [`crate::simd::active`]; the portable level uses ordinary stores. Results are bit-identical
//! to [`crate::dtype::convert`] at every level.

use half::{bf16, f16};

use crate::dtype::{convert, Floats};
use crate::simd::{active, detected, Level};

/// Outputs at least this large are written with streaming stores by callers that know the
/// whole output's size (smaller ones stay in cache for the reader that comes next).
pub const STREAM_MIN_BYTES: usize = 4 << 20;

/// `dst = float32(src)`, with streaming stores where the level has them. Pairs other than
/// {bf16, f16, f32} -> f32 are not handled here: callers use `convert`.
pub fn widen_to_f32_streaming(src: Floats<'_>, dst: &mut [f32]) {
    widen_at(active(), src, dst)
}

/// [`widen_to_f32_streaming`] at `level`, capped by what the CPU supports.
fn widen_at(level: Level, src: Floats<'_>, dst: &mut [f32]) {
    assert_eq!(
        src.len(),
        dst.len(),
        "source and destination lengths differ"
    );
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: each kernel needs only the features of its level, which is capped at
        // `detected()`; lengths are equal (checked above).
        match (level.min(detected()), src) {
            (Level::Avx512, Floats::BF16(s)) => return unsafe { x86::bf16_avx512(s, dst) },
            (Level::Avx512, Floats::F16(s)) => return unsafe { x86::f16_avx512(s, dst) },
            (Level::Avx512, Floats::F32(s)) => return unsafe { x86::f32_avx512(s, dst) },
            (Level::Avx2, Floats::BF16(s)) => return unsafe { x86::bf16_avx2(s, dst) },
            (Level::Avx2, Floats::F16(s)) => return unsafe { x86::f16_avx2(s, dst) },
            (Level::Avx2, Floats::F32(s)) => return unsafe { x86::f32_avx2(s, dst) },
            _ => {}
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level; // only x86 has vector kernels
    convert(src, crate::dtype::FloatsMut::F32(dst));
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{bf16, f16};
    use std::arch::x86_64::*;

    /// bfloat16 -> float32 by the bit shift the vector loops do (NaN payloads kept as they are).
    #[inline(always)]
    fn bf16_bits_to_f32(x: bf16) -> f32 {
        f32::from_bits((x.to_bits() as u32) << 16)
    }

    /// Elements before `dst` reaches `align` bytes, at most `n`.
    #[inline(always)]
    fn head(dst: *const f32, align: usize, n: usize) -> usize {
        let mis = dst as usize % align;
        if mis == 0 {
            0
        } else {
            ((align - mis) / 4).min(n)
        }
    }

    /// Generates a kernel: scalar head up to `$align`, `$lanes` elements per streaming store,
    /// scalar tail, then `sfence` so the stores are visible before the caller hands `dst` on.
    macro_rules! kernel {
        ($name:ident, $feat:literal, $t:ty, $align:expr, $lanes:expr, $scalar:expr, |$p:ident| $vec:expr, $store:ident) => {
            #[target_feature(enable = $feat)]
            pub unsafe fn $name(src: &[$t], dst: &mut [f32]) {
                let n = src.len().min(dst.len());
                let scalar = $scalar;
                let h = head(dst.as_ptr(), $align, n);
                for k in 0..h {
                    dst[k] = scalar(src[k]);
                }
                let mut i = h;
                let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
                while i + $lanes <= n {
                    // SAFETY: i + lanes <= n, so the load reads inside `src` and the store
                    // writes inside `dst`; `d.add(i)` is `$align`-aligned after the head.
                    let $p = unsafe { s.add(i) };
                    let v = $vec;
                    unsafe { $store(d.add(i), v) };
                    i += $lanes;
                }
                for k in i..n {
                    dst[k] = scalar(src[k]);
                }
                _mm_sfence();
            }
        };
    }

    kernel!(
        bf16_avx512,
        "avx512f,avx512bw,avx512vl,avx2",
        bf16,
        64,
        16,
        bf16_bits_to_f32,
        |p| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(unsafe {
            _mm256_loadu_si256(p as *const __m256i)
        }))),
        _mm512_stream_ps
    );
    kernel!(
        f16_avx512,
        "avx512f,avx512bw,avx512vl,avx2,f16c",
        f16,
        64,
        16,
        |x: f16| x.to_f32(),
        |p| _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p as *const __m256i) }),
        _mm512_stream_ps
    );
    kernel!(
        f32_avx512,
        "avx512f,avx512bw,avx512vl,avx2",
        f32,
        64,
        16,
        |x: f32| x,
        |p| unsafe { _mm512_loadu_ps(p) },
        _mm512_stream_ps
    );
    kernel!(
        bf16_avx2,
        "avx2,fma,f16c",
        bf16,
        32,
        8,
        bf16_bits_to_f32,
        |p| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(unsafe {
            _mm_loadu_si128(p as *const __m128i)
        }))),
        _mm256_stream_ps
    );
    kernel!(
        f16_avx2,
        "avx2,fma,f16c",
        f16,
        32,
        8,
        |x: f16| x.to_f32(),
        |p| _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p as *const __m128i) }),
        _mm256_stream_ps
    );
    kernel!(
        f32_avx2,
        "avx2,fma,f16c",
        f32,
        32,
        8,
        |x: f32| x,
        |p| unsafe { _mm256_loadu_ps(p) },
        _mm256_stream_ps
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Every level the CPU can run (and the dispatched one), at every alignment and length
    /// around the vector widths, against `convert` (NaN payloads included: bit-for-bit).
    #[test]
    fn every_level_matches_convert_bit_for_bit() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let bits: Vec<u16> = (0..4096).map(|_| rng.random()).collect();
        let f32s: Vec<f32> = (0..4096).map(|_| f32::from_bits(rng.random())).collect();
        let bf: Vec<bf16> = bits.iter().map(|&b| bf16::from_bits(b)).collect();
        let hf: Vec<f16> = bits.iter().map(|&b| f16::from_bits(b)).collect();
        let mut out = vec![0f32; 4096 + 32];
        let mut want = vec![0f32; 4096];
        let levels: Vec<Level> = [Level::Portable, Level::Avx2, Level::Avx512]
            .into_iter()
            .filter(|&l| l <= detected())
            .collect();
        for offset in 0..17 {
            for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 100, 1000, 4000] {
                for src in [
                    Floats::BF16(&bf[..n]),
                    Floats::F16(&hf[..n]),
                    Floats::F32(&f32s[..n]),
                ] {
                    convert(src, crate::dtype::FloatsMut::F32(&mut want[..n]));
                    let dst = &mut out[offset..offset + n];
                    for level in levels.iter().copied().map(Some).chain([None]) {
                        dst.fill(-7.0);
                        match level {
                            Some(l) => widen_at(l, src, dst),
                            None => widen_to_f32_streaming(src, dst),
                        }
                        let same = dst
                            .iter()
                            .zip(&want[..n])
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        let kind = match src {
                            Floats::BF16(_) => "bf16",
                            Floats::F16(_) => "f16",
                            _ => "f32",
                        };
                        assert!(same, "{level:?} {kind}: offset {offset}, n {n}");
                    }
                }
            }
        }
        assert!(out[4096 + 16..].iter().all(|&x| x == 0.0 || x == -7.0));
    }
}
