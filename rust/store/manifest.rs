//! `manifest.json`: the list of committed shards and the store's schema, published atomically.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::{IoContext, Result, StoreError};

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: &str = "actbridge.store";
pub const VERSION: u32 = 1;
/// Widest site accepted; anything wider is taken as a garbled header, not a real model.
pub const MAX_DIM: u64 = 1 << 20;

/// The key of the manifest's own checksum.
pub const CHECKSUM: &str = "checksum";

/// xxh3-64 (16 hex digits) of `value`'s compact JSON; serde_json's maps keep keys sorted, so
/// the text is canonical.
fn canonical_checksum(value: &serde_json::Value) -> String {
    let text = serde_json::to_vec(value).unwrap_or_default();
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&text))
}

/// One activation block per row: `dim` floats of `dtype`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    pub name: String,
    pub dim: u64,
    pub dtype: DType,
}

/// One integer per row (token_id, doc, pos, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    pub dtype: DType,
}

/// A committed, immutable shard file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    /// xxh3-64 of the whole file, 16 lowercase hex digits.
    pub xxh3: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub rows: u64,
    pub sites: Vec<SiteSpec>,
    pub columns: Vec<ColumnSpec>,
    pub shards: Vec<ShardEntry>,
    #[serde(default = "empty_object")]
    pub metadata: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// A name usable as a site, a column and a safetensors tensor name.
pub fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "__metadata__"
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid(format!(
            "invalid {kind} name {name:?}: use 1-128 characters from [A-Za-z0-9_.-] (and not \"__metadata__\")"
        )))
    }
}

impl Manifest {
    pub fn new(
        sites: Vec<SiteSpec>,
        columns: Vec<ColumnSpec>,
        metadata: serde_json::Value,
    ) -> Result<Self> {
        let m = Manifest {
            format: FORMAT.into(),
            version: VERSION,
            rows: 0,
            sites,
            columns,
            shards: vec![],
            metadata,
        };
        m.check_schema().map_err(StoreError::invalid)?;
        Ok(m)
    }

    /// Schema rules shared by new stores and parsed manifests.
    fn check_schema(&self) -> std::result::Result<(), String> {
        if self.sites.is_empty() {
            return Err("a store needs at least one site, e.g. sites={\"source\": 576}".into());
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.sites {
            check_name("site", &s.name).map_err(|e| e.to_string())?;
            if !s.dtype.is_float() {
                return Err(format!(
                    "site {:?} has dtype {}; sites hold float32, float16 or bfloat16",
                    s.name,
                    s.dtype.name()
                ));
            }
            if s.dim == 0 || s.dim > MAX_DIM {
                return Err(format!(
                    "site {:?} has width {}; widths must be between 1 and {MAX_DIM}",
                    s.name, s.dim
                ));
            }
            if !seen.insert(s.name.as_str()) {
                return Err(format!("name {:?} is used twice", s.name));
            }
        }
        for c in &self.columns {
            check_name("column", &c.name).map_err(|e| e.to_string())?;
            if c.dtype != DType::Int64 {
                return Err(format!(
                    "column {:?} has dtype {}; columns are int64",
                    c.name,
                    c.dtype.name()
                ));
            }
            if !seen.insert(c.name.as_str()) {
                return Err(format!(
                    "name {:?} is used twice (sites and columns share one namespace)",
                    c.name
                ));
            }
        }
        if !self.metadata.is_object() {
            return Err("metadata must be a JSON object".into());
        }
        Ok(())
    }

    /// Everything a reader relies on before it touches a shard.
    fn check(&self) -> std::result::Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format is {:?}, expected {FORMAT:?}", self.format));
        }
        if self.version != VERSION {
            return Err(format!(
                "format version {} is not supported (this actbridge reads version {VERSION})",
                self.version
            ));
        }
        self.check_schema()?;
        let mut total: u64 = 0;
        for (i, s) in self.shards.iter().enumerate() {
            let plain = !s.file.is_empty()
                && !s.file.starts_with('.')
                && s.file.ends_with(".safetensors")
                && !s.file.contains(['/', '\\', '\0']);
            if !plain {
                return Err(format!(
                    "shard {i} has file name {:?}; shard names are plain file names",
                    s.file
                ));
            }
            if s.rows == 0 || s.bytes < 8 {
                return Err(format!(
                    "shard {:?} lists {} rows and {} bytes",
                    s.file, s.rows, s.bytes
                ));
            }
            if s.xxh3.len() != 16 || !s.xxh3.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "shard {:?} has checksum {:?}, expected 16 hex digits",
                    s.file, s.xxh3
                ));
            }
            total = total.checked_add(s.rows).ok_or("row counts overflow")?;
        }
        if total != self.rows {
            return Err(format!(
                "shards hold {total} rows but the manifest says {}",
                self.rows
            ));
        }
        Ok(())
    }

    /// Read and check `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let Some(bytes) = super::files::read_capped(&path, super::files::MAX_MANIFEST_BYTES)?
        else {
            return Err(StoreError::NotFound(dir.to_path_buf()));
        };
        Self::parse(&bytes).map_err(|detail| StoreError::corrupt(&path, detail))
    }

    /// Parse and check manifest bytes. A manifest written with a `checksum` (every one this
    /// version publishes) must match it: the xxh3 of its canonical JSON (sorted keys, compact)
    /// without that key. One without (written before checksums) is accepted; unknown keys are
    /// refused, so a damaged key name cannot turn the check off.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Manifest, String> {
        let mut value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest: {e}"))?;
        if let Some(obj) = value.as_object_mut() {
            match obj.remove(CHECKSUM) {
                None => {}
                Some(serde_json::Value::String(want)) => {
                    let have = canonical_checksum(&value);
                    if want != have {
                        return Err(format!(
                            "the manifest does not match its checksum ({want} recorded, {have} \
                             computed): it was edited or damaged"
                        ));
                    }
                }
                Some(_) => return Err(format!("{CHECKSUM:?} must be a string")),
            }
        }
        let m: Manifest =
            serde_json::from_value(value).map_err(|e| format!("not a valid manifest: {e}"))?;
        m.check()?;
        Ok(m)
    }

    /// The manifest as JSON bytes with its checksum.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut value =
            serde_json::to_value(self).map_err(|e| StoreError::invalid(e.to_string()))?;
        let sum = canonical_checksum(&value);
        if let Some(obj) = value.as_object_mut() {
            obj.insert(CHECKSUM.into(), serde_json::Value::String(sum));
        }
        serde_json::to_vec_pretty(&value).map_err(|e| StoreError::invalid(e.to_string()))
    }

    /// Publish atomically: temp file, fsync, rename over manifest.json, fsync the directory.
    pub fn publish(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(".tmp-manifest.json");
        let bytes = self.to_bytes()?;
        {
            let mut f = fs::File::create(&tmp).at(&tmp)?;
            f.write_all(&bytes).at(&tmp)?;
            f.sync_all().at(&tmp)?;
        }
        let dst = dir.join(MANIFEST);
        fs::rename(&tmp, &dst).at(&dst)?;
        sync_dir(dir)
    }
}

