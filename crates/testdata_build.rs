//! Shared by the crates whose tests read corpora (`build = "../testdata_build.rs"`). Finds the shared third-party test corpora (`../shared/testdata` beside the repository, or
//! `PALISADE_TESTDATA`) so conformance tests can run against them, or be reported as ignored
//! — never as passed — where they are absent.

fn main() {
    println!("cargo:rerun-if-env-changed=PALISADE_TESTDATA");
    println!("cargo:rustc-check-cfg=cfg(palisade_testdata)");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let candidates = [
        std::env::var("PALISADE_TESTDATA").ok(),
        Some(format!("{manifest}/../../../shared/testdata")),
    ];
    for dir in candidates.into_iter().flatten() {
        let path = std::path::Path::new(&dir);
        println!("cargo:rerun-if-changed={dir}");
        if path.join("README.md").is_file() {
            let abs = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
            println!("cargo:rustc-cfg=palisade_testdata");
            println!("cargo:rustc-env=PALISADE_TESTDATA_DIR={}", abs.display());
            return;
        }
    }
    println!("cargo:rustc-env=PALISADE_TESTDATA_DIR=");
}
