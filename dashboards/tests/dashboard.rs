//! The dashboard end to end: a real PostgreSQL with seeded results, the server on loopback
//! through the read-only role, plain HTTP probes, and Debian's headless chromium clicking
//! through the pages.

use std::path::{Path, PathBuf};
use std::time::Duration;

use headless_chrome::{Browser, LaunchOptions, Tab};
use llamagen_dashboard::testing::{HOSTILE_CAPTION, HOSTILE_NAME, Seeded, seed};
use llamagen_dashboard::{AppState, ReaderLogin, connect_reader, verify_read_only};
use llamagen_store::testing::TestDatabase;

struct Server {
    base: String,
    seeded: Seeded,
    db: TestDatabase,
    _samples: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
}

/// The bundled photos as a samples folder, the first with the hostile caption beside it.
fn samples_folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../evaluate/tests/fixtures");
    for (i, name) in ["astronaut", "coffee", "chelsea"].iter().enumerate() {
        let photo = image::open(fixtures.join(format!("{name}_original.png"))).unwrap();
        photo
            .thumbnail(64, 64)
            .save(dir.path().join(format!("{i:06}.png")))
            .unwrap();
    }
    std::fs::write(dir.path().join("000000.txt"), HOSTILE_CAPTION).unwrap();
    dir
}

