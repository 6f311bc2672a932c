//! Which x86 vector extensions the kernels use: detected once at run time, and capped by the
//! `ACTBRIDGE_SIMD` environment variable (`avx512`, `avx2` or `portable`), the way torch's
//! `ATEN_CPU_CAPABILITY` caps its kernels. The cap exists so a benchmark or a test on an AVX-512
//! machine can run, and check, the AVX2 paths that machines without AVX-512 take. Every level
//! computes bit-identical results; only speed differs.
//!
//! `dispatch!` compiles one function body once per level (`#[target_feature]` copies, so the
//! compiler auto-vectorises it for that level) and picks the copy for [`active`] on each call.

use std::sync::OnceLock;

/// A set of vector extensions the kernels are compiled for, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Baseline x86-64 (SSE2), or any other architecture.
    Portable,
    /// AVX2 + FMA + F16C (Haswell, Zen 1 and later).
    Avx2,
    /// AVX-512 F/BW/VL on top of AVX2 (Skylake-SP, Ice Lake, Zen 4 and later).
    Avx512,
}

/// The environment variable that caps the level.
pub const ENV: &str = "ACTBRIDGE_SIMD";

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Parse a level name (case-insensitive; `none` and `scalar` mean portable).
    pub fn parse(name: &str) -> Option<Level> {
        match name.trim().to_ascii_lowercase().as_str() {
            "avx512" | "avx512f" | "avx-512" => Some(Level::Avx512),
            "avx2" => Some(Level::Avx2),
            "portable" | "none" | "scalar" | "default" => Some(Level::Portable),
            _ => None,
        }
    }
}

/// The highest level this CPU supports.
pub fn detected() -> Level {
    static DETECTED: OnceLock<Level> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            let avx512 = avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl");
            if avx512 {
                return Level::Avx512;
            }
            if avx2 {
                return Level::Avx2;
            }
        }
        Level::Portable
    })
}

/// What `ACTBRIDGE_SIMD` asks for: `None` when unset or empty, `Some(Err(value))` when it names
/// no level (the cap is then ignored).
pub fn requested() -> Option<std::result::Result<Level, String>> {
    let value = std::env::var(ENV).ok()?;
    if value.trim().is_empty() {
        return None;
    }
    Some(Level::parse(&value).ok_or(value))
}

/// The level the kernels run at: [`detected`], capped by `ACTBRIDGE_SIMD` (read once, at the
/// first kernel call).
#[inline]
pub fn active() -> Level {
    static ACTIVE: OnceLock<Level> = OnceLock::new();
    *ACTIVE.get_or_init(|| match requested() {
        Some(Ok(cap)) => cap.min(detected()),
        _ => detected(),
    })
}

/// Define `pub fn $name(args)` whose body is compiled for AVX-512, AVX2 and the baseline, and
/// run at [`active`]'s level. The body must be safe code; the arguments must be `Copy` or
/// references (they are passed on unchanged).
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match $crate::simd::active() {
                    // SAFETY: `active()` never exceeds what the CPU reports it supports.
                    $crate::simd::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::simd::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::simd::Level::Portable => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_rejected() {
        for l in [Level::Portable, Level::Avx2, Level::Avx512] {
            assert_eq!(Level::parse(l.name()), Some(l));
            assert_eq!(Level::parse(&l.name().to_uppercase()), Some(l));
        }
        assert_eq!(Level::parse("sse9"), None);
        assert_eq!(Level::parse(""), None);
    }

    #[test]
    fn active_never_exceeds_detected() {
        assert!(active() <= detected());
        assert!(Level::Portable < Level::Avx2 && Level::Avx2 < Level::Avx512);
    }
}
