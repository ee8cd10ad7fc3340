//! Gives the heap's free pages back to the operating system after a configuration is read.
//!
//! Parsing a configuration with 100 000 credentials allocates a few hundred megabytes that are
//! freed once the slot table is built. glibc's allocator keeps such memory for reuse, so the
//! process would show (and a container limit would count) that peak for the rest of its life.
//! A gateway does not need it again until the next reload, so it is handed back right away.

/// Returns the allocator's free memory to the operating system where the allocator allows it
/// (glibc); elsewhere it does nothing.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // The crate's one exception to `deny(unsafe_code)`.
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointer and
    // may be called at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
