//! `NNNNN_stats.json`: img2dataset's per-shard statistics (same field names), plus the
//! timings of each phase so that a slow shard says where its time went.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{ShardError, atomic};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardStats {
    /// Input rows.
    pub count: u64,
    pub successes: u64,
    pub failed_to_download: u64,
    pub failed_to_resize: u64,
    /// Wall-clock seconds for the shard.
    pub duration: f64,
    /// Unix seconds.
    pub start_time: f64,
    pub end_time: f64,
    /// Error message -> rows (img2dataset's `status_dict`), successes under "success".
    pub status_dict: BTreeMap<String, u64>,
    pub bytes_downloaded: u64,
    pub bytes_written: u64,
    /// Summed seconds spent per phase across the shard's concurrent tasks: download, decode,
    /// resize, encode, write.
    #[serde(default)]
    pub seconds: BTreeMap<String, f64>,
}

impl ShardStats {
    pub fn write(&self, path: &Path) -> Result<(), ShardError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| ShardError::format(path, e))?;
        atomic::write_bytes(path, &json)
    }

    pub fn read(path: &Path) -> Result<Self, ShardError> {
        let bytes = std::fs::read(path).map_err(|e| ShardError::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| ShardError::format(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000_stats.json");
        let mut s = ShardStats {
            count: 3,
            successes: 2,
            failed_to_download: 1,
            ..Default::default()
        };
        s.status_dict.insert("HTTP 404".into(), 1);
        s.write(&path).unwrap();
        assert_eq!(ShardStats::read(&path).unwrap(), s);
    }
}
