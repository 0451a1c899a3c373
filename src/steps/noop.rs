//! `noop`: does nothing and succeeds. For tests, benchmarks, and as a join point in a DAG. With
//! `sleep:` it waits that long first (honouring cancellation and timeouts): a stand-in for a slow
//! step.

use serde::Deserialize;

use super::{CheckCx, Step};
use crate::config::HumanDuration;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopStep {
    /// Wait this long before succeeding (default: not at all).
    #[serde(default)]
    pub sleep: Option<HumanDuration>,
}

impl Step for NoopStep {
    fn kind(&self) -> &'static str {
        "noop"
    }

    fn check(&self, _cx: &mut CheckCx<'_>) {}

    fn run<'a>(
        &'a self,
        cx: &'a super::RunCx,
    ) -> futures::future::BoxFuture<'a, Result<super::StepOutput, super::StepError>> {
        Box::pin(async move {
            let cancelled = || {
                Err(super::StepError::new(
                    super::ErrorClass::Cancelled,
                    "cancelled",
                ))
            };
            if cx.cancel.is_cancelled() {
                return cancelled();
            }
            if let Some(d) = self.sleep {
                tokio::select! {
                    _ = cx.cancel.cancelled() => return cancelled(),
                    _ = tokio::time::sleep(d.0) => {}
                }
            }
            Ok(super::StepOutput::default())
        })
    }
}
