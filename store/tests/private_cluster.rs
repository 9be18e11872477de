//! The embedded default end to end: initdb, start, sharing between users, stop, restart, and
//! recovery after the server is killed.

use std::path::Path;

use llamagen_store::cluster::{ClusterOptions, PrivateCluster};
use llamagen_store::{Store, StoreOptions};
use sqlx::{ConnectOptions as _, Connection as _};

fn server_pid(pgdata: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Running, not a zombie waiting for whoever inherited it to reap it.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

async fn select_one(cluster: &PrivateCluster) -> i32 {
    let mut conn = cluster.connect_options("postgres").connect().await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    one
}

#[tokio::test]
async fn the_last_user_stops_the_server_and_data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let options = ClusterOptions { durable: false };
    let first = PrivateCluster::start(dir.path(), &options).unwrap();
    let pgdata = first.pgdata().to_path_buf();
    let pid = server_pid(&pgdata).expect("server running after start");
    assert_eq!(select_one(&first).await, 1);

    // A second user (another llamagen process) reuses the running server.
    let second = PrivateCluster::start(dir.path(), &options).unwrap();
    assert_eq!(
        server_pid(&pgdata),
        Some(pid),
        "second start reused the server"
    );
    first.stop().unwrap();
    assert!(alive(pid), "server stopped while another user still had it");
    assert_eq!(select_one(&second).await, 1);
    second.stop().unwrap();
    assert!(!alive(pid), "last user left the server running");
    assert!(!pgdata.join("postmaster.pid").exists());

    // The store on top: migrate, write, stop, reopen, read back.
    let store_options = StoreOptions {
        database_url: None,
        cluster: options.clone(),
        ..StoreOptions::from_env(dir.path())
    };
    let store = Store::open(&store_options).await.unwrap();
    sqlx::query("INSERT INTO models (name, kind, architecture) VALUES ('kept', 'generator', 'llamagen-gpt')")
        .execute(store.pool())
        .await
        .unwrap();
    store.close().await.unwrap();
    let store = Store::open(&store_options).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM models")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(names, ["kept"]);
    let status = store.status().await.unwrap();
    assert_eq!(status.pending(), 0);
    assert!(
        status
            .server_version
            .starts_with(|c: char| c.is_ascii_digit())
    );
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_killed_server_is_recovered_on_the_next_start() {
    // pg_ctl daemonises the server, which then belongs to PID 1. Become its subreaper so this
    // test can reap it after the kill: an unreaped zombie still "holds" postmaster.pid.
    // SAFETY: plain prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let dir = tempfile::tempdir().unwrap();
    let options = ClusterOptions { durable: false };
    let cluster = PrivateCluster::start(dir.path(), &options).unwrap();
    let pgdata = cluster.pgdata().to_path_buf();
    let pid = server_pid(&pgdata).unwrap();
    // SIGKILL leaves a stale postmaster.pid and shared memory behind, like a crashed machine.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
    assert!(!alive(pid));
    // Releasing the handle finds no server to stop; the stale postmaster.pid stays behind.
    drop(cluster);
    assert!(pgdata.join("postmaster.pid").exists());
    let again = PrivateCluster::start(dir.path(), &options).unwrap();
    assert_ne!(server_pid(&pgdata), Some(pid));
    assert_eq!(select_one(&again).await, 1);
    again.stop().unwrap();
}

#[tokio::test]
async fn an_interrupted_initdb_is_redone() {
    let dir = tempfile::tempdir().unwrap();
    // What a kill during initdb leaves: a scratch folder and a pgdata without PG_VERSION.
    let root = dir.path().join("postgres");
    std::fs::create_dir_all(root.join("pgdata.init-999999/base")).unwrap();
    std::fs::create_dir_all(root.join("pgdata/base")).unwrap();
    let cluster = PrivateCluster::start(dir.path(), &ClusterOptions { durable: false }).unwrap();
    assert!(cluster.pgdata().join("PG_VERSION").exists());
    assert_eq!(select_one(&cluster).await, 1);
    cluster.stop().unwrap();
}

#[tokio::test]
async fn a_second_host_and_planted_symlinks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = ClusterOptions { durable: false };
    let cluster = PrivateCluster::start(dir.path(), &options).unwrap();
    let root = dir.path().join("postgres");
    let host = std::fs::read_to_string(root.join("host")).unwrap();
    assert!(!host.trim().is_empty());

    // The same data folder seen from another machine (a shared filesystem) while this host's
    // server runs: refused, naming both hosts.
    std::fs::write(root.join("host"), "elsewhere\n").unwrap();
    let err = PrivateCluster::start(dir.path(), &options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("running on host \"elsewhere\""), "{err}");
    assert!(err.contains("DATABASE_URL"), "{err}");
    std::fs::write(root.join("host"), &host).unwrap();
    cluster.stop().unwrap();

    // A settings file turned into a symlink (the server user owns the folder) is replaced,
    // not written through.
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "not for the server\n").unwrap();
    let conf = cluster_pgdata(dir.path()).join("llamagen.conf");
    std::fs::remove_file(&conf).unwrap();
    std::os::unix::fs::symlink(&victim, &conf).unwrap();
    let again = PrivateCluster::start(dir.path(), &options).unwrap();
    assert_eq!(select_one(&again).await, 1);
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "not for the server\n"
    );
    assert!(!std::fs::symlink_metadata(&conf).unwrap().is_symlink());
    again.stop().unwrap();
}

