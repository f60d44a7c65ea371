//! The call limits every remote backend's spec table shares (`kserve_v2`, `vllm`): their
//! defaults and their checks, so both tables default and refuse alike. Plain data.

pub(in crate::models) fn timeout_ms() -> u64 {
    30_000
}

pub(in crate::models) fn max_concurrency() -> usize {
    4
}

pub(in crate::models) fn health_interval_ms() -> u64 {
    2_000
}

pub(in crate::models) fn failures_before_unavailable() -> u32 {
    3
}

/// Check a table's call limits; `table` names it in the message (`kserve_v2`, `vllm`).
pub(in crate::models) fn check_call_limits(
    table: &str,
    timeout_ms: u64,
    max_concurrency: usize,
    health_interval_ms: u64,
    failures_before_unavailable: u32,
) -> Result<(), String> {
    if timeout_ms == 0 || timeout_ms > 600_000 {
        return Err(format!(
            "{table}.timeout_ms {timeout_ms} is outside 1..=600000"
        ));
    }
    if !(1..=1024).contains(&max_concurrency) {
        return Err(format!(
            "{table}.max_concurrency {max_concurrency} is outside 1..=1024"
        ));
    }
    if !(100..=3_600_000).contains(&health_interval_ms) {
        return Err(format!(
            "{table}.health_interval_ms {health_interval_ms} is outside 100..=3600000"
        ));
    }
    if failures_before_unavailable == 0 {
        return Err(format!("{table}.failures_before_unavailable must be > 0"));
    }
    Ok(())
}