/// fsync a directory so that renames inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let mut m = Manifest::new(
            vec![SiteSpec {
                name: "source".into(),
                dim: 4,
                dtype: DType::Bfloat16,
            }],
            vec![ColumnSpec {
                name: "doc".into(),
                dtype: DType::Int64,
            }],
            serde_json::json!({"model": "x"}),
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

    #[test]
    fn round_trips_through_json() {
        let m = sample();
        let bytes = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::parse(&bytes).unwrap(), m);
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn rejects_inconsistent_or_hostile_manifests() {
        let cases: Vec<Box<dyn Fn(&mut Manifest)>> = vec![
            Box::new(|m| m.rows = 4),
            Box::new(|m| m.shards[0].file = "../../etc/passwd.safetensors".into()),
            Box::new(|m| m.shards[0].file = ".tmp-x.safetensors".into()),
            Box::new(|m| m.shards[0].xxh3 = "zz".into()),
            Box::new(|m| m.sites[0].dim = 0),
            Box::new(|m| m.sites[0].dim = MAX_DIM + 1),
            Box::new(|m| m.version = 99),
            Box::new(|m| m.columns[0].name = "source".into()),
            Box::new(|m| m.sites[0].dtype = DType::Int64),
            Box::new(|m| m.metadata = serde_json::json!([1])),
            Box::new(|m| m.sites.clear()),
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut m = sample();
            mutate(&mut m);
            let bytes = serde_json::to_vec(&m).unwrap();
            assert!(Manifest::parse(&bytes).is_err(), "case {i} accepted");
        }
    }

    #[test]
    fn garbage_never_panics() {
        let good = serde_json::to_vec(&sample()).unwrap();
        let mut state = 0x1234_5678_u64;
        for _ in 0..3000 {
            let mut b = good.clone();
            for _ in 0..(state % 4 + 1) {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (state >> 33) as usize % b.len();
                b[at] = (state >> 17) as u8;
            }
            let _ = Manifest::parse(&b);
            b.truncate((state >> 40) as usize % b.len());
            let _ = Manifest::parse(&b);
        }
    }
}
