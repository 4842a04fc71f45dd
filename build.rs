//! Embed an rpath to libtorch in every binary so `cures` runs without LD_LIBRARY_PATH, and the
//! version of the libtorch headers it is built against (`CURES_LIBTORCH_VERSION`, for
//! `cures --version`). torch-sys publishes the library directory it linked against as
//! `DEP_TCH_LIBTORCH_LIB`.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let mut version = "unknown".to_string();
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        let header = std::path::Path::new(&dir).join("../include/torch/headeronly/version.h");
        if header.exists() {
            println!("cargo:rerun-if-changed={}", header.display());
        }
        if let Ok(h) = std::fs::read_to_string(&header) {
            let part = |name: &str| {
                h.lines().find_map(|l| {
                    let rest = l.trim().strip_prefix("#define ")?.strip_prefix(name)?;
                    rest.trim().parse::<u32>().ok()
                })
            };
            if let (Some(a), Some(b), Some(c)) = (
                part("TORCH_VERSION_MAJOR"),
                part("TORCH_VERSION_MINOR"),
                part("TORCH_VERSION_PATCH"),
            ) {
                version = format!("{a}.{b}.{c}");
            }
        }
    }
    println!("cargo:rustc-env=CURES_LIBTORCH_VERSION={version}");
}
