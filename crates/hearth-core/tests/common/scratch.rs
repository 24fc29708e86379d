//! One directory per test process for what its tests build once and share (a converted model), removed
//! when the process exits. Shared by the test binaries of every crate (`#[path]`-included).
//!
//! A `tempfile::TempDir` kept in a `static` is never dropped, so its files outlived every run: converted
//! SmolLM2 and Gemma 3 packages (94 and 253 MB) piled up in the system's temporary directory until a CI
//! machine's disk was full. `atexit` runs on every normal exit of a test binary, passed or failed.

use std::path::Path;
use std::sync::OnceLock;

static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();

extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
}

/// Must not panic: it runs inside the C library's `exit`.
extern "C" fn remove_scratch() {
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(dir.path());
    }
}

/// This process's scratch directory, created on first use.
pub fn scratch_dir() -> &'static Path {
    DIR.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("hearth-test-").tempdir().expect("a temporary directory");
        // SAFETY: `atexit` is the C library's and takes a plain function; `remove_scratch` only reads
        // a static that is set before it can run, and never unwinds.
        let registered = unsafe { atexit(remove_scratch) };
        assert_eq!(registered, 0, "atexit refused the scratch directory's clean-up");
        dir
    })
    .path()
}
