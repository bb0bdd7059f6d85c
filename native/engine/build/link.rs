// Linking every binary that loads libtorch needs (the engine's tests and
// benches, the server's tests, the `stoker` binary): link arguments from a
// dependency's build script do not reach dependents, so native/server's and
// native/cli's build.rs include this file too.
//
// torch-sys tells its direct dependents where libtorch lives
// (DEP_TCH_LIBTORCH_LIB); without an rpath the binaries fail with
// "libtorch_cpu.so: cannot open shared object file".
fn link_libtorch() -> Option<std::path::PathBuf> {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").ok()?;
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // Keep libtorch_cuda.so NEEDED even though no symbol of it is used
    // directly: --as-needed would drop it and CUDA would silently be
    // unavailable on a GPU host.
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    Some(lib.into())
}
