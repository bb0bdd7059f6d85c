// The engine's build: libtorch linking for its own test binaries
// (build/link.rs), and the small C++ shim in csrc/ that lists a TorchScript
// module's buffers, compiled against the headers of the same libtorch.
include!("build/link.rs");

fn main() {
    println!("cargo:rerun-if-changed=csrc/module_buffers.cpp");
    println!("cargo:rerun-if-changed=build/link.rs");
    let Some(lib) = link_libtorch() else {
        panic!("torch-sys did not report where libtorch lives (DEP_TCH_LIBTORCH_LIB)");
    };
    // libtorch's layout, wheel or zip: lib/ and include/ side by side.
    let root = lib
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let include = root.join("include");
    cc::Build::new()
        .cpp(true)
        .file("csrc/module_buffers.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", cxx11_abi()))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("stoker_torch_shim");
}

/// The C++ ABI libtorch was built with, as torch-sys finds it: from the
/// environment (LIBTORCH_CXX11_ABI), else from the Python torch it links
/// (LIBTORCH_USE_PYTORCH), else 1, every current wheel's.
fn cxx11_abi() -> &'static str {
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    if let Ok(v) = std::env::var("LIBTORCH_CXX11_ABI") {
        return if v.trim() == "0" { "0" } else { "1" };
    }
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))",
        ])
        .output();
    match out {
        Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "0" => "0",
        _ => "1",
    }
}
