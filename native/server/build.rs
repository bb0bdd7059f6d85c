// The same linking as the engine's test binaries (rpath to libtorch, and
// libtorch_cuda kept NEEDED), for the server's test binaries.
include!("../engine/build/link.rs");

fn main() {
    let _ = link_libtorch();
}