async fn start() -> Server {
    let db = TestDatabase::new().await;
    let samples = samples_folder();
    let seeded = seed(
        &db.pool,
        4,
        5,
        &[1.5, 1.75, 2.0, 2.25, 3.0],
        Some(samples.path().to_str().unwrap()),
    )
    .await
    .unwrap();
    let pool = connect_reader(ReaderLogin::SetRole(db.options.clone()), 4)
        .await
        .unwrap();
    verify_read_only(&pool).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    tokio::spawn(llamagen_dashboard::serve(
        listener,
        AppState::new(pool),
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        base,
        seeded,
        db,
        _samples: samples,
        stop,
    }
}

impl Server {
    async fn finish(self) {
        let _ = self.stop.send(());
        self.db.drop_database().await;
    }
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn pages_and_api_answer_and_bad_parameters_get_400() {
    let server = start().await;
    let base = &server.base;

    let (status, html) = get(&format!("{base}/")).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("<table id=\"leaderboard\""));
    let (status, html) = get(&format!("{base}/?model=evil")).await;
    assert_eq!(status, 200, "{html}");
    // The hostile name is escaped in the leaderboard.
    assert!(
        html.contains("&#60;script&#62;window.pwned="),
        "escaped name missing"
    );
    assert!(!html.contains("<script"));
    assert!(!html.contains(HOSTILE_NAME));

    let (status, json) = get(&format!("{base}/api/leaderboard?per_page=500")).await;
    assert_eq!(status, 200, "{json}");
    let page: serde_json::Value = serde_json::from_str(&json).unwrap();
    // 5 generators x 5 checkpoints x 5 scales, plus the tokenizer's reconstruction.
    assert_eq!(page["total"], 126);
    assert_eq!(server.seeded.evaluations, 126);
    let fids: Vec<f64> = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["fid"].as_f64())
        .collect();
    assert_eq!(fids.len(), 125);
    assert!(
        fids.windows(2).all(|w| w[0] <= w[1]),
        "not ascending by FID"
    );
    let best = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["best_of_model"] == true)
        .count();
    assert_eq!(best, 6, "one best row per model and benchmark");

    // Filters: a metric range and a model substring are honoured, as bound parameters.
    let (_, json) = get(&format!(
        "{base}/api/leaderboard?metric=fid&max=4&model=%27%20OR%201%3D1%20--"
    ))
    .await;
    let page: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        page["total"], 0,
        "an injection-shaped name matched rows: {json}"
    );
    let (_, json) = get(&format!(
        "{base}/api/leaderboard?metric=fid&max=10&kind=generator"
    ))
    .await;
    let page: serde_json::Value = serde_json::from_str(&json).unwrap();
    let n = page["total"].as_i64().unwrap();
    assert!(n > 0 && n < 125, "{n}");
    assert!(
        page["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["fid"].as_f64().unwrap() <= 10.0)
    );

    for probe in [
        "/?sort=fid;DROP%20TABLE%20models",
        "/?sort=fid%20desc",
        "/?order=1;SELECT%20pg_sleep(5)",
        "/?kind=generator%27%20OR%20%271%27=%271",
        "/?metric=fid&min=abc",
        "/?metric=fid&min=NaN",
        "/?page=0",
        "/?per_page=999999",
        "/?unknown=1",
        "/api/leaderboard?sort=password",
        "/models/1%20OR%201=1",
        "/models/-1;DROP",
        "/pipelines/runs/abc",
        "/api/runs?limit=0",
        "/samples/1/99",
    ] {
        let (status, body) = get(&format!("{base}{probe}")).await;
        assert_eq!(status, 400, "{probe}: {body}");
    }
    // No endpoint writes: other methods are refused.
    let client = reqwest::Client::new();
    for path in ["/", "/api/leaderboard", "/api/runs/1"] {
        let status = client
            .post(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 405, "POST {path}");
        let status = client
            .delete(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status.as_u16(), 405, "DELETE {path}");
    }
    let (status, _) = get(&format!("{base}/models/999999")).await;
    assert_eq!(status, 404);
    let (status, body) = get(&format!("{base}/api/models/999999")).await;
    assert_eq!(status, 404);
    assert!(body.contains("\"error\""), "{body}");

    // The model API carries the chart data and the sample grid.
    let id = server.seeded.hostile_model_id;
    let (status, json) = get(&format!("{base}/api/models/{id}")).await;
    assert_eq!(status, 200, "{json}");
    let model: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(model["model"]["name"], HOSTILE_NAME);
    assert_eq!(model["fid_by_step"].as_array().unwrap().len(), 25);
    assert_eq!(model["fid_by_cfg"].as_array().unwrap().len(), 5);
    // Each point carries the interval of the evaluation it shows (the seeded -3% / +4%), the
    // chart's error bar.
    for p in model["fid_by_step"].as_array().unwrap() {
        let (y, low, high) = (
            p["y"].as_f64().unwrap(),
            p["low"].as_f64().unwrap(),
            p["high"].as_f64().unwrap(),
        );
        assert!(
            (low - 0.97 * y).abs() < 1e-9 && (high - 1.04 * y).abs() < 1e-9,
            "{p}"
        );
    }
    assert!(model["is_by_cfg"][0]["low"].is_null());
    // Leaderboard rows carry KID and the intervals too.
    let (_, json) = get(&format!("{base}/api/leaderboard?sort=kid")).await;
    let page: serde_json::Value = serde_json::from_str(&json).unwrap();
    let top = &page["rows"][0];
    assert!(
        top["kid"].as_f64().unwrap() > 0.0
            && top["kid_low"].as_f64().unwrap() < top["kid"].as_f64().unwrap(),
        "{top}"
    );
    assert_eq!(model["samples"].as_array().unwrap().len(), 3);
    assert_eq!(model["samples"][0]["caption"], HOSTILE_CAPTION);
    // A folder cleared since (here: the newest evaluation's, gone) gives way to the newest
    // grid still on disk; with none left, the grid is empty.
    let admin = &server.db.pool;
    let recorded: Vec<(i64, String)> = sqlx::query_as(
        "SELECT e.id, e.samples_path FROM evaluations e
         JOIN checkpoints c ON c.id = e.checkpoint_id
         WHERE c.model_id = $1 AND e.samples_path IS NOT NULL
         ORDER BY e.finished_at DESC NULLS LAST, e.id DESC",
    )
    .bind(id)
    .fetch_all(admin)
    .await
    .unwrap();
    assert!(recorded.len() > 1, "{recorded:?}");
    let clear = |ids: Vec<i64>| async move {
        sqlx::query(
            "UPDATE evaluations SET samples_path = '/nonexistent/cleared' WHERE id = ANY($1)",
        )
        .bind(ids)
        .execute(admin)
        .await
        .unwrap();
    };
    let grid_urls = || async {
        let (_, json) = get(&format!("{base}/api/models/{id}")).await;
        let model: serde_json::Value = serde_json::from_str(&json).unwrap();
        let urls: Vec<String> = model["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["url"].as_str().unwrap().to_owned())
            .collect();
        urls
    };
    assert_eq!(
        grid_urls().await[0],
        format!("/samples/{}/0", recorded[0].0)
    );
    clear(vec![recorded[0].0]).await;
    assert_eq!(
        grid_urls().await[0],
        format!("/samples/{}/0", recorded[1].0)
    );
    clear(recorded.iter().map(|r| r.0).collect()).await;
    assert_eq!(grid_urls().await, Vec::<String>::new());
    for (evaluation, path) in &recorded {
        sqlx::query("UPDATE evaluations SET samples_path = $2 WHERE id = $1")
            .bind(evaluation)
            .bind(path)
            .execute(admin)
            .await
            .unwrap();
    }
    assert_eq!(grid_urls().await.len(), 3);
    let (status, png) = {
        let r = reqwest::get(format!("{base}/samples/{}", "x"))
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap())
    };
    assert_eq!(status, 404, "{png:?}");

    // Pipeline pages: stages, shard progress, the funnel.
    let (status, html) = get(&format!("{base}/pipelines/runs/{}", server.seeded.run_id)).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("<progress value=\"7\" max=\"10\">"), "{html}");
    assert!(html.contains("600000000") && html.contains("aesthetic"));
    assert!(
        !html.contains(HOSTILE_CAPTION),
        "the shard error was not escaped"
    );
    // A stage without shards shows what it recorded in place of the shard columns, by name,
    // its strings escaped and nested values left out.
    assert!(
        html.contains(
            "<td colspan=\"6\" class=\"summary\">loss 3.25 · model &#60;script&#62;\
             window.pwned=&#39;name&#39;&#60;/script&#62;GPT-evil · step 42000</td>\
             <td class=\"num\">2 h 05 min</td><td>/data/checkpoints</td>"
        ),
        "{html}"
    );
    assert!(
        !html.contains(HOSTILE_NAME) && !html.contains("nested"),
        "{html}"
    );
    let (status, json) = get(&format!("{base}/api/runs/{}", server.seeded.run_id)).await;
    assert_eq!(status, 200);
    let run: serde_json::Value = serde_json::from_str(&json).unwrap();
    let stage = |name: &str| {
        run["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(stage("ingest")["shards_running"], 1);
    assert_eq!(stage("train")["counts"]["step"], 42000);
    assert_eq!(run["funnel"].as_array().unwrap().len(), 4);

    // Prometheus metrics count what was asked, by route pattern.
    let (status, text) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("llamagen_dashboard_http_requests_total{route=\"/\",status=\"400\"}"),
        "{text}"
    );
    assert!(text.contains(
        "llamagen_dashboard_database_rows{table=\"evaluations\",status=\"succeeded\"} 126"
    ));
    assert!(text.contains("llamagen_dashboard_http_request_duration_seconds_bucket"));
    server.finish().await;
}

