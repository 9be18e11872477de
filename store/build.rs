//! `sqlx::migrate!` embeds the migrations at compile time but does not tell Cargo to watch
//! their folder: without this, a new migration file is missing from the binary until something
//! else makes the crate rebuild.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
