// The same linking as the engine's test binaries (rpath to libtorch, and
// libtorch_cuda kept NEEDED), for the `stoker-fuzz` binary and its tests.
include!("../engine/build/link.rs");

fn main() {
    let _ = link_libtorch();
}
