// States, Arrow batches and action bodies are buffers of tens to hundreds of
// megabytes, allocated and freed every round. glibc hands buffers that large
// straight back to the kernel, so each new one is first-touched again, page by
// page: profiles of a 10M-parameter train_round showed more time in page
// faults than in training. jemalloc keeps freed pages for reuse (and returns
// them after its decay time), so the next round's buffers are already mapped.
// libtorch's own tensors are unaffected (they use its allocator).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options. By default allocations over 8 MiB go to an arena that
/// returns freed pages at once, which is the glibc behaviour this avoids;
/// `oversize_threshold:0` keeps them with the rest (freed pages are returned
/// after the default 10 s decay instead).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8; 21] = b"oversize_threshold:0\0";

fn main() -> std::process::ExitCode {
    stoker_flight::cli::main()
}
