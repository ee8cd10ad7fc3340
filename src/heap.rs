//! Gives the heap's free pages back to the operating system after a configuration is read,
//! and says how much of the heap is in use.
//!
//! Starting with 100 000 credentials holds the file's text, the parsed configuration and the
//! slot table at once, tens of megabytes that are freed once the slot table is built. glibc's
//! allocator keeps such memory for reuse, so the process would show (and a container limit
//! would count) that peak for the rest of its life. A gateway does not need it again until
//! the next reload, so it is handed back right away.

/// Returns the allocator's free memory to the operating system where the allocator allows it
/// (glibc); elsewhere it does nothing.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // One of the crate's two exceptions to `deny(unsafe_code)`, both here.
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointer and
    // may be called at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes the allocator has handed out and not had back: glibc's in-use chunks and mmapped
/// blocks. Unlike the resident size, it leaves out freed memory the allocator keeps, so it
/// shows what the gateway's data holds (bytes per session). `None` with another allocator.
/// Not cheap: glibc walks each arena's free lists under its lock (see `HeapMetric`).
pub fn allocated() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // The other exception to `deny(unsafe_code)`.
        #[allow(unsafe_code)]
        // SAFETY: mallinfo2 takes no argument and only reads the allocator's own state, under
        // its arena locks; it may be called at any time from any thread (glibc 2.33 or later).
        let info = unsafe { libc::mallinfo2() };
        Some(info.uordblks as u64 + info.hblkhd as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}
