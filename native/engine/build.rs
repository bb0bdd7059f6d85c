// Lets the engine's own test and bench binaries find libtorch at run time.
// torch-sys tells its direct dependents where libtorch lives
// (DEP_TCH_LIBTORCH_LIB); without an rpath the binaries fail with
// "libtorch_cpu.so: cannot open shared object file". Crates that build
// binaries of their own (native/flight) repeat this in their build.rs.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        // Keep libtorch_cuda.so NEEDED even though no symbol of it is used
        // directly: --as-needed would drop it and CUDA would silently be
        // unavailable on a GPU host.
        if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
}
