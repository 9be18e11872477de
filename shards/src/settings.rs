//! A stage's output folder remembers the settings that made it (`encode.json`,
//! `captions.json`, ...), so a re-run with other settings cannot mix two kinds of output in one
//! folder: it resumes with the same settings or is refused.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{ShardError, atomic};

/// Writes `settings` as `dir/file` if the folder has none yet, or checks them against the
/// folder's own; different settings are an error that names both.
pub fn pin<T>(dir: &Path, file: &str, settings: &T) -> Result<(), ShardError>
where
    T: Serialize + DeserializeOwned + PartialEq,
{
    let path = dir.join(file);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let existing: T =
                serde_json::from_slice(&bytes).map_err(|e| ShardError::format(&path, e))?;
            if &existing != settings {
                return Err(ShardError::format(
                    &path,
                    format!(
                        "{} holds output made with other settings ({}, asked for {}); use another output folder",
                        dir.display(),
                        serde_json::to_string(&existing).unwrap_or_default(),
                        serde_json::to_string(settings).unwrap_or_default(),
                    ),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let json =
                serde_json::to_vec_pretty(settings).map_err(|e| ShardError::format(&path, e))?;
            atomic::write_bytes(&path, &json)
        }
        Err(e) => Err(ShardError::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct S {
        model: String,
    }

    #[test]
    fn the_first_settings_stay_and_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = S { model: "a".into() };
        pin(dir.path(), "s.json", &a).unwrap();
        pin(dir.path(), "s.json", &a).unwrap();
        let err = pin(dir.path(), "s.json", &S { model: "b".into() }).unwrap_err();
        assert!(err.to_string().contains("other settings"), "{err}");
    }
}
