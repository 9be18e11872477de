//! The embedded default: a private PostgreSQL cluster under the data directory.
//!
//! Layout under `<data_dir>/postgres/`:
//!
//! ```text
//! pgdata/                 the cluster (initdb into pgdata.init-<pid>, then renamed)
//! pgdata/llamagen.conf    settings rewritten before every start (socket, durability)
//! pgdata/pg_hba.conf      as root: peer authentication, rewritten before every start
//! pgdata/pg_ident.conf    as root: the user running llamagen, the only one mapped to the role
//! pgdata/server.log       the server's log
//! start.lock              held while a process starts or stops the server
//! users.lock              every process using the server holds a shared lock on it
//! host                    the machine whose processes started the running server
//! ```
//!
//! The server listens on a unix socket only. Several `llamagen` processes may share it: each
//! holds a shared lock on `users.lock`, and the one that leaves last (its exclusive try-lock
//! succeeds) stops the server. A process killed with SIGKILL leaves the server running; the next
//! one reuses it and stops it in its turn. PostgreSQL refuses to run as root, so when invoked as
//! root the server runs as `LLAMAGEN_PG_USER`, else `postgres`, else `nobody`.
//!
//! The private cluster is a one-host convenience; a deployment shared by several machines uses
//! `DATABASE_URL`. A data directory on a shared filesystem is refused on a second host while
//! the first host's server runs (two postmasters on one `pgdata` would corrupt it). As root,
//! nothing in folders the server user owns is written or chowned through a symlink that user
//! could have planted: files are replaced by rename, ownership changed without following links.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sqlx::postgres::PgConnectOptions;

use crate::StoreError;

/// The role that owns everything in the private cluster (peer authentication on the socket when
/// the server runs as another user, see `write_authentication`).
pub const SUPERUSER: &str = "llamagen";
const PORT: u16 = 5432;
/// Unix socket paths are limited to 107 bytes (`sun_path`).
const MAX_SOCKET_PATH: usize = 100;

/// How to run the private cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Durable commits (fsync). Tests turn this off: their clusters are thrown away.
    pub durable: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self { durable: true }
    }
}

/// A running private cluster that this process uses; [`PrivateCluster::stop`] (or drop)
/// releases it and stops the server if no other process uses it.
#[derive(Debug)]
pub struct PrivateCluster {
    root: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<RunAs>,
    users_lock: Option<File>,
}

#[derive(Debug, Clone)]
struct RunAs {
    name: String,
    uid: nix::unistd::Uid,
    gid: nix::unistd::Gid,
}

impl PrivateCluster {
    /// Initialises the cluster under `<data_dir>/postgres` if needed, starts the server unless
    /// it is already running, and registers this process as a user of it.
    pub fn start(data_dir: &Path, options: &ClusterOptions) -> Result<Self, StoreError> {
        let root = absolute(&data_dir.join("postgres"))?;
        fs::create_dir_all(&root).map_err(|e| StoreError::io(&root, e))?;
        let bin_dir = find_bin_dir()?;
        let run_as = run_as_user()?;
        let pgdata = root.join("pgdata");
        let socket_dir = socket_dir_for(&pgdata);

        let start_lock = lock_within(&root.join("start.lock"), START_LOCK_WAIT)?;

        let mut cluster = Self {
            root,
            pgdata,
            socket_dir,
            bin_dir,
            run_as,
            users_lock: None,
        };
        if let Some(user) = &cluster.run_as {
            cluster.check_reachable(user)?;
        }
        if !cluster.pgdata.join("PG_VERSION").exists() {
            cluster.initdb()?;
        }
        let host = crate::cluster::this_host();
        if cluster.pgdata.join("postmaster.pid").exists()
            && let Some(owner) = cluster.server_host()?
            && owner != host
        {
            return Err(StoreError::Cluster(format!(
                "the private cluster in {} is running on host {owner:?}, and this is {host:?}: \
                 a private cluster serves one host (two servers on one data folder would \
                 corrupt it); use DATABASE_URL for a database several machines share, or \
                 another --data-dir (if {owner:?} is gone for good, delete {})",
                cluster.root.display(),
                cluster.pgdata.join("postmaster.pid").display()
            )));
        }
        if !cluster.is_running()? {
            cluster.write_settings(options)?;
            cluster.pg_ctl_start()?;
            write_replacing(&cluster.root.join("host"), format!("{host}\n").as_bytes())?;
        }
        let users_path = cluster.root.join("users.lock");
        let users = lock_file(&users_path)?;
        users
            .lock_shared()
            .map_err(|e| StoreError::io(&users_path, e))?;
        cluster.users_lock = Some(users);
        drop(start_lock);
        Ok(cluster)
    }

