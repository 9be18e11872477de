//! One attempt at a shard writes its three files into a folder of its own beside the shard's,
//! `.attempt-NNNNN-A/` (shard NNNNN, attempt A), and they are moved into place only after the
//! database has recorded the shard as done by that attempt. Only one attempt can be recorded,
//! so a worker that was paused past its lease (and whose shard another worker redid) never
//! moves anything: the folder never holds a tar of one attempt beside the manifest of another.
//!
//! A worker can die between the database's record and the last move; the staged folder is
//! then complete and recorded, and [`publish`] (by whoever finds it) finishes the moves. The
//! stats file moves last, so a shard is finished ([`crate::ShardPaths::is_finished`]) only
//! with its whole set in place.

use std::path::{Path, PathBuf};

use crate::{ShardError, ShardPaths};

const PREFIX: &str = ".attempt-";

/// Where attempt `attempt` at shard `index` of `dir` stages its files.
pub fn attempt_dir(dir: &Path, index: u32, attempt: i32) -> PathBuf {
    dir.join(format!("{PREFIX}{index:05}-{attempt}"))
}

/// A staged attempt found in a shard folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub index: u32,
    pub attempt: i32,
    pub path: PathBuf,
}

/// The staged attempts in `dir`, in name order.
pub fn staged_attempts(dir: &Path) -> Result<Vec<Staged>, ShardError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ShardError::io(dir, e)),
    };
    let mut staged = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ShardError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((index, attempt)) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('-'))
        else {
            continue;
        };
        if let (Ok(index), Ok(attempt)) = (index.parse(), attempt.parse()) {
            staged.push(Staged {
                index,
                attempt,
                path: entry.path(),
            });
        }
    }
    staged.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(staged)
}

/// Moves the staged set of shard `index` from `staged` into `dir` (tar, manifest, then the
/// stats file that marks it finished) and removes `staged`. A file that is no longer staged
/// but is in place was moved by another process publishing the same attempt. Call it only for
/// the attempt the database recorded.
pub fn publish(staged: &Path, dir: &Path, index: u32) -> Result<(), ShardError> {
    let from = ShardPaths::new(staged, index);
    let to = ShardPaths::new(dir, index);
    let moves = [
        (&from.tar, &to.tar),
        (&from.parquet, &to.parquet),
        (&from.stats, &to.stats),
    ];
    // Nothing moves unless the whole set is there, staged or already in place.
    if let Some((missing, _)) = moves
        .iter()
        .find(|(source, target)| !source.is_file() && !target.is_file())
    {
        return Err(ShardError::format(
            missing,
            "the staged shard is incomplete; nothing was published",
        ));
    }
    for (source, target) in moves {
        match std::fs::rename(source, target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && target.is_file() => {}
            Err(e) => return Err(ShardError::io(source, e)),
        }
    }
    // The moves are durable once the folder is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    discard(staged)
}

/// Removes a staged attempt that will never be published (the database recorded another
/// attempt, or none).
pub fn discard(staged: &Path) -> Result<(), ShardError> {
    match std::fs::remove_dir_all(staged) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ShardError::io(staged, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(dir: &Path, index: u32, attempt: i32, content: &str) -> PathBuf {
        let staged = attempt_dir(dir, index, attempt);
        std::fs::create_dir_all(&staged).unwrap();
        let paths = ShardPaths::new(&staged, index);
        for path in [&paths.tar, &paths.parquet, &paths.stats] {
            std::fs::write(path, content).unwrap();
        }
        staged
    }

    #[test]
    fn a_published_set_is_one_attempt_s_and_publishing_twice_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let winner = stage(dir.path(), 3, 2, "attempt 2");
        let loser = stage(dir.path(), 3, 1, "attempt 1");
        let found = staged_attempts(dir.path()).unwrap();
        assert_eq!(
            found
                .iter()
                .map(|s| (s.index, s.attempt))
                .collect::<Vec<_>>(),
            [(3, 1), (3, 2)]
        );
        publish(&winner, dir.path(), 3).unwrap();
        // A second publisher of the same attempt (the first died after some of its moves).
        publish(&winner, dir.path(), 3).unwrap();
        discard(&loser).unwrap();
        let paths = ShardPaths::new(dir.path(), 3);
        assert!(paths.is_finished());
        for path in [&paths.tar, &paths.parquet, &paths.stats] {
            assert_eq!(std::fs::read_to_string(path).unwrap(), "attempt 2");
        }
        assert!(staged_attempts(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn an_incomplete_staged_set_is_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let staged = stage(dir.path(), 0, 1, "x");
        std::fs::remove_file(ShardPaths::new(&staged, 0).parquet).unwrap();
        assert!(publish(&staged, dir.path(), 0).is_err());
        let paths = ShardPaths::new(dir.path(), 0);
        assert!(!paths.tar.exists() && !paths.is_finished(), "nothing moved");
    }
}
