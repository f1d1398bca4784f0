//! `report.generate`: the article's report. It builds a real CSV from sales figures generated
//! deterministically from the payload (same payload, same report), reporting progress per row
//! and stopping when asked to.
//!
//! Payload: `{"period": "monthly" | "weekly" | "daily", "step_ms": N}`, all optional
//! (`"type"` is read as `"period"`, as the article's own request body names it)
//! (`monthly`, 50 ms per row). The result carries the CSV itself, so the gateway can serve it
//! without sharing a disk with the worker.

use std::{fmt::Write, time::Duration};

use serde::Deserialize;
use serde_json::json;

use crate::{HandlerError, HandlerResult, JobContext};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportRequest {
    /// The article's own body says `{"type": "monthly"}`: both names are read.
    #[serde(default = "default_period", alias = "type")]
    period: String,
    #[serde(default = "default_step_ms")]
    step_ms: u64,
}

fn default_period() -> String {
    "monthly".to_owned()
}

fn default_step_ms() -> u64 {
    50
}

/// Rows (days) in a report of each period.
fn rows_for(period: &str) -> Option<u32> {
    match period {
        "daily" => Some(1),
        "weekly" => Some(7),
        "monthly" => Some(30),
        _ => None,
    }
}

/// A small deterministic generator (64-bit LCG), seeded from the payload.
struct Figures(u64);

impl Figures {
    fn seeded(text: &str) -> Self {
        // FNV-1a of the text.
        let seed = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        Self(seed)
    }

    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// The `report.generate` handler.
pub async fn generate_report(context: JobContext) -> HandlerResult {
    let request: ReportRequest = context.payload_as()?;
    let rows = rows_for(&request.period).ok_or_else(|| {
        HandlerError::permanent(
            "invalid_payload",
            format!(
                "unknown period {:?}: use daily, weekly or monthly",
                request.period
            ),
        )
    })?;
    let mut figures = Figures::seeded(&context.payload.to_string());
    let mut csv = String::from("day,orders,revenue_cents,refunds\n");
    let (mut total_orders, mut total_revenue) = (0_u64, 0_u64);
    for day in 1..=rows {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(request.step_ms)) => {}
            () = context.cancelled() => {
                return Err(HandlerError::permanent("cancelled", format!("stopped at day {day} of {rows}")));
            }
        }
        let orders = 20 + figures.next(180);
        let revenue = orders * (1_500 + figures.next(3_500));
        let refunds = figures.next(orders / 10 + 1);
        total_orders += orders;
        total_revenue += revenue;
        // Writing to a String cannot fail.
        let _ = writeln!(csv, "{day},{orders},{revenue},{refunds}");
        let percent = u8::try_from(day * 100 / rows).unwrap_or(100);
        context
            .progress(percent, format!("aggregated day {day} of {rows}"))
            .await;
    }
    Ok(json!({
        "period": request.period,
        "rows": rows,
        "total_orders": total_orders,
        "total_revenue_cents": total_revenue,
        "csv": csv,
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_articles_type_field_names_the_period() {
        let read = |body| serde_json::from_value::<ReportRequest>(body).map(|r| r.period);
        assert_eq!(
            read(json!({"type": "monthly"})).ok().as_deref(),
            Some("monthly")
        );
        assert_eq!(
            read(json!({"period": "daily"})).ok().as_deref(),
            Some("daily")
        );
        assert_eq!(read(json!({})).ok(), Some(default_period()));
    }
}
