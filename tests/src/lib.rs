//! secretgate's black-box test harness.
//!
//! Each test binary (`tests/blackbox/*.rs`, run with libtest-mimic) starts ONE
//! throwaway PostgreSQL cluster with [`Cluster::start`], runs its trials
//! against it over sqlx and stops it with [`finish`], even when trials fail.
//! The server is Debian's 15 unless `SECRETGATE_PG_BIN` names another
//! major's `bin` directory ([`pg_bin`]); `majors.rs` starts one per major
//! ([`Cluster::start_on`], [`pg_bin_of`]).
//!
//! Rules every test follows:
//! * secret values are bind parameters, never SQL literals (Postgres logs the
//!   text of failed statements);
//! * assertion messages print SQLSTATEs, messages and details, never a value
//!   a test stored: values come from [`Cluster::fresh_secret`], and [`finish`]
//!   checks the server log contains none of them and no key.
//!
//! Modules, by concern (everything is re-exported here, so a binary needs
//! only `use secretgate_tests::*`):
//! * [`cluster`]: [`Cluster`], [`trial`], [`trials!`], [`finish`], log leak checks;
//! * [`standby`]: [`Standby`], [`wait_for_replay`];
//! * [`db`]: [`migrated_database`], [`empty_database`], [`connect_when_ready`], [`execute_with`], [`Arg`];
//! * [`errors`]: [`DbError`], [`expect_sqlstate`], [`expect_sg`], [`describe`], [`Described`];
//! * [`keys`]: random bytes, [`TestKeys`], keyring helpers and the rotation fixtures;
//! * [`cli`]: the `secretgate` tool ([`run_cli`], [`spawn_cli`]);
//! * [`refusals`]: one refusal per gate ([`one_refusal_per_gate`]), for the installed-system walks;
//! * [`world`]: workspaces, secrets and transactions as a small language
//!   ([`Db`], [`Op`], callers, [`State`] re-read on a fresh connection, audit lines).

pub mod cli;
pub mod cluster;
pub mod db;
pub mod errors;
pub mod keys;
pub mod refusals;
pub mod standby;
pub mod world;

pub use cli::*;
pub use cluster::*;
pub use db::*;
pub use errors::*;
pub use keys::*;
pub use libtest_mimic;
pub use refusals::*;
pub use standby::*;
pub use world::*;
