//! Every `secretgate.*` setting: its value and its definition, in the order
//! the settings reference lists them. [`register`] defines them all, once,
//! from `_PG_init`; the modules that read a setting read its static here.

use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::ffi::CString;

/// `secretgate.keyring_file`: the keyring's path (see `keyring`).
pub static KEYRING_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `secretgate.keyring_command`: a command that prints the keyring (see `keyring_source`).
pub static KEYRING_COMMAND: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `secretgate.keyring_command_timeout`: seconds the command may run.
pub static KEYRING_COMMAND_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(10);

/// `secretgate.caller`: what the service says the current request is.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum CallerSetting {
    #[name = c"unset"]
    Unset,
    #[name = c"agent"]
    Agent,
    #[name = c"operator"]
    Operator,
    #[name = c"workspace"]
    Workspace,
}

pub static CALLER: GucSetting<CallerSetting> = GucSetting::<CallerSetting>::new(CallerSetting::Unset);

/// `secretgate.direct_index_read`: a superuser's off switch for the direct
/// primary-key read (the SQL path answers instead), for a table access
/// method or a server build where the direct read is in doubt.
pub static DIRECT_INDEX_READ: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `secretgate.audit_queue_size`: slots in the audit queue (postmaster setting).
pub static AUDIT_QUEUE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1024);

/// `secretgate.audit_retention`: rows older than this are pruned (seconds; 0 keeps all).
pub static AUDIT_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(90 * 86_400);

/// `secretgate.history_keep`: versions kept per secret (0: no history).
pub static HISTORY_KEEP: GucSetting<i32> = GucSetting::<i32>::new(10);

/// `secretgate.history_retention`: kept versions older than this are pruned (seconds; 0 keeps all).
pub static HISTORY_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(90 * 86_400);

/// `secretgate.audit_reads`: which secret reads become audit rows.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum AuditReads {
    #[name = c"off"]
    Off,
    #[name = c"errors"]
    Errors,
    #[name = c"all"]
    All,
}

pub static AUDIT_READS: GucSetting<AuditReads> = GucSetting::<AuditReads>::new(AuditReads::Errors);

/// Defines every setting; called once from `_PG_init`, before anything
/// reads one.
pub fn register() {
    GucRegistry::define_string_guc(
        c"secretgate.keyring_file",
        c"Absolute path of secretgate's JSON keyring (mode 0600, owned by the server's user).",
        c"Set only in the server's configuration; re-read when the file changes or on reload.",
        &KEYRING_FILE,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_string_guc(
        c"secretgate.keyring_command",
        c"A command whose standard output is secretgate's JSON keyring (e.g. a KMS decrypt).",
        c"Run once at server start and once per reload, never per connection; its output stays in memory. Needs shared_preload_libraries.",
        &KEYRING_COMMAND,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
    );
    GucRegistry::define_int_guc(
        c"secretgate.keyring_command_timeout",
        c"How long secretgate.keyring_command may run before it is killed.",
        c"A command that takes longer leaves the server without a keyring (SG003) until the next reload.",
        &KEYRING_COMMAND_TIMEOUT,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_enum_guc(
        c"secretgate.caller",
        c"Who the current request acts for: agent, operator, workspace or unset.",
        c"Services SET LOCAL it per request. It can only add restrictions: members of secretgate_agent are agents whatever it says.",
        &CALLER,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"secretgate.history_keep",
        c"Versions of each secret kept when it is overwritten or deleted; 0 keeps no history.",
        c"Older versions of a secret are removed as new ones are kept.",
        &HISTORY_KEEP,
        0,
        1000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"secretgate.history_retention",
        c"How long kept versions of secrets are kept; 0 keeps them until history_keep removes them.",
        c"The audit writers delete older versions in small batches.",
        &HISTORY_RETENTION,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_enum_guc(
        c"secretgate.audit_reads",
        c"Which secret reads become audit rows: off, errors (reads that answer an error) or all.",
        c"Each audited read is a record in the audit queue; never the value.",
        &AUDIT_READS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"secretgate.direct_index_read",
        c"Whether the gates read a workspace's kind straight through its primary key (on) or through SQL (off).",
        c"Off is slower and answers the same; it exists to rule the direct read out.",
        &DIRECT_INDEX_READ,
        GucContext::Suset,
        GucFlags::default(),
    );
    // A postmaster setting can only be defined at server start.
    // SAFETY: reads a Postgres global flag.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_int_guc(
            c"secretgate.audit_queue_size",
            c"Records the shared-memory audit queue holds before it drops (and counts) new ones.",
            c"Set in postgresql.conf; takes effect at server start.",
            &AUDIT_QUEUE_SIZE,
            16,
            1 << 20,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"secretgate.audit_retention",
        c"How long rows of secretgate.audit_events are kept; 0 keeps them all.",
        c"The audit writers delete older rows in small batches.",
        &AUDIT_RETENTION,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}