    /// Connection options for `database` over the cluster's unix socket.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.socket_dir)
            .port(PORT)
            .username(SUPERUSER)
            .database(database)
            .application_name("llamagen")
    }

    /// A `postgresql://` URL that libpq (`psql`, notebooks, BI tools) and sqlx (another
    /// llamagen's `DATABASE_URL`) both read: the socket folder and the user go in the query,
    /// because a user before an empty host (`llamagen@/`) is libpq's alone, and the folder is
    /// percent-encoded so that spaces, `&`, `+` or `#` in it survive both parsers.
    pub fn url(&self, database: &str) -> String {
        use std::os::unix::ffi::OsStrExt as _;
        format!(
            "postgresql:///{database}?host={}&port={PORT}&user={SUPERUSER}",
            percent_encode(self.socket_dir.as_os_str().as_bytes())
        )
    }

    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Releases this process's use of the server and stops it if no other process uses it.
    pub fn stop(mut self) -> Result<(), StoreError> {
        self.release()
    }

    fn release(&mut self) -> Result<(), StoreError> {
        let Some(users) = self.users_lock.take() else {
            return Ok(());
        };
        let _start_lock = lock_within(&self.root.join("start.lock"), START_LOCK_WAIT)?;
        drop(users);
        let users_path = self.root.join("users.lock");
        let probe = lock_file(&users_path)?;
        // A child that another thread of this process has forked but not yet exec'd holds a
        // copy of every descriptor, the one just dropped included, and so its shared lock: a
        // refusal that lasts only that long is no user. A real one outlasts the retries.
        let mut last = probe.try_lock().is_ok();
        for _ in 0..LAST_USER_RETRIES {
            if last {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            last = probe.try_lock().is_ok();
        }
        if last && self.is_running()? {
            tracing::debug!(pgdata = %self.pgdata.display(), "stopping private PostgreSQL");
            self.pg_ctl_stop("fast", 60)?;
        }
        Ok(())
    }

    /// `pg_ctl stop -m MODE`, waiting up to `seconds`.
    fn pg_ctl_stop(&self, mode: &str, seconds: u32) -> Result<(), StoreError> {
        let out = self.run("pg_ctl", |c| {
            c.arg("-D").arg(&self.pgdata).args([
                "-m",
                mode,
                "-w",
                "-t",
                &seconds.to_string(),
                "stop",
            ]);
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(self.command_failed("pg_ctl stop", &out))
        }
    }

    /// Stops the server at once without asking other users; for throw-away clusters at exit.
    pub(crate) fn stop_now(&self) {
        let _ = self.pg_ctl_stop("immediate", 30);
    }

    /// Stops the server, waits `pause`, and starts it again: an outage as clients see one
    /// (their connections break, new ones are refused, then accepted), for tests. The stop is
    /// `fast` (sessions ended, a final checkpoint), not `immediate`: a throw-away cluster runs
    /// without fsync, and a crash would also lose commits its clients were told about, which
    /// a durable server never does.
    pub(crate) fn restart_after(&self, pause: std::time::Duration) -> Result<(), StoreError> {
        self.pg_ctl_stop("fast", 60)?;
        std::thread::sleep(pause);
        self.pg_ctl_start()
    }

    fn initdb(&self) -> Result<(), StoreError> {
        tracing::info!(pgdata = %self.pgdata.display(), "creating private PostgreSQL cluster");
        // initdb into a scratch folder and rename it into place, so a killed initdb never
        // leaves a half-made cluster where the next start would trust it.
        let scratch = self
            .root
            .join(format!("pgdata.init-{}", std::process::id()));
        if scratch.exists() {
            fs::remove_dir_all(&scratch).map_err(|e| StoreError::io(&scratch, e))?;
        }
        fs::create_dir(&scratch).map_err(|e| StoreError::io(&scratch, e))?;
        fs::set_permissions(&scratch, fs::Permissions::from_mode(0o700))
            .map_err(|e| StoreError::io(&scratch, e))?;
        self.give_to_server_user(&scratch)?;
        let out = self.run("initdb", |c| {
            c.arg("-D")
                .arg(&scratch)
                .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-locale"])
                .arg("--no-sync");
        })?;
        if !out.status.success() {
            let _ = fs::remove_dir_all(&scratch);
            return Err(self.command_failed("initdb", &out));
        }
        let conf = scratch.join("postgresql.conf");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(|e| StoreError::io(&conf, e))?;
        writeln!(
            f,
            "\n# llamagen: per-start settings\ninclude_if_exists = 'llamagen.conf'"
        )
        .map_err(|e| StoreError::io(&conf, e))?;
        f.sync_all().map_err(|e| StoreError::io(&conf, e))?;
        if self.pgdata.exists() {
            // A folder without PG_VERSION is debris from an interrupted older layout.
            fs::remove_dir_all(&self.pgdata).map_err(|e| StoreError::io(&self.pgdata, e))?;
        }
        fs::rename(&scratch, &self.pgdata).map_err(|e| StoreError::io(&self.pgdata, e))?;
        Ok(())
    }

    fn write_settings(&self, options: &ClusterOptions) -> Result<(), StoreError> {
        if self.socket_dir != self.pgdata {
            fs::create_dir_all(&self.socket_dir)
                .map_err(|e| StoreError::io(&self.socket_dir, e))?;
            fs::set_permissions(&self.socket_dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| StoreError::io(&self.socket_dir, e))?;
            self.give_to_server_user(&self.socket_dir)?;
        }
        let durable = if options.durable { "on" } else { "off" };
        let text = format!(
            "# Written by llamagen before each start; edits are overwritten.\n\
             listen_addresses = ''\n\
             port = {PORT}\n\
             unix_socket_directories = '{socket}'\n\
             unix_socket_permissions = 0700\n\
             fsync = {durable}\n\
             synchronous_commit = {durable}\n\
             full_page_writes = {durable}\n\
             max_connections = 200\n\
             logging_collector = off\n\
             log_min_messages = warning\n",
            socket = self.socket_dir.display().to_string().replace('\'', "''"),
        );
        let path = self.pgdata.join("llamagen.conf");
        write_replacing(&path, text.as_bytes())?;
        self.give_to_server_user(&path)?;
        self.write_authentication()
    }

    /// As root the server runs as another user, who owns the socket's folder: with initdb's
    /// `trust`, any process of that user (`nobody`, shared by many daemons) could connect as
    /// the superuser. So connections are authenticated by peer (the kernel says which user is
    /// on the other end of the socket), and only the user running llamagen maps to the role.
    /// Without root the server runs as the caller, whose 0700 socket folder no one else can
    /// enter, and initdb's `trust` stays.
    fn write_authentication(&self) -> Result<(), StoreError> {
        if self.run_as.is_none() {
            return Ok(());
        }
        let caller = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .ok_or_else(|| {
                StoreError::Cluster(
                    "the user running llamagen has no name in the user database, which peer \
                     authentication needs; set DATABASE_URL to use an existing server"
                        .into(),
                )
            })?;
        let hba = "# Written by llamagen before each start; edits are overwritten.\n\
                   # Unix socket only; the user running llamagen (pg_ident.conf) as the owner role.\n\
                   local all all peer map=llamagen\n";
        let ident = format!(
            "# Written by llamagen before each start; edits are overwritten.\n\
             llamagen {caller} {SUPERUSER}\n"
        );
        for (name, text) in [("pg_hba.conf", hba.to_owned()), ("pg_ident.conf", ident)] {
            let path = self.pgdata.join(name);
            write_replacing(&path, text.as_bytes())?;
            self.give_to_server_user(&path)?;
        }
        Ok(())
    }

    /// The host recorded by the process that started the server, if any.
    fn server_host(&self) -> Result<Option<String>, StoreError> {
        let path = self.root.join("host");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_owned()).filter(|h| !h.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    fn pg_ctl_start(&self) -> Result<(), StoreError> {
        tracing::info!(pgdata = %self.pgdata.display(), "starting private PostgreSQL");
        let log = self.pgdata.join("server.log");
        let out = self.run("pg_ctl", |c| {
            c.arg("-D")
                .arg(&self.pgdata)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "start"]);
        })?;
        if !out.status.success() {
            let tail = fs::read_to_string(&log)
                .map(|s| {
                    let lines: Vec<&str> = s.lines().collect();
                    lines[lines.len().saturating_sub(15)..].join("\n")
                })
                .unwrap_or_default();
            return Err(StoreError::Cluster(format!(
                "pg_ctl start failed ({}): {}\n{}\nserver log {}:\n{tail}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim(),
                log.display()
            )));
        }
        Ok(())
    }

    fn is_running(&self) -> Result<bool, StoreError> {
        if !self.pgdata.join("postmaster.pid").exists() {
            return Ok(false);
        }
        let out = self.run("pg_ctl", |c| {
            c.arg("-D").arg(&self.pgdata).arg("status");
        })?;
        // pg_ctl status: 0 running, 3 not running, 4 no accessible data directory.
        Ok(out.status.code() == Some(0))
    }

    /// The server user must reach the data directory through every parent folder.
    fn check_reachable(&self, user: &RunAs) -> Result<(), StoreError> {
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .map_err(|e| StoreError::io(&self.root, e))?;
        self.give_to_server_user(&self.root)?;
        let ok = Command::new("test")
            .arg("-w")
            .arg(&self.root)
            .uid(user.uid.as_raw())
            .gid(user.gid.as_raw())
            .current_dir("/")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            Ok(())
        } else {
            Err(StoreError::Cluster(format!(
                "PostgreSQL refuses to run as root, so the private cluster runs as user '{}', who cannot reach {}: \
                 choose a data directory below folders that others may enter (e.g. --data-dir /var/lib/llamagen), \
                 set LLAMAGEN_PG_USER to a user who can, or set DATABASE_URL to use an existing server",
                user.name,
                self.root.display()
            )))
        }
    }

    /// Hands `path` itself to the server user; a symlink is changed, never what it points at
    /// (the server user could have made one point at any file root owns).
    fn give_to_server_user(&self, path: &Path) -> Result<(), StoreError> {
        if let Some(user) = &self.run_as {
            std::os::unix::fs::lchown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(|e| StoreError::io(path, e))?;
        }
        Ok(())
    }

    fn run(&self, program: &str, args: impl FnOnce(&mut Command)) -> Result<Output, StoreError> {
        let path = self.bin_dir.join(program);
        let mut cmd = Command::new(&path);
        args(&mut cmd);
        // The server user may not be able to enter the caller's working directory.
        cmd.current_dir("/").env_remove("PGDATA").env("LC_ALL", "C");
        if let Some(user) = &self.run_as {
            // std drops root's supplementary groups when it switches to another uid.
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        cmd.output().map_err(|e| StoreError::io(&path, e))
    }

    fn command_failed(&self, what: &str, out: &Output) -> StoreError {
        StoreError::Cluster(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!("stopping private PostgreSQL: {e}");
        }
    }
}

