//! Integration tests of converge-store, in one binary (STYLE.md habit 11).

mod append_many;
mod crash_sim;
mod differential;
#[cfg(unix)]
mod kill;
mod redb_backend;
mod util;
mod wal;
