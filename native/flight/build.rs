// The same linking as the engine's test binaries (rpath to libtorch, and
// libtorch_cuda kept NEEDED), for the `stoker` binary and this crate's tests:
// link arguments from a dependency's build script do not reach dependents.
include!("../engine/build.rs");