#[tokio::test]
async fn the_dashboard_role_cannot_write() {
    let db = TestDatabase::new().await;
    let reader = connect_reader(ReaderLogin::SetRole(db.options.clone()), 2)
        .await
        .unwrap();
    verify_read_only(&reader).await.unwrap();
    let err =
        sqlx::query("INSERT INTO models (name, kind, architecture) VALUES ('x', 'generator', 'y')")
            .execute(&reader)
            .await
            .unwrap_err();
    assert!(
        err.to_string().contains("read-only") || err.to_string().contains("permission denied"),
        "{err}"
    );
    // Even outside the read-only transaction default, the role has no write privilege.
    let mut conn = reader.acquire().await.unwrap();
    sqlx::query("SET default_transaction_read_only = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let err = sqlx::query("DELETE FROM evaluations")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    drop(conn);
    // The owner's login is refused as a dashboard login.
    let err = verify_read_only(&db.pool).await.unwrap_err();
    assert!(err.to_string().contains("can write to"), "{err}");
    reader.close().await;
    db.drop_database().await;
}

fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("LLAMAGEN_CHROMIUM") {
        return path.into();
    }
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).is_file() {
            return candidate.into();
        }
    }
    panic!("Debian's chromium is needed for the browser tests: scripts/setup.sh installs it");
}

fn browser() -> Browser {
    Browser::new(
        LaunchOptions::default_builder()
            .path(Some(chromium()))
            .headless(true)
            .sandbox(false)
            .idle_browser_timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
    )
    .expect("launching headless chromium")
}

fn eval(tab: &Tab, js: &str) -> serde_json::Value {
    tab.evaluate(js, false)
        .unwrap_or_else(|e| panic!("{js}: {e}"))
        .value
        .unwrap_or(serde_json::Value::Null)
}

