//! Reads every metadata file once, applies the metadata filter, and cuts the kept rows into
//! shard inputs (`_inputs/NNNNN.parquet`, `rows_per_shard` rows each, in input order), as
//! img2dataset's reader cuts its input into shard files before any download. Workers then
//! claim shards by index.
//!
//! Every row group of every file is a unit of work: units are read and screened by the rules on
//! all cores (`Filter::screen`), a few at a time, and admitted in input order
//! (`Filter::admit`: deduplication and the funnel), so the result is the same on any number of
//! cores. Memory is bounded by the units in flight (twice the cores) and the rows they keep.
//!
//! The result is recorded in `_inputs/prepared.json`, written last: a preparation that was
//! killed is redone from the start (it is deterministic, so it writes the same files), and a
//! finished one is reused as long as the inputs and the filter are the same.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::IngestError;
use crate::config::IngestConfig;
use crate::filter::{Filter, Funnel, Rules, Screened};
use crate::reader::{MetaRow, MetadataReader, ReadSpec, write_metadata};

/// Rows per record batch while screening.
const BATCH_ROWS: usize = 64 * 1024;

/// What preparation produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prepared {
    pub shards: u32,
    pub rows: u64,
    pub funnel: Funnel,
    /// Optional columns missing from at least one input file, with the file.
    pub missing_columns: Vec<(String, String)>,
    /// The metadata files and their sizes, and the filter, this preparation was made from.
    pub inputs: Vec<(String, u64)>,
    pub filter: serde_json::Value,
}

pub const INPUTS_DIR: &str = "_inputs";
const MARKER: &str = "prepared.json";

/// Where shard `index`'s input rows are.
pub fn input_path(output: &Path, index: u32) -> PathBuf {
    output
        .join(INPUTS_DIR)
        .join(format!("{}.parquet", llamagen_shards::shard_name(index)))
}

/// The finished preparation in `output`, if there is one.
pub fn load(output: &Path) -> Result<Option<Prepared>, IngestError> {
    let marker = output.join(INPUTS_DIR).join(MARKER);
    match std::fs::read(&marker) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| IngestError::Metadata {
                path: marker,
                problem: format!("unreadable preparation record: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IngestError::io(&marker, e)),
    }
}

/// Filters `inputs` into shard inputs under `output`, or returns the earlier preparation of
/// the same inputs and filter.
pub fn prepare(
    inputs: &[PathBuf],
    config: &IngestConfig,
    output: &Path,
) -> Result<Prepared, IngestError> {
    let mut sized = Vec::new();
    for path in inputs {
        let meta = std::fs::metadata(path).map_err(|e| IngestError::io(path, e))?;
        sized.push((path.display().to_string(), meta.len()));
    }
    let filter_json = serde_json::json!({
        "metadata_filter": config.metadata_filter,
        "rows_per_shard": config.rows_per_shard,
        "url_column": config.url_column,
        "caption_column": config.caption_column,
    });
    if let Some(done) = load(output)? {
        if done.inputs == sized && done.filter == filter_json {
            return Ok(done);
        }
        return Err(IngestError::Config(format!(
            "{} was prepared from other metadata files or another filter; use a new output folder",
            output.display()
        )));
    }
    let dir = output.join(INPUTS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| IngestError::io(&dir, e))?;
    llamagen_shards::atomic::remove_leftovers(&dir)?;

    let per_shard = config.rows_per_shard as usize;
    let mut pending: Vec<MetaRow> = Vec::with_capacity(per_shard);
    let mut shards = 0u32;
    let mut rows = 0u64;
    let flush = |pending: &mut Vec<MetaRow>, shards: &mut u32| -> Result<(), IngestError> {
        let path = input_path(output, *shards);
        let tmp = dir.join(format!(".tmp-{}", llamagen_shards::shard_name(*shards)));
        write_metadata(&tmp, "url", "caption", pending)?;
        // On disk before the rename, so a crash never leaves a shard input with a hole.
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| IngestError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| IngestError::io(&path, e))?;
        *shards += 1;
        pending.clear();
        Ok(())
    };

    let mut spec = ReadSpec::new(&config.url_column, &config.caption_column, BATCH_ROWS);
    // Rules are decided by the first file's columns; a later file lacking a column the first
    // had leaves NaN there, which fails that rule row by row (and is listed in the record).
    let mut filter: Option<Filter> = None;
    let mut missing_columns = Vec::new();
    let mut units: Vec<(&Path, usize)> = Vec::new();
    for path in inputs {
        let reader = MetadataReader::open_with(path, &spec)?;
        if filter.is_none() {
            let f = Filter::new(&config.metadata_filter, &reader.missing)?;
            spec.extra_columns = f.sql_columns();
            filter = Some(f);
        }
        for column in &reader.missing {
            missing_columns.push((path.display().to_string(), column.clone()));
        }
        units.extend((0..reader.row_groups).map(|group| (path.as_path(), group)));
    }
    if let Some(f) = filter.as_mut() {
        let rules = f.rules();
        let screen = |&(path, group): &(&Path, usize)| screen_row_group(&rules, path, group, &spec);
        in_order(&units, screen, |unit| {
            for row in f.admit(unit?) {
                rows += 1;
                pending.push(row);
                if pending.len() == per_shard {
                    flush(&mut pending, &mut shards)?;
                }
            }
            Ok(())
        })?;
    }
    if !pending.is_empty() {
        flush(&mut pending, &mut shards)?;
    }
    let funnel = filter.map(|f| f.funnel().clone()).unwrap_or_default();
    let prepared = Prepared {
        shards,
        rows,
        funnel,
        missing_columns,
        inputs: sized,
        filter: filter_json,
    };
    let json =
        serde_json::to_vec_pretty(&prepared).map_err(|e| IngestError::Config(e.to_string()))?;
    // The renames are durable once the folder is synced; only then may the marker say so.
    if let Ok(folder) = std::fs::File::open(&dir) {
        let _ = folder.sync_all();
    }
    llamagen_shards::atomic::write_bytes(&dir.join(MARKER), &json)?;
    Ok(prepared)
}

