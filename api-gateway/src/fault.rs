//! Fault-injection points for crash tests: a debug build started with
//! `WARREN_FAULT_PAUSE=<point>` stops for good when it reaches that point (after printing
//! `fault point <point> reached` to stderr), so a test can `kill -9` it exactly there. Release
//! builds compile the points to nothing.

/// Stops here forever if `WARREN_FAULT_PAUSE` names this point (debug builds only).
pub async fn pause_point(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("WARREN_FAULT_PAUSE").is_ok_and(|wanted| wanted == point) {
        eprintln!("fault point {point} reached");
        std::future::pending::<()>().await;
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
