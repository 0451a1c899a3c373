//! Step states as a state machine: every change goes through [`transition`], which refuses the
//! illegal ones, so a bug cannot quietly turn a failed step into a success.
//!
//! ```text
//! pending ──► running ──► success
//!    │           │  └───► failed
//!    │           └──────► up_for_retry ──► running
//!    ├──► upstream_failed
//!    └──► skipped            (already succeeded; not selected)
//! any terminal state ──► pending      (cleared for a rerun)
//! ```

use crate::store::StepState;

/// An attempted change that the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal step state change {from} -> {to}")]
pub struct IllegalTransition {
    pub from: StepState,
    pub to: StepState,
}

/// Check a change of state.
pub fn transition(from: StepState, to: StepState) -> Result<StepState, IllegalTransition> {
    use StepState::*;
    let ok = matches!(
        (from, to),
        (Pending, Running)
            | (Pending, UpstreamFailed)
            | (Pending, Skipped)
            | (Running, Success)
            | (Running, Failed)
            | (Running, UpForRetry)
            | (UpForRetry, Running)
            | (UpForRetry, Failed)
            | (Success, Pending)
            | (Failed, Pending)
            | (UpstreamFailed, Pending)
            | (Skipped, Pending)
            | (Running, Pending)
            | (UpForRetry, Pending)
    );
    if ok {
        Ok(to)
    } else {
        Err(IllegalTransition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StepState::*;

    #[test]
    fn legal_and_illegal_changes() {
        assert!(transition(Pending, Running).is_ok());
        assert!(transition(Running, UpForRetry).is_ok());
        assert!(transition(UpForRetry, Running).is_ok());
        assert!(transition(Failed, Pending).is_ok());
        assert_eq!(
            transition(Failed, Success),
            Err(IllegalTransition {
                from: Failed,
                to: Success
            })
        );
        assert!(transition(Pending, Success).is_err());
        assert!(transition(Success, Running).is_err());
    }
}