fn cluster_pgdata(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("postgres/pgdata")
}

/// As root the server runs as another user (`postgres` or `nobody`), who owns the socket's
/// folder. A process of that user must not get in as the superuser; the user running
/// llamagen must.
#[tokio::test]
async fn only_the_user_running_llamagen_may_connect() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "not root: the server runs as the caller and no other user can reach it; skipped"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = PrivateCluster::start(dir.path(), &ClusterOptions { durable: false }).unwrap();
    assert_eq!(select_one(&cluster).await, 1);
    let owner = std::fs::metadata(cluster_pgdata(dir.path())).unwrap();
    let psql = |uid: u32, gid: u32| {
        use std::os::unix::process::CommandExt as _;
        std::process::Command::new(cluster.bin_dir().join("psql"))
            .arg(cluster.url("postgres"))
            .args(["-X", "-A", "-t", "-c", "SELECT 1"])
            .current_dir("/")
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap()
    };
    use std::os::unix::fs::MetadataExt as _;
    let as_server_user = psql(owner.uid(), owner.gid());
    assert!(!as_server_user.status.success());
    let err = String::from_utf8_lossy(&as_server_user.stderr);
    assert!(err.contains("Peer authentication failed"), "{err}");
    let as_caller = psql(0, 0);
    assert!(
        as_caller.status.success(),
        "{}",
        String::from_utf8_lossy(&as_caller.stderr)
    );
    cluster.stop().unwrap();
}

/// `llamagen db url` is for psql (libpq) and for another llamagen's `DATABASE_URL` (sqlx), and
/// both must read it, from a data folder whose path has characters a URL must escape.
#[tokio::test]
async fn the_url_reaches_the_server_through_libpq_and_sqlx() {
    let dir = tempfile::Builder::new()
        .prefix("a b+c&d#e%")
        .tempdir()
        .unwrap();
    let cluster = PrivateCluster::start(dir.path(), &ClusterOptions { durable: false }).unwrap();
    let url = cluster.url("postgres");

    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let mut conn = options.connect().await.unwrap();
    let socket: String = sqlx::query_scalar("SELECT current_setting('unix_socket_directories')")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    assert!(
        socket.starts_with(&*dir.path().to_string_lossy()),
        "{socket} under {}",
        dir.path().display()
    );

    let psql = std::process::Command::new(cluster.bin_dir().join("psql"))
        .arg(&url)
        .args(["-X", "-A", "-t", "-c", "SELECT current_user"])
        .output()
        .unwrap();
    assert!(
        psql.status.success(),
        "{url}: {}",
        String::from_utf8_lossy(&psql.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&psql.stdout).trim(), "llamagen");
    cluster.stop().unwrap();
}