/// Waits until the address holds `fragment` (a form submission navigates asynchronously).
fn wait_for_location(tab: &Tab, fragment: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let here = eval(
            tab,
            "location.href + (document.readyState === 'complete' ? ' ready' : '')",
        );
        let here = here.as_str().unwrap_or_default().to_string();
        if here.contains(fragment) && here.ends_with(" ready") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reached {fragment}: at {here}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The FID column (9th) of the leaderboard as numbers, top to bottom, once the page that a
/// click navigated to has loaded (on a busy machine the evaluation can land mid-navigation).
fn fid_column(tab: &Tab) -> Vec<f64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = eval(
            tab,
            "document.readyState === 'complete' && document.querySelector('#leaderboard tbody tr') \
             ? JSON.stringify([...document.querySelectorAll('#leaderboard tbody tr')].map(r => r.children[8].textContent)) \
             : null",
        );
        if let Some(text) = v.as_str() {
            // "2.19 ±0.07": the value, then half its interval.
            let cells: Vec<String> = serde_json::from_str(text).unwrap();
            return cells
                .iter()
                .filter_map(|c| c.split_whitespace().next()?.parse().ok())
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the leaderboard never loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every row of every table on the page has one cell per header cell, and each table has rows;
/// returns the header labels of the table with id `table`.
fn assert_rows_fit_their_headers(tab: &Tab, table: &str) -> Vec<String> {
    let shapes: Vec<Vec<u64>> = serde_json::from_str(
        eval(
            tab,
            "JSON.stringify([...document.querySelectorAll('table')].map(t => \
             [t.querySelectorAll('thead th').length, \
              ...[...t.querySelectorAll('tbody tr')].map(r => r.children.length)]))",
        )
        .as_str()
        .unwrap(),
    )
    .unwrap();
    assert!(!shapes.is_empty(), "no table");
    for shape in &shapes {
        assert!(shape.len() > 1, "a table without rows: {shapes:?}");
        assert!(
            shape.iter().all(|&n| n == shape[0]),
            "cells against headers: {shapes:?}"
        );
    }
    serde_json::from_str(
        eval(
            tab,
            &format!(
                "JSON.stringify([...document.querySelectorAll('#{table} thead th')].map(h => h.textContent.trim()))"
            ),
        )
        .as_str()
        .unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_sorts_the_leaderboard_draws_charts_and_shows_hostile_text_as_text() {
    let server = start().await;
    let base = server.base.clone();
    let hostile = server.seeded.hostile_model_id;
    let tokenizer = server.seeded.tokenizer_model_id;
    tokio::task::spawn_blocking(move || {
        let browser = browser();
        let tab = browser.new_tab().unwrap();

        // Start sorted by step, then click the FID header: ascending, then descending.
        tab.navigate_to(&format!("{base}/?sort=step"))
            .unwrap()
            .wait_until_navigated()
            .unwrap();
        tab.wait_for_element("#leaderboard tbody tr").unwrap();
        let by_step = fid_column(&tab);
        assert_eq!(by_step.len(), 50, "a page of 50 rows");
        assert!(!by_step.windows(2).all(|w| w[0] <= w[1]), "already sorted by FID");
        tab.find_element("a[data-sort='FID']").unwrap().click().unwrap();
        tab.wait_until_navigated().unwrap();
        let ascending = fid_column(&tab);
        assert_eq!(ascending.len(), 50);
        assert!(ascending.windows(2).all(|w| w[0] <= w[1]), "{ascending:?}");
        assert!(ascending[0] < by_step.iter().cloned().fold(f64::INFINITY, f64::min) + 1e-9);
        // Each model's best row is highlighted (the best rows lead an ascending FID sort).
        let best = eval(&tab, "document.querySelectorAll('#leaderboard tr.best').length");
        assert!(best.as_u64().unwrap() >= 1);
        // The benchmark's leader is marked, and so is every row whose interval (value -3%,
        // +4%) overlaps the leader's; the FID cell shows half the interval after a ±.
        let marks: Vec<(bool, bool)> = serde_json::from_str(
            eval(
                &tab,
                "JSON.stringify([...document.querySelectorAll('#leaderboard tbody tr')].map(r => \
                 [!!r.querySelector('span.leader'), !!r.querySelector('span.tie')]))",
            )
            .as_str()
            .unwrap(),
        )
        .unwrap();
        assert_eq!(marks[0], (true, false), "the lowest FID leads");
        let leader = ascending[0];
        for (fid, (lead, tie)) in ascending.iter().zip(&marks).skip(1) {
            assert!(!lead);
            let margin = 0.97 * fid - 1.04 * leader;
            if margin.abs() > 0.02 {
                assert_eq!(*tie, margin < 0.0, "FID {fid} against the leader's {leader}");
            }
        }
        assert!(marks.iter().any(|m| m.1), "no ties among the 50 best");
        let cell = eval(&tab, "document.querySelector('#leaderboard tbody tr').children[8].textContent");
        assert!(cell.as_str().unwrap().contains(" ±"), "{cell:?}");
        let title = eval(&tab, "document.querySelector('#leaderboard tbody tr').children[8].title");
        assert!(title.as_str().unwrap().starts_with("95% interval ["), "{title:?}");
        assert!(eval(&tab, "location.search").as_str().unwrap().contains("sort=fid"));
        tab.find_element("a[data-sort='FID']").unwrap().click().unwrap();
        tab.wait_until_navigated().unwrap();
        let descending = fid_column(&tab);
        assert!(descending.windows(2).all(|w| w[0] >= w[1]), "{descending:?}");
        assert_ne!(ascending, descending);

        // The filter form: a model substring narrows the table.
        tab.navigate_to(&format!("{base}/")).unwrap().wait_until_navigated().unwrap();
        tab.find_element("input[name='model']").unwrap().type_into("VQ-16").unwrap();
        tab.find_element("button[type='submit']").unwrap().click().unwrap();
        wait_for_location(&tab, "model=VQ-16");
        let models = eval(
            &tab,
            "JSON.stringify([...document.querySelectorAll('#leaderboard td.model a')].map(c => c.textContent))",
        );
        assert_eq!(models.as_str().unwrap(), "[\"VQ-16\"]");

        // The hostile model's page: its name and caption are text, no script ran or exists.
        tab.navigate_to(&format!("{base}/models/{hostile}"))
            .unwrap()
            .wait_until_navigated()
            .unwrap();
        tab.wait_for_element("#samples img").unwrap();
        assert_eq!(
            eval(&tab, "document.getElementById('model-name').textContent").as_str(),
            Some(HOSTILE_NAME)
        );
        assert_eq!(eval(&tab, "document.scripts.length").as_u64(), Some(0));
        assert_eq!(eval(&tab, "typeof window.pwned").as_str(), Some("undefined"));
        assert_eq!(
            eval(&tab, "document.querySelector('#samples figcaption').textContent").as_str(),
            Some(HOSTILE_CAPTION)
        );
        assert_eq!(eval(&tab, "document.querySelectorAll('#samples img[onerror]').length").as_u64(), Some(0));
        // The evaluations table has the leaderboard's columns after the benchmark, less those
        // none of the model's evaluations has: a generator's, with its KID, not a tokenizer's.
        let model_page = assert_rows_fit_their_headers(&tab, "evaluations");
        assert_eq!(model_page[0], "benchmark");
        for metric in ["FID", "KID×10³"] {
            assert!(model_page.iter().any(|h| h == metric), "{metric}: {model_page:?}");
        }
        for metric in ["rFID", "PSNR", "usage"] {
            assert!(!model_page.iter().any(|h| h == metric), "{metric}: {model_page:?}");
        }

        // Charts: FID against step, FID and IS against cfg, loss, gradient norm, tokens/s, peak
        // memory; each an SVG with lines.
        for chart in [
            "fid-step", "fid-cfg", "is-cfg", "loss", "grad-norm", "tokens", "memory",
        ] {
            let lines = eval(
                &tab,
                &format!("document.querySelectorAll('#chart-{chart} svg polyline').length"),
            );
            assert!(lines.as_u64().unwrap() >= 2, "{chart}: {lines:?}");
        }
        let width = eval(&tab, "document.querySelector('#chart-fid-cfg svg').getBoundingClientRect().width");
        assert!(width.as_f64().unwrap() > 100.0, "{width:?}");

        // The sample grid shows decoded images.
        let wait_loaded = "Promise.all([...document.querySelectorAll('#samples img')].map(i => i.complete ? 1 : new Promise(r => { i.onload = r; i.onerror = r; }))).then(() => [...document.querySelectorAll('#samples img')].map(i => i.naturalWidth).join(','))";
        let widths = tab.evaluate(wait_loaded, true).unwrap().value.unwrap();
        assert_eq!(widths.as_str(), Some("64,64,64"), "{widths:?}");

        // A tokenizer's page: its reconstruction row under the same columns, and no sample
        // grid (its evaluations keep no images).
        tab.navigate_to(&format!("{base}/models/{tokenizer}"))
            .unwrap()
            .wait_until_navigated()
            .unwrap();
        tab.wait_for_element("#evaluations tbody tr").unwrap();
        let tokenizer_page = assert_rows_fit_their_headers(&tab, "evaluations");
        for metric in ["rFID", "PSNR", "SSIM", "usage"] {
            assert!(tokenizer_page.iter().any(|h| h == metric), "{metric}: {tokenizer_page:?}");
        }
        assert!(!tokenizer_page.iter().any(|h| h == "FID"), "{tokenizer_page:?}");
        assert_eq!(eval(&tab, "document.getElementById('samples') === null").as_bool(), Some(true));

        // The leaderboard shows the same name as text too.
        tab.navigate_to(&format!("{base}/?model=GPT-evil")).unwrap().wait_until_navigated().unwrap();
        let names = eval(&tab, "[...document.querySelectorAll('#leaderboard td.model')].map(c => c.textContent).join('|')");
        let leaderboard = assert_rows_fit_their_headers(&tab, "leaderboard");
        let ranked: Vec<&str> = leaderboard.iter().map(|h| h.trim_end_matches([' ', '▲', '▼'])).collect();
        assert_eq!(ranked[..2], ["model", "benchmark"]);
        assert!(names.as_str().unwrap().starts_with(HOSTILE_NAME), "{names:?}");
        assert_eq!(eval(&tab, "document.scripts.length").as_u64(), Some(0));
        assert_eq!(eval(&tab, "typeof window.pwned").as_str(), Some("undefined"));

        // Filtered to one kind of model, the other kind's columns are left out.
        let labels = |kind: &str| {
            tab.navigate_to(&format!("{base}/?kind={kind}"))
                .unwrap()
                .wait_until_navigated()
                .unwrap();
            tab.wait_for_element("#leaderboard tbody tr").unwrap();
            assert_rows_fit_their_headers(&tab, "leaderboard")
                .iter()
                .map(|h| h.trim_end_matches([' ', '▲', '▼']).to_string())
                .collect::<Vec<_>>()
        };
        let tokenizers = labels("tokenizer");
        assert!(tokenizers.iter().any(|h| h == "rFID"), "{tokenizers:?}");
        assert!(!tokenizers.iter().any(|h| h == "FID" || h == "cfg"), "{tokenizers:?}");
        let generators = labels("generator");
        assert!(generators.iter().any(|h| h == "FID" && !generators.contains(&"rFID".to_string())), "{generators:?}");
        // Both model pages' columns are the leaderboard's of their kind, in its order.
        for (page, leaderboard) in [(&model_page, &generators), (&tokenizer_page, &tokenizers)] {
            let mut rest = leaderboard[2..].iter();
            for column in &page[1..] {
                assert!(rest.any(|c| c == column), "{column} out of the leaderboard's order: {page:?}");
            }
        }
        // Unfiltered, a page of generators leaves out the tokenizers' columns, and the other
        // way round; the column sorted by stays whatever the page holds.
        let unfiltered = |query: &str| {
            tab.navigate_to(&format!("{base}/?{query}")).unwrap().wait_until_navigated().unwrap();
            tab.wait_for_element("#leaderboard tbody tr").unwrap();
            assert_rows_fit_their_headers(&tab, "leaderboard")
                .iter()
                .map(|h| h.trim_end_matches([' ', '▲', '▼']).to_string())
                .collect::<Vec<_>>()
        };
        let by_fid = unfiltered("sort=fid");
        assert!(by_fid.contains(&"FID".into()) && !by_fid.contains(&"rFID".into()), "{by_fid:?}");
        let vq_only = unfiltered("model=VQ-16&sort=sfid");
        assert!(vq_only.contains(&"rFID".into()) && !vq_only.contains(&"FID".into()), "{vq_only:?}");
        assert!(vq_only.contains(&"sFID".into()), "the sorted column stays: {vq_only:?}");

        // Tick a row of two models on the leaderboard and compare them.
        tab.navigate_to(&format!("{base}/?sort=fid&per_page=100")).unwrap().wait_until_navigated().unwrap();
        tab.wait_for_element("#leaderboard tbody tr").unwrap();
        let picked: Vec<(i64, i64)> = serde_json::from_str(
            eval(
                &tab,
                "JSON.stringify([...document.querySelectorAll('#leaderboard tbody tr')].map(r => \
                 [+r.dataset.evaluation, +r.querySelector('input[name=model]').value]))",
            )
            .as_str()
            .unwrap(),
        )
        .unwrap();
        let first = picked[0];
        let second = *picked.iter().find(|(_, model)| *model != first.1).unwrap();
        for (evaluation, _) in [first, second] {
            tab.find_element(&format!("#leaderboard tr[data-evaluation='{evaluation}'] input"))
                .unwrap()
                .click()
                .unwrap();
        }
        tab.find_element("#compare-button").unwrap().click().unwrap();
        wait_for_location(&tab, "/compare?");
        let compared = eval(&tab, "[...document.querySelectorAll('#compared li a')].map(a => a.getAttribute('href')).join(',')");
        assert_eq!(
            compared.as_str().unwrap(),
            format!("/models/{},/models/{}", first.1, second.1)
        );
        for chart in ["fid-axis", "fid-cfg", "is-cfg", "loss", "tokens"] {
            for colour in ["#1F77B4", "#FF7F0E"] {
                let lines = eval(
                    &tab,
                    &format!("document.querySelectorAll('#chart-{chart} svg polyline[stroke=\"{colour}\"]').length"),
                );
                assert!(lines.as_u64().unwrap() >= 2, "{chart} {colour}: {lines:?}");
            }
        }
        let best = assert_rows_fit_their_headers(&tab, "best");
        assert!(best.contains(&"FID".into()) && !best.contains(&"rFID".into()), "{best:?}");
        let leaders = eval(&tab, "[...document.querySelectorAll('#best tbody tr')].map(r => !!r.querySelector('span.leader')).join(',')");
        assert_eq!(leaders.as_str(), Some("true,false"));
        tab.find_element("a.axis[href*='x=epoch']").unwrap().click().unwrap();
        wait_for_location(&tab, "x=epoch");
        for chart in ["fid-axis", "loss", "tokens"] {
            let axis = eval(&tab, &format!("document.querySelector('#chart-{chart} svg').textContent"));
            assert!(axis.as_str().unwrap().contains("epoch"), "{chart}: {axis:?}");
        }
        assert_eq!(eval(&tab, "document.scripts.length").as_u64(), Some(0));

        // A bad parameter in the address bar gets the 400 page.
        tab.navigate_to(&format!("{base}/?sort=fid%3BDROP")).unwrap().wait_until_navigated().unwrap();
        let message = eval(&tab, "document.getElementById('error-message').textContent");
        assert!(message.as_str().unwrap().contains("sort"), "{message:?}");

        // The pipeline page lists the run.
        tab.navigate_to(&format!("{base}/pipelines")).unwrap().wait_until_navigated().unwrap();
        let runs = eval(&tab, "document.querySelectorAll('#runs tbody tr').length");
        assert_eq!(runs.as_u64(), Some(1));
    })
    .await
    .unwrap();
    server.finish().await;
}

#[tokio::test]
async fn two_protocols_on_one_benchmark_never_share_a_ranking() {
    use llamagen_store::results::{self, Metric, NewEvaluation, NewProtocol};
    let server = start().await;
    let pool = &server.db.pool;
    let model: i64 = sqlx::query_scalar(
        "INSERT INTO models (name, kind, architecture) VALUES ('two-protocols', 'generator', 'llamagen-gpt')
         RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let checkpoint: i64 = sqlx::query_scalar(
        "INSERT INTO checkpoints (model_id, path, sha256, step) VALUES ($1, 'p.safetensors', repeat('c', 64), 5)
         RETURNING id",
    )
    .bind(model)
    .fetch_one(pool)
    .await
    .unwrap();
    // The same benchmark measured two ways: 50,000 samples against one reference, 10,000
    // against another. Protocol B's FIDs are all worse than A's, yet B has its own leader.
    let mut protocols = Vec::new();
    for (name, samples) in [("A", 50_000), ("B", 10_000)] {
        let definition = serde_json::json!({ "test": name, "num_samples": samples });
        protocols.push(
            results::upsert_protocol(
                pool,
                &NewProtocol {
                    kind: "generator",
                    name,
                    feature_extractor_sha256: None,
                    reference_set_id: None,
                    num_samples: Some(samples),
                    definition: &definition,
                },
            )
            .await
            .unwrap(),
        );
    }
    let mut ids = Vec::new();
    for (protocol, cfg, fid, half) in [
        (protocols[0], 1.0, 3.0, 0.1),
        (protocols[0], 2.0, 3.5, 0.1),
        (protocols[1], 1.0, 5.0, 0.2),
        (protocols[1], 2.0, 5.1, 0.2),
    ] {
        let id = results::begin_evaluation(
            pool,
            &NewEvaluation {
                checkpoint_id: checkpoint,
                benchmark: "protocol-test",
                protocol_id: Some(protocol),
                cfg_scale: Some(cfg),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        results::finish_evaluation(
            pool,
            id,
            &[Metric::new("fid", fid).with_interval(fid - half, fid + half)],
            None,
        )
        .await
        .unwrap();
        ids.push(id);
    }

    let (status, json) = get(&format!(
        "{}/api/leaderboard?benchmark=protocol-test",
        server.base
    ))
    .await;
    assert_eq!(status, 200, "{json}");
    let page: serde_json::Value = serde_json::from_str(&json).unwrap();
    let marks: Vec<(i64, i64, bool, bool)> = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["evaluation_id"].as_i64().unwrap(),
                r["protocol_id"].as_i64().unwrap(),
                r["leader"].as_bool().unwrap(),
                r["tied_with_leader"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        marks,
        vec![
            (ids[0], protocols[0], true, false),
            (ids[1], protocols[0], false, false),
            (ids[2], protocols[1], true, false),
            (ids[3], protocols[1], false, true),
        ],
        "each protocol ranks its own rows"
    );
    // Filtering by protocol, on the page and in the API; the page names the protocol.
    let (_, json) = get(&format!(
        "{}/api/leaderboard?benchmark=protocol-test&protocol={}",
        server.base, protocols[1]
    ))
    .await;
    let page: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(page["total"], 2);
    let (status, html) = get(&format!("{}/?benchmark=protocol-test", server.base)).await;
    assert_eq!(status, 200);
    assert!(
        html.contains(&format!("href=\"/?protocol={}\"", protocols[1])),
        "{html}"
    );
    assert!(
        html.contains(&format!("P{}: B", protocols[1])),
        "the protocol filter menu"
    );
    let (status, _) = get(&format!("{}/api/leaderboard?protocol=x", server.base)).await;
    assert_eq!(status, 400);
    server.finish().await;
}

#[tokio::test]
async fn a_comparison_charts_each_models_best_per_checkpoint_on_one_suite() {
    use llamagen_store::results::{self, Metric, NewEvaluation};
    let server = start().await;
    let base = server.base.clone();
    let (small, small_name) = server.seeded.models[0].clone();
    let (large, large_name) = server.seeded.models[1].clone();
    let json = |url: String| async move {
        let (status, body) = get(&url).await;
        assert_eq!(status, 200, "{url}: {body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    // One more suite, for the small model only: a benchmark the other never ran.
    let pool = &server.db.pool;
    let checkpoint: i64 = sqlx::query_scalar(
        "SELECT id FROM checkpoints WHERE model_id = $1 ORDER BY step DESC LIMIT 1",
    )
    .bind(small)
    .fetch_one(pool)
    .await
    .unwrap();
    let other = results::begin_evaluation(
        pool,
        &NewEvaluation {
            checkpoint_id: checkpoint,
            benchmark: "other-bench",
            cfg_scale: Some(1.5),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    results::finish_evaluation(pool, other, &[Metric::new("fid", 99.0)], None)
        .await
        .unwrap();

    let compared = json(format!(
        "{base}/api/compare?model={large}&model={small}&model={large}"
    ))
    .await;
    let names: Vec<&str> = compared["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [large_name.as_str(), small_name.as_str()],
        "asked order, once each"
    );
    // The widest suite: the benchmark both models have, not the one only the small one ran.
    assert_eq!(compared["suite"]["benchmark"], "imagenet256-c2i");
    assert_eq!(compared["suite"]["models"], 2);
    assert_eq!(compared["suites"].as_array().unwrap().len(), 2);
    // Each point: the model's lowest FID of that checkpoint's guidance sweep, and its interval.
    for (id, name) in [(large, &large_name), (small, &small_name)] {
        let rows = json(format!("{base}/api/leaderboard?model={name}&per_page=500")).await;
        let mut best_at: std::collections::BTreeMap<i64, (f64, f64)> = Default::default();
        for r in rows["rows"].as_array().unwrap() {
            if r["benchmark"] != "imagenet256-c2i" {
                continue;
            }
            let (step, fid) = (r["step"].as_i64().unwrap(), r["fid"].as_f64().unwrap());
            let entry = best_at.entry(step).or_insert((f64::INFINITY, 0.0));
            if fid < entry.0 {
                *entry = (fid, r["fid_high"].as_f64().unwrap());
            }
        }
        let points: Vec<(i64, f64, f64)> = compared["fid_by_axis"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["series"] == name.as_str())
            .map(|p| {
                (
                    p["x"].as_f64().unwrap() as i64,
                    p["y"].as_f64().unwrap(),
                    p["high"].as_f64().unwrap(),
                )
            })
            .collect();
        let expected: Vec<(i64, f64, f64)> =
            best_at.iter().map(|(s, (f, h))| (*s, *f, *h)).collect();
        assert_eq!(points, expected, "model {id}");
        let at_cfg = compared["fid_by_cfg"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["series"] == name.as_str())
            .count();
        assert_eq!(at_cfg, 5, "the guidance sweep of the latest checkpoint");
        assert!(
            compared["loss"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["series"] == name.as_str()),
            "loss of {name}"
        );
        let best = compared["best"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["model_id"] == id)
            .unwrap();
        let lowest = best_at.values().map(|v| v.0).fold(f64::INFINITY, f64::min);
        assert_eq!(best["fid"].as_f64().unwrap(), lowest);
    }
    // The larger model is better at every step: it leads, and the series come in asked order.
    assert_eq!(compared["best"][0]["model_id"], large);
    assert_eq!(compared["best"][0]["leader"], true);
    assert_eq!(compared["fid_by_axis"][0]["series"], large_name.as_str());

    // Epochs and tokens (in millions) as the axis.
    let by_epoch = json(format!("{base}/api/compare?model={small}&x=epoch")).await;
    let xs: Vec<f64> = by_epoch["fid_by_axis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["x"].as_f64().unwrap())
        .collect();
    assert_eq!(xs.len(), 5);
    assert!(
        (xs[0] - 10_000.0 * 256.0 / 1_281_167.0).abs() < 1e-9,
        "{xs:?}"
    );
    let by_tokens = json(format!("{base}/api/compare?model={small}&x=tokens")).await;
    assert_eq!(
        by_tokens["fid_by_axis"][0]["x"].as_f64().unwrap(),
        10_000.0 * 256.0 * 256.0 / 1e6
    );
    // The training curves move with it, by the model's 256 x 256 tokens per step; a model
    // whose checkpoints record no tokens (the tokenizer's one, at step 0) is named instead.
    let by_step = json(format!("{base}/api/compare?model={small}")).await;
    let xs_of = |v: &serde_json::Value, chart: &str| -> Vec<f64> {
        v[chart]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["x"].as_f64().unwrap())
            .collect()
    };
    for chart in ["loss", "tokens_per_s"] {
        let (steps, tokens) = (xs_of(&by_step, chart), xs_of(&by_tokens, chart));
        assert!(!steps.is_empty() && steps.len() == tokens.len(), "{chart}");
        for (s, t) in steps.iter().zip(&tokens) {
            let want = s * 256.0 * 256.0 / 1e6;
            assert!(
                (t - want).abs() <= 1e-9 * want.max(1.0),
                "{chart}: {t} vs {want}"
            );
        }
        let epochs = xs_of(&by_epoch, chart);
        assert!(
            (epochs[1] - steps[1] * 256.0 / 1_281_167.0).abs() < 1e-9,
            "{chart}"
        );
    }
    assert_eq!(by_tokens["training_off_axis"], serde_json::json!([]));
    let tokenizer = server.seeded.tokenizer_model_id;
    let off = json(format!("{base}/api/compare?model={tokenizer}&x=tokens")).await;
    assert_eq!(off["training_off_axis"], serde_json::json!(["VQ-16"]));
    let (status, page) = get(&format!("{base}/compare?model={tokenizer}&x=epoch")).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("id=\"off-axis\"") && page.contains("VQ-16"),
        "{page}"
    );
    let on_steps = json(format!("{base}/api/compare?model={tokenizer}")).await;
    assert_eq!(on_steps["training_off_axis"], serde_json::json!([]));

    // Asked for the small model's own suite: its row alone.
    let own = json(format!(
        "{base}/api/compare?model={small}&model={large}&benchmark=other-bench"
    ))
    .await;
    assert_eq!(own["best"].as_array().unwrap().len(), 1);
    assert_eq!(own["best"][0]["fid"], 99.0);

    // The page: every name escaped, a chart per figure, a swatch per model.
    let hostile = server.seeded.hostile_model_id;
    let (status, html) = get(&format!("{base}/compare?model={hostile}&model={small}")).await;
    assert_eq!(status, 200, "{html}");
    assert!(!html.contains("<script") && !html.contains(HOSTILE_NAME));
    assert!(html.contains("&#60;script&#62;window.pwned="));
    for chart in ["fid-axis", "fid-cfg", "is-cfg", "loss", "tokens"] {
        assert!(html.contains(&format!("id=\"chart-{chart}\"")), "{chart}");
    }
    assert!(html.contains("color: #1f77b4") && html.contains("color: #ff7f0e"));

    let tokenizer = server.seeded.tokenizer_model_id;
    for (probe, status, says) in [
        ("/compare".to_string(), 400, "nothing to compare"),
        ("/compare?model=999999".into(), 404, "no model 999999"),
        (
            format!("/compare?model={small}&model={tokenizer}"),
            400,
            "one kind",
        ),
        (
            format!("/api/compare?model={small}&benchmark=nope"),
            404,
            "none of these models",
        ),
        (
            format!("/api/compare?model={small}&protocol=abc"),
            400,
            "protocol",
        ),
        (format!("/compare?model={small}&x=loss"), 400, "x must be"),
        (
            format!("/compare?model={small}&sort=fid"),
            400,
            "unknown parameter",
        ),
        (
            "/compare?model=1&model=2&model=3&model=4&model=5&model=6&model=7".into(),
            400,
            "at most 6",
        ),
    ] {
        let (got, body) = get(&format!("{base}{probe}")).await;
        assert_eq!(got, status, "{probe}: {body}");
        assert!(body.contains(says), "{probe}: {body}");
    }
    // A tokenizer compared alone: its rFID, and no guidance charts.
    let vq = json(format!("{base}/api/compare?model={tokenizer}")).await;
    assert_eq!(vq["best"][0]["rfid"], 2.19);
    assert!(vq["fid_by_cfg"].as_array().unwrap().is_empty());
    server.finish().await;
}

#[tokio::test]
async fn the_leaderboard_exports_as_csv_that_a_spreadsheet_reads_as_data() {
    use llamagen_store::results::{self, Metric, NewEvaluation};
    let server = start().await;
    let base = server.base.clone();
    let pool = &server.db.pool;
    // A model named like a spreadsheet formula, with quotes and a comma in it, whose FID needs
    // all 17 digits.
    let formula = "=HYPERLINK(\"http://x.test/\",\"click\")";
    let model: i64 = sqlx::query_scalar(
        "INSERT INTO models (name, kind, architecture, size, task, params, image_size)
         VALUES ($1, 'generator', 'llamagen-gpt', 'B', 'c2i', 111000000, 256) RETURNING id",
    )
    .bind(formula)
    .fetch_one(pool)
    .await
    .unwrap();
    let checkpoint: i64 = sqlx::query_scalar(
        "INSERT INTO checkpoints (model_id, path, sha256, step)
         VALUES ($1, 'f.safetensors', repeat('f', 64), 10) RETURNING id",
    )
    .bind(model)
    .fetch_one(pool)
    .await
    .unwrap();
    let evaluation = results::begin_evaluation(
        pool,
        &NewEvaluation {
            checkpoint_id: checkpoint,
            benchmark: "imagenet256-c2i",
            cfg_scale: Some(2.0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let fid = 0.1 + 0.2;
    results::finish_evaluation(pool, evaluation, &[Metric::new("fid", fid)], None)
        .await
        .unwrap();

    let query = "per_page=500&sort=fid";
    let (status, body) = get(&format!("{base}/api/leaderboard?{query}")).await;
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rows = page["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 127);

    let response = reqwest::get(format!("{base}/api/leaderboard.csv?{query}"))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let header = |name: &str| response.headers()[name].to_str().unwrap().to_string();
    assert_eq!(header("content-type"), "text/csv; charset=utf-8");
    assert!(header("content-disposition").starts_with("attachment"));
    let csv = response.text().await.unwrap();
    assert!(csv.ends_with("\r\n"));

    // Read back by Python's csv module, as a spreadsheet import would.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leaderboard.csv");
    std::fs::write(&file, &csv).unwrap();
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import csv, json, sys; print(json.dumps(list(csv.DictReader(open(sys.argv[1], newline='')))))",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Vec<std::collections::HashMap<String, String>> =
        serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(read.len(), rows.len());
    type Stored = (
        i64,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
        Option<f64>,
    );
    let stored: std::collections::HashMap<i64, [Option<f64>; 6]> = sqlx::query_as::<_, Stored>(
        "SELECT evaluation_id, fid, fid_low, fid_high, inception_score, rfid, ssim_high
         FROM leaderboard_rows",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, a, b, c, d, e, f)| (id, [a, b, c, d, e, f]))
    .collect();
    let mut formulas = 0;
    for (cells, row) in read.iter().zip(rows) {
        assert_eq!(cells["evaluation_id"], row["evaluation_id"].to_string());
        let name = row["model"].as_str().unwrap();
        if name == formula {
            // Defused: the leading quote keeps it text; the rest is intact.
            assert_eq!(cells["model"], format!("'{formula}"));
            assert_eq!(cells["fid"].parse::<f64>().unwrap(), fid);
            formulas += 1;
        } else {
            assert_eq!(cells["model"], name);
        }
        // Exactly the stored doubles (the JSON client's float parsing is only close).
        let id = row["evaluation_id"].as_i64().unwrap();
        for (metric, stored) in [
            "fid",
            "fid_low",
            "fid_high",
            "inception_score",
            "rfid",
            "ssim_high",
        ]
        .iter()
        .zip(&stored[&id])
        {
            match stored {
                Some(v) => assert_eq!(cells[*metric].parse::<f64>().unwrap(), *v, "{metric}"),
                None => assert_eq!(cells[*metric], "", "{metric}"),
            }
        }
        for flag in ["best_of_model", "leader", "tied_with_leader"] {
            assert_eq!(cells[flag], row[flag].to_string(), "{flag}");
        }
        assert_eq!(cells["protocol"], row["protocol"].as_str().unwrap_or(""));
    }
    assert_eq!(formulas, 1);
    assert!(read.iter().any(|c| c["model"] == HOSTILE_NAME));

    // The leaderboard links its page's CSV with its filters; bad parameters are refused alike.
    let (_, html) = get(&format!("{base}/?model=evil&sort=fid")).await;
    let link = html
        .split("<a id=\"csv\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSV link: {html}"))
        .replace("&#38;", "&");
    assert!(link.starts_with("/api/leaderboard.csv?"), "{link}");
    let (status, evil) = get(&format!("{base}{link}")).await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = evil.split_terminator("\r\n").collect();
    // The header and the hostile model's 25 evaluations, nothing else.
    assert_eq!(lines.len(), 26, "{evil}");
    assert!(
        lines[1..].iter().all(|l| l.contains(HOSTILE_NAME)),
        "{evil}"
    );
    let (status, _) = get(&format!("{base}/api/leaderboard.csv?sort=fid%3BDROP")).await;
    assert_eq!(status, 400);
    server.finish().await;
}
