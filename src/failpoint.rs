//! Fail points for the crash-safety tests.
//!
//! With the `failpoints` feature, `hit("name")` aborts the process when the environment
//! variable `CAREBILL_FAILPOINTS` lists `name` (comma-separated): the test then restarts the
//! server and retries, proving that a crash between the processor call and the database commit
//! neither loses nor doubles a payment. Without the feature (every normal build) `hit` is empty
//! and compiles to nothing.

#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    let armed = std::env::var("CAREBILL_FAILPOINTS")
        .map(|v| v.split(',').any(|n| n.trim() == name))
        .unwrap_or(false);
    if armed {
        eprintln!("failpoint {name}: aborting the process");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
