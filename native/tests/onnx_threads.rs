//! The threads an ONNX Runtime session starts, counted in `/proc/self/task` of a fresh process
//! (this test binary again, in the environment the case names): `ORT_INTRA_OP_NUM_THREADS`
//! sizes the pool of a session asked for 0 threads, an explicit count wins over it, and a
//! process bound to one CPU (`taskset`, as a Slurm task or a cpuset is) starts one thread.

use std::path::PathBuf;
use std::process::Command;

use llamagen_native::onnx::INTRA_THREADS_VARIABLE;

fn tiny_mlp() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_mlp.onnx")
}

/// Runs [`opens_a_session`] asking for `threads` in a fresh process, started by `launcher`
/// (empty: directly) with the pool variable set to `variable`; returns how many threads the
/// session added.
fn threads_added(launcher: &[&str], variable: Option<&str>, threads: usize) -> usize {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match launcher.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(&exe);
            cmd
        }
        None => Command::new(&exe),
    };
    cmd.args(["opens_a_session", "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env("LLAMAGEN_TEST_THREADS", threads.to_string());
    match variable {
        Some(v) => cmd.env(INTRA_THREADS_VARIABLE, v),
        None => cmd.env_remove(INTRA_THREADS_VARIABLE),
    };
    let out = cmd.output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The harness prints the test's name on the same line.
    printed
        .split("threads added: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in: {printed}"))
}

#[test]
fn the_variable_or_the_cpus_at_hand_size_the_pool_and_an_explicit_count_wins() {
    // A pool of n threads is the calling thread and n - 1 workers.
    assert_eq!(threads_added(&[], Some("3"), 0), 2, "the variable at 3");
    assert_eq!(
        threads_added(&[], Some("3"), 2),
        1,
        "2 asked, the variable at 3"
    );
    // Bound to one CPU of those this process may use: the runtime alone would start one per
    // physical core of the machine.
    let cpu = first_allowed_cpu();
    assert_eq!(
        threads_added(&["taskset", "-c", &cpu], None, 0),
        0,
        "bound to CPU {cpu}"
    );
}

/// The first CPU of this process's affinity (`Cpus_allowed_list: 2-3,6` gives 2): CPU 0 may
/// be outside a container's cpuset.
fn first_allowed_cpu() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    list.trim().split([',', '-']).next().unwrap().to_string()
}

#[test]
#[ignore = "the body of the_variable_or_the_cpus_at_hand_size_the_pool_and_an_explicit_count_wins"]
fn opens_a_session() {
    let tasks = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let threads: usize = std::env::var("LLAMAGEN_TEST_THREADS")
        .unwrap()
        .parse()
        .unwrap();
    // The library's own start-up threads are not the session's.
    llamagen_native::onnx::environment().unwrap();
    let before = tasks();
    let _session = llamagen_native::onnx::session(&tiny_mlp(), threads).unwrap();
    println!("threads added: {}", tasks() - before);
}