/// Runs `work` over `units` on every core and hands each result to `take` in input order on
/// the calling thread while later units are being worked on. At most twice as many units as
/// cores are in work or waiting to be taken, which bounds the memory. The first error, from
/// either side, stops the rest.
fn in_order<U: Sync, R: Send>(
    units: &[U],
    work: impl Fn(&U) -> Result<R, IngestError> + Sync,
    mut take: impl FnMut(Result<R, IngestError>) -> Result<(), IngestError>,
) -> Result<(), IngestError> {
    use std::collections::BTreeMap;
    use std::sync::{Condvar, Mutex, MutexGuard};

    struct State<R> {
        next: usize,
        taken: usize,
        stop: bool,
        done: BTreeMap<usize, R>,
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let window = 2 * workers;
    let state = Mutex::new(State {
        next: 0,
        taken: 0,
        stop: false,
        done: BTreeMap::new(),
    });
    let changed = Condvar::new();
    // A worker that panicked is reported by the scope; the state itself stays consistent.
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    fn wait<'a, T>(changed: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }
    std::thread::scope(|scope| {
        for _ in 0..workers.min(units.len()) {
            scope.spawn(|| {
                loop {
                    let index = {
                        let mut s = lock();
                        while !s.stop && s.next < units.len() && s.next >= s.taken + window {
                            s = wait(&changed, s);
                        }
                        if s.stop || s.next >= units.len() {
                            return;
                        }
                        s.next += 1;
                        s.next - 1
                    };
                    let result = work(&units[index]);
                    lock().done.insert(index, result);
                    changed.notify_all();
                }
            });
        }
        let stop = || {
            lock().stop = true;
            changed.notify_all();
        };
        for index in 0..units.len() {
            let result = {
                let mut s = lock();
                loop {
                    if let Some(r) = s.done.remove(&index) {
                        s.taken = index + 1;
                        break r;
                    }
                    s = wait(&changed, s);
                }
            };
            changed.notify_all();
            if let Err(e) = take(result) {
                stop();
                return Err(e);
            }
        }
        Ok(())
    })
}

/// Every rule but the deduplication over one row group.
fn screen_row_group(
    rules: &Rules,
    path: &Path,
    group: usize,
    spec: &ReadSpec,
) -> Result<Screened, IngestError> {
    let spec = ReadSpec {
        row_groups: Some(vec![group]),
        ..spec.clone()
    };
    let mut reader = MetadataReader::open_with(path, &spec)?;
    let mut screened = Screened::default();
    while let Some(batch) = reader.next_batch() {
        screened.append(rules.screen(&batch?)?);
    }
    Ok(screened)
}

/// The rows of shard `index`.
pub fn read_shard(output: &Path, index: u32) -> Result<Vec<MetaRow>, IngestError> {
    let path = input_path(output, index);
    let mut rows = Vec::new();
    for batch in MetadataReader::open(&path, "url", "caption", 64 * 1024)? {
        rows.extend(batch?);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_are_taken_in_input_order_whatever_order_they_finish_in() {
        let units: Vec<u64> = (0..40).collect();
        let mut taken = Vec::new();
        in_order(
            &units,
            |&u| {
                // Later units often finish first.
                std::thread::sleep(std::time::Duration::from_micros(
                    (40 - u) * 50 + (u * 7919) % 300,
                ));
                Ok(u * 10)
            },
            |r| {
                taken.push(r?);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(taken, units.iter().map(|u| u * 10).collect::<Vec<_>>());
    }

    #[test]
    fn the_first_error_in_input_order_stops_the_rest() {
        let units: Vec<u64> = (0..1_000).collect();
        let worked = std::sync::atomic::AtomicUsize::new(0);
        let mut taken = 0;
        let err = in_order(
            &units,
            |&u| {
                worked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if u == 5 || u == 7 {
                    Err(IngestError::Config(format!("unit {u}")))
                } else {
                    Ok(u)
                }
            },
            |r| {
                r?;
                taken += 1;
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            IngestError::Config("unit 5".into()).to_string()
        );
        assert_eq!(taken, 5);
        // Nothing far past the failed unit was started: the window bounds the work in flight.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(
            worked.into_inner() <= 6 + 2 * cores,
            "too much work after the error"
        );
    }
}
