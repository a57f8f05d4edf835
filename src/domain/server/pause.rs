//! PauseStream and ResumeStream (streaming.md §6): the wanted state of a server's stream, kept
//! on the server (`paused`) so that it lasts across replica restarts, lease moves and
//! re-onboarding; a paused server is not streamable, so no replica holds its binlog connection.

use super::{Rejection, Server, StreamHealth};
use crate::domain::{ServerStatus, StreamState};

impl Server {
    /// PauseStream: the stream stops and stays stopped (its checkpoint and index kept) until
    /// ResumeStream. An onboarded server is `paused` at once; a pending or failed one when its
    /// onboarding completes. Pausing a paused server changes nothing.
    pub fn pause_stream(&mut self) -> Result<(), Rejection> {
        self.ensure_live()?;
        self.paused = true;
        if matches!(
            self.status,
            ServerStatus::Active | ServerStatus::Disconnected
        ) {
            self.hold_paused();
        }
        Ok(())
    }

    /// ResumeStream: a paused stream starts again from its checkpoint. Resuming a server that
    /// is not paused changes nothing.
    pub fn resume_stream(&mut self) -> Result<(), Rejection> {
        self.ensure_live()?;
        self.paused = false;
        if self.status == ServerStatus::Paused {
            self.status = ServerStatus::Active;
            if let Some(stream) = &mut self.stream {
                stream.state = StreamState::Starting;
                stream.error = None;
            }
        }
        Ok(())
    }

    /// A paused server: no stream wanted, the stream `stopped`.
    pub(super) fn hold_paused(&mut self) {
        self.status = ServerStatus::Paused;
        let stream = self.stream.get_or_insert_with(StreamHealth::starting);
        stream.state = StreamState::Stopped;
        stream.error = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OnboardingStep;
    use crate::domain::onboarding::StepOutcome;

    fn active() -> Server {
        let mut server = crate::domain::server::lifecycle::tests::registered();
        server.status = ServerStatus::Active;
        server.stream = Some(StreamHealth::starting());
        server
    }

    #[test]
    fn an_active_server_pauses_at_once_and_resumes_from_its_checkpoint() {
        let mut server = active();
        server.pause_stream().unwrap();
        assert_eq!(server.status, ServerStatus::Paused);
        assert_eq!(server.stream.as_ref().unwrap().state, StreamState::Stopped);
        assert!(!server.wants_stream());
        let paused = server.clone();
        server.pause_stream().unwrap();
        assert_eq!(server, paused, "pausing a paused server changes nothing");
        assert_eq!(
            server.check_restartable(),
            Err(Rejection::StreamPaused),
            "RestartStream asks for a resume first"
        );
        server.resume_stream().unwrap();
        assert_eq!(server.status, ServerStatus::Active);
        assert_eq!(server.stream.as_ref().unwrap().state, StreamState::Starting);
        assert!(server.wants_stream());
        let resumed = server.clone();
        server.resume_stream().unwrap();
        assert_eq!(server, resumed, "resuming a running server changes nothing");
    }

    #[test]
    fn a_pending_server_paused_is_paused_when_its_onboarding_completes() {
        let mut server = crate::domain::server::lifecycle::tests::registered();
        server.pause_stream().unwrap();
        assert_eq!(server.status, ServerStatus::Pending, "onboarding goes on");
        let now = crate::domain::now();
        let completed = StepOutcome::Completed {
            message: String::new(),
            warnings: Vec::new(),
        };
        for step in OnboardingStep::ALL {
            server.begin_step(*step, now);
            server.apply_outcome(*step, &completed, now);
        }
        assert_eq!(server.status, ServerStatus::Paused);
        assert!(!server.wants_stream());
    }

    #[test]
    fn a_decommissioned_server_is_neither_paused_nor_resumed() {
        let mut server = active();
        server.pause_stream().unwrap();
        server.decommission(crate::domain::now());
        assert_eq!(server.status, ServerStatus::Decommissioned);
        assert_eq!(server.pause_stream(), Err(Rejection::Decommissioned));
        assert_eq!(server.resume_stream(), Err(Rejection::Decommissioned));
    }
}
