//! Process memory hygiene for a long-running server that loads and frees large models.
//!
//! glibc's malloc gives threads their own arenas (up to 8 per core) and keeps freed memory
//! in them; a server that starts a worker thread per reward model and frees whole sessions
//! on removal then grows its resident set by fragmentation, not by leaks (measured: +23%
//! RSS over 100 add/remove cycles of one RM). Two arenas plus a trim after each model is
//! freed keep it flat (+1%). Both are no-ops on other platforms.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    fn mallopt(param: i32, value: i32) -> i32;
    fn malloc_trim(pad: usize) -> i32;
}

/// glibc's `M_ARENA_MAX`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const M_ARENA_MAX: i32 = -8;

/// Cap malloc arenas at two. Call once at startup, before threads are spawned.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads exist.
    unsafe {
        mallopt(M_ARENA_MAX, 2);
    }
}

/// Return freed heap pages (of every arena) to the OS, e.g. after a model was dropped.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the OS; it does not touch live
    // allocations and has no preconditions.
    unsafe {
        malloc_trim(0);
    }
}
