//! The process's memory against glibc's allocator, which keeps what it frees.
//!
//! glibc's malloc gives librdkafka's threads and tokio's workers arenas of their own, and freed
//! pages inside an arena's heap stay resident until trimmed, so RSS grows far past the live
//! data over hours. Two arenas and a trim every 30 s keep it flat; see
//! docs/decisions/0007-two-malloc-arenas-and-a-trim.md.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Limits glibc to two arenas (plenty on ECS tasks of one or two vCPUs). Call before any thread
/// starts; `MALLOC_ARENA_MAX`, if set, wins.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter, before other threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Gives free pages back to the system, at most once per `interval` (callers may call often).
pub fn trim_every(interval: Duration) {
    static LAST_MS: AtomicI64 = AtomicI64::new(0);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let last = LAST_MS.load(Ordering::Relaxed);
    if now_ms - last < interval.as_millis() as i64
        || LAST_MS
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
    // SAFETY: malloc_trim is thread-safe; it returns free pages of every arena (a few ms).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
    fn trimming_gives_freed_memory_back() {
        let rss = || crate::metrics::resident_memory_bytes().unwrap();
        // 200 MB in small blocks (below the mmap threshold), all freed but one in a hundred:
        // the heap cannot shrink past the kept ones, so the holes between them stay resident
        // until trimmed.
        let mut blocks: Vec<Vec<u8>> = (0..200_000).map(|_| vec![1u8; 1000]).collect();
        let mut kept = Vec::new();
        for (i, block) in blocks.drain(..).enumerate() {
            if i % 100 == 0 {
                kept.push(block);
            }
        }
        let before = rss();
        trim_every(Duration::ZERO);
        let after = rss();
        drop(kept);
        // Other tests of this binary allocate at the same time: ask for a quarter of it.
        assert!(
            after + 50_000_000 < before,
            "{before} bytes resident before the trim, {after} after"
        );
    }
}
