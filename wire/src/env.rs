//! The environment variables the `dsm` binary reads its flags from (each flag's
//! `--help` names its variable). The operator configures its pods through them, so
//! both take the names from here.

/// Declares each variable, and [`ALL`] listing them.
macro_rules! variables {
    ($($(#[doc = $doc:expr])* $name:ident = $value:literal;)*) => {
        $($(#[doc = $doc])* pub const $name: &str = $value;)*
        /// Every variable of this module.
        pub const ALL: &[&str] = &[$($name),*];
    };
}

variables! {
    /// `--worker-threads` of every command.
    WORKER_THREADS = "DSM_WORKER_THREADS";
    /// `--log-format` of every command.
    LOG_FORMAT = "DSM_LOG_FORMAT";
    /// `--listen` of master, backup and slave.
    LISTEN = "DSM_LISTEN";
    /// `--advertise` of master, backup and slave.
    ADVERTISE = "DSM_ADVERTISE";
    /// `--id` of master, backup and slave.
    ID = "DSM_ID";
    /// `--metrics-listen` of master, backup and slave.
    METRICS_LISTEN = "DSM_METRICS_LISTEN";
    /// `--commit-window` of master, backup and slave.
    COMMIT_WINDOW = "DSM_COMMIT_WINDOW";
    /// The shared log directory: `--log-dir` of master, backup and `dsm snapshot
    /// restore`, `--dir` of `dsm log dump`.
    LOG_DIR = "DSM_LOG_DIR";
    /// `--slaves` of master and backup.
    SLAVES = "DSM_SLAVES";
    /// `--replication-factor` of master and backup.
    REPLICATION_FACTOR = "DSM_REPLICATION_FACTOR";
    /// `--lease-ttl` of master and backup.
    LEASE_TTL = "DSM_LEASE_TTL";
    /// `--slave-timeout` of master and backup.
    SLAVE_TIMEOUT = "DSM_SLAVE_TIMEOUT";
    /// `--max-key-bytes` of master and backup.
    MAX_KEY_BYTES = "DSM_MAX_KEY_BYTES";
    /// `--max-value-bytes` of master and backup.
    MAX_VALUE_BYTES = "DSM_MAX_VALUE_BYTES";
    /// `--max-watchers` of master and backup.
    MAX_WATCHERS = "DSM_MAX_WATCHERS";
    /// `--segment-bytes` of master and backup.
    SEGMENT_BYTES = "DSM_SEGMENT_BYTES";
    /// `--compact-segments` of master and backup.
    COMPACT_SEGMENTS = "DSM_COMPACT_SEGMENTS";
    /// `--data-dir` of a slave.
    DATA_DIR = "DSM_DATA_DIR";
    /// `--heartbeat` of a slave.
    HEARTBEAT = "DSM_HEARTBEAT";
    /// `--master` of slaves and clients: the master's address.
    MASTER = "DSM_MASTER";
    /// `--backup` of slaves and clients: the backup master's address.
    BACKUP = "DSM_BACKUP";
    /// `--tls-cert` of members and clients.
    TLS_CERT = "DSM_TLS_CERT";
    /// `--tls-key` of members and clients.
    TLS_KEY = "DSM_TLS_KEY";
    /// `--tls-ca` of members and clients.
    TLS_CA = "DSM_TLS_CA";
    /// `--tls-client-auth` of members.
    TLS_CLIENT_AUTH = "DSM_TLS_CLIENT_AUTH";
    /// `--tls-server-name` of clients.
    TLS_SERVER_NAME = "DSM_TLS_SERVER_NAME";
    /// `--token-file` of master and backup.
    TOKEN_FILE = "DSM_TOKEN_FILE";
    /// `--read-only-token-file` of master and backup.
    READ_ONLY_TOKEN_FILE = "DSM_READ_ONLY_TOKEN_FILE";
    /// `--token` of clients.
    TOKEN = "DSM_TOKEN";
}

#[cfg(test)]
mod tests {
    use super::ALL;

    #[test]
    fn every_variable_is_a_distinct_dsm_name() {
        for (i, name) in ALL.iter().enumerate() {
            assert!(name.starts_with("DSM_"), "{name}");
            assert!(!ALL[i + 1..].contains(name), "{name} twice");
        }
    }
}
