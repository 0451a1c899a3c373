//! `noop`: does nothing and succeeds. For tests, benchmarks, and as a join point in a DAG.

use serde::Deserialize;

use super::{CheckCx, Step};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoopStep {}

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
            if cx.cancel.is_cancelled() {
                return Err(super::StepError::new(
                    super::ErrorClass::Cancelled,
                    "cancelled",
                ));
            }
            Ok(super::StepOutput::default())
        })
    }
}