/// The PostgreSQL server binaries: `LLAMAGEN_PG_BIN`, else `pg_config --bindir`, else the
/// newest `/usr/lib/postgresql/*/bin` (Debian's layout), else `initdb` on the PATH.
pub fn find_bin_dir() -> Result<PathBuf, StoreError> {
    let has_initdb = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("LLAMAGEN_PG_BIN").map(PathBuf::from) {
        return if has_initdb(&dir) {
            Ok(dir)
        } else {
            Err(StoreError::Cluster(format!(
                "LLAMAGEN_PG_BIN={} has no initdb/pg_ctl",
                dir.display()
            )))
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return Ok(dir);
        }
    }
    let mut debian: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_initdb(&bin).then_some((major, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, dir)) = debian.pop() {
        return Ok(dir);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if has_initdb(&dir) {
            return Ok(dir);
        }
    }
    Err(StoreError::Cluster(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: run scripts/setup.sh (installs Debian's \
         `postgresql`), set LLAMAGEN_PG_BIN to their folder, or set DATABASE_URL to use an existing server"
            .into(),
    ))
}

/// `postgres --version` of the binaries the private cluster uses, e.g. `postgres (PostgreSQL) 15.18`.
pub fn server_binaries_version() -> Result<String, StoreError> {
    let bin = find_bin_dir()?.join("postgres");
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .map_err(|e| StoreError::io(&bin, e))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn run_as_user() -> Result<Option<RunAs>, StoreError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let candidates: Vec<String> = match std::env::var("LLAMAGEN_PG_USER") {
        Ok(name) => vec![name],
        Err(_) => vec!["postgres".into(), "nobody".into()],
    };
    for name in &candidates {
        if let Ok(Some(user)) = nix::unistd::User::from_name(name) {
            if user.uid.is_root() {
                continue;
            }
            return Ok(Some(RunAs {
                name: user.name,
                uid: user.uid,
                gid: user.gid,
            }));
        }
    }
    Err(StoreError::Cluster(format!(
        "running as root and none of the users {candidates:?} exists to run PostgreSQL: \
         create one, set LLAMAGEN_PG_USER, or set DATABASE_URL"
    )))
}

/// `bytes` with everything but unreserved characters and `/` as `%XX`, which libpq and the url
/// crate both decode in a query value (form decoding would read a bare `+` as a space).
fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn socket_dir_for(pgdata: &Path) -> PathBuf {
    let in_pgdata = pgdata.join(format!(".s.PGSQL.{PORT}"));
    if in_pgdata.as_os_str().len() <= MAX_SOCKET_PATH {
        return pgdata.to_path_buf();
    }
    // Too long for a unix socket: use a short folder named after a hash of the data folder.
    let hash = pgdata
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
        });
    std::env::temp_dir().join(format!("llamagen-pg-{hash:016x}"))
}

