//! Sample images of an evaluation, served from the folder its `samples_path` names. A request
//! names an evaluation and an index into the folder's sorted `*.png` files, never a file
//! name, so no request can reach outside that folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::{AppState, DashboardError, queries};

/// A grid never shows more than this many images.
pub const GRID: usize = 16;

/// One image of a grid: its URL and its caption (the prompt from a `NAME.txt` next to it for
/// text-to-image samples, else the file name).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SampleImage {
    pub url: String,
    pub caption: String,
}

/// The sorted PNG files of `dir` (the first `limit`).
fn pngs(dir: &Path, limit: usize) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")) && p.is_file())
        .collect();
    files.sort();
    files.truncate(limit);
    Ok(files)
}

/// The grid's files of each samples folder, listed once. A benchmark's folder holds 50,000
/// PNGs, which take tens of milliseconds to list and sort, and one page asks for the listing
/// seventeen times (the grid, then each image).
#[derive(Default)]
pub struct Listings(Mutex<HashMap<ListingKey, Arc<Vec<PathBuf>>>>);

/// An evaluation and its samples folder (a re-run may record another folder).
type ListingKey = (i64, String);

impl Listings {
    /// Entries kept before the cache starts over (a listing is at most 16 paths).
    const MAX: usize = 1024;

    /// The first [`GRID`] PNGs of `dir`, the samples folder of `evaluation_id`. A folder that
    /// cannot be read is not remembered, so it is retried next time.
    pub fn get(&self, evaluation_id: i64, dir: &str) -> std::io::Result<Arc<Vec<PathBuf>>> {
        let key = (evaluation_id, dir.to_string());
        if let Some(files) = self.0.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(files);
        }
        let files = Arc::new(pngs(Path::new(dir), GRID)?);
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= Self::MAX {
                map.clear();
            }
            map.insert(key, files.clone());
        }
        Ok(files)
    }
}

/// The grid of the evaluation `evaluation_id` whose samples are under `dir`. A folder that is
/// gone (samples cleaned up) gives an empty grid, not an error.
pub fn grid(listings: &Listings, evaluation_id: i64, dir: &str) -> Vec<SampleImage> {
    let files = match listings.get(evaluation_id, dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!("samples of evaluation {evaluation_id} at {dir}: {e}");
            return Vec::new();
        }
    };
    files
        .iter()
        .enumerate()
        .map(|(i, file)| {
            let caption = std::fs::read_to_string(file.with_extension("txt"))
                .ok()
                .map(|t| t.trim().chars().take(300).collect::<String>())
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| {
                    file.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                });
            SampleImage {
                url: format!("/samples/{evaluation_id}/{i}"),
                caption,
            }
        })
        .collect()
}

/// `GET /samples/{evaluation_id}/{index}`: the index-th PNG of the evaluation's samples.
pub async fn image(
    State(state): State<AppState>,
    UrlPath((evaluation_id, index)): UrlPath<(i64, usize)>,
) -> Result<Response, DashboardError> {
    if index >= GRID {
        return Err(DashboardError::BadRequest(format!(
            "sample index {index} is outside the grid of {GRID}"
        )));
    }
    let dir = queries::samples_path(&state.pool, evaluation_id)
        .await?
        .ok_or_else(|| {
            DashboardError::NotFound(format!("evaluation {evaluation_id} kept no samples"))
        })?;
    let listings = state.listings.clone();
    let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, DashboardError> {
        let files = listings
            .get(evaluation_id, &dir)
            .map_err(|e| DashboardError::NotFound(format!("samples folder unreadable: {e}")))?;
        let file = files
            .get(index)
            .ok_or_else(|| DashboardError::NotFound(format!("no sample {index}")))?;
        std::fs::read(file).map_err(|e| DashboardError::NotFound(format!("sample {index}: {e}")))
    })
    .await
    .map_err(|e| DashboardError::Internal(format!("sample reader: {e}")))??;
    let mut response = bytes.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(response)
}
