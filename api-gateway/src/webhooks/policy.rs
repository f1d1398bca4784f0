//! Which `callback_url`s the gateway accepts: only when it can sign deliveries, and only to
//! hosts the SSRF [`guard`] allows. Checked when a job or schedule is submitted, so a callback
//! that could never be delivered is refused up front.

use super::guard;
use crate::model::SpecError;

/// What the gateway allows as a `callback_url`.
#[derive(Debug, Clone, Copy)]
pub struct CallbackPolicy {
    /// A signing secret is set (`WARREN_WEBHOOK_SECRET`); without one, deliveries could not
    /// be signed, so callbacks are refused rather than accepted and never sent.
    pub signing: bool,
    /// `WARREN_WEBHOOK_ALLOW_PRIVATE`.
    pub allow_private: bool,
}

impl CallbackPolicy {
    /// Refuses a `callback_url` that could not be delivered: no signing secret, not
    /// `http(s)`, too long, or a host that is (or resolves to) a private address.
    pub async fn check(&self, url: Option<&str>) -> Result<(), SpecError> {
        let Some(url) = url else { return Ok(()) };
        let invalid = |message: String| SpecError {
            field: "callback_url",
            message,
        };
        if !self.signing {
            return Err(invalid(
                "this gateway has no webhook signing secret (WARREN_WEBHOOK_SECRET), so it \
                 cannot send callbacks; leave callback_url out, or ask the operator to set it"
                    .into(),
            ));
        }
        let url = guard::parse(url).map_err(|why| invalid(format!("callback_url {why}")))?;
        guard::check(&url, self.allow_private)
            .await
            .map_err(|why| invalid(format!("callback_url refused: {why}")))
    }
}
