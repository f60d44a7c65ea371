//! This process's identity among the replicas: the host it runs on. The leases it holds
//! name it (with its pid and a random part, [`crate::postgres::owner_name`]), and the
//! server's default advertised address uses it. Cost: one file read per call.

/// This machine's host name (the kernel's, else `HOSTNAME`, else `localhost`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|host| host.trim().to_string())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
