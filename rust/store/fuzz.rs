//! Property-based fuzzing of the parsers that read bytes from disk (the manifest and the shard
//! header): random bytes and mutations of valid files never panic, and a mutated manifest that
//! still parses is exactly the manifest that was written (its checksum admits nothing else).

use proptest::prelude::*;

use super::manifest::{ColumnSpec, Manifest, ShardEntry, SiteSpec};
use super::shard::{self, TensorBytes};
use crate::dtype::DType;

fn manifest() -> Manifest {
    let mut m = Manifest::new(
        vec![
            SiteSpec {
                name: "source".into(),
                dim: 4,
                dtype: DType::Bfloat16,
            },
            SiteSpec {
                name: "target".into(),
                dim: 3,
                dtype: DType::Float32,
            },
        ],
        vec![ColumnSpec {
            name: "doc".into(),
            dtype: DType::Int64,
        }],
        serde_json::json!({"model": "x", "layer": 13, "alpha": 0.5, "tags": ["a", "b"]}),
    )
    .unwrap();
    m.shards.push(ShardEntry {
        file: "shard-000000.safetensors".into(),
        rows: 3,
        bytes: 100,
        xxh3: "0123456789abcdef".into(),
    });
    m.rows = 3;
    m
}

/// A valid shard for `manifest()`'s schema: 3 rows.
fn shard_bytes() -> Vec<u8> {
    let source = vec![0u8; 3 * 4 * 2];
    let target = vec![0u8; 3 * 3 * 4];
    let doc = vec![0u8; 3 * 8];
    let mut tensors = vec![
        TensorBytes {
            name: "source",
            dtype: DType::Bfloat16,
            shape: vec![3, 4],
            data: &source,
        },
        TensorBytes {
            name: "target",
            dtype: DType::Float32,
            shape: vec![3, 3],
            data: &target,
        },
        TensorBytes {
            name: "doc",
            dtype: DType::Int64,
            shape: vec![3],
            data: &doc,
        },
    ];
    shard::aligned_order(&mut tensors);
    let mut out = shard::header(&tensors, 0);
    for t in &tensors {
        out.extend_from_slice(t.data);
    }
    out
}

fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, value, op) in edits {
        if bytes.is_empty() {
            break;
        }
        let k = at % bytes.len();
        match op % 4 {
            0 => bytes[k] = value,
            1 => bytes[k] ^= 1 << (value % 8),
            2 => bytes.truncate(k),
            _ => bytes.insert(k, value),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn manifest_parser_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Manifest::parse(&bytes);
    }

    #[test]
    fn a_mutated_manifest_fails_or_is_unchanged(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)
    ) {
        let m = manifest();
        let good = m.to_bytes().unwrap();
        if let Ok(parsed) = Manifest::parse(&mutate(good, &edits)) {
            prop_assert_eq!(parsed, m); // only whitespace (or nothing) changed
        }
    }

    #[test]
    fn shard_parser_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let m = manifest();
        let _ = shard::parse(&bytes, 0, 3, &m.sites, &m.columns);
    }

    #[test]
    fn a_mutated_shard_never_panics_and_stays_in_bounds(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
        rows in 0u64..8,
    ) {
        let m = manifest();
        let bytes = mutate(shard_bytes(), &edits);
        if let Ok(layout) = shard::parse(&bytes, 0, rows, &m.sites, &m.columns) {
            for r in layout.sites.iter().chain(&layout.columns) {
                prop_assert!(r.start <= r.end && r.end <= bytes.len());
            }
        }
    }
}

#[test]
fn the_unmutated_files_parse() {
    let m = manifest();
    assert_eq!(Manifest::parse(&m.to_bytes().unwrap()).unwrap(), m);
    assert!(shard::parse(&shard_bytes(), 0, 3, &m.sites, &m.columns).is_ok());
}
