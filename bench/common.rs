//! Shared by the benchmark programs: the machine and date lines every result carries.

#![allow(dead_code)]

/// "N x CPU model, Linux kernel".
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{nproc} x {cpu}, Linux {kernel}")
}

/// Today's date (UTC), YYYY-MM-DD.
pub fn today() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        now.month() as u8,
        now.day()
    )
}