/// The longest wait for another process to finish starting or stopping the server (initdb and
/// a start take seconds; a holder past this is hung, since a dead one releases the lock).
const START_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(180);

/// `path` opened and locked exclusively, waiting at most `wait` for another holder.
fn lock_within(path: &Path, wait: std::time::Duration) -> Result<File, StoreError> {
    let file = lock_file(path)?;
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if started.elapsed() < wait => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Cluster(format!(
                    "{} has been held by another process for {} s (starting or stopping the server); \
                     find it with `fuser {}` or stop it",
                    path.display(),
                    wait.as_secs(),
                    path.display()
                )));
            }
            Err(fs::TryLockError::Error(e)) => return Err(StoreError::io(path, e)),
        }
    }
}

/// This machine's name, as the `host` file records it.
pub(crate) fn this_host() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Writes `path` as a new file and renames it over the old one: whatever was at `path` (a
/// symlink included) is replaced, never written through.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_file_name(format!(
        ".{}.{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(&tmp, e)),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| StoreError::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| StoreError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))
}

/// How many times, 20 ms apart, a process leaving the cluster asks again whether it was the
/// last user before it leaves the server running for the others.
const LAST_USER_RETRIES: usize = 5;

fn lock_file(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io(path, e))
}

fn absolute(path: &Path) -> Result<PathBuf, StoreError> {
    std::path::absolute(path).map_err(|e| StoreError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_data_paths_get_a_short_socket_folder() {
        let short = Path::new("/tmp/x/postgres/pgdata");
        assert_eq!(socket_dir_for(short), short);
        let long = PathBuf::from(format!("/tmp/{}/postgres/pgdata", "d".repeat(120)));
        let dir = socket_dir_for(&long);
        assert!(dir.as_os_str().len() < 60, "{}", dir.display());
        assert_eq!(
            dir,
            socket_dir_for(&long),
            "same data folder, same socket folder"
        );
    }
}
